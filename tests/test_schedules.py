"""lpo.trainers.schedules: LPO/SPO's lr counts optimiser steps for warmup and rounds for decay."""

from __future__ import annotations

import math

import pytest
import torch

from lpo.trainers.config import OptimConfig
from lpo.trainers.schedules import StepRoundSchedule


def _schedule(lr_scheduler: str = "constant", warmup: int = 0, rounds: int = 4) -> tuple[torch.optim.Optimizer, StepRoundSchedule]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    return optimizer, StepRoundSchedule(optimizer, OptimConfig(lr=0.5, lr_scheduler=lr_scheduler, warmup_steps=warmup), rounds)


def test_constant_without_warmup_is_the_lr_exactly():
    optimizer, schedule = _schedule()
    for _ in range(3):
        schedule.step()
        schedule.end_round()
        assert optimizer.param_groups[0]["lr"] == 0.5


def test_warmup_counts_optimiser_steps_not_rounds():
    optimizer, schedule = _schedule(warmup=4)
    assert optimizer.param_groups[0]["lr"] == 0.0  # transformers' convention: step 0 of a warmup is lr 0
    schedule.step()
    schedule.step()  # two optimiser steps in the first round
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
    schedule.end_round()  # a round without steps does not warm up
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
    for _ in range(5):
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5)


@pytest.mark.parametrize(("name", "expected"), [("linear", [1.0, 0.75, 0.5, 0.25, 0.0]),
                                                ("cosine", [0.5 * (1 + math.cos(math.pi * r / 4)) for r in range(5)])])
def test_decay_follows_the_rounds(name, expected):
    optimizer, schedule = _schedule(name, rounds=4)
    seen = [optimizer.param_groups[0]["lr"] / 0.5]
    for _ in range(4):
        schedule.step()
        schedule.step()  # optimiser steps within a round do not decay
        schedule.end_round()
        seen.append(optimizer.param_groups[0]["lr"] / 0.5)
    assert seen == pytest.approx(expected)


def test_state_round_trips_and_old_per_round_states_load():
    optimizer, schedule = _schedule("linear", warmup=10, rounds=8)
    for _ in range(3):
        schedule.step()
    schedule.end_round()
    other_optimizer, other = _schedule("linear", warmup=10, rounds=8)
    other.load_state_dict(schedule.state_dict())
    assert other_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    # a checkpoint written before this schedule held a LambdaLR's state, counting rounds
    old_optimizer, old = _schedule("linear", warmup=10, rounds=8)
    old.load_state_dict({"base_lrs": [0.5], "last_epoch": 1, "lr_lambdas": [{}], "_step_count": 2})
    old.restore(3, 1)  # the trainer state's optimiser steps and rounds
    assert old_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
