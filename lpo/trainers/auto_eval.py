"""Every checkpoint a training run saves, scored automatically (issue 4, item 5b).

Two ways to run it, sharing one plan and one state file:

- **inline** (``lpo train``'s default): :class:`AutoEvaluator` is a checkpoint callback
  (:data:`lpo.trainers.harness.CheckpointCallback`); the trainer calls it on the main
  process after each checkpoint (``checkpoints/step-N``) and for the final model. The
  other processes of a multi-GPU run wait meanwhile, so their devices are held.
- **watching** (``lpo eval --watch RUN``): :func:`lpo.evals.watcher.watch_run` polls the
  run folder from a separate process (another GPU, another machine sharing the folder)
  and evaluates each complete checkpoint once, then the final model when ``result.json``
  appears, so training devices are never blocked.

Each checkpoint goes through the evaluation harness (:func:`lpo.evals.harness.run_eval`)
as ``RUN/checkpoints/step-N`` or as the run folder (the final model), so its records carry
what the harness reads from the run: run id, method, base model, the step reward the run
optimised, the checkpoint's step (intermediate ones) and its training-cost snapshot.

What is evaluated (:class:`AutoEvalConfig`, resolved per base model by
:func:`resolve_plan`): on a world model the ``world`` benchmark with its judges (and the
diversity measure), 32 prompts × 2 images (a cheap curve: ~20 s per checkpoint on one
CPU core); on SD1.5 / SDXL the Pick-a-Pic v1 ``validation_unique`` prompts (all 500),
one image per prompt (the image the LPO paper's table scores; seeds match the full
protocol, so a later 4-image evaluation reuses it from the image cache), scored with
PickScore, HPSv2.1, ImageReward and the LAION aesthetic predictor (their weights and the
prompts come from the hub unless given as local paths).

Cost (SPEC §8). Inline, the evaluation of an intermediate checkpoint runs inside the
trainer's ``optimisation`` stage; it opens an ``evaluation`` stage on that meter
(:func:`lpo.core.runs.active_meter`), which pauses optimisation, so the run's ``cost.json``
counts it as evaluation. The checkpoint's own cost snapshot was written before the
callback, so it never contains its own evaluation. The final model's evaluation comes
after the trainer's last cost write; its seconds are added to ``cost.json``'s
``evaluation`` stage afterwards. A watcher does not write the run's ``cost.json`` (the
trainer may be rewriting it); its cost is in each record's ``eval_cost`` and in the
state file.

State (``RUN/auto_eval.json``, written atomically after every evaluation): for each
checkpoint (``step-000010``, ..., ``final``) and each evaluation job (one benchmark under
one protocol, keyed by a hash of everything that changes its records) the eval id and
seconds, or the error of a failed try. A job done is never run again for that checkpoint
by either way, so a watcher after an inline run evaluates only what failed. It also keeps
the config ``lpo train`` was given, which a watcher starts from. Running an inline
evaluation and a watcher on the same run at the same time may evaluate a checkpoint twice.

An evaluation that fails (no hub access for a metric's weights, a damaged checkpoint)
does not stop training: it is reported, kept as failed in the state, and tried again by
the next ``lpo eval --watch RUN``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from lpo.core.errors import LpoError
from lpo.evals.protocol import EvalProtocol, split_protocol_fields

logger = logging.getLogger(__name__)

STATE_NAME = "auto_eval.json"
STATE_VERSION = 1
FINAL = "final"  # the state's name for the run's final model

WORLD_BENCHMARKS = ("world",)
WORLD_MAX_PROMPTS = 32
WORLD_IMAGES_PER_PROMPT = 2  # two, so the diversity measure is reported beside quality
SD_BENCHMARKS = ("pickapic",)
SD_METRICS = ("pickscore", "hpsv21", "image_reward", "laion_aesthetic")
SD_IMAGES_PER_PROMPT = 1

Log = Callable[[str], None]


# --------------------------------------------------------------------------- config and plan


@dataclass
class AutoEvalConfig:
    """What each checkpoint is evaluated on; empty / None fields take the base model's defaults.

    ``metrics`` apply to every benchmark; ``prompts`` maps a benchmark to its prompt source
    (e.g. a local Pick-a-Pic mirror); ``metric_weights`` / ``metric_processors`` map a metric
    to a local folder or hub id. ``protocol`` is how images are made, the object ``lpo eval``
    and ``lpo compare`` use: its ``guidance_scale`` None is the checkpoint's own CFG, its
    ``images_per_prompt`` None the benchmark's default (see the module docstring).
    Built from flat settings (``lpo eval``'s option names) by :meth:`from_settings`.
    """

    benchmarks: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    max_prompts: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    metric_weights: dict[str, str] = field(default_factory=dict)
    metric_processors: dict[str, str] = field(default_factory=dict)
    metric_dtype: str = "float32"
    metric_batch_size: int = 16
    device: str = "auto"
    cache_dir: Path | None = None
    results_dir: Path = Path("results")

    def __post_init__(self) -> None:
        self.benchmarks, self.metrics = tuple(self.benchmarks), tuple(self.metrics)
        if self.max_prompts is not None and self.max_prompts < 1:
            raise LpoError(f"evaluation max prompts must be >= 1, got {self.max_prompts}")
        for what, names in (("benchmark", self.benchmarks), ("metric", self.metrics)):
            if len(set(names)) != len(names):
                raise LpoError(f"evaluation {what} listed twice in {', '.join(names)}; list each once")
        self.results_dir = Path(self.results_dir)
        self.cache_dir = None if self.cache_dir is None else Path(self.cache_dir)

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_settings(cls, **values: Any) -> "AutoEvalConfig":
        """From flat settings: protocol fields (steps, guidance_scale, images_per_prompt, ...) go into ``protocol``."""
        protocol, rest = split_protocol_fields(values)
        return cls(protocol=EvalProtocol(**protocol), **rest)

    def with_settings(self, values: dict[str, Any]) -> "AutoEvalConfig":
        """These flat settings changed (protocol fields inside the protocol)."""
        protocol, rest = split_protocol_fields(values)
        return replace(self, protocol=replace(self.protocol, **protocol), **rest)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AutoEvalConfig":
        """From :meth:`as_dict` (or the flat record of a run made before the protocol object)."""
        known = {f.name for f in fields(cls)} - {"protocol"}
        flat_protocol, rest = split_protocol_fields({k: v for k, v in data.items() if k != "protocol"})
        protocol = {**(data.get("protocol") or {}), **flat_protocol}
        return cls(protocol=EvalProtocol(**protocol), **{k: v for k, v in rest.items() if k in known})


@dataclass(frozen=True)
class EvalJob:
    """One benchmark under the plan's protocol, for one checkpoint at a time."""

    benchmark: str
    prompts: str | None
    metrics: tuple[str, ...]
    max_prompts: int | None
    images_per_prompt: int


@dataclass(frozen=True)
class AutoEvalPlan:
    """:class:`AutoEvalConfig` resolved for one base-model kind: the jobs run on every checkpoint."""

    kind: str
    jobs: tuple[EvalJob, ...]
    config: AutoEvalConfig

    def job_key(self, job: EvalJob) -> str:
        """A hash of what changes the job's records (not the device, batch sizes or image cache)."""
        c = self.config
        data = {
            **asdict(job),
            "protocol": self._image_settings(),
            "metric_weights": {m: c.metric_weights[m] for m in job.metrics if m in c.metric_weights},
            "metric_processors": {m: c.metric_processors[m] for m in job.metrics if m in c.metric_processors},
            "metric_dtype": c.metric_dtype,
            "results_dir": str(c.results_dir),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def _image_settings(self) -> dict[str, Any]:
        """The protocol fields that change images, besides images per prompt (the job's).
        eta enters only when set, so the keys of jobs recorded before it could be set stand."""
        p = self.config.protocol
        out = {"steps": p.steps, "guidance_scale": p.guidance_scale, "seed": p.seed, "resolution": p.resolution,
               "dtype": p.dtype}
        if p.eta:
            out["eta"] = p.eta
        return out

    def job_record(self, job: EvalJob) -> dict[str, Any]:
        return {**asdict(job), **self._image_settings(), "results_dir": str(self.config.results_dir)}

    def eval_config(self, job: EvalJob, checkpoint: str) -> Any:
        from lpo.evals.harness import EvalConfig

        c = self.config
        return EvalConfig(
            checkpoint=checkpoint, benchmark=job.benchmark, prompts=job.prompts, metrics=job.metrics,
            max_prompts=job.max_prompts, protocol=replace(c.protocol, images_per_prompt=job.images_per_prompt),
            metric_weights={m: w for m, w in c.metric_weights.items() if m in job.metrics},
            metric_processors={m: p for m, p in c.metric_processors.items() if m in job.metrics},
            metric_dtype=c.metric_dtype, metric_batch_size=c.metric_batch_size, device=c.device,
            cache_dir=c.cache_dir, results_dir=c.results_dir,
        )

    def describe(self) -> str:
        parts = []
        for job in self.jobs:
            prompts = "all" if job.max_prompts is None else str(job.max_prompts)
            parts.append(f"{job.benchmark} ({prompts} prompts × {job.images_per_prompt}: {', '.join(job.metrics)})")
        return "; ".join(parts) + f" → {self.config.results_dir}"


def check_names(config: AutoEvalConfig) -> None:
    """Unknown benchmark or metric names fail here, before a run folder is made."""
    from lpo.evals.benchmarks import BENCHMARKS
    from lpo.evals.metrics import METRICS, load_metrics

    load_metrics()
    for name in config.benchmarks:
        BENCHMARKS.get(name)  # LpoError listing the known ones
    for name in config.metrics:
        METRICS.get(name)
    for name in config.prompts:
        if config.benchmarks and name not in config.benchmarks:
            raise LpoError(f"evaluation prompts given for benchmark {name!r}, which is not evaluated "
                           f"({', '.join(config.benchmarks)}); fix the name")


def resolve_plan(config: AutoEvalConfig, kind: str) -> AutoEvalPlan:
    """The jobs for a base model of ``kind`` (world / sd15 / sdxl); see the module docstring for the defaults."""
    from lpo.evals.benchmarks import BENCHMARKS
    from lpo.evals.harness import default_metrics
    from lpo.evals.metrics import declared

    check_names(config)
    world = kind in ("world", "world-flow")
    names = config.benchmarks or (WORLD_BENCHMARKS if world else SD_BENCHMARKS)
    for name in config.prompts:
        if name not in names:
            raise LpoError(f"evaluation prompts given for benchmark {name!r}, which is not evaluated ({', '.join(names)})")
    jobs = []
    for name in names:
        source = config.prompts.get(name)
        benchmark = BENCHMARKS.get(name)(source)
        images = (config.protocol.images_per_prompt or getattr(benchmark, "default_images_per_prompt", None)
                  or (WORLD_IMAGES_PER_PROMPT if world else SD_IMAGES_PER_PROMPT))
        if config.metrics:
            metrics = config.metrics
        elif not world and set(SD_METRICS) <= set(benchmark.default_metrics):
            metrics = SD_METRICS
        else:
            metrics = tuple(default_metrics(benchmark, images))
        for metric in metrics:
            if getattr(declared(metric), "per_prompt", False) and images < 2:
                raise LpoError(f"metric {metric!r} compares the images of a prompt; evaluate 2 or more images per prompt")
        max_prompts = config.max_prompts if config.max_prompts is not None else (WORLD_MAX_PROMPTS if world else None)
        jobs.append(EvalJob(name, source, tuple(metrics), max_prompts, int(images)))
    evaluated = {m for job in jobs for m in job.metrics}
    for what, refs in (("weights", config.metric_weights), ("processor", config.metric_processors)):
        for metric in refs:
            if metric not in evaluated:
                raise LpoError(f"evaluation {what} given for metric {metric!r}, which is not evaluated "
                               f"({', '.join(sorted(evaluated))}); fix the name")
    resolved = replace(config, results_dir=config.results_dir.expanduser().resolve(),
                       cache_dir=None if config.cache_dir is None else config.cache_dir.expanduser().resolve())
    return AutoEvalPlan(kind, tuple(jobs), resolved)


def model_kind(model: str) -> str:
    """``world`` for a world pipeline (alias or folder with the world marker), else ``sd15`` /
    ``sdxl`` from a local folder's model_index.json, else ``sd`` (a hub id: not looked up)."""
    from lpo.sampling.generate import resolve_model_name
    from lpo.models.components import PIPELINE_KINDS, WORLD_MARKER

    path = Path(resolve_model_name(model)).expanduser()
    if not path.is_dir():
        return "sd"
    if (path / WORLD_MARKER).is_file():
        return "world"
    try:
        class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return "sd"
    return PIPELINE_KINDS.get(class_name, "sd")


# --------------------------------------------------------------------------- state


def state_path(run_dir: Path) -> Path:
    return Path(run_dir) / STATE_NAME


def read_state(run_dir: Path) -> dict[str, Any]:
    """The run's auto-evaluation state (an empty one before the first evaluation)."""
    path = state_path(run_dir)
    if not path.is_file():
        return {"version": STATE_VERSION, "config": None, "jobs": {}, "checkpoints": {}}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LpoError(f"could not read {path} ({err}); delete it to evaluate every checkpoint again") from err
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise LpoError(f"{path} is not an auto-evaluation state of version {STATE_VERSION}; delete it to start over")
    return state


def _write_state(run_dir: Path, state: dict[str, Any]) -> None:
    from lpo.core.io import atomic_write_json

    atomic_write_json(state_path(run_dir), state)


def record_config(run_dir: Path, config: AutoEvalConfig) -> None:
    """Keep the config ``lpo train`` was given: ``lpo eval --watch RUN`` starts from it."""
    state = read_state(run_dir)
    state["config"] = config.as_dict()
    _write_state(run_dir, state)


def done_jobs(state: dict[str, Any], name: str) -> set[str]:
    return set(((state.get("checkpoints") or {}).get(name) or {}).get("done", {}))


# --------------------------------------------------------------------------- one checkpoint


@dataclass
class CheckpointOutcome:
    """What evaluating one checkpoint did: eval ids per benchmark, errors per benchmark, seconds."""

    name: str
    evaluated: dict[str, str] = field(default_factory=dict)
    records: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    seconds: float = 0.0
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # benchmark -> metric -> value


@contextlib.contextmanager
def _alone() -> Iterator[None]:
    """Evaluate in this process only.

    The harness shards its work over the ``WORLD_SIZE`` processes of an ``accelerate
    launch``; a checkpoint callback runs on the main training process alone, and the
    others would never join its collectives.
    """
    old = os.environ.get("WORLD_SIZE")
    if old in (None, "", "1"):
        yield
        return
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        os.environ["WORLD_SIZE"] = old


def evaluate_checkpoint(
    run_dir: Path, name: str, spec: str, plan: AutoEvalPlan, *, mode: str, console: Any = None, log: Log | None = None,
) -> CheckpointOutcome:
    """Run every job of ``plan`` not yet done on checkpoint ``name`` (``spec``: what ``lpo eval`` takes);
    the state is written after each job."""
    from rich.markup import escape

    from lpo.evals.harness import run_eval
    from lpo.evals.store import now
    from lpo.core.io import one_line

    say = log or (lambda message: None)
    outcome = CheckpointOutcome(name)
    began = time.perf_counter()
    for job in plan.jobs:
        key = plan.job_key(job)
        state = read_state(run_dir)
        if key in done_jobs(state, name):
            outcome.skipped += 1
            continue
        started = time.perf_counter()
        try:
            with _alone():
                output = run_eval(plan.eval_config(job, spec), console=console)
        except Exception as err:  # noqa: BLE001 - a failed evaluation must not end a training run
            if not isinstance(err, LpoError):
                logger.warning("evaluation of %s on %s failed", name, job.benchmark, exc_info=True)
            outcome.failed[job.benchmark] = one_line(err) if not isinstance(err, LpoError) else str(err)
            entry: dict[str, Any] = {"error": outcome.failed[job.benchmark], "time": now(), "mode": mode}
            say(f"[yellow]evaluation of {name} on {job.benchmark} failed:[/] {escape(outcome.failed[job.benchmark])}; "
                f"try again with `lpo eval --watch {escape(str(run_dir))} --until-done`")
            slot = "failed"
        else:
            seconds = time.perf_counter() - started
            outcome.evaluated[job.benchmark] = output.eval_id
            outcome.records += len(output.records)
            outcome.values[job.benchmark] = {r.metric: r.value for r in output.records}
            entry = {"eval_id": output.eval_id, "records": len(output.records), "seconds": seconds,
                     "eval_cost": output.records[0].eval_cost if output.records else None, "time": now(), "mode": mode}
            slot = "done"
        state = read_state(run_dir)  # re-read: another evaluator may have written meanwhile
        state.setdefault("jobs", {})[key] = plan.job_record(job)
        checkpoint = state.setdefault("checkpoints", {}).setdefault(name, {"done": {}, "failed": {}})
        checkpoint.setdefault(slot, {})[key] = entry
        if slot == "done":
            checkpoint.get("failed", {}).pop(key, None)
        _write_state(run_dir, state)
    outcome.seconds = time.perf_counter() - began
    return outcome


def summary_line(outcome: CheckpointOutcome, label: str) -> str:
    parts = []
    for benchmark, values in outcome.values.items():
        shown = ", ".join(f"{metric} {value:.4g}" for metric, value in values.items())
        parts.append(f"{benchmark}: {shown}")
    return f"evaluated {label} in {outcome.seconds:.1f} s: " + ("; ".join(parts) or "nothing new")


# --------------------------------------------------------------------------- inline


class AutoEvaluator:
    """A checkpoint callback that evaluates each checkpoint under ``config`` (inline mode).

    :meth:`prepare` (called by ``lpo train`` once the base model is loaded) resolves the
    plan for the model's kind and records the config in the run folder; otherwise the
    plan is resolved on the first event from its ``kind``.
    """

    def __init__(self, config: AutoEvalConfig, *, console: Any = None, log: Log | None = None) -> None:
        check_names(config)
        self.config = config
        self.console = console
        self.log = log or (lambda message: None)
        self.plan: AutoEvalPlan | None = None
        self.outcomes: list[CheckpointOutcome] = []

    def prepare(self, run_dir: Path, kind: str, record: bool = True) -> AutoEvalPlan:
        """Resolve the plan for ``kind``; with ``record`` (the main process) keep the config in the run folder."""
        self.plan = resolve_plan(self.config, kind)
        if record:  # with absolute results / cache folders: a watcher may start elsewhere
            record_config(run_dir, self.plan.config)
            self.log(f"evaluating every checkpoint: {self.plan.describe()}")
        return self.plan

    def __call__(self, event: Any) -> None:
        from lpo.core.runs import active_meter

        if self.plan is None or self.plan.kind != event.kind:
            self.plan = resolve_plan(self.config, event.kind)
        if event.final:
            run_dir, name, spec = Path(event.model_folder).parent, FINAL, str(Path(event.model_folder).parent)
        else:
            run_dir, name, spec = Path(event.folder).parent.parent, Path(event.folder).name, str(event.folder)
        # Inside the trainer's optimisation stage: count this as evaluation on the run's meter.
        meter = active_meter()
        with meter.stage("evaluation") if meter is not None else contextlib.nullcontext(), _rng_preserved():
            outcome = evaluate_checkpoint(run_dir, name, spec, self.plan, mode="inline", console=self.console,
                                          log=self.log)
        if meter is None:  # after the trainer's last cost write (the final model)
            add_evaluation_seconds(run_dir, outcome.seconds)
        self.outcomes.append(outcome)
        if outcome.evaluated:
            self.log(summary_line(outcome, f"{event.label} at step {event.step}" + (" (final)" if event.final else "")))


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Restore every global random state afterwards: a run trains the same weights with or
    without inline evaluation (loading a model may draw from them)."""
    import random

    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def add_evaluation_seconds(run_dir: Path, seconds: float) -> None:
    """Add ``seconds`` to the ``evaluation`` stage of the run's cost.json, on its own devices."""
    from lpo.core.runs import DeviceMeter, RunFolder

    run = RunFolder(run_dir)
    record = run.read_cost()
    if record is None:
        return
    meter = DeviceMeter.from_record(record)
    meter.add("evaluation", seconds)
    run.write_cost(meter)
