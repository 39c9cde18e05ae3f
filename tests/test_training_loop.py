"""lpo.core.training_loop: the one job scaffold every trainer runs in, checked on a toy job
(a linear regression with keyed random batches), and the contract every registered trainer keeps."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lpo.core.errors import LpoError
from lpo.core.runs import RunFolder, list_checkpoints, write_checkpoint
from lpo.core.seeding import Stream, keyed_generator
from lpo.core.training_loop import TrainingLoop


@dataclass
class ToyConfig:
    seed: int = 0
    lr: float = 0.1
    units: int = 6
    log_every: int = 2
    save_every: int = 2
    keep_checkpoints: int = 5


class Interrupted(Exception):
    pass


class ToyLoop(TrainingLoop):
    stage = "optimisation"
    progress_label = "toy"
    unit = "step"
    history_key = "step"
    resume_free = frozenset({"log_every"})

    def __init__(self, config: ToyConfig, run: RunFolder | None, stop_after: int | None = None) -> None:
        from accelerate import Accelerator

        self.config, self.run, self.stop_after = config, run, stop_after
        self.accelerator = Accelerator(cpu=True)
        self.progress_calls: list[tuple] = []
        self.progress = lambda *args: self.progress_calls.append(args)
        self.lines: list[str] = []
        self.log = self.lines.append
        self.units_run: list[int] = []

    @property
    def schedule(self) -> tuple[int, int, int]:
        return self.config.log_every, self.config.save_every, self.config.keep_checkpoints

    def data_fingerprint(self) -> str:
        return "toy-data"

    def setup(self) -> int:
        torch.manual_seed(1)
        model = nn.Linear(3, 1)
        self.model, self.optimizer = self.accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=self.config.lr))
        return self.config.units

    def run_unit(self, index: int, log_due: bool) -> dict[str, Any] | None:
        if self.stop_after is not None and index == self.stop_after:
            raise Interrupted
        self.units_run.append(index)
        x = torch.randn(8, 3, generator=keyed_generator(self.config.seed, Stream.REWARD_STEP, index))
        loss = ((self.model(x).squeeze(-1) - x.sum(-1)) ** 2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"step": index + 1, "loss": float(loss.detach())}

    def save_checkpoint(self, done: int, state: dict[str, Any]) -> Path:
        return write_checkpoint(self.accelerator, self.run, done, None, state, self.config.keep_checkpoints)

    def finish(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.model.parameters()])


def test_units_logs_and_checkpoints_follow_the_schedule(tmp_path):
    config = ToyConfig(units=5, log_every=2, save_every=2)
    loop = ToyLoop(config, RunFolder.create(config, folder=tmp_path / "run"))
    loop.train()
    assert loop.units_run == [0, 1, 2, 3, 4]
    # every unit returns a row; the trackers, metrics.jsonl and the log lines see every 2nd and the last
    assert [row["step"] for row in loop.history] == [1, 2, 3, 4, 5]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in metrics] == [1, 2, 3, 4, 5]  # rewritten whole at each logged unit
    assert [line.split(":")[0] for line in loop.lines] == ["step 2/5", "step 4/5", "step 5/5"]
    assert [c[1:3] for c in loop.progress_calls] == [(d, 5) for d in range(1, 6)]
    # checkpoints at 2 and 4, never at the last unit (the final model is finish's)
    assert [step for step, _ in list_checkpoints(loop.run)] == [2, 4]
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and [row["step"] for row in state["history"]] == [1, 2, 3, 4]
    assert state["data_fingerprint"] == "toy-data" and state["config"]["units"] == 5
    assert state["cost"]["seconds"]["optimisation"] > 0


def test_an_interrupted_job_resumes_to_the_uninterrupted_result(tmp_path):
    config = ToyConfig(units=6, save_every=2)
    straight = ToyLoop(config, RunFolder.create(config, folder=tmp_path / "straight")).train()

    run = RunFolder.create(config, folder=tmp_path / "cut")
    with pytest.raises(Interrupted):
        ToyLoop(config, run, stop_after=5).train()  # dies in unit 5, after the checkpoint of 4
    # log_every is bookkeeping: it may change on resume
    resumed_loop = ToyLoop(replace(config, log_every=3), RunFolder.open(tmp_path / "cut"))
    resumed = resumed_loop.train(resume=True)
    assert resumed_loop.units_run == [4, 5] and resumed_loop.resumed_from == 4
    assert torch.equal(resumed, straight)  # weights, optimiser state and keyed batches all restored
    assert [row["step"] for row in resumed_loop.history] == [1, 2, 3, 4, 5, 6]
    assert any(line.startswith("resumed from") and line.endswith("after step 4") for line in resumed_loop.lines)


def test_resume_refuses_another_config_or_other_data_in_one_line(tmp_path):
    config = ToyConfig(units=4, save_every=2)
    run = RunFolder.create(config, folder=tmp_path / "run")
    with pytest.raises(Interrupted):
        ToyLoop(config, run, stop_after=3).train()
    with pytest.raises(LpoError, match=r"the config differs from the checkpoint's \(lr: 0.1 -> 0.2\)"):
        ToyLoop(replace(config, lr=0.2), RunFolder.open(tmp_path / "run")).train(resume=True)

    class OtherData(ToyLoop):
        def data_fingerprint(self) -> str:
            return "other"

    with pytest.raises(LpoError, match="it was trained on other data"):
        OtherData(config, RunFolder.open(tmp_path / "run")).train(resume=True)


def test_resume_without_a_run_folder_is_refused():
    with pytest.raises(LpoError, match="resume needs the run folder"):
        ToyLoop(ToyConfig(), None).train(resume=True)


# --------------------------------------------------------------------------- every registered trainer


def _trainer_names() -> list[str]:
    from lpo.trainers import TRAINERS

    return list(TRAINERS.names())


@pytest.mark.parametrize("name", _trainer_names())
def test_every_registered_trainer_keeps_the_trainer_contract(name):
    """A new trainer gets these checks by being registered: it runs in the shared scaffold,
    declares what the job hands it, and has presets for its config class."""
    import inspect

    from lpo.trainers import TRAINERS
    from lpo.trainers.policy_trainer import PolicyTrainer
    from lpo.trainers.presets import PRESET_METHOD, trainer_preset

    cls = TRAINERS.get(name)
    assert issubclass(cls, PolicyTrainer) and not inspect.isabstract(cls)
    assert cls.method == name
    assert cls.needs in ("step_reward", "pairs")
    if cls.needs == "step_reward":
        assert cls.reward_kind in ("lrm", "pixel")
    assert cls.unit in ("round", "step") and cls.history_key
    presets = [preset for preset, method in PRESET_METHOD.items() if method == name]
    assert presets, f"{name} has no preset"
    for preset in presets:
        config = trainer_preset(preset, name)
        assert isinstance(config, cls.config_class) and config.method == name
