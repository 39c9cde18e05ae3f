"""Does lpo's protocol reproduce a published row? (``lpo doctor --published-row NAME``)

A published row (:mod:`lpo.evals.reported`, SPEC §7) was measured by its authors with their
scorer code. When lpo's metrics are the published ones (comparability ``published``), the
same checkpoint evaluated under the same protocol should land on the row up to sampling
noise. :func:`compare_with_published` puts each measured record beside its published value:
a metric reproduces when |measured − published| ≤ the measured 95% half-width over prompts
plus 1% of the published value (the rounding and seed differences of a second run).
:func:`check_published_row` runs the evaluation itself: the registry checkpoint that the
paper evaluated (``published_as``), on the row's benchmark, DDIM 20 steps at the
checkpoint's own CFG, one image per prompt, with the row's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from lpo.core.errors import LpoError

REL_TOLERANCE = 0.01


@dataclass(frozen=True)
class RowCheck:
    metric: str
    published: float
    measured: float | None
    half_width: float | None
    reproduces: bool | None  # None: not measured

    @property
    def delta(self) -> float | None:
        return None if self.measured is None else self.measured - self.published


def compare_with_published(records: Sequence[Any], row: Any, rel_tolerance: float = REL_TOLERANCE) -> list[RowCheck]:
    """One :class:`RowCheck` per metric of ``row`` (a ReportedRow), from result records of one evaluation."""
    by_metric = {r.metric: r for r in records}
    checks = []
    for metric, published in row.values.items():
        record = by_metric.get(metric)
        if record is None:
            checks.append(RowCheck(metric, published, None, None, None))
            continue
        half = (record.ci95[1] - record.ci95[0]) / 2 if record.ci95 is not None else 0.0
        allowed = half + rel_tolerance * abs(published)
        checks.append(RowCheck(metric, published, record.value, half, abs(record.value - published) <= allowed))
    return checks


def published_checkpoint(model: str) -> tuple[Any, str]:
    """(the published row named ``model``, the registry checkpoint the paper evaluated for it)."""
    from lpo.evals.checkpoint_registry import load_registry
    from lpo.evals.reported import REPORTED

    rows = [r for r in REPORTED if r.model == model and r.values]
    if not rows:
        names = sorted({r.model for r in REPORTED if r.values})
        raise LpoError(f"no published row named {model!r}; use one of: {', '.join(names)}")
    entry = next((e for e in load_registry().values() if e.published_as == model), None)
    if entry is None:
        raise LpoError(f"no registry checkpoint is published as {model!r}; add one with published_as in a --registry file")
    return rows[0], entry.name


def check_published_row(model: str, *, device: str = "auto", dtype: str = "fp16", metric_dtype: str = "fp32",
                        max_prompts: int | None = None, results_dir: Any = None, console: Any = None) -> list[RowCheck]:
    """Evaluate the checkpoint behind published row ``model`` (e.g. "SD1.5") under its protocol and compare."""
    from lpo.evals.harness import EvalConfig, run_eval
    from lpo.evals.protocol import EvalProtocol

    row, checkpoint = published_checkpoint(model)
    config = EvalConfig(checkpoint=checkpoint, benchmark=row.benchmark, metrics=tuple(row.values),
                        max_prompts=max_prompts, protocol=EvalProtocol(steps=20, dtype=dtype, images_per_prompt=1),
                        metric_dtype=metric_dtype, device=device, results_dir=results_dir)
    output = run_eval(config, console=console)
    return compare_with_published(output.records, row)
