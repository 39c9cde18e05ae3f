"""The learning-rate schedule of the step trainers (LPO / SPO): warmup in optimiser steps, decay in rounds.

``optim.warmup_steps`` counts optimiser steps for every trainer, as its help says. Diffusion-DPO
knows its optimiser steps in advance and uses transformers' schedules
(:func:`lpo.trainers.harness.build_lr_schedule`). LPO and SPO do not: a round takes as many
optimiser steps as its kept samples fill, which the threshold decides. So their lr after s
optimiser steps and r of R rounds is

    lr = optim.lr · min(1, s / warmup_steps) · decay(r / R)

with decay 1 (``constant``), 1 − r/R (``linear``) or ½(1 + cos(π r/R)) (``cosine``). The
official LPO and SPO code trains at a constant lr, which every preset here keeps; the
schedule matters only when a user sets warmup or decay.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lpo.trainers.config import OptimConfig


class StepRoundSchedule:
    """Sets the optimiser's lr from the optimiser steps taken and the rounds done.

    ``step()`` after each optimiser update that was taken (what :func:`lpo.trainers.harness.
    accumulated_step` calls); ``end_round()`` after each round. Its state is two counters
    (JSON, checkpointed with the run).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: OptimConfig, rounds: int) -> None:
        self.optimizer = optimizer
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.warmup_steps = int(config.warmup_steps)
        self.decay = config.lr_scheduler
        self.rounds = max(int(rounds), 1)
        self.steps_taken = 0
        self.rounds_done = 0
        self._apply()

    def factor(self) -> float:
        warmup = 1.0 if self.warmup_steps == 0 else min(1.0, self.steps_taken / self.warmup_steps)
        progress = min(1.0, self.rounds_done / self.rounds)
        if self.decay == "linear":
            decay = 1.0 - progress
        elif self.decay == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0
        return warmup * decay

    def _apply(self) -> None:
        factor = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def step(self) -> None:
        self.steps_taken += 1
        self._apply()

    def end_round(self) -> None:
        self.rounds_done += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"steps_taken": self.steps_taken, "rounds_done": self.rounds_done, "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Also reads the per-round LambdaLR state older checkpoints hold (its ``last_epoch`` counted
        rounds); the trainer then sets both counters from its own trainer state (:meth:`restore`)."""
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.rounds_done = int(state.get("rounds_done", state.get("last_epoch", 0)))
        self.steps_taken = int(state.get("steps_taken", 0))
        self._apply()

    def restore(self, steps_taken: int, rounds_done: int) -> None:
        self.steps_taken, self.rounds_done = int(steps_taken), int(rounds_done)
        self._apply()
