"""How a step reward model is trained: :class:`RewardTrainingConfig` and its presets.

The loop that reads it is :func:`lpo.reward.training.train_step_reward` (SPEC §4.1 for
the LRM, §4.3 for SPO's pixel model); the module docstring there maps the paper's
notation to the code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, get_args, get_type_hints

from lpo.core.errors import LpoError



def _field(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata={"help": help})


TimestepSampling = Literal["ddim", "uniform"]
NoiseMode = Literal["independent", "shared"]
LatentCache = Literal["memory", "disk", "none"]
PairWeighting = Literal["none", "pair", "per_prompt"]
MixedPrecision = Literal["no", "fp16", "bf16"]
LrScheduler = Literal["linear", "cosine", "constant"]
RewardModelName = Literal["lrm", "spo-pixel"]
Likelihood = Literal["bradley_terry", "thurstone"]
LRMHeadName = Literal["cosine", "film"]


# SPO's pixel model starts from PickScore (SPEC §4.3); its processor comes from the CLIP it was tuned from.
PICKSCORE_MODEL_ID = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@dataclass
class RewardTrainingConfig:
    """How a step reward model is trained (SPEC §4.1 for the LRM, §4.3 for SPO's pixel model).

    Presets: :data:`REWARD_TRAINING_PRESETS` / :func:`reward_training_preset`. Help for
    each field is in its metadata (``RewardTrainingConfig.help()``).
    """

    preset: str = _field("custom", "Name of the preset these values started from (recorded, not used).")
    reward_model: RewardModelName = _field("lrm", "Which step reward model the run builds: lrm (§4.1) or spo-pixel (§4.3).")
    vfe_scale: float = _field(7.5, "LRM only: VFE scale g of a newly built LRM (mid feature V_u + g·(V_c − V_u)); 1 turns VFE off.")
    lrm_head: LRMHeadName = _field(
        "cosine", "LRM only: cosine (the paper's exp(s)·cos(W_v·f, T)) or film (the pooled feature f modulated by "
        "the timestep first, zero-initialised: DiNa-LRM's timestep-conditioned head).")
    mmdit_blocks: int = _field(18, "LRM on a flow model (SD3) only: joint transformer blocks whose image tokens it pools "
                                   "(18 of SD3-medium's 24: the LPO authors' LRM-SD3 recipe).")
    pixel_scorer: str = _field(
        PICKSCORE_MODEL_ID,
        "spo-pixel on SD1.5/SDXL/SD3 only: the CLIPModel (folder or hub id) its scorer starts from; a local folder works offline.")
    pixel_scorer_processor: str = _field(
        PICKSCORE_PROCESSOR_ID,
        "spo-pixel on SD1.5/SDXL/SD3 only: the folder or hub id with the scorer's tokenizer and preprocessor_config.json.")
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
    latent_cache: LatentCache = _field(
        "memory", "Where the pairs' VAE posteriors live: memory, disk (shards of latent_shard_pairs pairs in the "
        "run folder's latent-cache/, read through memory maps, 256 KiB per pair at SD1.5: for pair sets larger than "
        "RAM; a resumed run reuses the finished shards), or none (each batch's images VAE-encoded when drawn: no "
        "storage, one VAE encode per pair use).")
    latent_shard_pairs: int = _field(4096, "Pairs per shard of latent_cache=disk (1 GiB per shard at SD1.5).")
    likelihood: Likelihood = _field(
        "bradley_terry", "bradley_terry: cross-entropy on σ(S_0 − S_1) (LPO); thurstone: DiNa-LRM's noise-calibrated "
        "P = Φ((S_0 − S_1) / √(2σ_t² + 0.05)), σ_t² = 1 − ᾱ_t, with its fidelity loss.")

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
                     "eval_batch_size", "encode_batch_size", "latent_shard_pairs"):
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
_LRM_WORLD = _preset(
    "lrm-world", reward_model="lrm", lr=2e-4, warmup_steps=30, max_steps=400, batch_size=32,
    mixed_precision="no", save_every=100, eval_every=100, log_every=10,
)
REWARD_TRAINING_PRESETS: dict[str, RewardTrainingConfig] = {
    # LRM-1.5: 4,000 steps × 128 pairs, 512 px, 15 A100-hours (SPEC §4.1)
    "lrm-sd15": _preset("lrm-sd15", reward_model="lrm", max_steps=4000, batch_size=128),
    # LRM-XL: 8,000 steps × 32 pairs, 1024 px, 52 A100-hours
    "lrm-sdxl": _preset("lrm-sdxl", reward_model="lrm", max_steps=8000, batch_size=32),
    # World: ~1-2 minutes on CPU; no mixed precision (bf16 helps only from ~6 M parameters).
    "lrm-world": _LRM_WORLD,
    # The flow world's MMDiT (lpo world pretrain --preset flow, 4 joint blocks): lrm-world's
    # values, the image tokens pooled after 3 of its 4 blocks as the authors' LRM-SD3 pools
    # them after 18 of SD3-medium's 24 (this project's scaling, not tuned).
    "lrm-world-flow": replace(_LRM_WORLD, preset="lrm-world-flow", mmdit_blocks=3),
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
