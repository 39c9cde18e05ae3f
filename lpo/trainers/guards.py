"""The step-level loop's failure checks (LPO / SPO): a broken step reward and a run that trained nothing.

Both end the run with one line (:class:`lpo.core.errors.LpoError`, exit status 2 from the CLI)
before a final model is written:

- the step reward's scores of a round are NaN / inf on some process: before the first
  update the policy is still the base model, so the reward model is broken; later the
  policy may have diverged as well, and the line names both causes;
- the run ends with 0 optimiser steps: no branched step had a winner-loser gap above its
  threshold, so the "trained" model would be the base weights. The line gives the largest
  gap the reward produced and the thresholds to lower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lpo.core.errors import LpoError
from lpo.core.finite import DivergedError, any_process
from lpo.trainers.rollout import softmax_gap


def check_rollout_scores(accelerator: Any, scores: Tensor, where: str, optimizer_steps: int, reward_source: str,
                         lr: float) -> None:
    """Stop when any candidate score of this round is NaN / inf on any process."""
    bad = int((~torch.isfinite(scores)).sum()) if scores.numel() else 0
    if not any_process(accelerator, bad > 0):
        return
    counts = f"{bad} of {scores.numel()} scores on this process" if bad else "scores on another process"
    if optimizer_steps == 0:  # the policy is still the base model: the reward is at fault
        raise DivergedError(
            f"{where}: the step reward {reward_source} gave NaN or inf ({counts}) for the base model's samples; "
            "the reward model is broken: retrain it (lpo lrm train, lower its lr) or set reward.path to another one"
        )
    steps = f"{optimizer_steps} optimiser step{'' if optimizer_steps == 1 else 's'}"
    raise DivergedError(
        f"{where}: the step reward {reward_source} gave NaN or inf ({counts}) after {steps}; "
        f"the policy probably diverged: lower optim.lr (now {lr:g}) and start a new run, or check the reward model "
        "(no final model was written)"
    )


@dataclass
class GapTracker:
    """The largest winner-loser gap p_w − p_l the step reward produced, and how many steps branched."""

    largest: float = float("-inf")
    branched: int = 0

    def update(self, scores: Tensor, branched: int) -> None:
        """``scores``: (N, K) candidate scores of a round (finite: checked before)."""
        self.branched += int(branched)
        if scores.numel():
            gaps = softmax_gap(scores.max(dim=1).values, scores.min(dim=1).values)
            self.largest = max(self.largest, float(gaps.max()))


def check_trained(optimizer_steps: int, rounds: int, gaps: GapTracker, sampler: Any) -> None:
    """Refuse to call a run that took no optimiser step trained (its model would be the base weights)."""
    if optimizer_steps > 0:
        return
    rounds_text = f"{rounds} round{'' if rounds == 1 else 's'}"
    if gaps.branched == 0:
        raise LpoError(
            f"no step was branched in {rounds_text}, so nothing was trained and no model was written; "
            f"sampler.skip_first_steps={sampler.skip_first_steps} and sampler.min_timestep={sampler.min_timestep} "
            "leave no trained step: lower them"
        )
    raise LpoError(
        f"no pairs were kept in {rounds_text} (0 optimiser steps), so nothing was trained and no model was written: "
        f"the step reward's largest winner-loser gap was {gaps.largest:.3g}, never above the thresholds "
        f"sampler.threshold_min={sampler.threshold_min:g} .. sampler.threshold_max={sampler.threshold_max:g}; "
        "lower sampler.threshold_min and sampler.threshold_max (or use a reward model with a wider score spread)"
    )
