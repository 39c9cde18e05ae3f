"""Training step reward models on preference pairs: the LRM (SPEC §4.1) and SPO's pixel step model (§4.3).

A *step reward model* scores noisy latents: ``model(latents_t, timesteps, prompts)`` →
(B,) float32 scores (:class:`StepRewardModel`). The LRM scores them directly; SPO's
pixel model predicts x̂0, decodes and scores it inside its own forward. Both train
through :func:`train_step_reward`, which implements the LRM recipe of the LPO paper
(arXiv 2502.01051, §4.2–4.3) on top of accelerate.

Paper notation -> code:

=======================  ================================================================
x_0 (winner / loser)     ``EncodedPairs``: VAE posterior of ``image_0`` / ``image_1`` of each
                         pair, kept as mean and std and re-sampled every time a pair is used;
                         x_0 = posterior sample × ``vae.config.scaling_factor``
t                        ``timesteps`` (B,) long: one per pair, the SAME for both images;
                         drawn uniformly from the N = 20 DDIM timesteps {1, 51, …, 951}
                         (``timestep_sampling="ddim"``, the official code) or from
                         U{0, …, T−1} (``"uniform"``, the paper's text)
ε_0, ε_1                 ``noise_0`` / ``noise_1``: independent for the LRM
                         (``noise="independent"``); SPO's step model uses one shared ε
                         (``noise="shared"``)
x_t = add_noise(x_0,ε,t) ``latents_t_0`` / ``latents_t_1`` (``scheduler.add_noise``)
S_0, S_1                 ``scores_0`` / ``scores_1`` = model(x_t, t, prompt)
soft labels              [label_0, 1 − label_0]: (1, 0), (0, 1) or (0.5, 0.5) for a tie
loss                     2-way cross-entropy on the logits [S_0, S_1] (Bradley–Terry:
                         P(0 ≻ 1) = σ(S_0 − S_1)), per pair × its loss weight, averaged
=======================  ================================================================

Optimisation (paper): AdamW (β = 0.9, 0.999), weight decay 0.3 on matrices and
convolutions (not on biases, norms or ``logit_scale``), linear warmup then linear
decay, gradient clipping at 1.0, bf16 autocast with float32 master weights; every
parameter of the model that requires grad trains, the VAE never does.

Reproducibility: every random draw of optimiser step s (which pairs, posterior samples,
t, noise) comes from a generator keyed by (seed, s), so resuming from a checkpoint needs
no sampler state and gives the same weights as an uninterrupted run; each process
draws the same global batch and takes its own slice, so the batch does not depend on the
number of processes or accumulation steps.

Memory: the cache holds 2 images × (mean, std) × C·h·w float32 per pair on the CPU:
256 KiB per pair for SD1.5 (4×64×64), 1 MiB for SDXL, 2 KiB for the world (4×8×8).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence, get_args, get_type_hints, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpo.config import config_to_dict
from lpo.errors import LpoError
from lpo.checkpoint_state import register_schedule_checkpointing
from lpo.finite import check_finite_module, diverged, nonfinite_quantity
from lpo.io import atomic_write_json, atomic_write_text
from lpo.pairs import TIE, PreferencePair
from lpo.reward_setup import (
    NONFINITE_FIX,
    TRAINER_STATE_VERSION,
    SaveFn,
    make_reward_accelerator,
    resume_reward_run,
    reward_lr_schedule,
    reward_optimizer,
    write_reward_checkpoint,
)
from lpo.runs import DeviceMeter, RunFolder

logger = logging.getLogger(__name__)

TRAINING_STAGE = "reward_model_training"
EVALUATION_STAGE = "evaluation"
PROGRESS_LABEL = "reward model"
METRICS_NAME = "metrics.jsonl"
RESULT_NAME = "result.json"
MODEL_DIR = "model"

ProgressFn = Callable[[str, int, int, float], None]  # (stage, step, total, loss), as lpo.progress.stage_progress


@runtime_checkable
class StepRewardModel(Protocol):
    """A reward on noisy latents, trainable by :func:`train_step_reward` (an ``nn.Module``).

    ``forward(latents_t (B, C, h, w), timesteps (B,) long, prompts: list of B str)`` →
    (B,) float32 scores, higher = preferred; differentiable in its trainable parameters.
    """

    def forward(self, latents_t: Tensor, timesteps: Tensor, prompts: list[str]) -> Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


# --------------------------------------------------------------------------- config


def _field(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata={"help": help})


TimestepSampling = Literal["ddim", "uniform"]
NoiseMode = Literal["independent", "shared"]
PairWeighting = Literal["none", "pair", "per_prompt"]
MixedPrecision = Literal["no", "fp16", "bf16"]
LrScheduler = Literal["linear", "cosine", "constant"]
RewardModelName = Literal["lrm", "spo-pixel"]


@dataclass
class RewardTrainingConfig:
    """How a step reward model is trained (SPEC §4.1 for the LRM, §4.3 for SPO's pixel model).

    Presets: :data:`REWARD_TRAINING_PRESETS` / :func:`reward_training_preset`. Help for
    each field is in its metadata (``RewardTrainingConfig.help()``).
    """

    preset: str = _field("custom", "Name of the preset these values started from (recorded, not used).")
    reward_model: RewardModelName = _field("lrm", "Which step reward model the run builds: lrm (§4.1) or spo-pixel (§4.3).")
    vfe_scale: float = _field(7.5, "LRM only: VFE scale g of a newly built LRM (mid feature V_u + g·(V_c − V_u)); 1 turns VFE off.")
    lr: float = _field(1e-5, "Peak AdamW learning rate (after warmup).")
    weight_decay: float = _field(0.3, "AdamW weight decay, applied to weight matrices and convolutions only.")
    adam_beta1: float = _field(0.9, "AdamW β1.")
    adam_beta2: float = _field(0.999, "AdamW β2.")
    adam_epsilon: float = _field(1e-8, "AdamW ε.")
    lr_scheduler: LrScheduler = _field("linear", "After warmup: linear decay to 0 at max_steps, cosine decay, or constant.")
    warmup_steps: int = _field(500, "Optimiser steps of linear warmup from 0 to lr.")
    max_steps: int = _field(4000, "Optimiser steps (updates) in total.")
    batch_size: int = _field(128, "Pairs per optimiser step, over all processes and accumulation steps.")
    gradient_accumulation_steps: int = _field(1, "Micro-batches per optimiser step (batch_size must divide evenly).")
    grad_clip: float | None = _field(1.0, "Clip the global gradient norm to this value; none disables clipping.")
    mixed_precision: MixedPrecision = _field("bf16", "Autocast precision (weights stay float32): no, fp16 or bf16.")
    timestep_sampling: TimestepSampling = _field(
        "ddim", "ddim: t uniform over the num_inference_steps DDIM timesteps (official code); uniform: t ~ U{0..T-1} (paper text)."
    )
    num_inference_steps: int = _field(20, "N of the DDIM timestep set used by timestep_sampling=ddim (20: {1, 51, ..., 951}).")
    noise: NoiseMode = _field("independent", "independent: own noise for each image of a pair (LRM); shared: one noise for both (SPO).")
    pair_weighting: PairWeighting = _field(
        "pair", "Loss weight per pair: none, pair (the pairs' own weight field) or per_prompt (1 / pairs with that prompt)."
    )
    seed: int = _field(0, "Seed of the data stream (pair order, posterior samples, t, noise); model init is the caller's.")
    log_every: int = _field(10, "Log loss / accuracy / lr every this many steps.")
    save_every: int = _field(500, "Write a resumable checkpoint every this many steps; 0 disables checkpoints.")
    keep_checkpoints: int = _field(2, "How many of the newest checkpoints to keep.")
    eval_every: int = _field(500, "Held-out accuracy by t every this many steps (needs eval pairs); 0: only at the end.")
    eval_fraction: float = _field(0.0, "Hold out this fraction of the prompts (with all their pairs) for evaluation; 0: none.")
    eval_timesteps: tuple[int, ...] = _field((1, 251, 501, 751, 951), "Timesteps at which held-out accuracy is measured.")
    eval_batch_size: int = _field(64, "Pairs per evaluation forward.")
    encode_batch_size: int = _field(32, "Images per VAE encode call when caching latents.")

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):  # Literal fields: dataclasses do not check them
            allowed = get_args(hints[f.name]) if getattr(hints[f.name], "__origin__", None) is Literal else None
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"{f.name} must be one of {', '.join(allowed)}, got {getattr(self, f.name)!r}")
        _positive_finite("lr", self.lr)
        _positive_finite("adam_epsilon", self.adam_epsilon)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.vfe_scale) and self.vfe_scale >= 1):
            raise ValueError(f"vfe_scale must be a finite number >= 1 (1 turns VFE off), got {self.vfe_scale}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every", "keep_checkpoints",
                     "eval_batch_size", "encode_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "save_every", "eval_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must not exceed max_steps ({self.max_steps})")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps}; pick a batch_size that is a multiple of it"
            )
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be a positive number or none, got {self.grad_clip}")
        if not 1 <= self.num_inference_steps <= 1000:
            raise ValueError(f"num_inference_steps must be in [1, 1000], got {self.num_inference_steps}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not self.eval_timesteps or any(t < 0 for t in self.eval_timesteps):
            raise ValueError(f"eval_timesteps must be non-empty timesteps >= 0, got {self.eval_timesteps}")

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text (for the CLI's --help and docs)."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def _positive_finite(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def _preset(name: str, **values: Any) -> RewardTrainingConfig:
    return RewardTrainingConfig(preset=name, **values)


# Real-mode presets keep the papers' values; the warmup (500 steps) is the official LRM
# config's (the paper says only "warmup"). The world presets are sized for CPU (the world
# model is ~1 M parameters with 4×8×8 latents). lrm-world was tuned on 635 decisive held-out
# val-split pairs (results/world/lrm-eval/COMMANDS.md has the 13 runs): lr 2e-4 … 1e-3, a 10×
# head lr, VFE off, batch 64, 400 … 1,200 steps, t ≤ 251 only and noise-free labels all gave
# 0.54–0.555 mean held-out accuracy over t (0.57–0.60 at t = 1; standard error ≈ 0.02), so the
# settings stay. Data is what moved it: 1,600 pairs of 400 prompts 0.52, 4,600–7,600 pairs of
# 1,900–3,400 prompts 0.55. More than ~3 epochs memorises images (1,200 steps on 4,600 pairs:
# train 0.65, held-out 0.54). Use: 400 steps on MPCF strategy-2 pairs (~3,900 kept of 7,600).
REWARD_TRAINING_PRESETS: dict[str, RewardTrainingConfig] = {
    # LRM-1.5: 4,000 steps × 128 pairs, 512 px, 15 A100-hours (SPEC §4.1)
    "lrm-sd15": _preset("lrm-sd15", reward_model="lrm", max_steps=4000, batch_size=128),
    # LRM-XL: 8,000 steps × 32 pairs, 1024 px, 52 A100-hours
    "lrm-sdxl": _preset("lrm-sdxl", reward_model="lrm", max_steps=8000, batch_size=32),
    # World: ~1-2 minutes on CPU; no mixed precision (bf16 helps only from ~6 M parameters).
    "lrm-world": _preset(
        "lrm-world", reward_model="lrm", lr=2e-4, warmup_steps=30, max_steps=400, batch_size=32,
        mixed_precision="no", save_every=100, eval_every=100, log_every=10,
    ),
    # SPO's step-aware preference model, PickScore-initialised in the paper: lr 3e-6, wd 0.3,
    # 8k steps; one shared noise for both images (SPEC §4.3). Batch size: PickScore's 128 (assumed).
    "spo-pixel-sd15": _preset(
        "spo-pixel-sd15", reward_model="spo-pixel", lr=3e-6, max_steps=8000, batch_size=128, noise="shared",
    ),
    # SDXL: the paper gives no separate lr; the SD1.5 values are kept (assumed), batch as LRM-XL.
    "spo-pixel-sdxl": _preset(
        "spo-pixel-sdxl", reward_model="spo-pixel", lr=3e-6, max_steps=8000, batch_size=32, noise="shared",
    ),
    "spo-pixel-world": _preset(
        "spo-pixel-world", reward_model="spo-pixel", lr=1e-4, warmup_steps=30, max_steps=400,
        batch_size=32, mixed_precision="no", noise="shared", save_every=100, eval_every=100, log_every=10,
    ),
}


def reward_training_preset(name: str) -> RewardTrainingConfig:
    """A fresh copy of preset ``name``; LpoError listing the known presets otherwise."""
    if name not in REWARD_TRAINING_PRESETS:
        raise LpoError(f"unknown reward-training preset {name!r}; known: {', '.join(REWARD_TRAINING_PRESETS)}")
    return replace(REWARD_TRAINING_PRESETS[name])


# --------------------------------------------------------------------------- data


@dataclass
class EncodedPairs:
    """VAE posteriors of both images of N pairs, computed once (SPEC §4.1 training data).

    mean, std: (N, 2, C, h, w) float32 on the CPU: posterior of ``image_0`` ([:, 0]) and
        ``image_1`` ([:, 1]), unscaled.
    labels_0: (N,) float32 P(image_0 ≻ image_1).   weights: (N,) float32 the pairs' own weights.
    scaling_factor / shift_factor: x_0 = (posterior sample − shift) × scale.
    """

    pair_ids: list[str]
    prompts: list[str]
    mean: Tensor
    std: Tensor
    labels_0: Tensor
    weights: Tensor
    scaling_factor: float
    shift_factor: float | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def decisive(self) -> Tensor:
        """(N,) bool: pairs that are not ties."""
        return self.labels_0 != TIE

    def subset(self, indices: Sequence[int] | Tensor) -> "EncodedPairs":
        idx = torch.as_tensor(indices, dtype=torch.long)
        rows = idx.tolist()
        return replace(
            self,
            pair_ids=[self.pair_ids[i] for i in rows],
            prompts=[self.prompts[i] for i in rows],
            mean=self.mean[idx],
            std=self.std[idx],
            labels_0=self.labels_0[idx],
            weights=self.weights[idx],
        )

    def fingerprint(self) -> str:
        """Hash of ids, prompts and labels (not pixels): a resumed run must see the same pairs."""
        h = hashlib.sha256()
        for pid, prompt, label in zip(self.pair_ids, self.prompts, self.labels_0.tolist()):
            h.update(f"{pid}\x1f{prompt}\x1f{label}\x1e".encode())
        return h.hexdigest()[:16]


def image_to_tensor(image: np.ndarray, resolution: int, what: str = "image") -> Tensor:
    """(3, R, R) float32 in [-1, 1] from an (H, W, 3) uint8 image.

    An image of another size is resized with PIL (bicubic) so its shorter side is R and
    centre-cropped to R × R, as the diffusers training scripts prepare images.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise LpoError(f"{what} is a {desc}; pairs must hold (H, W, 3) uint8 RGB images")
    if image.shape[0] != resolution or image.shape[1] != resolution:
        from PIL import Image

        pil = Image.fromarray(image)
        scale = resolution / min(pil.size)
        size = (max(resolution, round(pil.size[0] * scale)), max(resolution, round(pil.size[1] * scale)))
        pil = pil.resize(size, Image.BICUBIC)
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        image = np.array(pil.crop((left, top, left + resolution, top + resolution)))
    # A copy: decoded images can be read-only arrays, which torch warns about.
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


@torch.no_grad()
def encode_pairs(components: Any, pairs: Sequence[PreferencePair], batch_size: int = 32) -> EncodedPairs:
    """VAE-encode both images of every pair once; keep the posterior's mean and std.

    Images are brought to ``components.default_resolution`` (:func:`image_to_tensor`).
    The VAE runs in its own dtype and device, without gradients.
    """
    if not pairs:
        raise LpoError("no preference pairs to encode; pass at least one pair")
    for pair in pairs:
        if not (math.isfinite(pair.label_0) and 0.0 <= pair.label_0 <= 1.0):
            raise LpoError(f"pair {pair.pair_id} has label_0 {pair.label_0}; it must be 1.0, 0.0 or 0.5 (tie)")
        if not (math.isfinite(pair.weight) and pair.weight >= 0):
            raise LpoError(f"pair {pair.pair_id} has weight {pair.weight}; weights must be finite and >= 0")
    vae = components.vae
    resolution = components.default_resolution
    images = [(p, k) for p in pairs for k in (0, 1)]  # image_0, image_1 of each pair, in order
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixels = torch.stack(
            [image_to_tensor(p.image_0 if k == 0 else p.image_1, resolution, f"image_{k} of pair {p.pair_id}") for p, k in chunk]
        )  # (b, 3, R, R)
        posterior = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    mean, std = torch.cat(means), torch.cat(stds)  # (2N, C, h, w)
    shape = (len(pairs), 2, *mean.shape[1:])
    shift = getattr(vae.config, "shift_factor", None)
    return EncodedPairs(
        pair_ids=[p.pair_id for p in pairs],
        prompts=[p.prompt for p in pairs],
        mean=mean.reshape(shape),
        std=std.reshape(shape),
        labels_0=torch.tensor([float(p.label_0) for p in pairs], dtype=torch.float32),
        weights=torch.tensor([float(p.weight) for p in pairs], dtype=torch.float32),
        scaling_factor=float(vae.config.scaling_factor),
        shift_factor=None if shift is None else float(shift),
    )


def loss_weights(encoded: EncodedPairs, mode: PairWeighting) -> Tensor:
    """(N,) per-pair loss weights, normalised to mean 1 over the set (so lr means the same)."""
    if mode == "none":
        return torch.ones(len(encoded))
    if mode == "pair":
        weights = encoded.weights.clone()
    elif mode == "per_prompt":
        counts: dict[str, int] = {}
        for prompt in encoded.prompts:
            counts[prompt] = counts.get(prompt, 0) + 1
        weights = torch.tensor([1.0 / counts[p] for p in encoded.prompts])
    else:
        raise ValueError(f"pair_weighting must be one of {', '.join(get_args(PairWeighting))}, got {mode!r}")
    total = float(weights.sum())
    if total <= 0:
        raise LpoError("every pair has weight 0; give some pairs a positive weight or use pair_weighting=none")
    return weights * (len(weights) / total)


def timestep_pool(scheduler: Any, mode: TimestepSampling, num_inference_steps: int = 20) -> Tensor:
    """(M,) long ascending timesteps t is drawn from: the DDIM set ({1, 51, …, 951}) or 0…T−1."""
    if mode == "ddim":
        from lpo.sampling import ddim_timesteps

        return ddim_timesteps(scheduler, num_inference_steps).sort().values
    if mode == "uniform":
        return torch.arange(int(scheduler.config.num_train_timesteps))
    raise ValueError(f"timestep_sampling must be one of {', '.join(get_args(TimestepSampling))}, got {mode!r}")


# Purposes of the keyed random streams (the first key), so no two uses share a stream.
STREAM_STEP, STREAM_EPOCH, STREAM_SPLIT, STREAM_EVAL = 0, 1, 2, 3


def keyed_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator determined by (seed, *keys) alone (non-negative ints; independent streams per key)."""
    if any(int(k) < 0 for k in (seed, *keys)):
        raise ValueError(f"seed and keys must be >= 0, got {(seed, *keys)}")
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


@dataclass
class NoisyPairBatch:
    """B pairs noised for one forward (all tensors on the CPU unless moved).

    latents_0 / latents_1: (B, C, h, w) x_0 (scaled posterior samples).
    noise_0 / noise_1: (B, C, h, w) ε (the same tensor values when noise="shared").
    latents_t_0 / latents_t_1: (B, C, h, w) x_t = add_noise(x_0, ε, t).
    timesteps: (B,) long, shared by both images of a pair.
    labels_0: (B,) P(image_0 ≻ image_1).   weights: (B,) loss weights.
    """

    prompts: list[str]
    latents_0: Tensor
    latents_1: Tensor
    noise_0: Tensor
    noise_1: Tensor
    latents_t_0: Tensor
    latents_t_1: Tensor
    timesteps: Tensor
    labels_0: Tensor
    weights: Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    def slice(self, start: int, stop: int) -> "NoisyPairBatch":
        return NoisyPairBatch(
            prompts=self.prompts[start:stop],
            **{f.name: getattr(self, f.name)[start:stop] for f in fields(self) if f.name != "prompts"},
        )


def sample_clean_latents(encoded: EncodedPairs, indices: Tensor, generator: torch.Generator) -> Tensor:
    """(B, 2, C, h, w) x_0 of both images: posterior samples × scaling factor."""
    mean, std = encoded.mean[indices], encoded.std[indices]
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    if encoded.shift_factor is not None:
        sample = sample - encoded.shift_factor
    return sample * encoded.scaling_factor


def noise_pairs(
    encoded: EncodedPairs,
    indices: Tensor,
    scheduler: Any,
    generator: torch.Generator,
    *,
    timesteps: Tensor | None = None,
    pool: Tensor | None = None,
    noise: NoiseMode = "independent",
    weights: Tensor | None = None,
) -> NoisyPairBatch:
    """Noise pairs ``indices`` of ``encoded`` to one t per pair (the same t for both images).

    ``timesteps`` (B,) fixes t; otherwise each t is drawn uniformly from ``pool``. Draw
    order from ``generator``: posterior samples, then t (when drawn), then noise.
    """
    indices = torch.as_tensor(indices, dtype=torch.long)
    batch = len(indices)
    # 1. x_0 for both images, re-sampled from the cached posteriors
    latents = sample_clean_latents(encoded, indices, generator)  # (B, 2, C, h, w)
    # 2. one t per pair, shared by its two images
    if timesteps is None:
        if pool is None:
            raise ValueError("pass fixed timesteps or a pool to draw them from")
        timesteps = pool[torch.randint(len(pool), (batch,), generator=generator)]
    timesteps = torch.as_tensor(timesteps, dtype=torch.long).reshape(-1).expand(batch).clone()
    # 3. independent noise per image (LRM) or one noise per pair (SPO)
    if noise == "independent":
        eps = torch.randn(latents.shape, generator=generator)
    elif noise == "shared":
        eps = torch.randn((batch, 1, *latents.shape[2:]), generator=generator).expand_as(latents).clone()
    else:
        raise ValueError(f"noise must be one of {', '.join(get_args(NoiseMode))}, got {noise!r}")
    latents_0, latents_1 = latents[:, 0], latents[:, 1]
    noise_0, noise_1 = eps[:, 0], eps[:, 1]
    return NoisyPairBatch(
        prompts=[encoded.prompts[i] for i in indices.tolist()],
        latents_0=latents_0,
        latents_1=latents_1,
        noise_0=noise_0,
        noise_1=noise_1,
        latents_t_0=scheduler.add_noise(latents_0, noise_0, timesteps),
        latents_t_1=scheduler.add_noise(latents_1, noise_1, timesteps),
        timesteps=timesteps,
        labels_0=encoded.labels_0[indices],
        weights=(weights[indices] if weights is not None else torch.ones(batch)),
    )


def pair_indices(num_pairs: int, start: int, count: int, seed: int) -> Tensor:
    """Positions ``start … start+count−1`` of the endless stream of shuffled epochs.

    Epoch e is a permutation of all pairs drawn from ``keyed_generator(seed, STREAM_EPOCH, e)``,
    so position p always names the same pair, whatever was drawn before.
    """
    out, cache = [], {}
    for position in range(start, start + count):
        epoch, offset = divmod(position, num_pairs)
        if epoch not in cache:
            cache[epoch] = torch.randperm(num_pairs, generator=keyed_generator(seed, STREAM_EPOCH, epoch))
        out.append(int(cache[epoch][offset]))
    return torch.tensor(out, dtype=torch.long)


# --------------------------------------------------------------------------- loss


@dataclass
class PreferenceLossOutput:
    """loss: weighted mean CE (scalar). ce: (B,) per-pair CE. correct: (B,) 1 / 0 / 0.5 (equal
    scores) for decisive pairs, 0 for ties. decisive: (B,) bool."""

    loss: Tensor
    ce: Tensor
    correct: Tensor
    decisive: Tensor

    @property
    def accuracy(self) -> float:
        n = int(self.decisive.sum())
        return float(self.correct.sum()) / n if n else float("nan")


def preference_loss(scores_0: Tensor, scores_1: Tensor, labels_0: Tensor, weights: Tensor | None = None) -> PreferenceLossOutput:
    """Bradley–Terry 2-way cross-entropy on logits [S_0, S_1] with soft labels [label_0, 1 − label_0]."""
    logits = torch.stack([scores_0, scores_1], dim=-1).float()  # (B, 2)
    labels_0 = labels_0.to(logits)
    targets = torch.stack([labels_0, 1.0 - labels_0], dim=-1)  # (B, 2)
    ce = F.cross_entropy(logits, targets, reduction="none")  # (B,)
    loss = (ce * weights.to(ce)).mean() if weights is not None else ce.mean()
    decisive = labels_0 != TIE
    with torch.no_grad():
        won_0 = labels_0 > TIE
        agree = torch.where(scores_0 == scores_1, 0.5, ((scores_0 > scores_1) == won_0).float())
        correct = torch.where(decisive, agree.float(), 0.0)
    return PreferenceLossOutput(loss=loss, ce=ce.detach(), correct=correct, decisive=decisive)


def score_pairs(model: Any, batch: NoisyPairBatch, device: torch.device) -> tuple[Tensor, Tensor]:
    """(S_0, S_1), each (B,) float32, from ONE forward over the 2B latents."""
    latents_t = torch.cat([batch.latents_t_0, batch.latents_t_1]).to(device)  # (2B, C, h, w)
    timesteps = torch.cat([batch.timesteps, batch.timesteps]).to(device)
    scores = model(latents_t, timesteps, batch.prompts + batch.prompts).float()
    if scores.shape != (2 * len(batch),):
        raise LpoError(
            f"the reward model returned scores of shape {tuple(scores.shape)} for {2 * len(batch)} latents; "
            "a step reward model must return one score per latent, shape (B,)"
        )
    return scores[: len(batch)], scores[len(batch) :]


# --------------------------------------------------------------------------- evaluation


def _module_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def pair_scores_by_timestep(
    model: StepRewardModel,
    components: Any,
    encoded: EncodedPairs,
    timesteps: Sequence[int],
    indices: Tensor | None = None,
    batch_size: int = 64,
    seed: int = 0,
    *,
    noise: NoiseMode = "independent",
) -> dict[int, tuple[Tensor, Tensor]]:
    """{t: (S_0, S_1)} of pairs ``indices`` (default: all) noised to each fixed t.

    Every t sees the same posterior samples and the same noise (drawn from (seed, batch)),
    so scores differ only through t, and two models scored with the same seed see
    identical x_t.
    """
    indices = torch.arange(len(encoded)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    num_train = int(components.scheduler.config.num_train_timesteps)
    bad = [int(t) for t in timesteps if not 0 <= int(t) < num_train]
    if bad or not len(timesteps):
        raise LpoError(f"evaluation timesteps must be in [0, {num_train - 1}], got {list(timesteps)}")
    device = _module_device(model)
    was_training = model.training
    model.eval()
    scores: dict[int, tuple[list[Tensor], list[Tensor]]] = {int(t): ([], []) for t in timesteps}
    try:
        for number, start in enumerate(range(0, len(indices), batch_size)):
            batch_indices = indices[start : start + batch_size]
            for t, (out_0, out_1) in scores.items():
                generator = keyed_generator(seed, STREAM_EVAL, number)  # the same draws for every t
                batch = noise_pairs(encoded, batch_indices, components.scheduler, generator, timesteps=torch.tensor(t), noise=noise)
                scores_0, scores_1 = score_pairs(model, batch, device)
                out_0.append(scores_0.cpu())
                out_1.append(scores_1.cpu())
    finally:
        model.train(was_training)
    return {t: (torch.cat(s0), torch.cat(s1)) for t, (s0, s1) in scores.items()}


def accuracy_from_scores(scores_0: Tensor, scores_1: Tensor, labels_0: Tensor) -> tuple[float, int]:
    """(accuracy, n) over the decisive pairs of ``labels_0``; equal scores count half."""
    out = preference_loss(scores_0, scores_1, labels_0)
    n = int(out.decisive.sum())
    return (float(out.correct.sum()) / n if n else float("nan")), n


def pairwise_accuracy_by_timestep(
    model: StepRewardModel,
    components: Any,
    pairs: Sequence[PreferencePair] | EncodedPairs,
    timesteps: Sequence[int],
    batch_size: int = 64,
    seed: int = 0,
    *,
    noise: NoiseMode = "independent",
    encode_batch_size: int = 32,
) -> dict[int, tuple[float, int]]:
    """Held-out accuracy of a step reward model at each fixed t: {t: (accuracy, n)}.

    Only decisive (non-tie) pairs are scored and counted; a pair is right when the
    preferred image scores higher (equal scores count half). Noise as in
    :func:`pair_scores_by_timestep`.
    """
    encoded = pairs if isinstance(pairs, EncodedPairs) else encode_pairs(components, pairs, encode_batch_size)
    decisive = torch.nonzero(encoded.decisive).flatten()
    if len(decisive) == 0:
        raise LpoError(f"all {len(encoded)} evaluation pairs are ties; accuracy needs pairs with a winner")
    scores = pair_scores_by_timestep(model, components, encoded, timesteps, decisive, batch_size, seed, noise=noise)
    labels = encoded.labels_0[decisive]
    return {t: accuracy_from_scores(s0, s1, labels) for t, (s0, s1) in scores.items()}


def split_by_prompt(pairs: Sequence[PreferencePair], fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out): a random ``fraction`` of the distinct prompts, with all their pairs, held out."""
    prompts = sorted({p.prompt for p in pairs})
    held = max(1, round(fraction * len(prompts))) if fraction > 0 else 0
    if held >= len(prompts):
        raise LpoError(
            f"eval_fraction {fraction} of {len(prompts)} prompts leaves no training prompts; lower it or pass eval pairs"
        )
    order = torch.randperm(len(prompts), generator=keyed_generator(seed, STREAM_SPLIT)).tolist()
    held_out = {prompts[i] for i in order[:held]}
    return [p for p in pairs if p.prompt not in held_out], [p for p in pairs if p.prompt in held_out]


# --------------------------------------------------------------------------- plan and result


@dataclass(frozen=True)
class TrainingPlan:
    """Derived totals, printed before the first step (and stored with the run)."""

    num_pairs: int
    num_ties: int
    num_eval_pairs: int
    num_processes: int
    batch_size: int  # pairs per optimiser step (all processes, all micro-batches)
    gradient_accumulation_steps: int
    micro_batch_size: int  # pairs per forward on one process
    max_steps: int
    timesteps: tuple[int, ...]

    @property
    def updates_per_epoch(self) -> float:
        return self.num_pairs / self.batch_size

    @property
    def epochs(self) -> float:
        return self.max_steps * self.batch_size / self.num_pairs

    def describe(self) -> str:
        ts = self.timesteps
        span = f"{len(ts)} timesteps {ts[0]}…{ts[-1]}" if len(ts) > 3 else f"timesteps {list(ts)}"
        return (
            f"{self.num_pairs} training pairs ({self.num_ties} ties), {self.num_eval_pairs} held-out; "
            f"batch {self.batch_size} = {self.micro_batch_size} per forward × {self.gradient_accumulation_steps} "
            f"accumulation × {self.num_processes} processes; {self.max_steps} steps = {self.epochs:.2f} epochs "
            f"({self.updates_per_epoch:.1f} updates per epoch); t from {span}"
        )


def plan_training(
    config: RewardTrainingConfig, num_pairs: int, num_ties: int = 0, num_eval_pairs: int = 0,
    num_processes: int = 1, timesteps: Sequence[int] = (),
) -> TrainingPlan:
    """The derived batch layout; LpoError when the batch does not split evenly over processes."""
    per_step = config.gradient_accumulation_steps * num_processes
    if config.batch_size % per_step:
        raise LpoError(
            f"batch_size {config.batch_size} does not split into {config.gradient_accumulation_steps} accumulation "
            f"steps × {num_processes} processes; use a multiple of {per_step}"
        )
    if num_pairs < 1:
        raise LpoError("no training pairs; pass at least one pair")
    return TrainingPlan(
        num_pairs=num_pairs, num_ties=num_ties, num_eval_pairs=num_eval_pairs, num_processes=num_processes,
        batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
        micro_batch_size=config.batch_size // per_step, max_steps=config.max_steps, timesteps=tuple(int(t) for t in timesteps),
    )


@dataclass
class TrainingResult:
    """What :func:`train_step_reward` did.

    history: one row per log step {step, loss, accuracy (decisive pairs), lr, grad_norm, seconds}.
    eval_history: {step, accuracy: {t: [accuracy, n]}} per evaluation.
    cost: the DeviceMeter record (also cost.json).  resumed_from: checkpoint step, or None.
    """

    steps: int
    plan: TrainingPlan
    history: list[dict[str, Any]]
    eval_history: list[dict[str, Any]]
    cost: dict[str, Any]
    resumed_from: int | None = None
    run_folder: Path | None = None
    model_folder: Path | None = None

    @property
    def final_loss(self) -> float | None:
        return self.history[-1]["loss"] if self.history else None

    @property
    def final_accuracy(self) -> float | None:
        return self.history[-1]["accuracy"] if self.history else None

    @property
    def final_eval(self) -> dict[int, tuple[float, int]] | None:
        if not self.eval_history:
            return None
        return {int(t): (v[0], v[1]) for t, v in self.eval_history[-1]["accuracy"].items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "plan": {**asdict(self.plan), "epochs": self.plan.epochs},
            "final_loss": self.final_loss,
            "final_accuracy": self.final_accuracy,
            "history": self.history,
            "eval_history": self.eval_history,
            "cost": self.cost,
            "resumed_from": self.resumed_from,
            "run_folder": None if self.run_folder is None else str(self.run_folder),
            "model_folder": None if self.model_folder is None else str(self.model_folder),
        }


# --------------------------------------------------------------------------- training


def train_step_reward(
    model: StepRewardModel,
    components: Any,
    pairs: Sequence[PreferencePair],
    config: RewardTrainingConfig,
    run: RunFolder | None = None,
    *,
    save_model: SaveFn | None = None,
    accelerator: Any = None,
    progress: ProgressFn | None = None,
    eval_pairs: Sequence[PreferencePair] | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainingResult:
    """Train ``model`` in place on ``pairs`` (SPEC §4.1 data, loss and optimisation).

    components: the diffusion model's parts; its VAE encodes the images (frozen, no
        gradients) and its scheduler noises them. ``model`` may be built from them (the
        LRM) or hold its own (SPO's pixel model).
    run: where checkpoints, ``metrics.jsonl``, ``result.json``, ``cost.json`` and the final
        model (``run/model``, written by ``save_model``) go; None trains in memory only.
    save_model: writes the model to a folder (e.g. :func:`lpo.lrm.save_lrm`); called for
        every checkpoint and at the end, on the main process, with the unwrapped model.
    accelerator: an ``accelerate.Accelerator`` agreeing with the config, or None for a
        new one (CPU when there is no GPU).
    progress: ``(stage, step, total, loss)`` after every step (main process only).
    eval_pairs: held-out pairs for accuracy by t every ``eval_every`` steps and at the end;
        alternatively ``config.eval_fraction`` holds out prompts of ``pairs``.
    resume: continue from ``run``'s newest checkpoint (same config and pairs required); the
        result equals an uninterrupted run's. Without a checkpoint it starts at step 0.
    log: receives the derived totals before the first step and one line per log step.
    """
    if resume and run is None:
        raise LpoError("resume needs the run folder to resume from")
    if eval_pairs is not None and config.eval_fraction > 0:
        raise LpoError(
            f"pass eval_pairs or set eval_fraction (now {config.eval_fraction}), not both; set eval_fraction=0 to use eval_pairs"
        )
    if config.eval_fraction > 0:
        pairs, eval_pairs = split_by_prompt(pairs, config.eval_fraction, config.seed)

    # 1. accelerate, the meter, and the cost of any earlier part of this run
    accelerator = make_reward_accelerator(config, accelerator)
    is_main = accelerator.is_main_process
    say = log if (log is not None and is_main) else (lambda message: None)
    meter = DeviceMeter(accelerator=accelerator)
    scheduler = components.scheduler
    pool = timestep_pool(scheduler, config.timestep_sampling, config.num_inference_steps)
    started = time.perf_counter()

    with meter.stage(TRAINING_STAGE):
        # 2. the data: posteriors of every image, once
        encoded = encode_pairs(components, pairs, config.encode_batch_size)
        eval_encoded = encode_pairs(components, eval_pairs, config.encode_batch_size) if eval_pairs else None
        weights = loss_weights(encoded, config.pair_weighting)
        plan = plan_training(
            config, len(encoded), int((~encoded.decisive).sum()), len(eval_encoded) if eval_encoded else 0,
            accelerator.num_processes, pool.tolist(),
        )
        say(plan.describe())

        # 3. optimiser, lr schedule, accelerate
        optimizer = reward_optimizer(model, config)
        lr_schedule = reward_lr_schedule(optimizer, config)
        model, optimizer = accelerator.prepare(model, optimizer)
        register_schedule_checkpointing(accelerator, lr_schedule)  # as JSON: nothing pickled
        device = accelerator.device

        # 4. resume
        step, resumed_from = 0, None
        history: list[dict[str, Any]] = []
        eval_history: list[dict[str, Any]] = []
        if resume:
            found = resume_reward_run(accelerator, run, config, encoded)
            if found is not None:
                resumed_from, saved = found
                step = int(saved["step"])
                history = [row for row in saved["history"] if row["step"] <= step]
                eval_history = [row for row in saved["eval_history"] if row["step"] <= step]
                say(f"resumed from {saved['folder']} at step {step}")
            else:
                say(f"no checkpoint in {run.checkpoints_dir}; starting at step 0")
            previous = run.read_cost()
            if previous is not None:
                meter.restore(previous)

        def trainer_state() -> dict[str, Any]:
            return {
                "version": TRAINER_STATE_VERSION, "step": step, "config": config_to_dict(config),
                "plan": asdict(plan), "num_pairs": len(encoded), "data_fingerprint": encoded.fingerprint(),
                "history": history, "eval_history": eval_history, "cost": meter.as_dict(),
            }

        def evaluate() -> None:
            if eval_encoded is None:
                return
            with meter.stage(EVALUATION_STAGE):
                if is_main:
                    accuracy = pairwise_accuracy_by_timestep(
                        accelerator.unwrap_model(model), components, eval_encoded, config.eval_timesteps,
                        config.eval_batch_size, config.seed, noise=config.noise,
                    )
                    eval_history.append({"step": step, "accuracy": {str(t): [a, n] for t, (a, n) in accuracy.items()}})
                    say(f"step {step}: held-out accuracy " + ", ".join(f"t={t} {a:.3f}" for t, (a, _) in accuracy.items()))
                accelerator.wait_for_everyone()

        # 5. the loop: one optimiser step per iteration, micro-batches inside
        model.train()
        micro, rank = plan.micro_batch_size, accelerator.process_index
        window = torch.zeros(4, dtype=torch.float64, device=device)  # Σ w·ce, pairs, Σ correct, decisive
        window_start = time.perf_counter()
        last_norm: float | None = None
        last_lr = float(optimizer.param_groups[0]["lr"])
        while step < config.max_steps:
            generator = keyed_generator(config.seed, STREAM_STEP, step)
            indices = pair_indices(len(encoded), step * config.batch_size, config.batch_size, config.seed)
            batch = noise_pairs(encoded, indices, scheduler, generator, pool=pool, noise=config.noise, weights=weights)
            loss_finite = True
            for m in range(config.gradient_accumulation_steps):
                start = (m * accelerator.num_processes + rank) * micro
                part = batch.slice(start, start + micro)
                with accelerator.accumulate(model):
                    scores_0, scores_1 = score_pairs(model, part, device)
                    out = preference_loss(scores_0, scores_1, part.labels_0.to(device), part.weights.to(device))
                    accelerator.backward(out.loss)
                    loss_finite = loss_finite and math.isfinite(float(out.loss.detach()))
                    if accelerator.sync_gradients:
                        if config.grad_clip is not None:
                            last_norm = float(accelerator.clip_grad_norm_(model.parameters(), config.grad_clip))
                        last_lr = float(optimizer.param_groups[0]["lr"])  # the lr this update uses
                        # a NaN / inf loss or gradient must not reach the weights: stop before the update
                        bad = nonfinite_quantity(accelerator, loss_finite, list(model.parameters()), last_norm)
                        if bad is not None:
                            raise diverged(f"step {step + 1}", bad, "lr", config.lr)
                        optimizer.step()
                        if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the schedule
                            lr_schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                window += torch.stack([
                    (out.ce * part.weights.to(device)).sum().double(), torch.tensor(float(len(part)), device=device).double(),
                    out.correct.sum().double(), out.decisive.sum().double(),
                ])
            step += 1
            if is_main and progress is not None:
                progress(PROGRESS_LABEL, step, config.max_steps, float(out.loss.detach()))

            if step % config.log_every == 0 or step == config.max_steps:
                totals = accelerator.reduce(window.clone(), "sum").tolist()
                row = {
                    "step": step,
                    "loss": totals[0] / max(totals[1], 1.0),
                    "accuracy": totals[2] / totals[3] if totals[3] else None,
                    "lr": last_lr,
                    "grad_norm": last_norm,
                    "seconds": time.perf_counter() - window_start,
                }
                history.append(row)
                window.zero_()
                window_start = time.perf_counter()
                if is_main and run is not None:
                    _write_metrics(run, history)
                    run.write_cost(meter)
                say(f"step {step}/{config.max_steps}: loss {row['loss']:.4f}, accuracy "
                    f"{'n/a' if row['accuracy'] is None else format(row['accuracy'], '.3f')}, lr {row['lr']:.2e}")
            if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
                evaluate()
            if run is not None and config.save_every and step % config.save_every == 0 and step < config.max_steps:
                write_reward_checkpoint(accelerator, run, step, model, save_model, trainer_state(), config.keep_checkpoints)
                if is_main:
                    run.write_cost(meter)

        evaluate()
        model.eval()

    # 6. the final model, its cost, the summary
    unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    result = TrainingResult(
        steps=step, plan=plan, history=history, eval_history=eval_history, cost=meter.as_dict(),
        resumed_from=resumed_from, run_folder=None if run is None else run.path,
    )
    if run is not None:  # every process: they hold the same weights and must stop together
        check_finite_module(unwrapped, "the trained reward model", NONFINITE_FIX)
    if run is not None and is_main:
        if save_model is not None:
            result.model_folder = run.path / MODEL_DIR
            with meter.stage(TRAINING_STAGE):
                save_model(unwrapped, result.model_folder)
        result.cost = meter.as_dict()
        run.write_cost(result.cost)
        if result.model_folder is not None:
            atomic_write_json(result.model_folder / "cost.json", result.cost)
        _write_metrics(run, history)
        run.write_json(RESULT_NAME, result.as_dict())
    if run is not None:
        accelerator.wait_for_everyone()
    logger.debug("reward model training took %.1f s", time.perf_counter() - started)
    return result


def _write_metrics(run: RunFolder, history: list[dict[str, Any]]) -> None:
    import json

    atomic_write_text(run.path / METRICS_NAME, "".join(json.dumps(row, sort_keys=True) + "\n" for row in history))
