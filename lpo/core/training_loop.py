"""The scaffold every training job runs in: meter, resume, the unit loop, logs, checkpoints.

LPO / SPO (rounds), Diffusion-DPO (optimiser steps) and reward-model training (optimiser
steps) differ only in what one unit of work is, what they save and what they return. The
rest is here, once:

- the device meter: the whole job (setup, units, the final save) is booked to the
  trainer's stage, on top of the cost an interrupted run had reached;
- resume: the newest complete checkpoint is loaded into the accelerator (weights,
  optimiser, lr schedule, RNG states) after its config (bookkeeping fields aside), its
  trainer-state version and its data were checked against this run;
- the loop: ``run_unit(i)`` for every unit not done yet; every ``log_every`` units (and
  at the last) the newest history row goes to the trackers, ``metrics.jsonl``, the cost
  record and one log line; every ``save_every`` units (not at the last: the final model
  is saved by ``finish``) a checkpoint whose trainer state holds everything resume needs.

A subclass supplies the hooks below; its unit must draw its random numbers from keyed
streams (:mod:`lpo.core.seeding`), so a resumed run gives the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

from lpo.core.checkpoint_state import load_checkpoint_state
from lpo.core.config import config_to_dict
from lpo.core.errors import LpoError
from lpo.core.io import atomic_write_text
from lpo.core.runs import TRAINER_STATE_NAME, DeviceMeter, RunFolder, config_changes, list_checkpoints

TRAINER_STATE_VERSION = 1
METRICS_NAME = "metrics.jsonl"

ProgressFn = Callable[[str, int, int, float], None]  # (stage, done, total, loss), as lpo.core.progress.stage_progress


def write_metrics(run: RunFolder, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: one JSON row per logged unit, rewritten whole (atomic)."""
    atomic_write_text(run.path / METRICS_NAME, "".join(json.dumps(row, sort_keys=True) + "\n" for row in history))


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.json``; a damaged one is a one-line error."""
    path = Path(folder) / TRAINER_STATE_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LpoError(f"could not read {path} ({type(err).__name__}: {err}); the checkpoint is damaged") from err


def load_newest_checkpoint(
    accelerator: Any, run: RunFolder, config: Any, resume_free: Iterable[str],
    check_data: Callable[[dict[str, Any], Path], None],
) -> dict[str, Any] | None:
    """Load ``run``'s newest checkpoint into the accelerator and return its trainer state
    (with ``folder`` added); None when there is none.

    Refused in one line: another trainer-state version, a config that differs outside
    ``resume_free``, or data ``check_data(saved, folder)`` rejects.
    """
    checkpoints = list_checkpoints(run)
    if not checkpoints:
        return None
    _, folder = checkpoints[-1]
    saved = read_trainer_state(folder)
    if saved.get("version") != TRAINER_STATE_VERSION:
        raise LpoError(f"{folder} has trainer-state version {saved.get('version')}; this lpo reads {TRAINER_STATE_VERSION}")
    changes = config_changes(saved.get("config", {}), config_to_dict(config), resume_free,
                             getattr(config, "ADDED_DEFAULTS", None))
    if changes:
        raise LpoError(
            f"cannot resume {folder}: the config differs from the checkpoint's ({'; '.join(changes)}); "
            "resume with the same settings or start a new run"
        )
    check_data(saved, folder)
    load_checkpoint_state(accelerator, folder / "state")
    saved["folder"] = str(folder)
    return saved


class TrainingLoop(ABC):
    """One training job: subclasses supply the unit of work, the trainer's own state and its ends.

    Set by the subclass before :meth:`train`: ``config``, ``accelerator``, ``run`` (None:
    in memory, no checkpoints), ``progress``, ``log``; by ``setup``: ``run_plan``. Available to the hooks during
    :meth:`train`: ``meter``, ``history`` (the logged rows), ``fingerprint`` (the data's), ``say``
    (main process only).
    """

    stage: ClassVar[str]  # the device-meter stage the job is booked to
    progress_label: ClassVar[str]  # the progress bar's name
    unit: ClassVar[str]  # "round" or "step": one call of run_unit
    history_key: ClassVar[str]  # the history row field holding the units done
    resume_free: ClassVar[frozenset[str]]  # config fields that may change between a run and its resume

    config: Any
    accelerator: Any
    run: RunFolder | None
    run_plan: Any = None  # set by setup
    progress: ProgressFn | None = None
    log: Callable[[str], None] | None = None

    # ----------------------------------------------------------------- hooks

    @abstractmethod
    def setup(self) -> int:
        """Data, plan, optimiser, accelerate: everything before the first unit. Returns the units to run."""

    @abstractmethod
    def run_unit(self, index: int, log_due: bool) -> dict[str, Any] | None:
        """Unit ``index`` (0-based); a history row when one is due. ``log_due``: this unit's row is
        logged (every log_every units and the last); a trainer that logs windows returns one then."""

    @abstractmethod
    def save_checkpoint(self, done: int, state: dict[str, Any]) -> Path:
        """Write ``checkpoints/step-N`` for ``done`` units with ``state`` as its trainer state."""

    @abstractmethod
    def finish(self) -> Any:
        """After the last unit: check, save the final model and the result; the job's return value."""

    @abstractmethod
    def data_fingerprint(self) -> str:
        """A hash of the training data: a checkpoint of other data is not resumed. Called once per
        job, after ``setup`` (it may read all the pairs); :attr:`fingerprint` holds it."""

    @property
    @abstractmethod
    def schedule(self) -> tuple[int, int, int]:
        """(log_every, save_every, keep_checkpoints) from the config."""

    def check_saved_data(self, saved: dict[str, Any], folder: Path) -> None:
        if saved.get("data_fingerprint") != self.fingerprint:
            raise LpoError(
                f"cannot resume {folder}: it was trained on other data (fingerprint {saved.get('data_fingerprint')}, "
                f"now {self.fingerprint}); pass the same prompts or pairs"
            )

    def state_fields(self, done: int) -> dict[str, Any]:
        """The trainer's own fields of the trainer state (besides step, config, plan, data, history, cost)."""
        return {}

    def restore(self, saved: dict[str, Any], done: int) -> None:
        """Take the trainer's own fields back from a checkpoint's trainer state."""

    def plan_record(self) -> dict[str, Any]:
        """The derived totals ``setup`` set as ``run_plan`` (a dataclass), stored with every checkpoint."""
        return asdict(self.run_plan) if is_dataclass(self.run_plan) else {}

    def start_meter(self) -> None:
        """A run with no cost record yet: book what it starts from (e.g. its reward model's training)."""

    def begin_units(self) -> None:
        """Just before the first unit to run (e.g. model.train())."""

    def after_unit(self, done: int, total: int) -> None:
        """After unit ``done`` was logged, before its checkpoint (e.g. a held-out evaluation)."""

    def end_units(self) -> None:
        """After the last unit, still inside the meter's stage (e.g. a final evaluation, model.eval())."""

    def on_checkpoint(self, done: int, folder: Path) -> None:
        """On the main process, after a checkpoint and the cost record are written (e.g. callbacks)."""

    def progress_loss(self, row: dict[str, Any] | None) -> float:
        last = row if row is not None else (self.history[-1] if self.history else None)
        loss = None if last is None else last.get("loss")
        return float("nan") if loss is None else float(loss)

    def describe_row(self, row: dict[str, Any], total: int) -> str:
        loss = row.get("loss")
        return f"{self.unit} {row[self.history_key]}/{total}: loss {'n/a' if loss is None else format(loss, '.4f')}"

    # ----------------------------------------------------------------- the job

    def trainer_state(self, done: int) -> dict[str, Any]:
        return {
            "version": TRAINER_STATE_VERSION, "step": done, "config": config_to_dict(self.config),
            "plan": self.plan_record(), "data_fingerprint": self.fingerprint, "history": self.history,
            "cost": self.meter.as_dict(), **self.state_fields(done),
        }

    def train(self, resume: bool = False) -> Any:
        """Run the remaining units (all of them, or from the newest checkpoint with ``resume``)."""
        acc, run = self.accelerator, self.run
        if resume and run is None:
            raise LpoError("resume needs the run folder to resume from")
        is_main = acc.is_main_process
        self.say = self.log if (self.log is not None and is_main) else (lambda message: None)
        self.meter = DeviceMeter(accelerator=acc)
        self.history = []
        self.resumed_from = None
        log_every, save_every, _ = self.schedule
        with self.meter.stage(self.stage):
            total = self.setup()
            self.fingerprint = self.data_fingerprint()
            start = self._resume() if resume else 0
            previous = run.read_cost() if (resume and run is not None) else None
            if previous is not None:
                self.meter.restore(previous)
            else:
                self.start_meter()
            self.begin_units()
            for index in range(start, total):
                done = index + 1
                log_due = done % log_every == 0 or done == total
                row = self.run_unit(index, log_due)
                if row is not None:
                    self.history.append(row)
                if row is not None and log_due:
                    acc.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None}, step=done)
                    if is_main and run is not None:
                        write_metrics(run, self.history)
                        run.write_cost(self.meter)
                    self.say(self.describe_row(row, total))
                if is_main and self.progress is not None:
                    self.progress(self.progress_label, done, total, self.progress_loss(row))
                self.after_unit(done, total)
                if run is not None and save_every and done % save_every == 0 and done < total:
                    folder = self.save_checkpoint(done, self.trainer_state(done))
                    if is_main:
                        run.write_cost(self.meter)
                        self.on_checkpoint(done, folder)
            self.end_units()
        return self.finish()

    def _resume(self) -> int:
        saved = load_newest_checkpoint(self.accelerator, self.run, self.config, self.resume_free, self.check_saved_data)
        if saved is None:
            self.say(f"no checkpoint in {self.run.checkpoints_dir}; starting at {self.unit} 0")
            return 0
        done = self.resumed_from = int(saved["step"])
        self.history = [row for row in saved["history"] if row[self.history_key] <= done]
        self.restore(saved, done)
        self.say(f"resumed from {saved['folder']} after {self.unit} {done}")
        return done
