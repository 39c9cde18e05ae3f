"""The published rows (SPEC §7, :mod:`lpo.evals.reported`) as tables beside lpo's own: the
cells of a "published" column and the "reported" tables of the leaderboard and the report."""

from __future__ import annotations

from typing import Sequence

from lpo.evals.reported import ReportedRow, reported_rows


def published_value(values: dict[str, float] | None, key: str) -> str:
    return f"{values[key]:g}" if values and key in values else "—"


def reported_tables(benchmark: str, metric_order: Sequence[str] = ()) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the published rows: one table of overall values, one per
    metric with per-category values; measured metrics' order first."""
    published = reported_rows(benchmark)
    if not published:
        return []
    metrics: list[str] = [m for m in metric_order if any(m in r.values for r in published)]
    for r in published:
        metrics += [m for m in r.values if m not in metrics]
    out = []

    def cost(r: ReportedRow) -> str:
        return "—" if r.a100_hours is None else f"{r.a100_hours[0]:g} + {r.a100_hours[1]:g} = {r.total_a100_hours:g}"

    head = ["model (reported)", "method", "base model"]
    if metrics:
        rows = [[r.model, r.method, r.base_model] + [published_value(r.values, m) for m in metrics] + [cost(r)] for r in published]
        out.append((f"{benchmark}: reported (published, not measured here)", head + metrics + ["A100-hours (RM + opt)"], rows))
    by_metric: list[str] = []
    for r in published:
        by_metric += [m for m in r.categories if m not in by_metric]
    for metric in by_metric:
        categories: list[str] = []
        for r in published:
            categories += [c for c in r.categories.get(metric, {}) if c not in categories]
        rows = [[r.model, r.method, r.base_model] + [published_value(r.categories.get(metric), c) for c in categories] + [cost(r)]
                for r in published]
        out.append((f"{benchmark}: {metric} by category, reported (published, not measured here)",
                    head + categories + ["A100-hours (RM + opt)"], rows))
    return out


def reported_notes(benchmark: str) -> list[str]:
    rows = reported_rows(benchmark)
    notes = [f"source: {s}" for s in sorted({f"{r.source}; {r.protocol}" for r in rows})]
    examples = [f"{r.model} {metric}: {note}" for r in rows for metric, note in r.notes.items()]
    if examples:
        notes.append(f"values in lpo's units (e.g. {examples[0]})")
    return notes
