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
   then, and released before the next), timing load and scoring apart from generation.
   A *set* metric (``per_prompt = True``: the diversity measures of
   :mod:`lpo.evals.metrics.diversity`) scores the images of one prompt together, one
   value per prompt. With no ``--metric``, the benchmark's defaults are scored plus its
   diversity measure (:func:`default_metrics`);
4. summarise with the prompt as the unit (:func:`lpo.evals.statistics.prompt_unit_summary`:
   images of a prompt averaged first; standard error and 95% interval over prompts),
   per benchmark category as well; a benchmark whose official overall is the mean of
   its categories (GenEval: ``overall = "category_mean"``) gets that as the value
   (:func:`summarise`), and every record says which aggregation it holds. Unset CFG and
   images per prompt come from the checkpoint and the benchmark (:func:`resolve_protocol`);
5. write the per-image scores and one record per metric (:mod:`lpo.evals.store`) in one
   atomic append, so an interrupted evaluation leaves no records.

Under ``accelerate launch`` (several processes) the (prompt, image) jobs are sharded
round-robin across processes for both generation and scoring; each process writes its
own images into the shared cache, scores are gathered, and the main process writes.
"""

from __future__ import annotations

import gc
import json
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from lpo.core.errors import LpoError
from lpo.evals.benchmarks import BENCHMARKS, PromptSet
from lpo.evals.checkpoints import Checkpoint, resolve_checkpoint
from lpo.evals.image_cache import ImageCache, default_cache_dir
from lpo.evals.metrics import declared
from lpo.evals.metrics.base import METRIC_ATTRIBUTES, METRICS, MetricSpec
from lpo.evals.processes import Processes, eval_processes
from lpo.evals.store import DEFAULT_RESULTS_DIR, ResultRecord, append_new_records, now, records_path, write_per_prompt
from lpo.evals.summaries import aggregation_of, summarise
from lpo.core.dtypes import canonical_dtype
from lpo.evals.protocol import (  # noqa: F401  (EvalProtocol and its defaults are part of the harness's interface)
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_IMAGES_PER_PROMPT,
    PROTOCOL_FIELDS,
    SAMPLERS,
    EvalProtocol,
    resolve_protocol,
)
from lpo.sampling.generate import generate_images, image_seed
from lpo.core.io import check_writable

METRIC_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # the metrics take torch's names


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
    registry: Path | None = None  # a checkpoint registry file besides the shipped one and $LPO_HOME/checkpoints.json

    def __post_init__(self) -> None:
        if self.max_prompts is not None and self.max_prompts < 1:
            raise LpoError(f"max_prompts must be >= 1, got {self.max_prompts}")
        if self.metric_batch_size < 1:
            raise LpoError(f"metric_batch_size must be >= 1, got {self.metric_batch_size}")
        self.metric_dtype = METRIC_DTYPES[canonical_dtype(self.metric_dtype)]  # fp16 or float16 -> torch's name

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
    protocol_sources: dict[str, str] = field(default_factory=dict)  # where CFG / images per prompt came from
    # records the store already held for this very evaluation (same checkpoint hash, protocol,
    # metric): not appended again; ``records`` holds them in place of the new ones
    repeated: list[ResultRecord] = field(default_factory=list)


# --------------------------------------------------------------------------- resolution


# The diversity measure reported beside quality (SPEC §6 issue 7): per prompt across its
# seeds. A benchmark may name its own (the world's read the judges' attribute spread);
# the others compare CLIP embeddings.
REAL_DIVERSITY = "clip_diversity"


def default_metrics(benchmark, images_per_prompt: int) -> list[str]:
    """The benchmark's default metrics, plus its diversity measure when a prompt has >= 2 images."""
    names = list(benchmark.default_metrics)
    diversity = getattr(benchmark, "diversity_metric", None) or REAL_DIVERSITY
    if images_per_prompt >= 2 and diversity not in names:
        names.append(diversity)
    return names


def _resolve_metrics(config: EvalConfig, benchmark, protocol: EvalProtocol) -> list[str]:
    from lpo.evals.metrics import load_metrics

    load_metrics()
    names = list(config.metrics) or default_metrics(benchmark, protocol.images_per_prompt)
    for name in names:
        METRICS.get(name)  # unknown -> LpoError listing the known metrics
    if len(set(names)) != len(names):
        raise LpoError(f"metric listed twice in {', '.join(names)}; list each once")
    from lpo.models.components import _HUB_ID

    for what, refs in (("weights", config.metric_weights), ("processor", config.metric_processors)):
        for name, ref in refs.items():
            if name not in names:
                raise LpoError(f"{what} given for metric {name!r}, which is not evaluated ({', '.join(names)}); fix the name")
            if not Path(ref).expanduser().exists() and not _HUB_ID.match(ref):
                raise LpoError(f"{what} {ref!r} for metric {name!r}: no such file or folder, and not a hub id; fix the path")
    for name in names:
        if getattr(declared(name), "per_prompt", False) and protocol.images_per_prompt < 2:
            raise LpoError(f"metric {name!r} compares the images of a prompt; use --images-per-prompt 2 or more")
    return names


def _metric_spec(config: EvalConfig, name: str, device) -> MetricSpec:
    extra = {"processor": config.metric_processors[name]} if name in config.metric_processors else {}
    return MetricSpec(
        weights=config.metric_weights.get(name), device=str(device), dtype=config.metric_dtype,
        batch_size=config.metric_batch_size, **extra,
    )


def build_metric(name: str, spec: MetricSpec):
    from lpo.core.io import one_line

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
    missing = [attr for attr in METRIC_ATTRIBUTES if not hasattr(metric, attr)]
    if missing:
        raise TypeError(f"metric {name!r} built an object without {', '.join(missing)} (see lpo.evals.metrics.base.Metric)")
    if metric.per_prompt and not hasattr(metric, "score_sets"):
        raise TypeError(f"metric {name!r} is per_prompt but has no score_sets (see lpo.evals.metrics.base.SetScoringMetric)")
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


def _device(config: EvalConfig, procs: Processes):
    if procs.state is not None:
        return procs.state.device
    from lpo.sampling.generate import resolve_device

    return resolve_device(config.device)


# --------------------------------------------------------------------------- the harness


@dataclass
class _Plan:
    """Step 1's result: everything resolved and checked before any work."""

    benchmark: Any
    prompt_set: PromptSet
    prompts: list[str]
    checkpoint: Checkpoint
    protocol: EvalProtocol
    protocol_sources: dict[str, str]
    metric_names: list[str]
    cache: ImageCache
    jobs: list[tuple[int, int]]  # (prompt index, image index), all processes'


def run_eval(config: EvalConfig, console=None) -> EvalOutput:
    """Evaluate ``config.checkpoint`` on ``config.benchmark``; see the module docstring."""
    from lpo.core.runs import DeviceMeter

    procs = eval_processes(config.device)
    device = _device(config, procs)
    meter = DeviceMeter(device, procs.count)
    show = console if procs.is_main else None

    with meter.stage("evaluation"):
        plan = _resolve(config, procs)  # 1. everything that can be wrong, before any work
        _check_metrics_load(config, plan, device)  # 1b. before images are made that nothing could score
        generated, generate_s = _generate(plan, procs, device, show)  # 2. what the cache lacks
        scores, timing, metrics_info = {}, {}, {}
        for name in plan.metric_names:  # 3. every image with every metric, one metric loaded at a time
            key, grid, timing[key], metrics_info[name] = _score_metric(config, plan, name, procs, device, show)
            scores[key] = grid

    eval_id = f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    records: list[ResultRecord] = []
    written: list[Path] = []
    repeated: list[ResultRecord] = []
    if procs.is_main:  # 4. summaries and records (main process only)
        records, repeated, written = _write_records(config, plan, eval_id, scores, timing, metrics_info, meter, generated, generate_s, procs)
    procs.wait()
    return EvalOutput(
        eval_id=eval_id,
        checkpoint=plan.checkpoint,
        prompt_set=plan.prompt_set,
        protocol=plan.protocol,
        records=records,
        scores=scores,
        images_generated=generated,
        images_cached=len(plan.jobs) - generated,
        generate_s=generate_s,
        metric_timing=timing,
        written=written,
        image_folder=plan.cache.folder,
        protocol_sources=plan.protocol_sources,
        repeated=repeated,
    )


def _resolve(config: EvalConfig, procs: Processes) -> _Plan:
    """Step 1: the benchmark and its prompts, the checkpoint, the protocol, the metric names,
    the image cache; a results folder that cannot be written fails here, not after scoring."""
    benchmark = BENCHMARKS.get(config.benchmark)(config.prompts)
    prompt_set = benchmark.prompt_set(config.max_prompts)
    prompts = list(prompt_set.prompts)
    checkpoint = resolve_checkpoint(config.checkpoint, benchmark, prompts, registry=config.registry)
    protocol, protocol_sources = resolve_protocol(config.protocol, benchmark, checkpoint)
    metric_names = _resolve_metrics(config, benchmark, protocol)
    if config.label:
        checkpoint.label = config.label
    cache = ImageCache(config.cache_dir or default_cache_dir(), checkpoint.content_hash, protocol.pixel_hash())
    if config.results_dir is not None and procs.is_main:
        check_writable(Path(config.results_dir), "the results folder (--results-dir)")
    jobs = [(i, k) for i in range(len(prompts)) for k in range(protocol.images_per_prompt)]
    return _Plan(benchmark, prompt_set, prompts, checkpoint, protocol, protocol_sources, metric_names, cache, jobs)


def _check_metrics_load(config: EvalConfig, plan: _Plan, device) -> None:
    """When images have to be generated first, load every metric once (then free it), so
    that missing or broken weights fail in seconds, not after hours of sampling. With every
    image cached there is nothing to save: the metrics load when they score."""
    if all(plan.cache.has(plan.prompts[i], k) for i, k in plan.jobs):
        return
    for name in plan.metric_names:
        metric = build_metric(name, _metric_spec(config, name, device))
        del metric
        _release_memory()


def _generate(plan: _Plan, procs: Processes, device, show) -> tuple[int, float]:
    """Step 2: generate the images of this process's shard that the cache lacks.
    Returns (images generated by all processes, wall seconds of the slowest)."""
    from lpo.core.progress import count_progress

    prompts, protocol, cache, checkpoint = plan.prompts, plan.protocol, plan.cache, plan.checkpoint
    mine = plan.jobs[procs.index :: procs.count]
    missing = [(i, k) for i, k in mine if not cache.has(prompts[i], k)]
    started = time.perf_counter()
    if missing:
        if procs.is_main:
            cache.write_description({"checkpoint": checkpoint.as_dict(), "protocol": protocol.pixel_settings(), "written": now()})
        source = plan.benchmark.reference_source(checkpoint.spec, prompts) if checkpoint.kind == "reference" else None
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
    return sum(procs.gather([len(missing)])), max(procs.gather([generate_s]))


def _score_metric(config: EvalConfig, plan: _Plan, name: str, procs: Processes, device, show):
    """Step 3 for one metric: (key, score grid, timing, info). A set metric (diversity)
    scores the images of one prompt together: its jobs are prompts, its grid one value each."""
    from lpo.core.progress import count_progress

    prompts, protocol, cache = plan.prompts, plan.protocol, plan.cache
    mine = plan.jobs[procs.index :: procs.count]
    my_prompts = list(range(len(prompts)))[procs.index :: procs.count]
    spec = _metric_spec(config, name, device)
    t0 = time.perf_counter()
    metric = build_metric(name, spec)
    load_s = time.perf_counter() - t0
    per_prompt = bool(metric.per_prompt)
    mine_scores: list[tuple[int, int, float]] = []
    t0 = time.perf_counter()
    with count_progress(show, f"scoring {name}") as progress:
        if per_prompt:
            for start in range(0, len(my_prompts), spec.batch_size):
                batch_ids = my_prompts[start : start + spec.batch_size]
                sets = [[cache.load(prompts[i], k) for k in range(protocol.images_per_prompt)] for i in batch_ids]
                values = _finite(name, metric.score_sets(sets, [prompts[i] for i in batch_ids]), len(batch_ids))
                mine_scores += [(i, 0, v) for i, v in zip(batch_ids, values)]
                progress(start + len(batch_ids), len(my_prompts))
        else:
            for start in range(0, len(mine), spec.batch_size):
                batch = mine[start : start + spec.batch_size]
                values = metric.score([cache.load(prompts[i], k) for i, k in batch], [prompts[i] for i, _ in batch])
                values = _finite(name, values, len(batch))
                mine_scores += [(i, k, v) for (i, k), v in zip(batch, values)]
                progress(start + len(batch), len(mine))
    score_s = time.perf_counter() - t0
    key = f"{name}@{metric.version}"
    loaded = metric.weights  # what the metric loaded
    info = {
        "key": key,
        "version": str(metric.version),
        "higher_is_better": bool(metric.higher_is_better),
        "formula": metric.formula,
        "weights": json.dumps(loaded, sort_keys=True) if isinstance(loaded, dict) and loaded else spec.weights,
        "per_prompt": per_prompt,
    }
    grid = [[math.nan] * (1 if per_prompt else protocol.images_per_prompt) for _ in prompts]
    for i, k, v in procs.gather(mine_scores):
        grid[i][k] = v
    # Wall time of the slowest process is what the evaluation waited for.
    timings = procs.gather([(load_s, score_s)])
    del metric
    _release_memory()
    return key, grid, MetricTiming(max(t[0] for t in timings), max(t[1] for t in timings)), info


def _write_records(config: EvalConfig, plan: _Plan, eval_id: str, scores, timing, metrics_info, meter,
                   generated: int, generate_s: float, procs: Processes,
                   ) -> tuple[list[ResultRecord], list[ResultRecord], list[Path]]:
    """Step 4: the per-image scores and one record per metric, written in one atomic append;
    (records, the ones the store already held, files appended to). A record the store holds
    already (:func:`lpo.evals.store.evaluation_key`) is not appended twice."""
    from lpo.evals.signals import training_signals
    from lpo.core.io import run_metadata

    benchmark, prompt_set, prompts, protocol, checkpoint = plan.benchmark, plan.prompt_set, plan.prompts, plan.protocol, plan.checkpoint
    first = plan.cache.load(prompts[0], 0)
    protocol_record = {
        **asdict(protocol),
        "image_size": list(first.size),
        **{f"{name}_from": source for name, source in plan.protocol_sources.items()},
    }
    aggregation = aggregation_of(benchmark)
    signals = training_signals(checkpoint)
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
                # set metrics hold one value per prompt (scores[key][i] == [value])
                "per_prompt_metrics": [info["key"] for info in metrics_info.values() if info["per_prompt"]],
            },
        )
    environment = run_metadata()
    eval_cost = meter.as_dict()
    records: list[ResultRecord] = []
    for name in plan.metric_names:
        info = metrics_info[name]
        grid = scores[info["key"]]
        n_images = len(prompts) * protocol.images_per_prompt if info["per_prompt"] else None
        summary, breakdown = summarise(grid, prompt_set.categories, aggregation, n_images)
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
                **summary,
                breakdown=breakdown,
                aggregation=aggregation,
                checkpoint=checkpoint.as_dict() | ({"hub_commit": checkpoint.extra["hub_commit"]} if "hub_commit" in checkpoint.extra else {}),
                method=checkpoint.method,
                base_model=checkpoint.base_model,
                run_id=checkpoint.run_id,
                optimised_reward=checkpoint.optimised_reward,
                training_signals=signals,
                protocol=protocol_record,
                protocol_hash=protocol.pixel_hash(),
                per_prompt=per_prompt_ref[0],
                per_prompt_sha256=per_prompt_ref[1],
                image_cache=str(plan.cache.folder.resolve()),
                training_cost=checkpoint.training_cost,
                eval_cost=eval_cost,
                timing={
                    "generate_s": generate_s,
                    "images_generated": generated,
                    "images_cached": len(plan.jobs) - generated,
                    "metric_load_s": t.load_s,
                    "metric_score_s": t.score_s,
                    "processes": procs.count,
                },
                environment=environment,
            )
        )
    if config.results_dir is None:
        return records, [], []
    appended, repeated = append_new_records(config.results_dir, records, companion=per_prompt_ref[0])
    written = sorted({records_path(config.results_dir, r.benchmark) for r in appended})
    new_ids = {id(r) for r in appended}
    stored = iter(repeated)
    return [r if id(r) in new_ids else next(stored) for r in records], repeated, written


def _finite(name: str, values, n: int) -> list[float]:
    """One finite float per job, or a RuntimeError naming the metric (a metric bug, not the user's)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().reshape(-1).tolist()
    values = [float(v) for v in values]
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise RuntimeError(f"metric {name!r} returned {values[:4]}... for {n} jobs; expected one finite float each")
    return values


def _release_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
