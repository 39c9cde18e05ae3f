"""What both world pretraining recipes share: where pretrained worlds live, the rendered
training set, the VAE's encoding of it and the warmup-cosine learning rate.

Used by :mod:`lpo.world.pretrain` (the U-Net world) and :mod:`lpo.world.pretrain_flow` (the
flow-matching world), which therefore train on the same images and prompts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lpo.core.paths import lpo_home
from lpo.world.grammar import CATEGORIES, PromptSpec, pretraining_splits
from lpo.world.render import IMAGE_SIZE, render_prompt


def world_model_dir(config: Any) -> Path:
    """The cache folder of a pretrain config (any recipe with ``preset`` and ``fingerprint()``)."""
    return lpo_home() / "world" / f"{config.preset}-{config.fingerprint()}"


def render_training_set(num_images: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """(N, H, W, 3) uint8 images and their prompts; category first, then prompt, uniformly."""
    splits = pretraining_splits()
    by_category: dict[str, list[PromptSpec]] = {c: [s for s in splits.train if s.category == c] for c in CATEGORIES}
    rng = np.random.default_rng(seed)
    images = np.empty((num_images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    prompts = []
    for i in range(num_images):
        specs = by_category[CATEGORIES[rng.integers(len(CATEGORIES))]]
        spec = specs[rng.integers(len(specs))]
        images[i] = render_prompt(spec, rng)
        prompts.append(spec.text())
    return images, prompts


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def warmup_cosine_lr(warmup: int, total: int) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return fn


@torch.no_grad()
def encode_dataset(vae, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, unscaled: (N, C, h, w) each."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(images[start : start + batch_size]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def step_with_ema(loss: torch.Tensor, opt, sched, params: list, ema_pairs: list[tuple[Any, Any]], step: int,
                  ema_decay: float) -> None:
    """One optimiser step (gradients clipped at norm 1) and the EMA update of each (ema, live) pair.

    The EMA warms up (decay ramps from 0) so that short runs are not dominated by the init.
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for ema, live in ema_pairs:
            for p_ema, p in zip(ema.parameters(), live.parameters()):
                p_ema.lerp_(p, 1 - decay)
