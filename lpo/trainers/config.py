"""Config dataclasses of the trainers, nested by concern (SPEC §5, STYLE "Config").

Shared sections: :class:`ModelConfig` (which base model), :class:`PolicyConfig` (LoRA or
full fine-tune), :class:`OptimConfig` (optimiser, schedule, precision, accumulation),
:class:`RunConfig` (seed, checkpoints, logging). Per method: :class:`StepTrainerConfig`
(LPO and SPO: the step loop of SPEC §5.1/§5.2) and :class:`DiffusionDPOConfig` (§5.3).

Help for every field is in its metadata (``help_text(config)``), in one place only.
``__post_init__`` validates ranges with the actual numbers; ``lpo.core.config.apply_overrides``
gives type-checked dotted overrides (``--set loss.beta=250``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Literal, get_args, get_type_hints

from lpo.trainers.lora import LORA_TARGETS

MixedPrecision = Literal["no", "fp16", "bf16"]
WeightDtype = Literal["fp32", "fp16", "bf16"]
PolicyMode = Literal["lora", "full"]
OptimizerName = Literal["adamw", "adafactor", "adamw8bit"]
LrScheduler = Literal["constant", "linear", "cosine"]
StepMethod = Literal["lpo", "spo", "grpo"]
RewardTimestep = Literal["current", "prev", "zero"]


def _field(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    if is_dataclass(default):
        return field(default_factory=lambda: type(default)(**{f.name: getattr(default, f.name) for f in fields(default)}),
                     metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _check_literals(config: Any) -> None:
    hints = get_type_hints(type(config))
    for f in fields(config):
        hint = hints[f.name]
        if getattr(hint, "__origin__", None) is Literal and getattr(config, f.name) not in get_args(hint):
            raise ValueError(f"{f.name} must be one of {', '.join(get_args(hint))}, got {getattr(config, f.name)!r}")


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def help_text(config: Any, prefix: str = "") -> dict[str, str]:
    """Dotted field name -> help, over every section (for --help and docs)."""
    out: dict[str, str] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            out.update(help_text(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f.metadata.get("help", "")
    return out


# --------------------------------------------------------------------------- shared sections


@dataclass
class ModelConfig:
    base: str = _field("world", "Base pipeline: world, world:PRESET, a diffusers pipeline folder or a hub id (SD1.5 / SDXL).")
    vae: str | None = _field(None, "Optional VAE folder or hub id replacing the pipeline's (e.g. madebyollin/sdxl-vae-fp16-fix).")
    dtype: WeightDtype = _field("fp32", "Dtype of the frozen weights (VAE, text encoders, and the base U-Net under LoRA); trained weights stay fp32.")

    def __post_init__(self) -> None:
        _check_literals(self)
        if not str(self.base).strip():
            raise ValueError("model.base is empty; give a pipeline folder, a hub id or world")


@dataclass
class PolicyConfig:
    mode: PolicyMode = _field("lora", "lora: train a LoRA, reference = adapters off; full: fine-tune U-Net weights, reference = a frozen copy.")
    lora_rank: int = _field(4, "LoRA rank r (SD1.5 papers: 4; SDXL: 64).")
    lora_alpha: float | None = _field(None, "LoRA alpha; none = the rank (scale 1, as the LPO / SPO code).")
    lora_targets: tuple[str, ...] = _field(LORA_TARGETS, "U-Net modules that get LoRA (attention projections).")
    full_trainable: tuple[str, ...] = _field(
        ("attentions", "resnets"),
        "Full mode: parameters trained are those whose dotted name has one of these parts (all = every U-Net weight).",
    )
    gradient_checkpointing: bool = _field(False, "Recompute U-Net activations in the backward pass (saves memory, SDXL).")

    def __post_init__(self) -> None:
        _check_literals(self)
        _at_least("lora_rank", self.lora_rank, 1)
        if self.lora_alpha is not None:
            _positive("lora_alpha", self.lora_alpha)
        if not self.lora_targets:
            raise ValueError("lora_targets is empty; name at least one U-Net module, e.g. to_q")
        if not self.full_trainable:
            raise ValueError("full_trainable is empty; name parameter groups such as attentions,resnets or all")

    @property
    def is_lora(self) -> bool:
        return self.mode == "lora"


@dataclass
class OptimConfig:
    optimizer: OptimizerName = _field(
        "adamw", "adamw; adafactor (Diffusion-DPO SDXL); adamw8bit: bitsandbytes' 8-bit AdamW, CUDA only (pip install 'lpo[memory]').")
    lr: float = _field(6e-5, "Learning rate (after warmup).")
    weight_decay: float = _field(1e-4, "Weight decay.")
    adam_beta1: float = _field(0.9, "AdamW β1.")
    adam_beta2: float = _field(0.999, "AdamW β2.")
    adam_epsilon: float = _field(1e-8, "AdamW ε.")
    lr_scheduler: LrScheduler = _field("constant", "After warmup: constant, linear decay to 0, or cosine.")
    warmup_steps: int = _field(0, "Optimiser steps of linear warmup from 0.")
    grad_clip: float | None = _field(1.0, "Clip the global gradient norm at this value; none disables clipping.")
    gradient_accumulation_steps: int = _field(1, "Micro-batches per optimiser step on each process.")
    mixed_precision: MixedPrecision = _field("no", "accelerate autocast: no, fp16 or bf16 (trainable weights stay fp32).")

    def __post_init__(self) -> None:
        _check_literals(self)
        _positive("lr", self.lr)
        _positive("adam_epsilon", self.adam_epsilon)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        _at_least("warmup_steps", self.warmup_steps, 0)
        _at_least("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        if self.grad_clip is not None:
            _positive("grad_clip", self.grad_clip)


@dataclass
class RunConfig:
    seed: int = _field(0, "Seed of every random draw of the run (prompt order, noise, candidates, shuffles).")
    save_every: int = _field(0, "Checkpoint every this many rounds (LPO/SPO) or optimiser steps (Diffusion-DPO); 0: none.")
    keep_checkpoints: int = _field(2, "How many of the newest checkpoints to keep.")
    log_every: int = _field(1, "Log every this many rounds (LPO/SPO) or optimiser steps (Diffusion-DPO).")
    trackers: tuple[str, ...] = _field(("auto",), "accelerate trackers: auto (tensorboard when installed), tensorboard, wandb, or none.")
    save_merged_pipeline: bool = _field(False, "Also write the whole pipeline with the trained weights merged in (pipeline/).")

    def __post_init__(self) -> None:
        _at_least("seed", self.seed, 0)
        _at_least("save_every", self.save_every, 0)
        _at_least("keep_checkpoints", self.keep_checkpoints, 1)
        _at_least("log_every", self.log_every, 1)
        allowed = ("auto", "tensorboard", "wandb", "none")
        bad = [t for t in self.trackers if t not in allowed]
        if bad:
            raise ValueError(f"unknown trackers {bad}; use {', '.join(allowed)}")


def _check_precision(config: Any) -> None:
    # Frozen fp16/bf16 weights meet the fp32 policy and fp32 latents only under autocast.
    if config.model.dtype != "fp32" and config.optim.mixed_precision == "no":
        raise ValueError(
            f"model.dtype={config.model.dtype} needs optim.mixed_precision=fp16 or bf16 (autocast); "
            "or set model.dtype=fp32"
        )


# --------------------------------------------------------------------------- LPO / SPO


@dataclass
class StepRewardConfig:
    path: str | None = _field(None, "Folder of the frozen step reward: an LRM (lpo) or SPO pixel model (spo), e.g. a run's model/.")
    decode_batch_size: int | None = _field(
        None, "SPO only: decode the candidates' x̂0 this many at a time (none: all B·K at once); lower peak memory, "
              "same scores (SPO-SD15's 40 decodes at 512 px measured 42.9 GB on an H100).")

    def __post_init__(self) -> None:
        if self.path is not None and not str(self.path).strip():
            raise ValueError("reward.path is empty; give the reward model's folder")
        if self.decode_batch_size is not None:
            _at_least("decode_batch_size", self.decode_batch_size, 1)


@dataclass
class StepSamplerConfig:
    num_inference_steps: int = _field(20, "DDIM steps N of each trajectory.")
    eta: float = _field(1.0, "DDIM η (1 in all published code; 0 has no log-prob). U-Net models only.")
    noise_level: float = _field(0.7, "Flow models (SD3) only: the SDE's noise level g/√(σ/(1−σ)) that turns the flow ODE into "
                                     "a sampler with step log-probs (Flow-GRPO's default 0.7; lpo.sampling.flow).")
    guidance_scale: float = _field(5.0, "CFG weight, in sampling and in the training forward.")
    negative_prompt: str | None = _field(None, "Negative prompt; none = the pipeline's default (\"\" for SD1.5, zeros for SDXL).")
    num_candidates: int = _field(4, "K candidates x_prev branched at every trained step.")
    inner_steps: int = _field(0, "Continue each candidate this many more steps before scoring its chain end (SPO SDXL: 3); "
                                 "every transition of the winning and the losing chain is then a pair. 0: score right away.")
    skip_first_steps: int = _field(0, "Steps at the start of each trajectory that keep no pairs (SPO: 4 of 20).")
    min_timestep: int = _field(0, "Keep pairs only at t >= this (0: every step); later steps are not even sampled.")
    reward_timestep: RewardTimestep = _field("current", "Timestep told to the reward: current t (official LPO code), prev t (the candidates') or zero (ablation: the LRM is told t = 0).")
    threshold_min: float = _field(0.35, "Softmax-gap threshold at the smallest σ_t (t = 1).")
    threshold_max: float = _field(0.5, "Threshold at the largest σ_t (t = 951); equal to threshold_min: a fixed threshold (SPO).")
    sample_batch_size: int = _field(5, "Prompts per process per round (trajectories rolled out together).")

    def __post_init__(self) -> None:
        _check_literals(self)
        _at_least("num_inference_steps", self.num_inference_steps, 1)
        if not 0 < self.eta <= 1:
            raise ValueError(f"eta must be in (0, 1] (eta=0 has no log-prob), got {self.eta}")
        if not (math.isfinite(self.noise_level) and self.noise_level > 0):
            raise ValueError(f"noise_level must be a finite number > 0 (0 is the ODE, which has no log-prob), got {self.noise_level}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 1):
            raise ValueError(f"guidance_scale must be >= 1, got {self.guidance_scale}")
        _at_least("num_candidates", self.num_candidates, 2)
        _at_least("inner_steps", self.inner_steps, 0)
        if not 0 <= self.skip_first_steps < self.num_inference_steps:
            raise ValueError(f"skip_first_steps must be in [0, {self.num_inference_steps - 1}], got {self.skip_first_steps}")
        _at_least("min_timestep", self.min_timestep, 0)
        if not 0 <= self.threshold_min <= self.threshold_max < 1:
            raise ValueError(
                f"thresholds must satisfy 0 <= threshold_min <= threshold_max < 1, got {self.threshold_min}, {self.threshold_max}"
            )
        _at_least("sample_batch_size", self.sample_batch_size, 1)


@dataclass
class StepLossConfig:
    beta: float = _field(500.0, "β of the step DPO loss (LPO 500, SPO 10).")
    clip_epsilon: float | None = _field(0.1, "Clamp the likelihood ratio to [1−ε, 1+ε]; none disables the clamp (DPO loss only; grpo: the PPO clip range).")
    kl_beta: float = _field(0.0, "grpo only: weight of the k3 KL estimate to the reference policy (0: no reference pass).")

    def __post_init__(self) -> None:
        _positive("beta", self.beta)
        if not (math.isfinite(self.kl_beta) and self.kl_beta >= 0):
            raise ValueError(f"kl_beta must be a finite number >= 0, got {self.kl_beta}")
        if self.clip_epsilon is not None and not 0 < self.clip_epsilon < 1:
            raise ValueError(f"clip_epsilon must be in (0, 1) or none, got {self.clip_epsilon}")


@dataclass
class StepTrainConfig:
    prompts: str | None = _field(None, "Training prompts: world:SPLIT (e.g. world:train), a .txt file (one per line) or a pairs parquet (captions).")
    epochs: float = _field(5.0, "Passes over the prompts (LPO 5, SPO 10).")
    max_rounds: int | None = _field(None, "Stop after this many rounds at most; none: the epochs decide.")
    train_batch_size: int = _field(10, "Kept samples per micro-batch per process in the training pass.")

    def __post_init__(self) -> None:
        _positive("epochs", self.epochs)
        if self.max_rounds is not None:
            _at_least("max_rounds", self.max_rounds, 1)
        _at_least("train_batch_size", self.train_batch_size, 1)


@dataclass
class StepTrainerConfig:
    """LPO (SPEC §5.1) or SPO (§5.2): the same step loop; the reward, skipped steps,
    thresholds and β are the only differences, all here."""

    method: StepMethod = _field("lpo", "lpo: the LRM scores candidate latents; spo: SPO's pixel model scores their decoded x̂0; "
                                       "grpo: the LRM's scores as group-relative advantages (lpo.trainers.step_grpo).")
    preset: str = _field("custom", "Name of the preset these values started from (recorded, not used).")
    model: ModelConfig = _field(ModelConfig(), "Base model.")
    reward: StepRewardConfig = _field(StepRewardConfig(), "The frozen step reward.")
    policy: PolicyConfig = _field(PolicyConfig(), "What trains.")
    sampler: StepSamplerConfig = _field(StepSamplerConfig(), "The step rollout.")
    loss: StepLossConfig = _field(StepLossConfig(), "The clipped step DPO loss.")
    train: StepTrainConfig = _field(StepTrainConfig(), "Prompts and round schedule.")
    optim: OptimConfig = _field(OptimConfig(), "Optimiser.")
    run: RunConfig = _field(RunConfig(), "Run bookkeeping.")

    # Fields added since runs were first recorded, at the value that reproduces those runs
    # (a run started before them resumes; lpo.core.runs.config_changes).
    ADDED_DEFAULTS: ClassVar[dict[str, Any]] = {"sampler.inner_steps": 0, "loss.kl_beta": 0.0,
                                                "reward.decode_batch_size": None, "sampler.noise_level": 0.7}

    def __post_init__(self) -> None:
        _check_literals(self)
        _check_precision(self)


# --------------------------------------------------------------------------- Diffusion-DPO


@dataclass
class PairsDataConfig:
    pairs: str | None = _field(None, "Preference pairs: a parquet file / folder from `lpo pairs` or `lpo mpcf`, or a dataset id.")
    split: str | None = _field(None, "Split of a dataset id or parquet folder.")
    limit: int | None = _field(None, "Read at most this many rows.")
    stream: bool = _field(True, "Local parquet: read pairs through a memory-mapped cache ($LPO_HOME/pair-cache), "
                                "decoding each batch's images when it is drawn (memory independent of the set's size); "
                                "false: decode every pair into memory first.")
    caption_dropout: float = _field(0.2, "Probability of replacing a pair's caption by \"\" (Diffusion-DPO: 0.2).")
    random_flip: bool = _field(True, "Flip each image horizontally with probability 0.5 (independently, as the official code).")
    resolution: int | None = _field(None, "Training image size; none = the model's (512 SD1.5, 1024 SDXL, 32 world).")
    micro_conditioning: Literal["fixed", "per-image"] = _field(
        "fixed", "SDXL's size/crop conditioning (add_time_ids): fixed = (R, R, 0, 0, R, R) for every image, as the "
                 "official DiffusionDPO train.py; per-image = each image's original size and the crop taken from it "
                 "after the resize, as diffusers' SDXL fine-tuning script. Other models have none.")

    def __post_init__(self) -> None:
        _check_literals(self)
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.limit is not None:
            _at_least("limit", self.limit, 1)
        if self.resolution is not None:
            _at_least("resolution", self.resolution, 8)


@dataclass
class DPOLossConfig:
    beta: float = _field(5000.0, "β of the Diffusion-DPO loss (paper SD1.5: 2000; SDXL and the official launchers: 5000).")

    def __post_init__(self) -> None:
        _positive("beta", self.beta)


@dataclass
class DPOTrainConfig:
    max_steps: int = _field(2000, "Optimiser steps.")
    batch_size: int = _field(2048, "Pairs per optimiser step over all processes and accumulation steps.")

    def __post_init__(self) -> None:
        _at_least("max_steps", self.max_steps, 1)
        _at_least("batch_size", self.batch_size, 1)


@dataclass
class DiffusionDPOConfig:
    """Diffusion-DPO (SPEC §5.3): offline DPO on preference pairs, full fine-tune or LoRA."""

    method: Literal["diffusion-dpo"] = _field("diffusion-dpo", "Always diffusion-dpo.")
    preset: str = _field("custom", "Name of the preset these values started from (recorded, not used).")
    model: ModelConfig = _field(ModelConfig(), "Base model.")
    policy: PolicyConfig = _field(PolicyConfig(mode="full", full_trainable=("all",)), "What trains.")
    data: PairsDataConfig = _field(PairsDataConfig(), "Preference pairs.")
    loss: DPOLossConfig = _field(DPOLossConfig(), "The Diffusion-DPO loss.")
    train: DPOTrainConfig = _field(DPOTrainConfig(), "Steps and batch.")
    optim: OptimConfig = _field(OptimConfig(lr=2.048e-5, weight_decay=1e-2, warmup_steps=500), "Optimiser.")
    run: RunConfig = _field(RunConfig(), "Run bookkeeping.")

    def __post_init__(self) -> None:
        _check_literals(self)
        _check_precision(self)
        per_step = self.optim.gradient_accumulation_steps
        if self.train.batch_size % per_step:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} is not divisible by gradient_accumulation_steps {per_step}"
            )

    @property
    def label(self) -> str:
        """How results name this run: the LoRA variant is a separate, clearly labelled baseline."""
        return "diffusion-dpo-lora" if self.policy.is_lora else "diffusion-dpo"
