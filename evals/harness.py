"""Generate once, score with every metric: the evaluation harness behind ``lpo eval``.

One evaluation = one checkpoint × one benchmark × some metrics under one
:class:`EvalProtocol` (SPEC §6.2):

1. resolve everything that can be wrong before any work: the benchmark and its prompts,
   the metric names and weight paths, the checkpoint (:mod:`lpo.evals.checkpoints`);
2. generate the images not yet in the image cache (:mod:`lpo.evals.image_cache`). Image
   ``k`` of a prompt has seed ``image_seed(protocol.seed, prompt, k)``, so every
   checkpoint is compared on identical initial noise, and nothing already on disk is
   generated again (a new metric later, more images per prompt, a resumed run);
3. score every image with every metric, one metric at a time (its weights loaded only
   then, and released before the next), timing load and scoring apart from generation;
4. summarise with the prompt as the unit (:func:`lpo.world.benchmark.prompt_unit_summary`:
   images of a prompt averaged first; standard error and 95% interval over prompts),
   per benchmark category as well;
5. write the per-image scores and one record per metric (:mod:`lpo.evals.store`) in one
   atomic append, so an interrupted evaluation leaves no records.

Under ``accelerate launch`` (several processes) the (prompt, image) jobs are sharded
round-robin across processes for both generation and scoring; each process writes its
own images into the shared cache, scores are gathered, and the main process writes.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from lpo.errors import LpoError
from lpo.evals.benchmarks import BENCHMARKS, PromptSet
from lpo.evals.checkpoints import Checkpoint, resolve_checkpoint
from lpo.evals.image_cache import ImageCache, default_cache_dir
from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.store import DEFAULT_RESULTS_DIR, ResultRecord, append_records, now, summary_fields, write_per_prompt
from lpo.generate import DTYPES, generate_images, image_seed

SAMPLERS = ("ddim",)  # the one sampler lpo's pipelines load with (lpo.models swaps in DDIM)
METRIC_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class EvalProtocol:
    """How images are made (SPEC §6.2); recorded in every result record.

    ``resolution`` None means the model's native size (the record also stores the size
    the images actually have). Only ``images_per_prompt`` and ``batch_size`` may change
    without changing any image.
    """

    sampler: str = "ddim"
    steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 0.0
    resolution: int | None = None
    dtype: str = "fp32"
    images_per_prompt: int = 4
    seed: int = 42
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise LpoError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if self.dtype not in DTYPES:
            raise LpoError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        for name in ("steps", "images_per_prompt", "batch_size"):
            if getattr(self, name) < 1:
                raise LpoError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise LpoError(f"resolution must be a multiple of 8 (>= 8), got {self.resolution}")
        if not self.eta >= 0:
            raise LpoError(f"eta must be >= 0, got {self.eta}")

    def pixel_settings(self) -> dict[str, Any]:
        """The settings that change pixels (the image cache key)."""
        d = asdict(self)
        return {k: d[k] for k in ("sampler", "steps", "guidance_scale", "eta", "resolution", "dtype", "seed")}

    def pixel_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.pixel_settings(), sort_keys=True).encode()).hexdigest()[:16]

    def summary(self) -> str:
        res = "native" if self.resolution is None else f"{self.resolution}px"
        return (
            f"{self.sampler.upper()} {self.steps} · CFG {self.guidance_scale:g} · {self.images_per_prompt} img/prompt · "
            f"seed {self.seed} · {res} · {self.dtype}"
        )


@dataclass
class EvalConfig:
    """One ``lpo eval`` invocation, resolved (printed by ``--dry-run``)."""

    checkpoint: str
    benchmark: str = "world"
    prompts: str | None = None  # the benchmark's prompt source (path or dataset id); None: its default
    metrics: tuple[str, ...] = ()  # empty: the benchmark's default metrics
    max_prompts: int | None = None
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    metric_weights: dict[str, str] = field(default_factory=dict)
    metric_processors: dict[str, str] = field(default_factory=dict)  # tokenizer / image processor refs
    metric_dtype: str = "float32"
    metric_batch_size: int = 16
    device: str = "auto"
    label: str | None = None
    cache_dir: Path | None = None  # None: $LPO_HOME/eval-images
    results_dir: Path | None = DEFAULT_RESULTS_DIR  # None: write nothing

    def __post_init__(self) -> None:
        if self.max_prompts is not None and self.max_prompts < 1:
            raise LpoError(f"max_prompts must be >= 1, got {self.max_prompts}")
        if self.metric_batch_size < 1:
            raise LpoError(f"metric_batch_size must be >= 1, got {self.metric_batch_size}")
        if self.metric_dtype not in METRIC_DTYPES:
            raise LpoError(f"unknown metric dtype {self.metric_dtype!r}; use one of {', '.join(METRIC_DTYPES)}")

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class MetricTiming:
    load_s: float
    score_s: float


@dataclass
class EvalOutput:
    """What one evaluation produced. ``scores[metric_key][i][k]``: image ``k`` of prompt ``i``."""

    eval_id: str
    checkpoint: Checkpoint
    prompt_set: PromptSet
    protocol: EvalProtocol
    records: list[ResultRecord]
    scores: dict[str, list[list[float]]]
    images_generated: int
    images_cached: int
    generate_s: float
    metric_timing: dict[str, MetricTiming]
    written: list[Path]
    image_folder: Path


# --------------------------------------------------------------------------- processes


@dataclass
class _Processes:
    """This process's place among the evaluation's processes (one without accelerate)."""

    index: int = 0
    count: int = 1
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def gather(self, items: list) -> list:
        if self.state is None:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)


def _processes(device: str) -> _Processes:
    # accelerate launch / torchrun set WORLD_SIZE; a plain run stays free of any distributed state.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Processes()
    import torch
    from accelerate import PartialState

    # Without cpu=True accelerate treats CPU processes as unrelated single runs (gloo unused).
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if state.num_processes != world_size:
        # Each process would evaluate everything and write its own copy of the records.
        raise LpoError(
            f"launched as {world_size} processes but accelerate joined {state.num_processes}; "
            "launch with `accelerate launch --num_processes N` (GPUs) or torchrun, or run one process"
        )
    return _Processes(state.process_index, state.num_processes, state)


# --------------------------------------------------------------------------- resolution


def _resolve_metrics(config: EvalConfig, benchmark) -> list[str]:
    import lpo.evals.metrics  # noqa: F401  (registers the real-mode metrics)
    import lpo.evals.metrics.world  # noqa: F401  (registers the world judges)

    names = list(config.metrics) or list(benchmark.default_metrics)
    for name in names:
        METRICS.get(name)  # unknown -> LpoError listing the known metrics
    if len(set(names)) != len(names):
        raise LpoError(f"metric listed twice in {', '.join(names)}; list each once")
    from lpo.models import _HUB_ID

    for what, refs in (("weights", config.metric_weights), ("processor", config.metric_processors)):
        for name, ref in refs.items():
            if name not in names:
                raise LpoError(f"{what} given for metric {name!r}, which is not evaluated ({', '.join(names)}); fix the name")
            if not Path(ref).expanduser().exists() and not _HUB_ID.match(ref):
                raise LpoError(f"{what} {ref!r} for metric {name!r}: no such file or folder, and not a hub id; fix the path")
    return names


def _metric_spec(config: EvalConfig, name: str, device) -> MetricSpec:
    extra = {"processor": config.metric_processors[name]} if name in config.metric_processors else {}
    return MetricSpec(
        weights=config.metric_weights.get(name), device=str(device), dtype=config.metric_dtype,
        batch_size=config.metric_batch_size, **extra,
    )


def _build_metric(name: str, spec: MetricSpec):
    from lpo.io import one_line

    try:
        metric = METRICS.get(name)(spec)
    except LpoError:
        raise
    except Exception as err:  # any load failure of a metric model is fixable by the user
        where = spec.weights or "its default weights"
        raise LpoError(
            f"metric {name!r} could not load {where} ({one_line(err)}); check --metric-weights {name}=PATH "
            "(a complete local folder/file or a reachable hub id)"
        ) from err
    for attr in ("name", "version", "higher_is_better"):
        if not hasattr(metric, attr):
            raise TypeError(f"metric {name!r} built an object without {attr!r}")
    return metric


class _PipelineImages:
    """A diffusers pipeline sampled under the protocol, loaded on first use."""

    def __init__(self, checkpoint: Checkpoint, protocol: EvalProtocol, device) -> None:
        self.checkpoint, self.protocol, self.device = checkpoint, protocol, device
        self.pipeline = None

    def images(self, prompts: list[str], seeds: list[int]):
        if self.pipeline is None:
            self.pipeline = self.checkpoint.load_pipeline(str(self.device), self.protocol.dtype)
        p = self.protocol
        return generate_images(
            self.pipeline, prompts, seeds, num_inference_steps=p.steps, guidance_scale=p.guidance_scale,
            eta=p.eta, resolution=p.resolution,
        )


def _device(config: EvalConfig, procs: _Processes):
    if procs.state is not None:
        return procs.state.device
    from lpo.generate import resolve_device

    return resolve_device(config.device)


# --------------------------------------------------------------------------- the harness


def run_eval(config: EvalConfig, console=None) -> EvalOutput:
    """Evaluate ``config.checkpoint`` on ``config.benchmark``; see the module docstring."""
    from lpo.progress import count_progress
    from lpo.runs import DeviceMeter
    from lpo.world.benchmark import prompt_unit_summary

    protocol = config.protocol
    procs = _processes(config.device)
    device = _device(config, procs)
    meter = DeviceMeter(device, procs.count)
    show = console if procs.is_main else None

    with meter.stage("evaluation"):
        # 1. Everything that can be wrong, before any work.
        benchmark = BENCHMARKS.get(config.benchmark)(config.prompts)
        prompt_set = benchmark.prompt_set(config.max_prompts)
        metric_names = _resolve_metrics(config, benchmark)
        prompts = list(prompt_set.prompts)
        checkpoint = resolve_checkpoint(config.checkpoint, benchmark, prompts)
        if config.label:
            checkpoint.label = config.label
        cache = ImageCache(config.cache_dir or default_cache_dir(), checkpoint.content_hash, protocol.pixel_hash())

        # 2. Generate what the cache lacks (this process's shard of the jobs).
        jobs = [(i, k) for i in range(len(prompts)) for k in range(protocol.images_per_prompt)]
        mine = jobs[procs.index :: procs.count]
        missing = [(i, k) for i, k in mine if not cache.has(prompts[i], k)]
        started = time.perf_counter()
        if missing:
            if procs.is_main:
                cache.write_description(
                    {"checkpoint": checkpoint.as_dict(), "protocol": protocol.pixel_settings(), "written": now()}
                )
            source = benchmark.reference_source(checkpoint.spec, prompts) if checkpoint.kind == "reference" else None
            source = source or _PipelineImages(checkpoint, protocol, device)
            with count_progress(show, f"generating {checkpoint.label}") as progress:
                for start in range(0, len(missing), protocol.batch_size):
                    batch = missing[start : start + protocol.batch_size]
                    batch_prompts = [prompts[i] for i, _ in batch]
                    seeds = [image_seed(protocol.seed, p, k) for p, (_, k) in zip(batch_prompts, batch)]
                    images = source.images(batch_prompts, seeds)
                    for (i, k), image in zip(batch, images):
                        cache.save(prompts[i], k, image)
                    progress(start + len(batch), len(missing))
            del source
        generate_s = time.perf_counter() - started
        procs.wait()

        # 3. Score every image with every metric, one metric loaded at a time.
        scores: dict[str, list[list[float]]] = {}
        timing: dict[str, MetricTiming] = {}
        metrics_info: dict[str, dict[str, Any]] = {}
        for name in metric_names:
            spec = _metric_spec(config, name, device)
            t0 = time.perf_counter()
            metric = _build_metric(name, spec)
            load_s = time.perf_counter() - t0
            mine_scores: list[tuple[int, int, float]] = []
            t0 = time.perf_counter()
            with count_progress(show, f"scoring {name}") as progress:
                for start in range(0, len(mine), spec.batch_size):
                    batch = mine[start : start + spec.batch_size]
                    values = metric.score([cache.load(prompts[i], k) for i, k in batch], [prompts[i] for i, _ in batch])
                    values = [float(v) for v in values.detach().cpu().reshape(-1).tolist()]
                    if len(values) != len(batch) or not all(math.isfinite(v) for v in values):
                        raise RuntimeError(f"metric {name!r} returned {values[:4]}... for {len(batch)} images; expected one finite float each")
                    mine_scores += [(i, k, v) for (i, k), v in zip(batch, values)]
                    progress(start + len(batch), len(mine))
            score_s = time.perf_counter() - t0
            key = f"{name}@{metric.version}"
            loaded = getattr(metric, "weights", None)  # the real metrics record what they loaded
            metrics_info[name] = {
                "key": key,
                "version": str(metric.version),
                "higher_is_better": bool(metric.higher_is_better),
                "formula": getattr(metric, "formula", None),
                "weights": json.dumps(loaded, sort_keys=True) if isinstance(loaded, dict) and loaded else spec.weights,
            }
            grid = [[math.nan] * protocol.images_per_prompt for _ in prompts]
            for i, k, v in procs.gather(mine_scores):
                grid[i][k] = v
            scores[key] = grid
            # Wall time of the slowest process is what the evaluation waited for.
            timings = procs.gather([(load_s, score_s)])
            timing[key] = MetricTiming(max(t[0] for t in timings), max(t[1] for t in timings))
            del metric
            _release_memory()
        generated = sum(procs.gather([len(missing)]))
        generate_s = max(procs.gather([generate_s]))

    # 4. Summaries and records (main process only).
    eval_id = f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    first = cache.load(prompts[0], 0)
    protocol_record = {**asdict(protocol), "image_size": list(first.size)}
    records: list[ResultRecord] = []
    written: list[Path] = []
    if procs.is_main:
        per_prompt_ref: tuple[str | None, str | None] = (None, None)
        if config.results_dir is not None:
            per_prompt_ref = write_per_prompt(
                config.results_dir,
                benchmark.name,
                eval_id,
                {
                    "eval_id": eval_id,
                    "benchmark": f"{benchmark.name}@{benchmark.version}",
                    "prompt_set_hash": prompt_set.hash,
                    "checkpoint": checkpoint.as_dict(),
                    "prompts": prompts,
                    "categories": list(prompt_set.categories) if prompt_set.categories else None,
                    "seeds": [[image_seed(protocol.seed, p, k) for k in range(protocol.images_per_prompt)] for p in prompts],
                    "scores": scores,
                },
            )
        from lpo.io import run_metadata

        environment = run_metadata()
        eval_cost = meter.as_dict()
        for name in metric_names:
            info = metrics_info[name]
            grid = scores[info["key"]]
            breakdown = None
            if prompt_set.categories is not None:
                breakdown = []  # a list keeps the benchmark's category order through JSON
                for category in dict.fromkeys(prompt_set.categories):
                    rows = [grid[i] for i, c in enumerate(prompt_set.categories) if c == category]
                    breakdown.append({"category": category, **summary_fields(prompt_unit_summary(rows))})
            t = timing[info["key"]]
            records.append(
                ResultRecord(
                    eval_id=eval_id,
                    created=now(),
                    benchmark=benchmark.name,
                    benchmark_version=benchmark.version,
                    prompt_set_hash=prompt_set.hash,
                    prompt_source=prompt_set.source,
                    metric=name,
                    metric_version=info["version"],
                    higher_is_better=info["higher_is_better"],
                    metric_weights=info["weights"],
                    metric_formula=info["formula"],
                    **summary_fields(prompt_unit_summary(grid)),
                    breakdown=breakdown,
                    checkpoint=checkpoint.as_dict() | ({"hub_commit": checkpoint.extra["hub_commit"]} if "hub_commit" in checkpoint.extra else {}),
                    method=checkpoint.method,
                    base_model=checkpoint.base_model,
                    run_id=checkpoint.run_id,
                    optimised_reward=checkpoint.optimised_reward,
                    protocol=protocol_record,
                    protocol_hash=protocol.pixel_hash(),
                    per_prompt=per_prompt_ref[0],
                    per_prompt_sha256=per_prompt_ref[1],
                    image_cache=str(cache.folder.resolve()),
                    training_cost=checkpoint.training_cost,
                    eval_cost=eval_cost,
                    timing={
                        "generate_s": generate_s,
                        "images_generated": generated,
                        "images_cached": len(jobs) - generated,
                        "metric_load_s": t.load_s,
                        "metric_score_s": t.score_s,
                        "processes": procs.count,
                    },
                    environment=environment,
                )
            )
        if config.results_dir is not None:
            written = append_records(config.results_dir, records)
    procs.wait()
    return EvalOutput(
        eval_id=eval_id,
        checkpoint=checkpoint,
        prompt_set=prompt_set,
        protocol=protocol,
        records=records,
        scores=scores,
        images_generated=generated,
        images_cached=len(jobs) - generated,
        generate_s=generate_s,
        metric_timing=timing,
        written=written,
        image_folder=cache.folder,
    )


def _release_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def render_eval(output: EvalOutput, console) -> None:
    """The records of one evaluation as a rich table, then where the time went."""
    from rich.table import Table

    ps = output.prompt_set
    table = Table(title=f"{output.checkpoint.label} · {len(ps)} prompts ({ps.hash}) · {output.protocol.summary()}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right")
    for r in output.records:
        ci = f"[{r.ci95[0]:.4g}, {r.ci95[1]:.4g}]" if r.ci95 else "—"
        table.add_row(r.metric_key, f"{r.value:.4g}", ci, f"{r.n_prompts} × {r.n_images // max(r.n_prompts, 1)}")
    console.print(table)
    breakdowns = [r for r in output.records if r.breakdown]
    if breakdowns:
        sub = Table(title="by category (mean over prompts)")
        sub.add_column("metric")
        for entry in breakdowns[0].breakdown:
            sub.add_column(entry["category"], justify="right")
        for r in breakdowns:
            sub.add_row(r.metric_key, *(f"{entry['value']:.3f}" for entry in r.breakdown))
        console.print(sub)
    parts = [f"generated {output.images_generated} images in {output.generate_s:.1f} s ({output.images_cached} from cache)"]
    parts += [f"{k}: load {t.load_s:.1f} s, score {t.score_s:.1f} s" for k, t in output.metric_timing.items()]
    console.print(" · ".join(parts))
    if output.written:
        console.print(f"appended {len(output.records)} records to " + ", ".join(str(p) for p in output.written))


def named_refs(values: Sequence[str], flag: str) -> dict[str, str]:
    """``["pickscore=/models/ps", ...]`` -> ``{"pickscore": "/models/ps"}`` (CLI NAME=REF options)."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, ref = value.partition("=")
        if not sep or not name.strip() or not ref.strip():
            raise LpoError(f"{flag} {value!r} is not NAME=REF; write e.g. {flag} pickscore=/models/PickScore_v1")
        if name.strip() in out:
            raise LpoError(f"{flag} gives {name.strip()!r} twice; give each metric once")
        out[name.strip()] = ref.strip()
    return out
