"""Text-to-image generation with fixed per-image seeds, through the diffusers pipeline.

Evaluation and `lpo sample` both go through here, so every image of (prompt, index)
gets the same seed whatever model is sampled: checkpoints are compared on identical
initial noise.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import numpy as np
import torch

from lpo.core.errors import LpoError
from lpo.models.families import MODEL_FAMILIES, alias_family

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def image_seed(base_seed: int, prompt: str, index: int) -> int:
    """Seed of image ``index`` of ``prompt``: independent of prompt order and batch."""
    digest = hashlib.sha256(f"{base_seed}|{prompt}|{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise LpoError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LpoError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    return resolved


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise LpoError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_model_name(model: str) -> str:
    """A model family's alias (``world`` / ``world:PRESET`` once ``lpo.world.install()``
    ran) -> its folder; anything else unchanged."""
    family = alias_family(model)
    return str(family.resolve(model)) if family is not None else model


def build_pipeline(components):
    """A diffusers pipeline over already-loaded components (DDIM scheduler, no safety checker)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if components.kind == "sdxl":
        return StableDiffusionXLPipeline(
            vae=components.vae,
            text_encoder=components.text_encoder,
            text_encoder_2=components.text_encoder_2,
            tokenizer=components.tokenizer,
            tokenizer_2=components.tokenizer_2,
            unet=components.unet,
            scheduler=components.scheduler,
            force_zeros_for_empty_prompt=components.force_zeros_for_empty_prompt,
        )
    return StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_flow_pipeline(components):
    """diffusers' ``StableDiffusion3Pipeline`` over loaded flow components (its own FlowMatch scheduler).
    It remembers the components' T5 length (:func:`generate_images` passes it on): the world flow
    model's is not the pipeline's default."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline(
        transformer=components.transformer, scheduler=components.scheduler, vae=components.vae,
        text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        text_encoder_2=components.text_encoder_2, tokenizer_2=components.tokenizer_2,
        text_encoder_3=components.text_encoder_3, tokenizer_3=components.tokenizer_3,
    )
    pipe.lpo_max_sequence_length = components.max_sequence_length
    return pipe


def load_pipeline(model: str, device: str = "auto", dtype: str = "fp32"):
    """(pipeline, components) for a model name, folder or hub id: SD1.5/SDXL/world with DDIM, or an
    SD3-style flow pipeline with its own Euler sampler."""
    from lpo.models.components import load_components
    from lpo.models.flow_components import is_flow_pipeline, load_flow_components

    name = resolve_model_name(model)
    if is_flow_pipeline(name):
        components = load_flow_components(name, dtype=resolve_dtype(dtype), device=resolve_device(device))
        pipe = build_flow_pipeline(components)
    else:
        components = load_components(name, dtype=resolve_dtype(dtype), device=resolve_device(device))
        pipe = build_pipeline(components)
    pipe.set_progress_bar_config(disable=True)
    return pipe, components


@torch.no_grad()
def generate_images(
    pipeline,
    prompts: list[str],
    seeds: list[int],
    num_inference_steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 0.0,
    resolution: int | None = None,
) -> np.ndarray:
    """(N, H, W, 3) uint8 images, image i from ``prompts[i]`` with ``seeds[i]``."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    kwargs = {}
    if resolution is not None:
        kwargs.update(height=resolution, width=resolution)
    if "eta" in inspect.signature(pipeline.__call__).parameters:  # DDIM's; a flow pipeline's Euler has none
        kwargs["eta"] = eta
    if getattr(pipeline, "lpo_max_sequence_length", None) is not None:  # flow pipelines: the components' T5 length
        kwargs["max_sequence_length"] = pipeline.lpo_max_sequence_length
    out = pipeline(
        prompt=list(prompts),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generators,
        output_type="np",
        **kwargs,
    ).images
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def _say(console):
    """A one-line printer to ``console``, or to stderr without one."""
    if console is not None:
        return lambda message: console.print(message, highlight=False, markup=False)
    import sys

    return lambda message: print(message, file=sys.stderr)


def check_sample_options(images_per_prompt: int, steps: int, guidance_scale: float) -> None:
    """The one-line errors of `lpo sample` (plain and guided), before any model is loaded."""
    if images_per_prompt < 1 or steps < 1:
        raise LpoError(f"images_per_prompt and steps must be >= 1, got {images_per_prompt} and {steps}")
    check_guidance_scale(guidance_scale)


def sample_prompts(prompts: list[str], kind: str, source: str, num_prompts: int, tokenizer, console=None) -> list[str]:
    """The prompts `lpo sample` draws: the given ones, else the model family's defaults;
    prompts the text encoder will cut are reported."""
    from lpo.models.prompts import warn_truncated

    prompts = prompts or default_prompts(kind, source, num_prompts)
    warn_truncated(tokenizer, prompts, _say(console))
    return prompts


def check_guidance_scale(guidance_scale: float) -> None:
    """One-line error for a CFG scale that is negative or not a number (eval and train refuse it too)."""
    import math

    if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
        raise LpoError(f"guidance scale must be a finite number >= 0, got {guidance_scale}; pass e.g. --cfg 5")


def read_prompts_file(path: Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise LpoError(f"prompt file {path} does not exist; pass a text file with one prompt per line")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise LpoError(f"prompt file {path} has no prompts; write one prompt per line")
    return prompts


def default_prompts(kind: str, source: str, num_prompts: int) -> list[str]:
    """A plugged-in family's models (the world: the first test prompts, round-robin over
    categories) sample its own prompts; any other model (``kind``, e.g. sd15) needs prompts given."""
    if kind not in MODEL_FAMILIES:
        raise LpoError(f"{source} is a {kind} model: pass --prompt or --prompts-file")
    return MODEL_FAMILIES.get(kind).default_prompts(num_prompts)


def run_sample(
    model: str,
    prompts: list[str],
    prompts_file: Path | None,
    num_prompts: int,
    images_per_prompt: int,
    guidance_scale: float,
    steps: int,
    seed: int,
    out: Path,
    device: str = "auto",
    dtype: str = "fp32",
    console=None,
    batch_size: int = 8,
    load=None,
) -> Path:
    """`lpo sample`: fixed-seed images of a model, saved as a captioned PNG grid.

    ``load(device, dtype)`` -> (pipeline, model kind) loads what is sampled (default:
    :func:`load_pipeline` of ``model``; `lpo sample` passes one for a run folder's or a
    registry entry's policy on its base model)."""
    from lpo.core.grid import save_grid
    from lpo.core.progress import count_progress

    check_sample_options(images_per_prompt, steps, guidance_scale)
    if prompts_file is not None:
        prompts = prompts + read_prompts_file(prompts_file)
    if load is None:
        pipe, components = load_pipeline(model, device=device, dtype=dtype)
        kind = components.kind
    else:
        pipe, kind = load(device, dtype)
    prompts = sample_prompts(prompts, kind, model, num_prompts, pipe.tokenizer, console)
    jobs = [(p, k) for p in prompts for k in range(images_per_prompt)]
    images = []
    with count_progress(console, f"sampling {model}") as progress:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            images.append(
                generate_images(
                    pipe,
                    [p for p, _ in batch],
                    [image_seed(seed, p, k) for p, k in batch],
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                )
            )
            progress(start + len(batch), len(jobs))
    images = np.concatenate(images)
    columns = min(len(images), max(images_per_prompt, 4))
    cell = 128 if images.shape[1] <= 128 else 256
    return save_grid(out, images, [p for p, _ in jobs], columns=columns, cell=cell)
