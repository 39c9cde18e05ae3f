"""Decoded images from loaded components, in batches: plain, LRM-guided and best-of-K (SPEC §5.4).

The guided sampler itself (one batch of latents, its noise layout and call counting) is
:mod:`lpo.sampling.guided`; this module runs it, plain sampling and the best-of-K baseline over
(prompt, seed) jobs with the same per-image seeds, decodes the final latents and, for
`lpo sample --guide lrm`, writes the PNG grid. Every method's image k of a prompt starts
from the same x_T, so the methods are compared on identical noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from lpo.core.errors import LpoError
from lpo.sampling.guided import (
    CallCounts,
    GuidanceConfig,
    ScorerFactory,
    branch_seed,
    cfg_rows,
    derived_seed,
    generators_for,
    guided_sample,
)
from lpo.sampling.ddim import initial_latents, sample_trajectory


@dataclass
class GeneratedImages:
    """Images from one sampling method, in job order.

    images: (B, H, W, 3) uint8.   final_latents: (B, C, H, W) on CPU.
    counts: model evaluations (totals; ``counts.per_image()``).
    scores / choices: guided — (B, S, K) / (B, S) per branched step; best-of-K — (B, K) / (B,).
    """

    method: str
    images: np.ndarray
    final_latents: Tensor
    counts: CallCounts
    scores: Tensor | None = None
    choices: Tensor | None = None
    extra: dict = field(default_factory=dict)


def decode_latents(vae, latents: Tensor) -> np.ndarray:
    """(B, H, W, 3) uint8 images of x_0 latents, as the diffusers pipelines decode and post-process."""
    scaled = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:  # latents were (z − shift)·scale; SD1.5/SDXL have no shift
        scaled = scaled + shift
    with torch.no_grad():
        images = vae.decode(scaled).sample.float()
    images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (images * 255).round().astype(np.uint8)


@dataclass(frozen=True)
class SamplerSettings:
    """The sampling settings shared by plain, guided and best-of-K generation."""

    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 1.0
    negative_prompt: str | None = None
    resolution: int | None = None  # image side; default the model's
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise LpoError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 0 < self.eta <= 1:
            raise LpoError(
                f"eta={self.eta}: LRM-guided sampling branches the stochastic DDIM step, which needs "
                "0 < eta <= 1 (eta=0 is deterministic: every candidate would be the same); use eta=1 as LPO does"
            )
        if self.batch_size < 1:
            raise LpoError(f"batch_size must be >= 1, got {self.batch_size}")


def _conditioning_and_noise(components, prompts: Sequence[str], seeds: Sequence[int], settings: SamplerSettings):
    """(conditioning, x_T, trajectory generators) for one batch; x_T drawn from each seed's generator."""
    from lpo.models.components import guided_conditioning

    resolution = settings.resolution or components.default_resolution
    with torch.no_grad():
        conditioning = guided_conditioning(
            components, list(prompts), settings.guidance_scale, settings.negative_prompt, resolution=resolution
        )
    generators = generators_for(seeds)
    side = resolution // components.vae_scale_factor
    latents = initial_latents(
        len(seeds), components.latent_channels, side, side, generators, components.scheduler,
        device=components.device, dtype=components.dtype,
    )
    return conditioning, latents, generators


def _check_jobs(prompts: Sequence[str], seeds: Sequence[int]) -> None:
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds; pass one seed per image")
    if not prompts:
        raise ValueError("no prompts to sample")


def _batches(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def plain_generate(
    components, prompts: Sequence[str], seeds: Sequence[int], settings: SamplerSettings = SamplerSettings(),
    progress: Callable[[int, int], None] | None = None,
) -> GeneratedImages:
    """Plain stochastic DDIM (η = settings.eta), image i from ``seeds[i]``: the reference for guided sampling."""
    _check_jobs(prompts, seeds)
    counts, latents_out, images = CallCounts(), [], []
    for rows in _batches(len(prompts), settings.batch_size):
        conditioning, latents, generators = _conditioning_and_noise(components, prompts[rows], seeds[rows], settings)
        trajectory = sample_trajectory(
            components.unet, components.scheduler, conditioning, latents,
            num_inference_steps=settings.num_inference_steps, eta=settings.eta, generator=generators, record=False,
        )
        batch = latents.shape[0]
        n = settings.num_inference_steps
        counts += CallCounts(batch, n * batch, cfg_rows(conditioning) * n * batch, 0)
        latents_out.append(trajectory.final_latents.cpu())
        images.append(decode_latents(components.vae, trajectory.final_latents))
        if progress:
            progress(rows.stop, len(prompts))
    return GeneratedImages("plain", np.concatenate(images), torch.cat(latents_out), counts)


def guided_generate(
    components, prompts: Sequence[str], seeds: Sequence[int], scorer: ScorerFactory, config: GuidanceConfig,
    settings: SamplerSettings = SamplerSettings(), progress: Callable[[int, int], None] | None = None,
    name: str | None = None,
) -> GeneratedImages:
    """Guided images, image i from ``seeds[i]`` (same x_T and candidate-0 noise as :func:`plain_generate`)."""
    _check_jobs(prompts, seeds)
    counts, latents_out, images, scores, choices = CallCounts(), [], [], [], []
    for rows in _batches(len(prompts), settings.batch_size):
        conditioning, latents, generators = _conditioning_and_noise(components, prompts[rows], seeds[rows], settings)
        trajectory = guided_sample(
            components.unet, components.scheduler, conditioning, latents, scorer(prompts[rows]), config,
            num_inference_steps=settings.num_inference_steps, eta=settings.eta,
            generator=generators, branch_generator=generators_for([branch_seed(s) for s in seeds[rows]]),
        )
        counts += trajectory.counts
        latents_out.append(trajectory.final_latents.cpu())
        images.append(decode_latents(components.vae, trajectory.final_latents))
        scores.append(trajectory.scores)
        choices.append(trajectory.choices)
        if progress:
            progress(rows.stop, len(prompts))
    return GeneratedImages(
        name or f"guided-{config.select}", np.concatenate(images), torch.cat(latents_out), counts,
        scores=torch.cat(scores), choices=torch.cat(choices),
    )


def best_of_k_seeds(seed: int, num_candidates: int) -> list[int]:
    """Seeds of the K independent trajectories of one image: the image's own seed first (so the
    plain image is one of the K), then derived ones."""
    return [int(seed)] + [derived_seed(seed, f"best-of-k|{k}") for k in range(1, num_candidates)]


def final_candidates(
    components, prompts: Sequence[str], seeds: Sequence[int], num_candidates: int,
    settings: SamplerSettings = SamplerSettings(), progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, CallCounts]:
    """(B, K, C, H, W) final latents of K independent plain trajectories per image (CPU), and their cost."""
    _check_jobs(prompts, seeds)
    if num_candidates < 1:
        raise LpoError(f"num_candidates={num_candidates}; need at least 1")
    k = num_candidates
    per_batch = max(1, settings.batch_size // k)  # K trajectories of an image share a U-Net batch
    out, counts = [], CallCounts()
    for rows in _batches(len(prompts), per_batch):
        batch_prompts = [p for p in prompts[rows] for _ in range(k)]
        batch_seeds = [s for seed in seeds[rows] for s in best_of_k_seeds(seed, k)]
        result = plain_generate(components, batch_prompts, batch_seeds, SamplerSettings(
            settings.num_inference_steps, settings.guidance_scale, settings.eta, settings.negative_prompt,
            settings.resolution, batch_size=len(batch_seeds),
        ))
        out.append(result.final_latents.view(-1, k, *result.final_latents.shape[1:]))
        counts += CallCounts(len(batch_seeds) // k, result.counts.unet_calls, result.counts.unet_passes, 0)
        if progress:
            progress(rows.stop, len(prompts))
    return torch.cat(out), counts


def best_of_k_final(
    components, prompts: Sequence[str], seeds: Sequence[int], num_candidates: int, scorer: ScorerFactory,
    settings: SamplerSettings = SamplerSettings(), final_timestep: int = 0,
    progress: Callable[[int, int], None] | None = None, name: str = "best-of-k-final",
    candidates: tuple[Tensor, CallCounts] | None = None,
) -> GeneratedImages:
    """Best of K final images per prompt by ``scorer`` (the LRM at t = ``final_timestep`` = 0 by default).

    U-Net cost: K·N evaluations per image; scorer cost: K per image. ``candidates`` reuses
    the output of :func:`final_candidates` (e.g. to pick by two scorers from the same K).
    """
    finals, counts = candidates if candidates is not None else final_candidates(
        components, prompts, seeds, num_candidates, settings, progress
    )
    k = finals.shape[1]
    scores, choices = [], []
    for rows in _batches(len(prompts), max(1, settings.batch_size)):
        batch_finals = finals[rows].to(components.device)
        t = torch.full((batch_finals.shape[0],), int(final_timestep), dtype=torch.long, device=components.device)
        batch_scores = scorer(prompts[rows])(batch_finals, t).float().cpu()
        scores.append(batch_scores)
        choices.append(batch_scores.argmax(dim=1))
    scores_t, choices_t = torch.cat(scores), torch.cat(choices)
    picked = finals[torch.arange(finals.shape[0]), choices_t]
    images = np.concatenate([
        decode_latents(components.vae, picked[rows].to(components.device))
        for rows in _batches(len(prompts), settings.batch_size)
    ])
    counts = CallCounts(counts.images, counts.unet_calls, counts.unet_passes, counts.lrm_calls + finals.shape[0] * k)
    return GeneratedImages(name, images, picked, counts, scores=scores_t, choices=choices_t)


# --------------------------------------------------------------------------- `lpo sample --guide lrm`


def check_guided_options(
    guide: str | None, lrm: Path | None, num_candidates: int, eta: float | None,
) -> None:
    """The cheap checks of `lpo sample --guide ...`, before any model is loaded."""
    if guide is None:
        if lrm is not None:
            raise LpoError("--lrm is used only with --guide lrm; add --guide lrm or drop --lrm")
        if eta is not None:
            raise LpoError("--eta applies to guided sampling (--guide lrm); plain `lpo sample` uses DDIM's eta=0")
        return
    if guide != "lrm":
        raise LpoError(f"unknown --guide {guide!r}; the only guide is lrm (the Latent Reward Model)")
    if lrm is None:
        raise LpoError("--guide lrm needs --lrm PATH, an LRM folder from `lpo lrm train` (the run's model/)")
    if num_candidates < 2:
        raise LpoError(f"--candidates {num_candidates}: guided sampling picks among K >= 2 candidates per step")
    if eta is not None and eta <= 0:
        raise LpoError(
            f"--eta {eta}: guided sampling branches the stochastic DDIM step, which needs eta > 0 "
            "(with eta=0 all candidates are identical); use --eta 1 as LPO does"
        )


def run_guided_sample(
    model: str,
    load_scorer: Callable[..., ScorerFactory],
    prompts: list[str],
    prompts_file: Path | None,
    num_prompts: int,
    images_per_prompt: int,
    guidance_scale: float,
    steps: int,
    seed: int,
    out: Path,
    config: GuidanceConfig,
    eta: float = 1.0,
    device: str = "auto",
    dtype: str = "fp32",
    console=None,
    batch_size: int = 8,
) -> tuple[Path, CallCounts]:
    """`lpo sample --guide lrm`: LRM-guided images with the same per-image seeds as `lpo sample`, as a PNG grid.

    ``load_scorer(components)`` gives the candidate scorer for the loaded model (the CLI
    loads the LRM folder and wraps it with :func:`lpo.sampling.guided.lrm_scorer`), so the sampler does not
    load reward models itself.
    """
    from lpo.sampling.generate import check_sample_options, image_seed, read_prompts_file, resolve_device, resolve_dtype, resolve_model_name, sample_prompts
    from lpo.core.grid import save_grid
    from lpo.models.components import load_components
    from lpo.core.progress import count_progress

    check_sample_options(images_per_prompt, steps, guidance_scale)
    settings = SamplerSettings(steps, guidance_scale, eta, batch_size=batch_size)
    if prompts_file is not None:
        prompts = prompts + read_prompts_file(prompts_file)
    components = load_components(resolve_model_name(model), dtype=resolve_dtype(dtype), device=resolve_device(device))
    scorer = load_scorer(components)
    prompts = sample_prompts(prompts, components.kind, str(components.source), num_prompts, components.tokenizer, console)
    jobs = [(p, k) for p in prompts for k in range(images_per_prompt)]
    with count_progress(console, f"LRM-guided sampling of {model} ({config.select} of {config.num_candidates})") as progress:
        result = guided_generate(
            components, [p for p, _ in jobs], [image_seed(seed, p, k) for p, k in jobs],
            scorer, config, settings, progress=progress,
        )
    images = result.images
    columns = min(len(images), max(images_per_prompt, 4))
    cell = 128 if images.shape[1] <= 128 else 256
    return save_grid(out, images, [p for p, _ in jobs], columns=columns, cell=cell), result.counts
