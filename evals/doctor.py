"""`lpo doctor`: load what a real run will load, before the run, and say what it found.

For each named metric: build it as ``lpo eval`` does (weights by hub id or local path, the
strict key check of its loader: a missing or unexpected key is an error), time the load,
and score a fixed set of synthetic images with fixed prompts, so two machines (or two
versions of a weights folder) can compare their numbers line by line. For each named
checkpoint: its protocol card (what ``lpo eval`` records: content hash, base, adapter,
CFG of its original evaluation, published row) and, with ``load``, the pipeline loaded as
``lpo eval`` loads it (a LoRA must adapt the modules its file names; weights must be
finite), with its parameter counts.

Comparison with the upstream packages is the parity tests' job (``pytest -m parity``),
and the published base rows are checked by evaluating with the published protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from lpo.core.errors import LpoError

DOCTOR_PROMPTS = ("a photo of a red cat", "two small blue birds above a green tree", "a house by a lake at dawn",
                  "a red circle")
DOCTOR_IMAGE_SIDE = 256


def doctor_images(side: int = DOCTOR_IMAGE_SIDE) -> list[Image.Image]:
    """Four fixed synthetic RGB images (seeded noise over colour gradients): the same everywhere."""
    rng = np.random.default_rng(20261207)
    ramp = np.linspace(0, 255, side, dtype=np.float64)
    images = []
    for k in range(len(DOCTOR_PROMPTS)):
        base = np.stack([np.add.outer(ramp * (k % 2), ramp * 0.5), np.add.outer(ramp * 0.3, ramp * (k % 3) / 2),
                         np.full((side, side), 40.0 * k)], axis=-1)
        noisy = np.clip(base / 2 + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(noisy))
    return images


@dataclass
class MetricCheck:
    name: str
    key: str | None = None
    comparability: str | None = None
    weights: Any = None
    load_s: float | None = None
    ms_per_image: float | None = None
    scores: list[float] = field(default_factory=list)
    error: str | None = None


def check_metric(name: str, weights: str | None = None, processor: str | None = None, device: str = "cpu",
                 dtype: str = "float32") -> MetricCheck:
    """Build ``name`` and score the fixed images; a load or scoring failure is reported, not raised."""
    from lpo.evals.harness import build_metric
    from lpo.evals.metrics.base import MetricSpec

    check = MetricCheck(name)
    spec = MetricSpec(weights=weights, device=device, dtype=dtype, processor=processor)
    try:
        started = time.perf_counter()
        metric = build_metric(name, spec)
        check.load_s = time.perf_counter() - started
        check.key, check.comparability, check.weights = f"{name}@{metric.version}", metric.comparability, metric.weights
        images, prompts = doctor_images(), list(DOCTOR_PROMPTS)
        started = time.perf_counter()
        if metric.per_prompt:
            check.scores = [float(x) for x in metric.score_sets([images, images[:2]], prompts[:2])]
        else:
            check.scores = [float(x) for x in metric.score(images, prompts)]
        check.ms_per_image = (time.perf_counter() - started) * 1000 / len(images)
    except LpoError as err:
        check.error = str(err)
    return check


def checkpoint_card(spec: str, registry: str | None = None, load: bool = False, device: str = "cpu",
                    dtype: str = "fp32") -> dict[str, Any]:
    """What ``lpo eval`` would record about ``spec``; with ``load``, what loading it found."""
    from lpo.evals.checkpoints import resolve_checkpoint

    ckpt = resolve_checkpoint(spec, registry=registry)
    card = {
        "spec": spec, "label": ckpt.label, "content hash": ckpt.content_hash, "method": ckpt.method,
        "model": ckpt.path or ckpt.hub_id or ckpt.base, "base model": ckpt.base_model,
        "adapter": f"{ckpt.adapter_kind} {ckpt.adapter_path}" if ckpt.adapter_kind else None,
        "vae": ckpt.vae, "CFG of its original evaluation": ckpt.guidance_scale, "published as": ckpt.published_as,
        "run": ckpt.run_path,
    }
    if load:
        from lpo.evals.checkpoints import _denoiser
        from lpo.trainers.lora import adapted_modules

        started = time.perf_counter()
        pipe = ckpt.load_pipeline(device, dtype)  # the LoRA and finite-weight checks of lpo eval
        card["load seconds"] = round(time.perf_counter() - started, 1)
        denoiser = _denoiser(pipe)  # the U-Net, or a flow pipeline's transformer
        card["U-Net parameters" if getattr(pipe, "unet", None) is not None else "transformer parameters"] = \
            sum(p.numel() for p in denoiser.parameters())
        if ckpt.adapter_kind == "lora":
            card["LoRA modules adapted"] = len(adapted_modules(denoiser))
    return {k: v for k, v in card.items() if v is not None}


def run_doctor(metrics: Sequence[str], checkpoints: Sequence[str], *, metric_weights: dict[str, str] | None = None,
               metric_processors: dict[str, str] | None = None, device: str = "cpu", dtype: str = "fp32",
               registry: str | None = None, load: bool = True, console: Any = None) -> tuple[list[MetricCheck], list[dict]]:
    """Check every metric and checkpoint; prints a table per kind when given a console.

    ``dtype``: fp32, fp16 or bf16 (torch's names too), for the metrics and the pipelines alike."""
    from lpo.core.dtypes import canonical_dtype
    from lpo.evals.harness import METRIC_DTYPES
    from lpo.evals.metrics import load_metrics

    dtype = canonical_dtype(dtype)

    load_metrics()
    from lpo.evals.metrics.base import METRICS

    for name in metrics:  # a misspelt name is the user's mistake (one line, exit 2), not a failed check
        METRICS.get(name)
    weights, processors = metric_weights or {}, metric_processors or {}
    checks = []
    for name in metrics:
        if console is not None:
            console.print(f"loading metric {name} ({weights.get(name) or 'its default weights'}) ...", highlight=False)
        checks.append(check_metric(name, weights.get(name), processors.get(name), device, METRIC_DTYPES[dtype]))
    cards = []
    for spec in checkpoints:
        if console is not None:
            console.print(f"resolving checkpoint {spec}{' and loading it' if load else ''} ...", highlight=False)
        try:
            cards.append(checkpoint_card(spec, registry, load, device, dtype))
        except LpoError as err:
            cards.append({"spec": spec, "error": str(err)})
    if console is not None:
        _print(console, checks, cards)
    return checks, cards


def _print(console: Any, checks: Sequence[MetricCheck], cards: Sequence[dict]) -> None:
    from rich.table import Table

    if checks:  # one plain line per metric: two machines compare them with diff
        console.print("metrics on the fixed doctor images (lpo.evals.doctor.doctor_images):", highlight=False)
        for c in checks:
            if c.error:
                console.print(f"  {c.key or c.name}: FAILED: {c.error}", highlight=False, soft_wrap=True, markup=False)
                continue
            scores = ", ".join(f"{s:.6g}" for s in c.scores)
            console.print(f"  {c.key} [{c.comparability or 'comparability not declared'}]: load {c.load_s:.1f} s, "
                          f"{c.ms_per_image:.0f} ms/image; scores {scores}", highlight=False, soft_wrap=True, markup=False)
    for card in cards:
        table = Table(title=f"checkpoint {card['spec']}", show_header=False)
        for key, value in card.items():
            table.add_row(key, str(value))
        console.print(table)
