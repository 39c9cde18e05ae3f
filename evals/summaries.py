"""One metric's score grid -> a result record's value, interval and per-category breakdown.

The prompt is the unit (:mod:`lpo.evals.statistics`); a benchmark whose official overall
is the mean of its categories (GenEval) says ``overall = "category_mean"``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from lpo.evals.store import summary_fields

AGGREGATIONS = ("prompt_mean", "category_mean")


def aggregation_of(benchmark) -> str:
    """How the benchmark's overall score is formed: ``prompt_mean`` (the mean over prompts of
    each prompt's mean) unless the benchmark says ``overall = "category_mean"`` (GenEval)."""
    overall = getattr(benchmark, "overall", None) or "prompt_mean"
    if overall not in AGGREGATIONS:
        raise ValueError(f"benchmark {benchmark.name} has overall={overall!r}; known: {', '.join(AGGREGATIONS)}")
    return overall


def summarise(
    grid: Sequence[Sequence[float]], categories: Sequence[str] | None, aggregation: str = "prompt_mean", n_images: int | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """(value / stderr / ci95 / n fields, per-category breakdown or None) of a score grid.

    ``prompt_mean``: the prompt is the unit (:func:`lpo.evals.statistics.prompt_unit_summary`).
    ``category_mean``: the unweighted mean of the category values
    (:func:`lpo.evals.metrics.geneval_rules.overall_score`); categories hold disjoint
    prompts, so its standard error is sqrt(Σ se_c²) / C. ``n_images`` overrides the image
    count (a set metric's grid holds one value per prompt).
    """
    from lpo.evals.statistics import prompt_unit_summary

    breakdown = None
    if categories is not None:
        breakdown = []  # a list keeps the benchmark's category order through JSON
        for category in dict.fromkeys(categories):
            rows = [grid[i] for i, c in enumerate(categories) if c == category]
            entry = {"category": category, **summary_fields(prompt_unit_summary(rows))}
            if n_images is not None:
                entry["n_images"] = n_images * len(rows) // len(grid)
            breakdown.append(entry)
    overall = summary_fields(prompt_unit_summary(grid))
    if aggregation == "category_mean":
        if breakdown is None:
            raise ValueError("category_mean needs the prompts' categories")
        from lpo.evals.metrics.geneval_rules import overall_score

        value = overall_score({e["category"]: e["value"] for e in breakdown})
        ses = [e["stderr"] for e in breakdown]
        stderr = math.sqrt(sum(s * s for s in ses)) / len(ses) if all(s is not None for s in ses) else None
        overall = {
            **overall,
            "value": value,
            "stderr": stderr,
            "ci95": (value - 1.96 * stderr, value + 1.96 * stderr) if stderr is not None else None,
        }
    elif aggregation != "prompt_mean":
        raise ValueError(f"unknown aggregation {aggregation!r}; known: {', '.join(AGGREGATIONS)}")
    if n_images is not None:
        overall["n_images"] = n_images
    return overall, breakdown
