"""Summary statistics with the prompt as the unit, shared by every evaluation.

Images of one prompt share it, so a score grid ``x[p][k]`` (prompt ``p``, image ``k``)
is summarised over prompts, not images::

    m_p   = mean_k x[p][k]                   the per-prompt mean
    mean  = mean_p m_p
    se    = SD_p m_p / √n                    (n − 1 in the SD's denominator; NaN for n = 1)
    ci95  = 1.96 · se                        95% half-width, normal approximation

The paired comparison of two checkpoints (Student t over prompt differences) is
:mod:`lpo.evals.paired`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PromptUnitSummary:
    """Mean over prompts of the per-prompt means, its standard error and 95% half-width."""

    mean: float
    stderr: float  # NaN with one prompt
    ci95: float  # 1.96 standard errors (normal approximation)
    n_prompts: int
    n_images: int
    per_prompt: tuple[float, ...]


def prompt_unit_summary(scores_by_prompt) -> PromptUnitSummary:
    """Summarise per-image scores grouped by prompt, with the prompt as the unit.

    Images of one prompt share it, so they are averaged first; the interval is over
    prompts (what a new prompt set would vary), not over images.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in scores_by_prompt]
    if not groups or any(g.size == 0 for g in groups):
        raise ValueError("every prompt needs at least one score")
    per_prompt = np.array([g.mean() for g in groups])
    se = per_prompt.std(ddof=1) / math.sqrt(len(per_prompt)) if len(per_prompt) > 1 else float("nan")
    return PromptUnitSummary(
        mean=float(per_prompt.mean()),
        stderr=float(se),
        ci95=float(1.96 * se),
        n_prompts=len(per_prompt),
        n_images=int(sum(g.size for g in groups)),
        per_prompt=tuple(float(x) for x in per_prompt),
    )
