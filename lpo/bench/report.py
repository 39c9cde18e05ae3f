"""The bench report: one static HTML file and its Markdown twin, from a bench folder.

Reads (every piece optional; a missing one is named in the report, never an error)::

    BENCH/bench.json                          config, stage timings, metadata
    BENCH/results/<benchmark>/records-v1.jsonl    result records (base, final and step-N checkpoints)
    BENCH/reward-eval/accuracy_by_timestep.{json,png}
    BENCH/guided/<model>.json                 `lpo world guided-eval` output per model
    BENCH/samples/<model>.png                 sample grids (same prompts and seeds for every model)
    BENCH/ablations/<name>/{ablation.json,results/}

Writes ``BENCH/report/index.html`` (a single file: plots and grids embedded as base64 PNG,
no server, no network), ``BENCH/report/summary.md`` (the same tables and verdicts; it
links the PNGs beside it), ``paired.json`` (:func:`lpo.bench.headline.headline` per
benchmark), ``efficiency.json`` (:func:`lpo.bench.efficiency_view.efficiency_report`) and
``quality_vs_cost.png``.

The report leads with the answer: the headline table of paired differences (each
method's final model against the base model and against each other method, seed-pooled,
with intervals, seeds and a verdict word), then the minimum detectable difference and the
evaluation size a target needs, then the efficiency verdicts and the detail. The
leaderboard tables are :mod:`lpo.evals.leaderboard`'s own rendering (final models of
every training seed and the base model, with a paired Δ vs base column); the efficiency
section uses training seed 0, whose intermediate checkpoints were evaluated.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from lpo.bench.efficiency import DEFAULT_AMORTISE_RUNS, METHOD_ORDER
from lpo.bench.efficiency_tables import (
    cost_table,
    curve_table,
    efficiency_notes,
    fraction_table,
    reach_table,
    reported_table,
    verdict_answers,
    verdict_markdown,
)
from lpo.bench.efficiency_view import efficiency_report, read_data_cost
from lpo.bench.headline import (
    console_lines,
    final_protocol_records,
    headline,
    headline_table,
    mde_table,
    power_notes,
    power_table,
    seed_index,
)
from lpo.core.errors import LpoError
from lpo.evals.paired import INTERVAL_METHOD
from lpo.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from lpo.bench.report_doc import REPORT_DIR, ReportDoc, fmt_interval, read_json_noted
from lpo.bench.report_rewards import reward_eval_section

HTML_NAME = "index.html"
MARKDOWN_NAME = "summary.md"
EFFICIENCY_NAME = "efficiency.json"
PAIRED_NAME = "paired.json"
PLOT_NAME = "quality_vs_cost.png"
GUIDED_LABELS = {
    "plain": "plain sampling",
    "guided-best": "LRM-guided (best of K per step)",
    "guided-softmax": "LRM-guided (softmax pick)",
    "guided-random": "random pick per step (control)",
    "guided-worst": "LRM-guided worst (control)",
    "best-of-k-lrm": "best of K final images (LRM)",
    "best-of-k-judge": "best of K final images (oracle: true utility)",
}

CSS = (
    "body{font-family:sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222;}"
    "table{border-collapse:collapse;margin:0.8em 0;}"
    "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top;}"
    ".wide{overflow-x:auto;max-width:100%;}.headline td,.headline th{font-size:15px;padding:5px 10px;}"
    "th{background:#f3f3f3;}.note{color:#555;font-size:12px;}.skip{color:#8a5a00;font-style:italic;}"
    ".verdict{background:#f6f8fa;border-left:4px solid #4a7;padding:0.5em 1em;margin:0.5em 0;font-size:14px;}"
    ".grids{display:flex;flex-wrap:wrap;gap:12px;}figure{margin:0;}figcaption{font-weight:bold;font-size:13px;}"
    "pre{background:#f6f8fa;padding:0.8em;font-size:12px;overflow-x:auto;}img{max-width:100%;}"
)


# --------------------------------------------------------------------------- reading


def _model_order(name: str) -> tuple[int, str]:
    order = ("base", *METHOD_ORDER)
    return (order.index(name) if name in order else len(order), name)


def _load_records(results_dir: Path) -> list:
    from lpo.evals.store import load_records

    if not results_dir.is_dir():
        return []
    return load_records(results_dir)


# --------------------------------------------------------------------------- sections


def _headline(doc: ReportDoc, answers: list[dict[str, Any]]) -> None:
    doc.heading(2, "The answer: paired differences of the final models")
    if not answers or not answers[0]["rows"]:
        doc.skip("no final models with per-prompt scores to pair against the base model"
                 + (f" ({'; '.join(answers[0]['notes'])})" if answers and answers[0]["notes"] else ""))
        return
    for i, data in enumerate(answers):
        if i:
            doc.heading(3, f"On {data['benchmark']}")
        doc.para(f"{data['metric']} on {data['benchmark']}: {data['n_prompts']} prompts × {data['images_per_prompt']} "
                 "images, the same prompts and per-image seeds for every model; Δ = first model − second.")
        doc.table(*headline_table(data), css="headline")
        doc.bullets(data["notes"])
    doc.bullets([
        f"Δ: {INTERVAL_METHOD}, pooled over training seeds (each prompt's difference averaged over the seeds first).",
        "between seeds: the mean and SD over training seeds of each seed's Δ, with the 95% half-width over seeds "
        "(Student t; Welch for two methods).",
        "verdict: better / worse only when both the pooled paired interval and the between-seed interval exclude 0 "
        "(lpo.evals.paired.seeded_difference); with one training seed the spread is unknown, so nothing is called "
        "significant and a clear paired interval reads 'better (1 seed, spread unknown)'.",
    ])


def _power(doc: ReportDoc, data: dict[str, Any] | None) -> None:
    doc.heading(2, "Minimum detectable difference and evaluation size")
    if not data or not data["mde"]:
        doc.skip("no paired final models, so no observed per-prompt SD")
        return
    doc.table(*mde_table(data))
    doc.para("Prompts needed for a paired 95% half-width (minimum detectable difference) per preset target:")
    doc.table(*power_table(data))
    doc.bullets(power_notes(data))


def _leaderboard(doc: ReportDoc, records: list, results_dir: Path) -> None:
    from lpo.evals.leaderboard import attach_deltas, build_tables, render_html, render_markdown

    doc.heading(2, "Leaderboard (final models)")
    final = final_protocol_records(records)  # not the curve protocol's re-scoring of the same models
    if not final:
        doc.skip(f"no result records under {results_dir}")
        return
    doc.para("Final models of every training seed and the base model; intermediate checkpoints are in the efficiency "
             "section.", "note")
    tables = build_tables(final)
    attach_deltas(tables, results_dir)
    doc.md += render_markdown(tables, title=None, level=2).splitlines() + [""]
    doc.html.append(render_html(tables, fragment=True, level=2))


def _verdicts(doc: ReportDoc, report: dict[str, Any]) -> None:
    doc.heading(2, "Verdicts")
    for v in report["verdicts"]:
        doc.md.append(f"- {verdict_markdown(v)}")
        answers = "; ".join(f"{html.escape(label)}: <b>{html.escape(answer)}</b>" for label, answer in verdict_answers(v))
        doc.html.append(f"<div class='verdict'><b>{html.escape(v['question'])}</b> {answers}. {html.escape(v['text'])}</div>")
    doc.md.append("")


def quality_cost_figure(report: dict[str, Any]) -> bytes | None:
    """Quality against training device-seconds, twice: the reward model counted in full (left) and
    amortised over R runs (right). One line per method from its starting offset (the reward model's
    training, at the base model) through its checkpoints.

    The y axis is ``report["curve_y"]``'s: the paired Δ vs the base model with its paired 95%
    bars (the base model is the 0 line) when every point pairs, else the plain value with the
    unpaired 95% bars and the base model's band (the report says why).
    """
    if not report["methods"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paired = report["curve_y"]["kind"] == "delta"
    runs = report["amortise_runs"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4), sharey=True)
    base = report.get("base")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, x_key, title in ((axes[0], "device_seconds", "reward model counted in full (one run)"),
                             (axes[1], "amortised_seconds", f"reward model amortised over {runs} runs")):
        if paired:
            ax.axhline(0.0, color="grey", ls="--", lw=1, label="base model (Δ = 0)")
        elif base is not None:
            ax.axhline(base["value"], color="grey", ls="--", lw=1, label=f"base model {base['value']:.3g}")
            if base["ci_half"]:
                ax.axhspan(base["value"] - base["ci_half"], base["value"] + base["ci_half"], color="grey", alpha=0.12)
        for i, (name, m) in enumerate(report["methods"].items()):
            colour = colours[i % len(colours)]
            curve = m["curve"]
            if not curve:
                continue
            xs = [p[x_key] for p in curve]
            ys = [p["delta"] if paired else p["value"] for p in curve]
            errs = [(p["delta_half"] if paired else p["ci_half"]) or 0.0 for p in curve]
            if m["start"] is not None:  # the starting offset: reward-model training done, policy = base model
                start_x, start_y = m["start"][x_key], 0.0 if paired else m["start"]["value"]
                ax.plot([start_x, xs[0]], [start_y, ys[0]], color=colour, lw=1, ls=":")
                ax.plot([start_x], [start_y], marker="o", mfc="white", color=colour, ms=8)
            ax.errorbar(xs, ys, yerr=errs, color=colour, marker="o", ms=5, capsize=4, lw=1.5,
                        label=f"{name} (reward model {m['reward_model_seconds']:.3g} s)")
            finals = [j for j, p in enumerate(curve) if p["final"]]
            if finals:
                ax.plot([xs[finals[-1]]], [ys[finals[-1]]], marker="*", ms=15, color=colour, ls="none")
            best = m["best"]
            if m["method"] in ("diffusion-dpo", "spo") and best is not None:
                level = best.get("delta") if paired else best["value"]
                if level is not None:
                    ax.axhline(level, color=colour, lw=0.8, ls="-.", alpha=0.6)
        ax.set_xlabel("training device-seconds: " + ("reward model + optimisation" if x_key == "device_seconds"
                                                     else f"optimisation + reward model / {runs}"), fontsize=11)
        ax.set_title(title, fontsize=11)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3)
    metric = report["metric_key"] or report["metric"]
    axes[0].set_ylabel(f"Δ {metric} vs base (paired, 95% t)" if paired else f"{metric} ({report['benchmark']})", fontsize=11)
    axes[0].legend(fontsize=9, loc="best")
    fig.suptitle("quality vs training cost · ○ start (reward model trained) · ★ final · -. best of the baselines", fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=105)
    plt.close(fig)
    return buffer.getvalue()


def _efficiency(doc: ReportDoc, report: dict[str, Any], out_dir: Path) -> None:
    doc.heading(2, f"Efficiency: {report['metric_key'] or report['metric']} on {report['benchmark']} against training device-seconds")
    if not report["methods"]:
        doc.skip(f"no trained checkpoints with a training cost for {report['metric']} on {report['benchmark']}")
        doc.bullets(report["notes"])
        return
    png = quality_cost_figure(report)
    if png is not None:
        atomic_write_bytes(out_dir / PLOT_NAME, png)
        doc.image(png, "quality against training device-seconds", PLOT_NAME)
    doc.para(report["curve_y"]["note"] + ".", "note")
    doc.heading(3, "Quality against training device-seconds")
    doc.table(*curve_table(report))
    doc.heading(3, "Compute to reach a fraction of each method's own best gain")
    doc.table(*fraction_table(report))
    doc.heading(3, "Device-seconds to reach a target")
    doc.table(*reach_table(report))
    doc.heading(3, "Training cost: reward model in full and amortised, pair data")
    doc.table(*cost_table(report))
    doc.heading(3, "Published training cost (reported)")
    doc.table(*reported_table(report))
    doc.bullets(efficiency_notes(report))


def _guided(doc: ReportDoc, bench: Path, notes: list[str]) -> None:
    doc.heading(2, "LRM-guided sampling")
    folder = bench / "guided"
    files = sorted(folder.glob("*.json"), key=lambda p: _model_order(p.stem)) if folder.is_dir() else []
    if not files:
        doc.skip(f"no guided-sampling results in {folder} (run `lpo world guided-eval`, or set guided_prompts > 0)")
        return
    rows, protocols = [], []
    for path in files:
        data = read_json_noted(path, notes)
        if not isinstance(data, dict) or "methods" not in data:
            continue
        methods, diffs = data["methods"], data.get("differences", {})
        plain_calls = (methods.get("plain") or {}).get("unet_calls_per_image")
        # the sampling methods in lpo.world.guided_eval's order (the JSON's keys are sorted)
        order = list(GUIDED_LABELS)
        for method, row in sorted(methods.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])):
            delta = diffs.get(f"{method} - plain", {}).get("utility") if method != "plain" else None
            calls = row.get("unet_calls_per_image")
            lrm = row.get("lrm_calls_per_image", 0.0)
            rows.append([
                path.stem,
                GUIDED_LABELS.get(method, method),
                fmt_interval(row.get("utility"), row.get("utility_se")),
                "—" if method == "plain" else (fmt_interval(delta["mean"], delta["se"], signed=True) if delta else "—"),
                fmt_interval(row.get("alignment"), row.get("alignment_se")),
                "—" if calls is None else f"{calls:g}",
                "—" if calls is None or not plain_calls else f"{calls / plain_calls:g}×",
                f"{lrm:g}" if "judge_calls_per_image" not in row else f"0 ({row['judge_calls_per_image']:g} judge)",
            ])
        step_vs_final = diffs.get("guided-best - best-of-k-lrm", {}).get("utility")
        p = data.get("protocol", {})
        protocols.append(
            f"{path.stem}: {data.get('n_prompts')} {p.get('split')} prompts × {p.get('seeds_per_prompt')} seeds, "
            f"K = {p.get('num_candidates')}, DDIM {p.get('num_inference_steps')} η = {p.get('eta')}, CFG {p.get('guidance_scale')}, "
            f"LRM {data.get('lrm')}"
            + ("" if step_vs_final is None else f"; guided-best − best-of-K final: {fmt_interval(step_vs_final['mean'], step_vs_final['se'], True)}")
        )
    if not rows:
        doc.skip(f"no readable guided-sampling results in {folder}")
        return
    doc.table(["model", "sampling", "utility", "Δ utility vs plain", "alignment", "U-Net calls / image", "vs plain",
               "LRM calls / image"], rows)
    doc.bullets(protocols + [
        "± = standard error over prompts; Δ paired on identical prompts and seeds; a CFG pair counts as one U-Net call; "
        "the oracle row reads the hidden true utility (a ceiling, not a method)."
    ])


def _samples(doc: ReportDoc, bench: Path) -> None:
    doc.heading(2, "Samples (same prompts and seeds for every model)")
    folder = bench / "samples"
    grids = sorted(folder.glob("*.png"), key=lambda p: _model_order(p.stem)) if folder.is_dir() else []
    if not grids:
        doc.skip(f"no sample grids in {folder}")
        return
    figures = []
    for path in grids:
        png = path.read_bytes()
        figures.append(
            f"<figure><figcaption>{html.escape(path.stem)}</figcaption>"
            f"<img alt='{html.escape(path.stem)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'></figure>"
        )
        doc.md += [f"**{path.stem}**", "", f"![{path.stem}](../samples/{path.name})", ""]
    doc.html.append("<div class='grids'>" + "".join(figures) + "</div>")


def _ablations(doc: ReportDoc, bench: Path, notes: list[str]) -> None:
    from lpo.evals.leaderboard import build_tables, render_html, render_markdown

    doc.heading(2, "Ablations")
    folder = bench / "ablations"
    entries = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not entries:
        doc.skip(f"no ablations in {folder}")
        return
    for entry in entries:
        meta = read_json_noted(entry / "ablation.json", notes) if (entry / "ablation.json").is_file() else None
        meta = meta if isinstance(meta, dict) else {}
        doc.heading(3, f"Ablation: {meta.get('name') or entry.name}")
        if meta.get("description"):
            doc.para(str(meta["description"]))
        variants = meta.get("variants") or []
        if variants:
            doc.table(["variant", "overrides"], [[str(v.get("label")), " ".join(map(str, v.get("overrides") or [])) or "(defaults)"] for v in variants])
        records = _load_records(entry / "results")
        if not records:
            doc.skip(f"no result records in {entry / 'results'}")
            continue
        tables = build_tables(records)
        doc.md += render_markdown(tables, title=None, level=3).splitlines() + [""]
        doc.html.append(render_html(tables, fragment=True, level=3))


def _config(doc: ReportDoc, summary: dict[str, Any] | None, bench: Path) -> None:
    doc.heading(2, "Bench config and stage timings")
    if summary is None:
        doc.skip(f"no {bench / 'bench.json'}")
        return
    stages = summary.get("stages") or {}
    if stages:
        rows = []
        for name, timing in stages.items():
            timing = timing if isinstance(timing, dict) else {"seconds": timing}
            seconds = timing.get("seconds")
            extra = ", ".join(f"{k}={v}" for k, v in timing.items() if k != "seconds")
            rows.append([name, "—" if seconds is None else f"{float(seconds):.1f}", extra])
        doc.table(["stage", "wall seconds", ""], rows)
        # Not summed: stages nest (the per-checkpoint evaluations run inside the evaluate stage).
        doc.bullets([
            "wall seconds of each bench stage (skipped = done by an earlier invocation, with that one's time); stages "
            "may nest, so they are not summed."
        ])
    doc.code(json.dumps(summary.get("config", {}), indent=2, sort_keys=True), "json")
    meta = summary.get("meta") or {}
    if meta:
        doc.heading(3, "Environment")
        doc.code(json.dumps(meta, indent=2, sort_keys=True, default=str), "json")


# --------------------------------------------------------------------------- entry point


def render_report(bench_dir: str | Path, *, benchmark: str = "world", metric: str = "world_utility",
                  amortise_runs: int = DEFAULT_AMORTISE_RUNS) -> dict[str, Path]:
    """Write BENCH/report/{index.html, summary.md, efficiency.json, quality_vs_cost.png}; their paths.

    ``benchmark`` / ``metric``: the score of the efficiency view and its verdicts (the
    world's hidden true utility on its test split by default). ``amortise_runs``: the policy
    runs one reward model and one pair set serve in the efficiency view's amortised columns.
    """
    bench = Path(bench_dir)
    if not bench.is_dir():
        raise LpoError(f"bench folder {bench} does not exist; run `lpo bench` first or pass the folder it wrote")
    out_dir = bench / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    summary = read_json_noted(bench / "bench.json", notes) if (bench / "bench.json").is_file() else None
    summary = summary if isinstance(summary, dict) else None
    results_dir = bench / "results"
    records = _load_records(results_dir)
    seed0 = [r for r in records if seed_index(r) == 0]
    data_cost, data_notes = read_data_cost(bench)
    efficiency = efficiency_report(seed0, benchmark, metric, results_dir if results_dir.is_dir() else None,
                                   data_cost=data_cost, amortise_runs=amortise_runs)
    efficiency["notes"] += data_notes
    preset = ((summary or {}).get("config") or {}).get("preset")
    answers = [headline(records, results_dir, b, metric, preset) for b in (benchmark, f"{benchmark}-heldout")
               if b == benchmark or any(r.benchmark == b for r in records)]

    doc = ReportDoc()
    doc.heading(1, f"lpo bench report: {bench.name}")
    doc.para(
        f"bench folder {bench.resolve()}" + (f" · preset {preset}" if preset else "")
        + f" · efficiency score {efficiency['metric_key'] or metric} on {benchmark}",
        "note",
    )
    _headline(doc, answers)
    _power(doc, answers[0])
    _verdicts(doc, efficiency)
    _leaderboard(doc, records, results_dir)
    _efficiency(doc, efficiency, out_dir)
    reward_eval_section(doc, bench, notes)
    _guided(doc, bench, notes)
    _samples(doc, bench)
    _ablations(doc, bench, notes)
    _config(doc, summary, bench)
    if notes:
        doc.heading(2, "Notes")
        doc.bullets(notes)

    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>lpo bench report: {html.escape(bench.name)}</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(doc.html) + "\n</body></html>\n"
    )
    paths = {
        "html": out_dir / HTML_NAME,
        "markdown": out_dir / MARKDOWN_NAME,
        "efficiency": out_dir / EFFICIENCY_NAME,
        "paired": out_dir / PAIRED_NAME,
    }
    atomic_write_text(paths["html"], page)
    atomic_write_text(paths["markdown"], "\n".join(doc.md).rstrip() + "\n")
    atomic_write_json(paths["efficiency"], efficiency)
    atomic_write_json(paths["paired"], {"benchmarks": answers, "console": [line for a in answers for line in console_lines(a)]})
    if (out_dir / PLOT_NAME).is_file() and efficiency["methods"]:
        paths["plot"] = out_dir / PLOT_NAME
    return paths
