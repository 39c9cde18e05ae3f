"""Leaderboard: result records rendered as Markdown, CSV or an HTML report with plots.

Tables are views of the records (:mod:`lpo.evals.store`), never edited by hand:

- one table per benchmark version and prompt set (rows on different prompts are not
  comparable; the prompt-set hash is in the heading);
- one row per (checkpoint hash, protocol, images per prompt); its method, base model,
  protocol and training cost (device-hours of reward-model training + optimisation, per
  device type, SPEC §8) beside the scores;
- one column per ``metric@version``. Two versions of a metric are two columns; a cell
  of another version is refused (:meth:`Table.put`). When a row has several records for
  a column (re-evaluations), the latest is shown;
- cells are ``mean ± half-width of the 95% interval`` over prompts (images of a prompt
  averaged first, computed from the per-image scores at evaluation time);
- a "Δ vs base" column (when the results folder is given, :func:`attach_deltas`): each
  row's paired difference from the table's base-model row on its primary metric
  (pickscore, else world_utility, else the first column), per prompt on identical
  prompts and seeds, with its 95% Student-t interval and a word
  (:mod:`lpo.evals.paired`); a row that cannot be paired shows "—" and a footnote why;
- with ``reported=True`` the published numbers of SPEC §7 (:mod:`lpo.evals.reported`)
  appear twice: in a "published" column right beside each measured column they
  correspond to, filled for rows whose checkpoint the paper evaluated (a registry
  entry's ``published_as``), and as a table of their own marked "reported" (other scorer
  code, other hardware), with the same metric names, categories and units;
- reward-hacking diagnostics: a "trained on" column lists each row's training signals
  (:mod:`lpo.evals.signals`) and every metric cell of a trained row is marked
  ``(optimised)``, ``(related)`` or ``(held out)``; diversity measures are columns like
  any metric, beside quality;
- a record whose overall is not the mean over prompts (GenEval: the mean of its task
  scores, ``aggregation = category_mean``) says so in a footnote.

CSV is long (one line per cell, version in its own column), so nothing can mix there.
The HTML report embeds PNG plots (scores with intervals per metric, and quality against
training device-hours when rows carry a cost) and, when the image cache is on this
machine, a strip of each row's first images.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lpo.core.errors import LpoError
from lpo.core.tables import markdown_table
from lpo.evals.leaderboard_plots import cost_figure, sample_strip, scores_figure
from lpo.evals.paired import INTERVAL_METHOD, PairedDifference, paired_difference_records, primary_metric
from lpo.evals.leaderboard_reported import published_value, reported_notes, reported_tables
from lpo.evals.reported import ReportedRow, published_row, reported_rows
from lpo.evals.signals import describe as describe_signals
from lpo.evals.signals import mark as signal_mark
from lpo.evals.store import ResultRecord

FORMATS = ("md", "csv", "html")
TRAINING_STAGES = ("reward_model_training", "rollout", "optimisation")


@dataclass(frozen=True)
class Column:
    metric: str
    version: str
    higher_is_better: bool
    formula: str | None = None
    # lpo.evals.metrics.base.COMPARABILITY as the metric declares it; None: not declared
    comparability: str | None = None
    comparability_note: str | None = None

    @classmethod
    def of(cls, record: ResultRecord) -> "Column":
        from lpo.evals.metrics import declared_comparability

        comparability, note = declared_comparability(record.metric, record.metric_version)
        return cls(record.metric, record.metric_version, record.higher_is_better, record.metric_formula, comparability, note)

    @property
    def key(self) -> str:
        return f"{self.metric}@{self.version}"

    @property
    def variant(self) -> bool:
        return self.comparability == "variant"

    @property
    def header(self) -> str:
        return f"{self.key} {'↑' if self.higher_is_better else '↓'}" + (" (variant)" if self.variant else "")


@dataclass
class Row:
    key: tuple[str, str, int]
    label: str
    method: str
    base_model: str | None
    checkpoint_hash: str
    protocol: dict[str, Any]
    run_id: str | None = None
    training_cost: dict[str, Any] | None = None
    optimised_reward: str | None = None
    training_signals: list[dict[str, Any]] | None = None
    published_as: str | None = None
    step: int | None = None  # an intermediate checkpoint's training step
    cells: dict[str, ResultRecord] = field(default_factory=dict)

    @property
    def protocol_summary(self) -> str:
        p = self.protocol
        size = p.get("image_size")
        res = f"{size[0]}px" if size else ("native" if p.get("resolution") is None else f"{p['resolution']}px")
        cfg = f"CFG {p.get('guidance_scale'):g}" + (" (own)" if p.get("guidance_scale_from") == "checkpoint" else "")
        return (
            f"{str(p.get('sampler', '?')).upper()} {p.get('steps')} · {cfg} · "
            f"{p.get('images_per_prompt')} img/prompt · seed {p.get('seed')} · {res} · {p.get('dtype')}"
        )

    def mark(self, column: "Column") -> str | None:
        """``optimised`` / ``related`` / ``held out`` for a trained row; None for untrained or unknown rows."""
        if not self.training_signals:
            return None
        return signal_mark(column.metric, column.version, self.training_signals)

    def training_hours(self) -> dict[str, float]:
        """Training device-hours per device type (reward model + optimisation; evaluation excluded)."""
        cost = self.training_cost or {}
        by_type = cost.get("device_hours_by_type") or {}
        return {t: sum(float(h.get(s, 0.0)) for s in TRAINING_STAGES) for t, h in by_type.items()}


@dataclass
class Table:
    """One benchmark version on one prompt set."""

    benchmark: str
    benchmark_version: str
    prompt_set_hash: str
    prompt_source: str
    n_prompts: int
    columns: dict[str, Column] = field(default_factory=dict)
    rows: dict[tuple[str, str, int], Row] = field(default_factory=dict)
    delta_metric: str | None = None  # set by attach_deltas: the Δ vs base column's metric@version
    deltas: dict[tuple[str, str, int], PairedDifference] = field(default_factory=dict)
    delta_notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.benchmark}@{self.benchmark_version} · prompt set {self.prompt_set_hash} ({self.n_prompts} prompts, {self.prompt_source})"

    def add(self, record: ResultRecord) -> None:
        if (record.benchmark, record.benchmark_version, record.prompt_set_hash) != (
            self.benchmark, self.benchmark_version, self.prompt_set_hash
        ):
            raise ValueError(f"record {record.record_id} belongs to another table")
        column = Column.of(record)
        existing = self.columns.setdefault(column.key, column)
        if existing.higher_is_better != column.higher_is_better:
            raise LpoError(
                f"records of {column.key} disagree on whether higher is better; a scoring change needs a new metric version"
            )
        key = (record.checkpoint["hash"], record.protocol_hash, int(record.protocol.get("images_per_prompt", 0)))
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Row(
                key=key,
                label=record.checkpoint.get("label") or record.checkpoint.get("spec"),
                method=record.method,
                base_model=record.base_model,
                checkpoint_hash=record.checkpoint["hash"],
                protocol=record.protocol,
                step=record.checkpoint.get("step") if isinstance(record.checkpoint.get("step"), int) else None,
            )
        self.put(row, existing, record)

    def put(self, row: Row, column: Column, record: ResultRecord) -> None:
        """Place ``record`` in ``row`` under ``column``; a record of another metric version is refused."""
        if record.metric_key != column.key:
            raise LpoError(
                f"refusing to put {record.metric_key} (record {record.record_id}) in column {column.key}: "
                "metric versions are never mixed in one column"
            )
        current = row.cells.get(column.key)
        if current is None or record.created >= current.created:
            row.cells[column.key] = record
        # Run information belongs to the checkpoint (same hash); take what any record knows.
        row.run_id = row.run_id or record.run_id
        row.training_cost = row.training_cost or record.training_cost
        row.optimised_reward = row.optimised_reward or record.optimised_reward
        if row.training_signals is None:
            row.training_signals = record.training_signals
        row.published_as = row.published_as or (record.checkpoint.get("registry") or {}).get("published_as")

    def sorted_rows(self) -> list[Row]:
        # a run's intermediate checkpoints in step order, its final model after them
        return sorted(
            self.rows.values(),
            key=lambda r: (r.base_model or "", r.method != "base", r.run_id or r.label, r.step is None, r.step or 0, r.label),
        )


def build_tables(records: Sequence[ResultRecord]) -> list[Table]:
    tables: dict[tuple[str, str, str], Table] = {}
    for record in records:
        key = (record.benchmark, record.benchmark_version, record.prompt_set_hash)
        if key not in tables:
            tables[key] = Table(record.benchmark, record.benchmark_version, record.prompt_set_hash, record.prompt_source, record.n_prompts)
        tables[key].add(record)
    return sorted(tables.values(), key=lambda t: (t.benchmark, t.benchmark_version, -t.n_prompts, t.prompt_set_hash))


def _base_row(table: Table, row: Row, key: str) -> Row | None:
    """The base-model row ``row`` pairs with: same protocol seed and images per prompt, the same protocol preferred."""
    bases = [r for r in table.sorted_rows() if r.method == "base" and key in r.cells
             and (r.protocol.get("seed"), r.protocol.get("images_per_prompt"))
             == (row.protocol.get("seed"), row.protocol.get("images_per_prompt"))]
    same = [r for r in bases if r.key[1] == row.key[1]]
    return (same or bases or [None])[0]


def attach_deltas(tables: Sequence[Table], results_dir: Path) -> None:
    """Fill every table's paired Δ vs its base-model row from the per-prompt side files under ``results_dir``."""
    for table in tables:
        key = primary_metric(list(table.columns))
        if key is None or not any(r.method == "base" for r in table.rows.values()):
            continue
        table.delta_metric = key
        for row in table.sorted_rows():
            if row.method == "base" or key not in row.cells:
                continue
            base = _base_row(table, row, key)
            if base is None:
                table.delta_notes.append(f"{row.label}: no base-model row with its protocol seed and images per prompt")
                continue
            try:
                table.deltas[row.key] = paired_difference_records(results_dir, row.cells[key], base.cells[key])
            except LpoError as err:
                table.delta_notes.append(f"{row.label}: {err}")


def format_delta(table: Table, row: Row) -> str:
    if row.method == "base":
        return "base"
    d = table.deltas.get(row.key)
    return "—" if d is None else f"{d.format()} ({d.word})"


# --------------------------------------------------------------------------- formatting


def format_cell(record: ResultRecord | None, mark: str | None = None) -> str:
    if record is None:
        return "—"
    if record.ci95 is None:
        text = f"{record.value:.4g}"
    else:
        half = (record.ci95[1] - record.ci95[0]) / 2
        text = f"{record.value:.4g} ± {half:.2g}"
    return f"{text} ({mark})" if mark else text


def format_cost(row: Row) -> str:
    hours = row.training_hours()
    if not hours:
        return "—"
    return ", ".join(f"{h:.3g} h {t}" for t, h in sorted(hours.items()))


MAIN_COLUMNS = 6  # checkpoint, method, base model, protocol, training cost, trained on
SHAREABLE = ("base model", "protocol")  # a column every row agrees on moves into a line above the table


def shared_columns(table: Table) -> dict[str, str]:
    """The base model / protocol when every row of ``table`` has the same one (shown once, above the table)."""
    rows = table.sorted_rows()
    values = {"base model": {r.base_model or "—" for r in rows}, "protocol": {r.protocol_summary for r in rows}}
    return {name: next(iter(values[name])) for name in SHAREABLE if len(values[name]) == 1}


def _main_rows(table: Table, published: Sequence[ReportedRow] | None = None) -> tuple[list[str], list[list[str]], int]:
    """The measured table and its number of text columns; with ``published`` (the benchmark's
    published rows) a "published" column follows each measured column that has published
    numbers. Columns every row agrees on (:func:`shared_columns`) are left out."""
    columns = list(table.columns.values())
    with_published = {c.key for c in columns if published and any(c.metric in r.values for r in published)}
    shared = shared_columns(table)
    header = ["checkpoint", "method", "base model", "protocol", "training cost", "trained on"]
    for c in columns:
        header.append(c.header)
        if c.key in with_published:  # a variant's column is never read as the published one's
            header.append(f"{c.metric} published" + (" (other scorer: not comparable)" if c.variant else ""))
    if table.delta_metric:
        header.append(f"Δ {table.delta_metric} vs base (paired, 95% t)")
    rows = []
    for row in table.sorted_rows():
        label = row.label + (f" (run {row.run_id})" if row.run_id and row.run_id not in row.label else "")
        method = row.method + (f", optimised {row.optimised_reward}" if row.optimised_reward else "")
        paper = published_row(table.benchmark, row.published_as) if with_published else None
        cells = [label, method, row.base_model or "—", row.protocol_summary, format_cost(row), describe_signals(row.training_signals)]
        for c in columns:
            cells.append(format_cell(row.cells.get(c.key), row.mark(c)))
            if c.key in with_published:
                cells.append(published_value(paper.values if paper else None, c.metric))
        if table.delta_metric:
            cells.append(format_delta(table, row))
        rows.append(cells)
    keep = [i for i, name in enumerate(header) if i >= MAIN_COLUMNS or name not in shared]
    return [header[i] for i in keep], [[r[i] for i in keep] for r in rows], MAIN_COLUMNS - len(shared)


def _shared_line(table: Table) -> str | None:
    shared = shared_columns(table)
    known = {k: v for k, v in shared.items() if v != "—"}
    return "every row: " + "; ".join(f"{k} {v}" for k, v in known.items()) if known else None


def _breakdown_rows(
    table: Table, column: Column, published: Sequence[ReportedRow] | None = None
) -> tuple[list[str], list[list[str]]] | None:
    cells = [(row, row.cells.get(column.key)) for row in table.sorted_rows()]
    categories: list[str] = []
    for _, record in cells:
        for entry in (record.breakdown if record is not None else None) or []:
            if entry["category"] not in categories:
                categories.append(entry["category"])
    if not categories:
        return None
    paper_categories = {k for r in (published or ()) for k in r.categories.get(column.metric, {})}
    header = ["checkpoint"]
    for c in categories:
        header += [c] + ([f"{c} published"] if c in paper_categories else [])
    rows = []
    for row, record in cells:
        if record is None or not record.breakdown:
            continue
        values = {entry["category"]: entry["value"] for entry in record.breakdown}
        paper = published_row(table.benchmark, row.published_as) if paper_categories else None
        line = [row.label]
        for c in categories:
            line.append(f"{values[c]:.3g}" if c in values else "—")
            if c in paper_categories:
                line.append(published_value(paper.categories.get(column.metric) if paper else None, c))
        rows.append(line)
    return header, rows


def _footnotes(table: Table, published: Sequence[ReportedRow] | None = None) -> list[str]:
    notes = [
        "cells: mean over prompts of each prompt's mean score ± half-width of the 95% confidence interval over "
        "prompts; training cost = device-hours of reward-model training + optimisation."
    ]
    if table.delta_metric:
        notes.append(f"Δ vs base: the row minus the base model on {table.delta_metric}, {INTERVAL_METHOD}; "
                     "better / worse when the interval excludes 0, else no detectable difference.")
        notes += [f"Δ not computed for {n}" for n in table.delta_notes]
    for c in table.columns.values():
        if c.formula:
            notes.append(f"{c.key}: {c.formula}")
        if c.variant:
            notes.append(f"{c.key} (variant): {c.comparability_note}; consistent across the checkpoints here, "
                         "not comparable with published numbers")
    declared = {c.comparability for c in table.columns.values()}
    if declared - {None}:
        by = {kind: [c.key for c in table.columns.values() if c.comparability == kind] for kind in ("published", "variant", "lpo")}
        parts = [f"{label}: {', '.join(keys)}" for label, keys in (
            ("comparable with published numbers", by["published"]), ("variants", by["variant"]),
            ("lpo's own measures", by["lpo"])) if keys]
        notes.append("columns — " + "; ".join(parts))
        aggregations = {r.cells[c.key].aggregation for r in table.rows.values() if c.key in r.cells}
        if "category_mean" in aggregations:
            notes.append(
                f"{c.key}: overall = unweighted mean of the category values (the benchmark's official overall); "
                "± from sqrt(Σ se_c²)/C"
            )
    if any(row.training_signals for row in table.rows.values()):
        notes.append(
            "marks on trained rows (lpo.evals.signals): (optimised) the run's reward or pair filter is this metric's "
            "scorer; (related) its reward was trained on this metric's training labels or initialised from it; "
            "(held out) no training signal of the row touches it."
        )
    if published and any(row.published_as for row in table.rows.values()):
        sources = sorted({r.source for r in published})
        notes.append(
            "“published” columns: the paper's number for the row's model (its registry entry's published_as), "
            f"measured with the paper's own code and protocol ({'; '.join(sources)})."
        )
    return notes


def _grouped(tables: Sequence[Table], reported: Sequence[str]) -> list[tuple[str, list[Table]]]:
    """(benchmark, its tables) in order, plus benchmarks with only reported rows at the end."""
    groups: dict[str, list[Table]] = {}
    for table in tables:
        groups.setdefault(table.benchmark, []).append(table)
    for benchmark in reported:
        groups.setdefault(benchmark, [])
    return list(groups.items())


def _metric_order(group: Sequence[Table]) -> list[str]:
    order: list[str] = []
    for table in group:
        order += [c.metric for c in table.columns.values() if c.metric not in order]
    return order


def render_markdown(
    tables: Sequence[Table], reported: Sequence[str] = (), *, title: str | None = "lpo leaderboard", level: int = 1
) -> str:
    """Markdown; ``reported`` names the benchmarks whose published numbers are shown.

    ``title`` (None: no title line) and ``level`` (the title's heading level; tables one
    below) let a larger report (:mod:`lpo.bench.report`) embed the leaderboard as a section.
    """
    lines = [f"{'#' * level} {title}", ""] if title else []
    sub, subsub = "#" * (level + 1), "#" * (level + 2)
    for benchmark, group in _grouped(tables, reported):
        published = reported_rows(benchmark) if benchmark in reported else None
        for table in group:
            header, rows, text_columns = _main_rows(table, published)
            line = _shared_line(table)
            lines += [f"{sub} {table.title}", ""] + ([line, ""] if line else []) + markdown_table(header, rows, text_columns) + [""]
            for column in table.columns.values():
                breakdown = _breakdown_rows(table, column, published)
                if breakdown:
                    lines += [f"{subsub} {column.key} by category", ""] + markdown_table(breakdown[0], breakdown[1], 1) + [""]
            lines += [f"- {n}" for n in _footnotes(table, published)] + [""]
        if benchmark in reported:
            lines += _reported_markdown(benchmark, subsub, _metric_order(group))
    return "\n".join(lines).rstrip() + "\n"


def _all_reported() -> list[ReportedRow]:
    from lpo.evals.reported import REPORTED

    return list(REPORTED)


def _reported_markdown(benchmark: str, heading: str = "###", metric_order: Sequence[str] = ()) -> list[str]:
    lines: list[str] = []
    for title, header, rows in reported_tables(benchmark, metric_order):
        lines += [f"{heading} {title}", ""] + markdown_table(header, rows, 3) + [""]
    if lines:
        lines += [f"- {n}" for n in reported_notes(benchmark)] + [""]
    return lines


# --------------------------------------------------------------------------- HTML


def html_text(text: Any) -> str:
    """Escaped cell text that may wrap after ``_``, ``@`` and ``/`` (metric keys, paths), so wide tables fit."""
    escaped = html.escape(str(text))
    for mark in ("_", "@", "/"):
        escaped = escaped.replace(mark, mark + "<wbr>")
    return escaped


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html_text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def render_html(
    tables: Sequence[Table], reported: Sequence[str] = (), results_dir: Path | None = None, *, fragment: bool = False, level: int = 1
) -> str:
    """A standalone HTML page; with ``fragment`` only its body content without the title, for
    a larger report (:mod:`lpo.bench.report`), table headings at ``level`` + 1."""
    sub, subsub = f"h{min(level + 1, 6)}", f"h{min(level + 2, 6)}"
    parts = [] if fragment else [
        "<!doctype html><html><head><meta charset='utf-8'><title>lpo leaderboard</title><style>"
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;}table{border-collapse:collapse;margin:1em 0;}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;}th{background:#f3f3f3;}"
        ".wide{overflow-x:auto;max-width:100%;}img{max-width:100%;}"
        ".note{color:#555;font-size:12px;}</style></head><body>",
        "<h1>lpo leaderboard</h1>",
    ]
    for benchmark, group in _grouped(tables, reported):
        published = reported_rows(benchmark) if benchmark in reported else None
        for table in group:
            header, rows, _ = _main_rows(table, published)
            line = _shared_line(table)
            parts += [f"<{sub}>{html.escape(table.title)}</{sub}>"] + ([f"<p>{html.escape(line)}</p>"] if line else [])
            parts.append(_html_table(header, rows))
            parts += [f"<p class='note'>{html.escape(n)}</p>" for n in _footnotes(table, published)]
            for column in table.columns.values():
                breakdown = _breakdown_rows(table, column, published)
                if breakdown:
                    parts += [f"<{subsub}>{html.escape(column.key)} by category</{subsub}>", _html_table(*breakdown)]
            parts.append(f"<{subsub}>scores with 95% intervals</{subsub}><img src='data:image/png;base64,{scores_figure(table)}'>")
            cost = cost_figure(table)
            if cost:
                parts.append(f"<{subsub}>quality against training cost</{subsub}><img src='data:image/png;base64,{cost}'>")
            strips = []
            for row in table.sorted_rows():
                strip = sample_strip(next(iter(row.cells.values())), results_dir)
                if strip:
                    strips.append(f"<p>{html.escape(row.label)}</p><img src='data:image/png;base64,{strip}'>")
            if strips:
                parts += [f"<{subsub}>samples (image 0 of the first prompts)</{subsub}>"] + strips
        if benchmark in reported:
            parts += _reported_html(benchmark, subsub, _metric_order(group))
    if not fragment:
        parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _reported_html(benchmark: str, heading: str = "h3", metric_order: Sequence[str] = ()) -> list[str]:
    parts: list[str] = []
    for title, header, rows in reported_tables(benchmark, metric_order):
        parts += [f"<{heading}>{html.escape(title)}</{heading}>", _html_table(header, rows)]
    if parts:
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in reported_notes(benchmark)]
    return parts


# --------------------------------------------------------------------------- entry point


def reported_benchmarks() -> list[str]:
    """Benchmarks with published rows in :mod:`lpo.evals.reported`."""
    return sorted({r.benchmark for r in _all_reported()})


def render_leaderboard(
    records: Sequence[ResultRecord], fmt: str = "md", reported: Sequence[str] = (), results_dir: Path | None = None
) -> str:
    """Render ``records``; ``reported`` names the benchmarks whose published rows are added."""
    if fmt not in FORMATS:
        raise LpoError(f"unknown leaderboard format {fmt!r}; use one of {', '.join(FORMATS)}")
    tables = build_tables(records)
    if results_dir is not None and Path(results_dir).is_dir():
        attach_deltas(tables, Path(results_dir))
    if fmt == "md":
        return render_markdown(tables, reported)
    if fmt == "csv":
        from lpo.evals.leaderboard_csv import render_csv

        return render_csv(tables, reported)
    return render_html(tables, reported, results_dir)


def leaderboard(
    results_dir: Path, benchmarks: Sequence[str] | None = None, fmt: str = "md", reported: bool = False, out: Path | None = None
) -> str:
    """`lpo leaderboard`: load the records, render them, write ``out`` atomically when given."""
    from lpo.evals.store import load_records

    if fmt not in FORMATS:
        raise LpoError(f"unknown leaderboard format {fmt!r}; use one of {', '.join(FORMATS)}")
    if benchmarks:
        from lpo.evals.benchmarks import BENCHMARKS

        for name in benchmarks:
            if name not in BENCHMARKS and name not in reported_benchmarks():
                BENCHMARKS.get(name)  # unknown -> LpoError listing the known ones
    records = load_records(results_dir, benchmarks) if Path(results_dir).is_dir() or not reported else []
    if not records and not reported:
        where = f" for {', '.join(benchmarks)}" if benchmarks else ""
        raise LpoError(f"no result records under {results_dir}{where}; run `lpo eval` first (or pass --reported)")
    shown = [b for b in reported_benchmarks() if not benchmarks or b in benchmarks] if reported else []
    text = render_leaderboard(records, fmt, shown, results_dir)
    if out is not None:
        from lpo.core.io import atomic_write_text

        atomic_write_text(Path(out), text)
    return text
