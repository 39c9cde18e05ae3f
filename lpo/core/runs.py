"""The run harness's bookkeeping: run folders and the device-hour meter (SPEC §8).

Every training run (reward model, LPO, SPO, Diffusion-DPO) writes one folder:

====================  ==================================================================
``config.json``       the resolved config (the dataclass as JSON), rewritten on resume
``run.json``          name, creation time, argv, git commit + dirty flag, package
                      versions, hardware (:func:`lpo.core.io.run_metadata`); each resume
                      appends its own argv / git / time under ``"resumes"``
``cost.json``         the :class:`DeviceMeter` record: wall seconds × devices per stage
``checkpoints/``      ``step-000300/`` ... written by :func:`write_checkpoint` for every
                      trainer (reward models, LPO, SPO, Diffusion-DPO)
``result.json``       written last, after the final model: the run is finished
====================  ==================================================================

Lifecycle: a new run that fails before its first checkpoint (setup errors, a diagnosed
failure such as divergence or nothing trained) leaves nothing behind
(:meth:`RunFolder.discarded_on_error`); a crash or Ctrl-C keeps the folder, which resumes; ``--resume`` refuses a finished run, and a run
without checkpoints whose config.json differs; resuming on other hardware than the last
segment ran on (thread count, device) is reported by :func:`resume_mismatches`, since
CPU reductions depend on the thread count and the weights then differ from an
uninterrupted run's.

Cost accounting (SPEC §8): wall time × number of devices, per device type ("cpu", or the
CUDA device name, e.g. "NVIDIA A100-SXM4-80GB"), split into the stages
``reward_model_training``, ``optimisation`` and ``evaluation``. Under accelerate the
device count is ``accelerator.num_processes`` (one device per process). A reward
model's own training cost is stored with it (``cost.json`` in its run folder and in its
model folder); a trainer that uses it reads it back with :func:`read_cost` and folds it
in with :meth:`DeviceMeter.include`, so LPO's total = LRM training + optimisation.

All writes are atomic (:mod:`lpo.core.io`); under accelerate only the main process writes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from lpo.core.deepspeed_setup import save_state_kwargs
from lpo.core.errors import LpoError
from lpo.core.io import atomic_write_json, disk_errors, run_metadata

CONFIG_NAME = "config.json"
RUN_NAME = "run.json"
COST_NAME = "cost.json"
CHECKPOINTS_DIR = "checkpoints"
DEFAULT_RUNS_ROOT = Path("runs")
COST_SCHEMA_VERSION = 1
CHECKPOINT_PREFIX = "step-"
TRAINER_STATE_NAME = "trainer_state.json"  # written last: its presence marks a checkpoint complete
RESULT_NAME = "result.json"  # written last by a finished run: its presence marks the run finished
CHECKPOINT_MODEL_DIR = "model"

# The stages of SPEC §8. A typo in a stage name would silently split the cost, so only
# these are accepted.
# rollout: LPO / SPO sampling their training trajectories (K candidates scored by the step
# reward), booked apart from the gradient steps; policy training = rollout + optimisation.
STAGES: tuple[str, ...] = ("reward_model_training", "rollout", "optimisation", "evaluation")


# --------------------------------------------------------------------------- run folders


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        from lpo.core.config import config_to_dict

        return config_to_dict(config)
    if isinstance(config, dict):
        return json.loads(json.dumps(config, default=str))
    raise TypeError(f"config must be a dataclass instance or a dict, got {type(config).__name__}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunFolder:
    """One run's folder: resolved config, run metadata, cost record, checkpoints.

    Build it with :meth:`create` (a new run), :meth:`resume` (continue a run) or
    :meth:`open` (read an existing run).
    """

    def __init__(self, path: str | Path, preexisting: frozenset[str] | None = None) -> None:
        self.path = Path(path)
        # For a run made by this process's create(): the names its folder held before (the
        # user's files); None for a run opened or resumed. discarded_on_error() reads it.
        self.preexisting = preexisting

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ----------------------------------------------------------------- paths

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def run_path(self) -> Path:
        return self.path / RUN_NAME

    @property
    def cost_path(self) -> Path:
        return self.path / COST_NAME

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    # ----------------------------------------------------------------- construction

    @classmethod
    def create(
        cls,
        config: Any,
        *,
        name: str | None = None,
        root: str | Path = DEFAULT_RUNS_ROOT,
        folder: str | Path | None = None,
        accelerator: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> "RunFolder":
        """A new run folder ``root/<name>-<YYYYmmdd-HHMMSS>`` (or ``folder``) with config.json and run.json.

        ``config`` is a config dataclass (or dict), written resolved. ``extra`` is merged
        into run.json (e.g. the preset or the base model). A given ``folder`` must not
        already hold a run (use :meth:`resume`). Under accelerate with several processes,
        pass ``accelerator``: the main process picks and writes the folder and the others
        receive its path.
        """
        if folder is None and not name:
            raise ValueError("give the run a name (e.g. the preset) or an explicit folder")
        if name is not None and ("/" in name or name.startswith(".")):
            raise LpoError(f"run name {name!r} must not contain '/' or start with '.'; pass folder= for a path")
        is_main = accelerator is None or accelerator.is_main_process
        path: Path | None = None
        preexisting: frozenset[str] = frozenset()
        if is_main:
            path = Path(folder) if folder is not None else _timestamped(Path(root), str(name))
            if (path / RUN_NAME).exists() or (path / CONFIG_NAME).exists():
                raise LpoError(
                    f"run folder {path} already holds a run; resume it (--resume) or choose another folder"
                )
            preexisting = frozenset(p.name for p in path.iterdir()) if path.is_dir() else frozenset()
            path.mkdir(parents=True, exist_ok=True)
            run = cls(path)
            run.write_config(config)
            meta = {"name": name or path.name, "created": _now(), **run_metadata(), **(extra or {}), "resumes": []}
            atomic_write_json(run.run_path, meta)
        path = _broadcast_path(path, accelerator)
        return cls(path, preexisting=preexisting)

    @classmethod
    def resume(
        cls,
        folder: str | Path,
        config: Any,
        *,
        accelerator: Any = None,
        resume_free: frozenset[str] | None = None,
    ) -> "RunFolder":
        """Continue the run in ``folder``: config.json is rewritten with ``config``, this
        invocation's argv / git / time are appended to run.json's ``"resumes"``.

        A finished run (result.json) is refused. With ``resume_free`` (the dotted fields
        that may change on resume), so is a run without checkpoints whose config.json
        differs from ``config`` elsewhere (with checkpoints, the trainer compares against
        the newest checkpoint's config).
        """
        run = cls.open(folder)
        run.refuse_if_finished()
        if resume_free is not None and not list_checkpoints(run) and run.config_path.is_file():
            changes = config_changes(run.read_config(), _config_dict(config), resume_free,
                                     getattr(config, "ADDED_DEFAULTS", None))
            if changes:
                raise LpoError(
                    f"cannot resume {run.path}: the config differs from its config.json ({'; '.join(changes)}) "
                    "and it has no checkpoint; resume with the same settings, or remove the folder and start again"
                )
        if accelerator is None or accelerator.is_main_process:
            meta = run.read_run()
            meta.setdefault("resumes", []).append({"time": _now(), **run_metadata()})
            atomic_write_json(run.run_path, meta)
            run.write_config(config)
        return run

    @classmethod
    def open(cls, folder: str | Path) -> "RunFolder":
        """An existing run folder (one with run.json); LpoError otherwise."""
        path = Path(folder)
        if not (path / RUN_NAME).is_file():
            raise LpoError(f"{path} is not a run folder (no {RUN_NAME}); pass a folder under runs/ written by lpo")
        return cls(path)

    @property
    def finished(self) -> bool:
        """Whether the run wrote its final model and result.json."""
        return (self.path / RESULT_NAME).is_file()

    def refuse_if_finished(self) -> None:
        """LpoError when the run is finished: resuming it would retrain its last steps and
        overwrite its final model."""
        if self.finished:
            raise LpoError(
                f"run {self.path} is finished (its final model is in {self.path / 'model'}); nothing to resume — "
                "start a new run (another --run-dir) to train again"
            )

    @contextmanager
    def discarded_on_error(
        self, accelerator: Any = None, errors: tuple[type[BaseException], ...] = (BaseException,),
    ) -> Iterator[None]:
        """When the block fails with one of ``errors``, remove what this run wrote (every
        entry of its folder but the ones there before :meth:`create` made it; the folder
        itself if then empty), for a run made by this process (not opened or resumed) that
        has no complete checkpoint: nothing in it can be resumed, and a rerun of the fixed
        command in the same folder must not be told it "already holds a run"."""
        try:
            yield
        except errors:
            is_main = accelerator is None or accelerator.is_main_process
            if self.preexisting is not None and is_main and not list_checkpoints(self):
                for entry in self.path.iterdir() if self.path.is_dir() else ():
                    if entry.name not in self.preexisting:
                        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                try:
                    self.path.rmdir()  # only when empty: nothing else of the user's is touched
                except OSError:
                    pass
            raise

    # ----------------------------------------------------------------- reading and writing

    def write_config(self, config: Any) -> None:
        atomic_write_json(self.config_path, _config_dict(config))

    def read_config(self) -> dict[str, Any]:
        return _read_json(self.config_path)

    def read_run(self) -> dict[str, Any]:
        return _read_json(self.run_path)

    def write_json(self, name: str, data: Any) -> Path:
        """Atomically write ``data`` to ``name`` inside the run folder."""
        path = self.path / name
        atomic_write_json(path, data)
        return path

    def write_cost(self, meter: "DeviceMeter | dict[str, Any]") -> Path:
        record = meter.as_dict() if isinstance(meter, DeviceMeter) else meter
        return self.write_json(COST_NAME, record)

    def read_cost(self) -> dict[str, Any] | None:
        """This run's cost record, or None before the first write."""
        return _read_json(self.cost_path) if self.cost_path.is_file() else None


def _timestamped(root: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{name}-{stamp}"
    suffix = 2
    while path.exists():  # two runs started within one second
        path = root / f"{name}-{stamp}-{suffix}"
        suffix += 1
    return path


def config_changes(old: dict[str, Any], new: dict[str, Any], ignore: frozenset[str] = frozenset(),
                   added: dict[str, Any] | None = None) -> list[str]:
    """'key: old -> new' for every dotted key of two (nested) config dicts that differs, ``ignore`` excepted.

    ``added``: fields added to the config class since ``old`` may have been written, with the
    value that reproduces what lpo did before them (a config class's ``ADDED_DEFAULTS``): a
    key ``old`` lacks counts as holding that value, so a run started before can be resumed.
    """

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(old), flat(new)
    for key, value in (added or {}).items():
        a.setdefault(key, value)
    keys = sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def resume_mismatches(run: RunFolder, device: Any = "cpu") -> list[str]:
    """How this process differs from the hardware of the run's last segment (its creation
    or last resume) in what changes the weights: the CPU thread count for a CPU run, the
    GPU model for a CUDA run. One readable sentence each; empty when nothing differs."""
    import torch

    from lpo.core.io import hardware

    meta = run.read_run()
    before = ([meta, *meta.get("resumes", [])][-1]).get("hardware") or {}
    out = []
    if torch.device(device).type == "cpu":
        threads_before, threads_now = before.get("torch_threads"), torch.get_num_threads()
        if threads_before is not None and threads_before != threads_now:
            out.append(
                f"this resume runs {threads_now} CPU threads where the run ran {threads_before}: CPU sums depend on "
                f"the thread count, so the weights will differ from an uninterrupted run's "
                f"(resume with OMP_NUM_THREADS={threads_before} for identical weights)"
            )
    else:
        gpus_before, gpus_now = before.get("cuda_devices") or [], hardware().get("cuda_devices") or []
        if gpus_before and gpus_now and gpus_before[0] != gpus_now[0]:
            out.append(f"the run ran on {gpus_before[0]} and resumes on {gpus_now[0]}: the weights will differ "
                       "from an uninterrupted run's")
    return out


def _broadcast_path(path: Path | None, accelerator: Any) -> Path:
    if accelerator is None or accelerator.num_processes == 1:
        assert path is not None
        return path
    from accelerate.utils import broadcast_object_list

    payload = [str(path) if path is not None else None]
    broadcast_object_list(payload, from_process=0)
    return Path(payload[0])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise LpoError(f"could not read {path} ({type(err).__name__}: {err}); the run folder is damaged") from err
    if not isinstance(data, dict):
        raise LpoError(f"{path} does not hold a JSON object; the run folder is damaged")
    return data


# --------------------------------------------------------------------------- cost


def device_type_of(device: Any) -> str:
    """"cpu", "mps", or the CUDA device's name (e.g. "NVIDIA A100-SXM4-80GB")."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_name(index)
    return device.type


class DeviceMeter:
    """Wall seconds × devices, per stage (SPEC §8).

    ``with meter.stage("reward_model_training"):`` adds the wall time of the block to
    that stage. Stages nest: entering an inner stage pauses the outer one, so periodic
    evaluation inside training is counted once, as ``evaluation``. Device-hours of a
    stage = its wall seconds × ``device_count`` / 3600.

    Build it from an ``accelerator`` (device type of ``accelerator.device``, count
    ``num_processes``) or from ``device`` and ``device_count``; continue a written record
    with :meth:`from_record`.

    :func:`active_meter` is the meter whose stage is open around the running code, so a
    hook called from inside a trainer's ``optimisation`` stage (a checkpoint callback that
    evaluates) can count its own time as ``evaluation`` without being handed the meter.
    """

    def __init__(self, device: Any = "cpu", device_count: int = 1, *, accelerator: Any = None) -> None:
        if accelerator is not None:
            device, device_count = accelerator.device, accelerator.num_processes
        if int(device_count) < 1:
            raise ValueError(f"device_count must be >= 1, got {device_count}")
        self.device_type = device_type_of(device)
        self.device_count = int(device_count)
        self.seconds: dict[str, float] = {}
        self.included: list[dict[str, Any]] = []
        self._stack: list[str] = []
        self._since = 0.0

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "DeviceMeter":
        """A meter continuing ``record`` (e.g. a finished run's cost.json) on its own device type
        and count, which need not be this machine's."""
        record = _check_record(record, "the cost record to continue")
        meter = cls("cpu", int(record["device_count"]))
        meter.device_type = str(record["device_type"])
        for stage, seconds in record["seconds"].items():
            meter.add(stage, seconds)
        meter.included = list(record.get("included", []))
        return meter

    def _close_interval(self) -> None:
        now = time.perf_counter()
        if self._stack:
            self.add(self._stack[-1], now - self._since)
        self._since = now

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        _check_stage(name)
        self._close_interval()  # the outer stage (if any) stops counting here
        self._stack.append(name)
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            self._close_interval()
            self._stack.pop()
            _ACTIVE.reset(token)

    def add(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` of wall time on this meter's devices to ``stage``."""
        _check_stage(stage)
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self.seconds[stage] = self.seconds.get(stage, 0.0) + float(seconds)

    def restore(self, record: dict[str, Any]) -> None:
        """Continue an earlier record of the same run (after a resume): its own seconds are
        added when the device type and count match, otherwise it is kept as an included record."""
        record = _check_record(record, "the resumed run's cost record")
        if record["device_type"] == self.device_type and record["device_count"] == self.device_count:
            for stage, seconds in record["seconds"].items():
                self.add(stage, seconds)
            self.included.extend(record.get("included", []))
        else:
            self.include(record, source="earlier part of this run")

    def include(self, record: dict[str, Any], source: str) -> None:
        """Fold in another run's cost (e.g. the LRM's training, from :func:`read_cost`)."""
        record = _check_record(record, f"cost record of {source}")
        flat = {k: record[k] for k in ("device_type", "device_count", "seconds", "device_hours")}
        self.included.append({"source": str(source), **flat})
        self.included.extend(record.get("included", []))

    def device_hours(self) -> dict[str, float]:
        """Own device-hours per stage (wall seconds × device count / 3600), open stage included."""
        self._close_interval()
        return {stage: s * self.device_count / 3600.0 for stage, s in self.seconds.items()}

    def as_dict(self) -> dict[str, Any]:
        """The cost record written to cost.json.

        ``seconds`` / ``device_hours``: this run's own measurement; ``included``: records
        folded in with :meth:`include`; ``device_hours_by_type``: everything, summed per
        device type and stage (device-hours of different hardware are never added).
        """
        self._close_interval()  # count the open stage up to now
        own = self.device_hours()
        by_type: dict[str, dict[str, float]] = {}
        for device_type, hours in [(self.device_type, own)] + [(r["device_type"], r["device_hours"]) for r in self.included]:
            bucket = by_type.setdefault(device_type, {})
            for stage, value in hours.items():
                bucket[stage] = bucket.get(stage, 0.0) + float(value)
        return {
            "schema_version": COST_SCHEMA_VERSION,
            "device_type": self.device_type,
            "device_count": self.device_count,
            "seconds": dict(self.seconds),
            "device_hours": own,
            "total_seconds": sum(self.seconds.values()),
            "total_device_hours": sum(own.values()),
            "included": list(self.included),
            "device_hours_by_type": by_type,
        }


# The meter of the innermost open stage in this thread / task (set by DeviceMeter.stage).
_ACTIVE: ContextVar["DeviceMeter | None"] = ContextVar("lpo_active_meter", default=None)


def active_meter() -> DeviceMeter | None:
    """The meter whose :meth:`DeviceMeter.stage` is open around the caller (the innermost), or None."""
    return _ACTIVE.get()


def _check_stage(name: str) -> None:
    if name not in STAGES:
        raise ValueError(f"unknown cost stage {name!r}; use one of {', '.join(STAGES)}")


def _check_record(record: Any, what: str) -> dict[str, Any]:
    keys = ("device_type", "device_count", "seconds", "device_hours")
    if not isinstance(record, dict) or any(k not in record for k in keys):
        raise LpoError(f"{what} is not an lpo cost record (it needs {', '.join(keys)})")
    return record


def read_cost(folder: str | Path) -> dict[str, Any]:
    """The cost record of a run folder or of a model folder saved by a run.

    Looks for ``cost.json`` in ``folder``, then in its parent (a model saved inside its
    run folder). LpoError naming both paths when neither has one.
    """
    folder = Path(folder)
    candidates = [folder / COST_NAME, folder.parent / COST_NAME]
    for path in candidates:
        if path.is_file():
            return _check_record(_read_json(path), str(path))
    raise LpoError(
        f"no cost record for {folder} (looked for {candidates[0]} and {candidates[1]}); "
        "it was not trained by lpo, or its run folder was moved without cost.json"
    )


# --------------------------------------------------------------------------- checkpoints


def list_checkpoints(run: RunFolder) -> list[tuple[int, Path]]:
    """Complete checkpoints of ``run`` as (step, folder), oldest first."""
    if not run.checkpoints_dir.is_dir():
        return []
    found = []
    for path in run.checkpoints_dir.iterdir():
        number = path.name[len(CHECKPOINT_PREFIX):]
        if path.name.startswith(CHECKPOINT_PREFIX) and number.isdigit() and (path / TRAINER_STATE_NAME).is_file():
            found.append((int(number), path))
    return sorted(found)


def write_checkpoint(
    accelerator: Any,
    run: RunFolder,
    step: int,
    save_model: Callable[[Path], Any] | None,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``checkpoints/step-NNNNNN/`` atomically and keep the newest ``keep``; returns it.

    Layout: ``state/`` (accelerate: models, optimiser, schedule, RNG), ``model/``
    (``save_model(folder)`` on the main process, if given) and ``trainer_state.json``
    last. Everything is built in a hidden sibling with a name every process agrees on
    and renamed into place, so a kill during a save leaves the previous checkpoint whole.
    """
    final = run.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = run.checkpoints_dir / f".{final.name}.tmp"
    # A failed write (disk full, read-only) removes the half-built folder and is one line.
    with disk_errors(final, f"checkpoint {step}"), _removed_on_error(tmp, accelerator.is_main_process):
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / "state"), **save_state_kwargs(accelerator))
        if accelerator.is_main_process:
            if save_model is not None:
                save_model(tmp / CHECKPOINT_MODEL_DIR)
            atomic_write_json(tmp / TRAINER_STATE_NAME, state)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for _, old in list_checkpoints(run)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


@contextmanager
def _removed_on_error(folder: Path, owner: bool) -> Iterator[None]:
    try:
        yield
    except BaseException:
        if owner:
            shutil.rmtree(folder, ignore_errors=True)
        raise

