"""Time and memory of one step-level DPO update (LPO/SPO's training forward) at real sizes.

The update of SPEC §5.1.3 on a mini-batch of stored transitions (x_t, x_w, x_l, t): one
CFG forward of the LoRA policy with gradients (x_w and x_l share x_t, so one forward
scores both), one CFG forward of the reference (the same U-Net with its adapters
disabled, no gradients), the clipped-ratio DPO loss, backward and an AdamW step on the
LoRA weights. Random weights and inputs: cost does not depend on values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from lpo.models.conditioning import predict_noise
from lpo.trainers.lora import add_lora
from lpo.trainers.losses import clipped_step_dpo_loss
from lpo.models.components import DiffusionComponents, guided_conditioning
from lpo.perf.reward_cost import time_parts
from lpo.sampling.ddim import ddim_step_with_logprob


@dataclass
class TrainStepResult:
    architecture: str
    device: str
    dtype: str
    batch: int
    lora_rank: int
    trainable_parameters: int
    seconds_per_update: float
    peak_memory_mib: float  # CUDA only (0 on the CPU)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_train_step(
    components: DiffusionComponents,
    *,
    batch: int,
    lora_rank: int,
    guidance_scale: float = 5.0,
    beta: float = 500.0,
    clip: float = 0.1,
    repeats: int = 3,
    warmup: int = 1,
    num_inference_steps: int = 20,
) -> TrainStepResult:
    """Median seconds and peak memory of one update on ``batch`` transitions."""
    unet = components.unet
    device = components.device
    params = add_lora(unet, lora_rank)  # the trainers' own LoRA: frozen U-Net, float32 adapters
    optimizer = torch.optim.AdamW(params, lr=6e-5, weight_decay=1e-4)
    scheduler = components.scheduler
    scheduler.set_timesteps(num_inference_steps)

    side = components.default_resolution // components.vae_scale_factor
    shape = (batch, components.latent_channels, side, side)
    g = torch.Generator(device="cpu").manual_seed(0)
    x_t, x_w, x_l = (torch.randn(shape, generator=g).to(device, components.dtype) for _ in range(3))
    t = torch.full((batch,), int(scheduler.timesteps[len(scheduler.timesteps) // 2]), device=device)
    with torch.no_grad():
        conditioning = guided_conditioning(components, ["a red circle left of a blue square"] * batch, guidance_scale)
    autocast = torch.autocast(device.type, dtype=components.dtype, enabled=components.dtype != torch.float32)

    def log_probs() -> torch.Tensor:
        with autocast:
            eps = predict_noise(unet, x_t, t, conditioning)
        return torch.stack(
            [ddim_step_with_logprob(scheduler, eps, t, x_t, prev_sample=x).log_prob for x in (x_w, x_l)]
        )

    def update() -> None:
        with torch.no_grad():
            unet.disable_adapters()
            try:
                logp_ref = log_probs()
            finally:
                unet.enable_adapters()
        logp = log_probs()  # rows: winner, loser
        loss = clipped_step_dpo_loss(logp[0], logp[1], logp_ref[0], logp_ref[1], beta, clip).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds, peaks = time_parts({"update": update}, device, repeats=repeats, warmup=warmup)
    return TrainStepResult(
        architecture=components.kind,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        dtype=str(components.dtype).replace("torch.", ""),
        batch=batch,
        lora_rank=lora_rank,
        trainable_parameters=sum(p.numel() for p in params),
        seconds_per_update=seconds["update"],
        peak_memory_mib=peaks.get("update", 0.0),
    )
