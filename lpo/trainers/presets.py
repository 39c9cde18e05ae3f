"""Presets: the papers' values per method × base model, and world presets tuned for the world.

Real-mode presets carry the published defaults (SPEC §5.1–§5.3, checked against the
official configs: Kwai-Kolors/LPO ``lpo/configs``, RockeyCoss/SPO ``configs``,
SalesforceAIResearch/DiffusionDPO launchers). Values a paper does not state are marked
"assumed" where they are set.

World presets follow what SPEC §5.5's trial measured rather than the papers: with a
~1 M-parameter U-Net a rank-4 LoRA at the papers' learning rates did not move the model,
while a FULL fine-tune of the U-Net's attention and resnet weights at lr 1e-4 improved
utility in every run, steadiest with β = 50 on t >= 501 only (SPEC §5.5). So:

- ``lpo-world``: full fine-tune of attentions + resnets, lr 1e-4, β 50, ε 0.1, pairs kept
  only at t >= 501, the official round schedule (32 trajectories per round, collect,
  shuffle, one pass in mini-batches of 32), σ-scheduled thresholds [0.1, 0.2] instead of
  SD1.5's [0.35, 0.5]: with the first world LRM (lrm-world, held-out accuracy ≈ 0.53) the
  softmax gap of the best vs worst of 4 candidates had median ≈ 0.15 at t >= 501 (90th
  percentile ≈ 0.3), so SD1.5's thresholds kept under 2 % of the branched rows (1–5 pairs
  per round of 320), while [0.1, 0.2] keeps about 30 % (measured: 86–116 pairs per round,
  ≈ 3.5 s per round on one shared CPU core). A sharper LRM spreads its scores: raise them
  then. 40 rounds (≈ 2.5 min), about the trial's budget.
- ``spo-world``: the same optimiser and β as ``lpo-world`` so that a world comparison
  isolates what SPO changes about the *reward*: the pixel model on x̂0, told prev_t, SPO's
  first 4 of 20 steps skipped and a fixed threshold, 0.15 (SPO's 0.3 scaled like the LPO
  thresholds above; not measured on a world pixel model). With t >= 501 too, it trains
  t = 751 … 501. (The papers' β ratio, 10 vs 500, was tuned for SD1.5 and is not carried
  over: the world trial found β 50 best for the LRM loop and nothing for SPO.)
- ``dpo-world``: Diffusion-DPO, full fine-tune of attentions + resnets at lr 1e-4 (the
  lesson above), β 2000 (the paper's SD1.5 value; NOT tuned in the world), batch 32,
  300 steps with 20 warmup steps.

None of the world values is the result of a search here beyond SPEC §5.5's trial.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from lpo.core.errors import LpoError
from lpo.trainers.config import (
    DiffusionDPOConfig,
    DPOLossConfig,
    DPOTrainConfig,
    ModelConfig,
    OptimConfig,
    PairsDataConfig,
    PolicyConfig,
    RunConfig,
    StepLossConfig,
    StepSamplerConfig,
    StepTrainConfig,
    StepTrainerConfig,
)

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_VAE_FP16 = "madebyollin/sdxl-vae-fp16-fix"
SD35_MEDIUM = "stabilityai/stable-diffusion-3.5-medium"

# World: full fine-tune of the U-Net's attention and resnet weights (SPEC §5.5).
WORLD_POLICY = PolicyConfig(mode="full", full_trainable=("attentions", "resnets"))
WORLD_OPTIM = OptimConfig(lr=1e-4, weight_decay=1e-4, mixed_precision="no")
WORLD_RUN = RunConfig(save_every=10, log_every=1)


def _lpo_sd15() -> StepTrainerConfig:
    # LPO SD1.5: K 4, β 500, ε 0.1, σ-thresholds [0.35, 0.5], LoRA r 4, lr 6e-5 (code), sample 5 /
    # train 10 per GPU, 5 epochs over 4k Pick-a-Pic prompts, fp16, reward told the current t.
    return StepTrainerConfig(
        method="lpo", preset="lpo-sd15",
        model=ModelConfig(base=SD15, dtype="fp16"),
        policy=PolicyConfig(mode="lora", lora_rank=4),
        sampler=StepSamplerConfig(num_candidates=4, threshold_min=0.35, threshold_max=0.5, sample_batch_size=5),
        loss=StepLossConfig(beta=500.0, clip_epsilon=0.1),
        train=StepTrainConfig(epochs=5.0, train_batch_size=10),
        optim=OptimConfig(lr=6e-5, weight_decay=1e-4, mixed_precision="fp16"),
        run=RunConfig(save_every=200),  # 4,000 prompts / (5 × 4 GPUs) = 200 rounds per epoch
    )


def _lpo_sdxl() -> StepTrainerConfig:
    # LPO SDXL: LoRA r 64, σ-thresholds [0.45, 0.6], sample 4 / train 4, lr 1e-5, fp16-safe VAE,
    # gradient checkpointing (official config).
    base = _lpo_sd15()
    return replace(
        base, preset="lpo-sdxl",
        model=ModelConfig(base=SDXL, vae=SDXL_VAE_FP16, dtype="fp16"),
        policy=PolicyConfig(mode="lora", lora_rank=64, gradient_checkpointing=True),
        sampler=replace(base.sampler, threshold_min=0.45, threshold_max=0.6, sample_batch_size=4),
        train=replace(base.train, train_batch_size=4),
        optim=replace(base.optim, lr=1e-5),
        run=RunConfig(save_every=250),  # 4,000 / (4 × 4)
    )


def _spo_sd15() -> StepTrainerConfig:
    # SPO SD1.5: pixel step model, first 4 of 20 steps skipped, fixed threshold 0.3, β 10, K 4,
    # LoRA r 4, lr 6e-5, sample 10 / train 10, 10 epochs; its code scores candidates at their own t.
    base = _lpo_sd15()
    return replace(
        base, method="spo", preset="spo-sd15",
        sampler=StepSamplerConfig(num_candidates=4, skip_first_steps=4, reward_timestep="prev", threshold_min=0.3,
                                  threshold_max=0.3, sample_batch_size=10),
        loss=StepLossConfig(beta=10.0, clip_epsilon=0.1),
        train=StepTrainConfig(epochs=10.0, train_batch_size=10),
        run=RunConfig(save_every=100),  # 4,000 / (10 × 4)
    )


def _spo_sdxl() -> StepTrainerConfig:
    # SPO SDXL: K 2, threshold 0.4, LoRA r 64, lr 1e-5, sample 2 / train 2, accumulation 2, and
    # 3 inner steps: each candidate is continued 3 more steps before the chain ends are scored
    # (the official config's num_inner_step = 3; lpo.trainers.rollout.chain_rollout).
    base = _spo_sd15()
    return replace(
        base, preset="spo-sdxl",
        model=ModelConfig(base=SDXL, vae=SDXL_VAE_FP16, dtype="fp16"),
        policy=PolicyConfig(mode="lora", lora_rank=64, gradient_checkpointing=True),
        sampler=replace(base.sampler, num_candidates=2, threshold_min=0.4, threshold_max=0.4, sample_batch_size=2,
                        inner_steps=3),
        train=replace(base.train, train_batch_size=2),
        optim=replace(base.optim, lr=1e-5, gradient_accumulation_steps=2),
        run=RunConfig(save_every=500),
    )


def _lpo_sd3() -> StepTrainerConfig:
    # LPO on SD3.5-medium (issue 16): no published config. The LPO authors' recipe (their repo's
    # issue 10) names only the ODE->SDE policy and the MMDiT LRM; the rest is this project's
    # assumption: LPO SDXL's LoRA r 64, lr 1e-5, thresholds [0.45, 0.6] (on the SDE step's std
    # here) and batch sizes, bf16 (SD3's training precision), Flow-GRPO's SDE noise level 0.7,
    # and the CFG 4.5 SD3.5-medium's card recommends.
    base = _lpo_sdxl()
    return replace(
        base, preset="lpo-sd3",
        model=ModelConfig(base=SD35_MEDIUM, dtype="bf16"),
        sampler=replace(base.sampler, guidance_scale=4.5, noise_level=0.7),
        optim=replace(base.optim, mixed_precision="bf16"),
    )


def _spo_sd3() -> StepTrainerConfig:
    # SPO on SD3.5-medium: SPO SDXL's recipe (K 2, inner steps 3, threshold 0.4, LoRA r 64) with
    # lpo-sd3's model, precision, noise level and CFG; the pixel model scores the flow x̂0
    # (this project's assumption, like lpo-sd3).
    base, flow = _spo_sdxl(), _lpo_sd3()
    return replace(base, preset="spo-sd3", model=flow.model,
                   sampler=replace(base.sampler, guidance_scale=flow.sampler.guidance_scale,
                                   noise_level=flow.sampler.noise_level),
                   optim=replace(base.optim, mixed_precision="bf16"))


def _lpo_world() -> StepTrainerConfig:
    return StepTrainerConfig(
        method="lpo", preset="lpo-world",
        model=ModelConfig(base="world"),
        policy=WORLD_POLICY,
        sampler=StepSamplerConfig(num_candidates=4, min_timestep=501, threshold_min=0.1, threshold_max=0.2,
                                  sample_batch_size=32),
        loss=StepLossConfig(beta=50.0, clip_epsilon=0.1),
        train=StepTrainConfig(prompts="world:train", epochs=1.0, max_rounds=40, train_batch_size=32),
        optim=WORLD_OPTIM,
        run=WORLD_RUN,
    )


def _spo_world() -> StepTrainerConfig:
    base = _lpo_world()
    return replace(
        base, method="spo", preset="spo-world",
        sampler=replace(base.sampler, skip_first_steps=4, reward_timestep="prev", threshold_min=0.15, threshold_max=0.15),
    )


# Step-level GRPO with the LRM: no paper gives values (the LPO paper's appendix has no code).
# The clip range is DDPO's / Flow-GRPO's 1e-4: their log-probs are means over C, H, W as lpo's
# are, and on that scale PPO's usual 0.2 is no constraint at all (measured in the world: with
# 0.2 the policy collapsed, utility 0.617 -> 0.390 in 16 rounds). Advantages are clipped at 5
# as there (lpo.trainers.step_grpo); no KL term by default (Flow-GRPO's SD3 runs use 0–0.04).


def _grpo_sd15() -> StepTrainerConfig:
    # LPO SD1.5's rollout, LoRA and optimiser with GRPO's objective (this project's values)
    base = _lpo_sd15()
    return replace(base, method="grpo", preset="grpo-sd15", loss=StepLossConfig(beta=1.0, clip_epsilon=1e-4))


def _grpo_sdxl() -> StepTrainerConfig:
    # LPO SDXL's rollout, LoRA r 64 and optimiser with GRPO's objective (this project's values)
    base = _lpo_sdxl()
    return replace(base, method="grpo", preset="grpo-sdxl", loss=StepLossConfig(beta=1.0, clip_epsilon=1e-4))


def _grpo_sd3() -> StepTrainerConfig:
    # lpo-sd3's rollout, LoRA and optimiser with GRPO's objective (this project's values)
    base = _lpo_sd3()
    return replace(base, method="grpo", preset="grpo-sd3", loss=StepLossConfig(beta=1.0, clip_epsilon=1e-4))


def _grpo_world() -> StepTrainerConfig:
    # the lpo-world rollout and optimiser with GRPO's objective (this project's values, not tuned)
    base = _lpo_world()
    return replace(base, method="grpo", preset="grpo-world", loss=StepLossConfig(beta=1.0, clip_epsilon=1e-4))


# The flow-matching world (lpo world pretrain --preset flow): the U-Net world presets' values on
# its MMDiT (this project's choice, not tuned): a full fine-tune of the joint blocks' attention
# and feed-forward weights, lr 1e-4, β 50, pairs at t >= 501 (σ >= 0.5: the first 10 of 20 flow
# steps, as t >= 501 is for the U-Net world), the SDE's noise level 0.7.
WORLD_FLOW_POLICY = PolicyConfig(mode="full", full_trainable=("attn", "ff", "ff_context"))


def _world_flow(base: StepTrainerConfig, preset: str) -> StepTrainerConfig:
    return replace(base, preset=preset, model=ModelConfig(base="world-flow"), policy=WORLD_FLOW_POLICY,
                   sampler=replace(base.sampler, noise_level=0.7))


def _dpo_sd15() -> DiffusionDPOConfig:
    # Diffusion-DPO SD1.5: full U-Net, β 2000 (paper; the launchers use 5000), effective batch
    # 2048 pairs, 2000 steps, AdamW lr 1e-8 × 2048 = 2.048e-5 with 500 warmup steps, 20% empty
    # captions, random flips, fp16.
    return DiffusionDPOConfig(
        preset="dpo-sd15",
        model=ModelConfig(base=SD15, dtype="fp32"),
        policy=PolicyConfig(mode="full", full_trainable=("all",)),
        data=PairsDataConfig(caption_dropout=0.2, random_flip=True),
        loss=DPOLossConfig(beta=2000.0),
        train=DPOTrainConfig(max_steps=2000, batch_size=2048),
        optim=OptimConfig(lr=2.048e-5, weight_decay=1e-2, warmup_steps=500, mixed_precision="fp16",
                          gradient_accumulation_steps=128),  # 1 per GPU × 128 × 16 GPUs in the launcher
        run=RunConfig(save_every=200),
    )


def _dpo_sdxl() -> DiffusionDPOConfig:
    # SDXL: Adafactor, β 5000, 1024 px, gradient checkpointing; same lr and batch (launcher).
    base = _dpo_sd15()
    return replace(
        base, preset="dpo-sdxl",
        model=ModelConfig(base=SDXL, vae=SDXL_VAE_FP16, dtype="fp32"),
        policy=PolicyConfig(mode="full", full_trainable=("all",), gradient_checkpointing=True),
        loss=DPOLossConfig(beta=5000.0),
        optim=replace(base.optim, optimizer="adafactor"),
    )


def _dpo_world() -> DiffusionDPOConfig:
    return DiffusionDPOConfig(
        preset="dpo-world",
        model=ModelConfig(base="world"),
        policy=WORLD_POLICY,
        data=PairsDataConfig(caption_dropout=0.2, random_flip=True),
        loss=DPOLossConfig(beta=2000.0),
        train=DPOTrainConfig(max_steps=300, batch_size=32),
        optim=replace(WORLD_OPTIM, warmup_steps=20),
        run=RunConfig(save_every=100, log_every=10),
    )


def _dpo_world_flow() -> DiffusionDPOConfig:
    # dpo-world's values on the flow world's MMDiT (its attention and feed-forward weights)
    return replace(_dpo_world(), preset="dpo-world-flow", model=ModelConfig(base="world-flow"), policy=WORLD_FLOW_POLICY)


PRESETS: dict[str, Callable[[], Any]] = {
    "lpo-sd15": _lpo_sd15, "lpo-sdxl": _lpo_sdxl, "lpo-sd3": _lpo_sd3, "lpo-world": _lpo_world,
    "spo-sd15": _spo_sd15, "spo-sdxl": _spo_sdxl, "spo-sd3": _spo_sd3, "spo-world": _spo_world,
    "grpo-sd15": _grpo_sd15, "grpo-sdxl": _grpo_sdxl, "grpo-sd3": _grpo_sd3, "grpo-world": _grpo_world,
    "dpo-sd15": _dpo_sd15, "dpo-sdxl": _dpo_sdxl, "dpo-world": _dpo_world,
    "lpo-world-flow": lambda: _world_flow(_lpo_world(), "lpo-world-flow"),
    "spo-world-flow": lambda: _world_flow(_spo_world(), "spo-world-flow"),
    "grpo-world-flow": lambda: _world_flow(_grpo_world(), "grpo-world-flow"),
    "dpo-world-flow": _dpo_world_flow,
}
PRESET_METHOD = {name: ("diffusion-dpo" if name.startswith("dpo-") else name.split("-")[0]) for name in PRESETS}


def trainer_preset(name: str, method: str | None = None) -> Any:
    """A fresh config of preset ``name``; with ``method``, the preset must be for it."""
    if name not in PRESETS:
        raise LpoError(f"unknown trainer preset {name!r}; known: {', '.join(PRESETS)}")
    if method is not None and PRESET_METHOD[name] != method:
        fitting = [p for p, m in PRESET_METHOD.items() if m == method]
        raise LpoError(f"preset {name} is for {PRESET_METHOD[name]}, not {method}; use one of {', '.join(fitting)}")
    return PRESETS[name]()
