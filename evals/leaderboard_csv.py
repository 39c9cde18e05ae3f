"""The leaderboard as long CSV: one line per (row, metric, category) cell, the metric
version in its own column, so nothing can mix; published rows marked ``reported``.

A row's paired Δ vs the base model (:func:`lpo.evals.leaderboard.attach_deltas`) is on
the overall line of the Δ's metric: ``delta_vs_base`` with its 95% interval, prompt count
and method (:data:`lpo.evals.paired.INTERVAL_METHOD`).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Sequence

from lpo.evals.reported import REPORTED
from lpo.evals.signals import describe as describe_signals

CSV_FIELDS = (
    "source", "benchmark", "benchmark_version", "prompt_set_hash", "checkpoint", "checkpoint_hash", "method",
    "base_model", "run_id", "protocol", "metric", "metric_version", "category", "value", "stderr", "ci95_low",
    "ci95_high", "n_prompts", "n_images", "training_device_hours", "record_id", "reference", "aggregation",
    "mark", "training_signals", "delta_vs_base", "delta_ci95_low", "delta_ci95_high", "delta_n_prompts", "delta_method",
)


def _delta_csv(table: Any, row: Any, key: str) -> dict[str, Any]:
    """The row's paired Δ vs the base model, on the line of the Δ's metric only."""
    d = table.deltas.get(row.key) if key == table.delta_metric else None
    if d is None:
        return {}
    ci = d.ci95
    return {"delta_vs_base": d.mean, "delta_ci95_low": "" if ci is None else ci[0],
            "delta_ci95_high": "" if ci is None else ci[1], "delta_n_prompts": d.n_prompts, "delta_method": d.method}


def render_csv(tables: Sequence[Any], reported: Sequence[str] = ()) -> str:
    """Long CSV of ``tables`` (:class:`lpo.evals.leaderboard.Table`) and the published rows of ``reported``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        for row in table.sorted_rows():
            for column in table.columns.values():
                record = row.cells.get(column.key)
                if record is None:
                    continue
                base = {
                    "source": "measured",
                    "benchmark": table.benchmark,
                    "benchmark_version": table.benchmark_version,
                    "prompt_set_hash": table.prompt_set_hash,
                    "checkpoint": row.label,
                    "checkpoint_hash": row.checkpoint_hash,
                    "method": row.method,
                    "base_model": row.base_model or "",
                    "run_id": row.run_id or "",
                    "protocol": json.dumps(row.protocol, sort_keys=True),
                    "metric": column.metric,
                    "metric_version": column.version,
                    "training_device_hours": json.dumps(row.training_hours(), sort_keys=True) if row.training_cost else "",
                    "record_id": record.record_id,
                    "aggregation": record.aggregation or "prompt_mean",
                    "mark": row.mark(column) or "",
                    "training_signals": describe_signals(row.training_signals),
                    **_delta_csv(table, row, column.key),
                }
                writer.writerow({**base, **_summary_csv(record.__dict__), "category": ""})
                overall = {k: v for k, v in base.items() if not k.startswith("delta_")}
                for entry in record.breakdown or []:
                    writer.writerow({**overall, **_summary_csv(entry), "category": entry["category"]})
    for r in REPORTED:
        if r.benchmark in reported:
            cells = [(metric, "", value) for metric, value in r.values.items()]
            cells += [(metric, category, value) for metric, by in r.categories.items() for category, value in by.items()]
            for metric, category, value in cells:
                writer.writerow(
                    {
                        "source": "reported",
                        "benchmark": r.benchmark,
                        "checkpoint": r.model,
                        "method": r.method,
                        "base_model": r.base_model,
                        "protocol": r.protocol,
                        "metric": metric,
                        "metric_version": "reported",
                        "category": category,
                        "value": value,
                        "training_device_hours": json.dumps({"A100": r.total_a100_hours}) if r.a100_hours else "",
                        "reference": r.source,
                    }
                )
    return buffer.getvalue()


def _summary_csv(summary: dict[str, Any]) -> dict[str, Any]:
    ci = summary.get("ci95")
    return {
        "value": summary["value"],
        "stderr": "" if summary.get("stderr") is None else summary["stderr"],
        "ci95_low": "" if ci is None else ci[0],
        "ci95_high": "" if ci is None else ci[1],
        "n_prompts": summary["n_prompts"],
        "n_images": summary["n_images"],
    }
