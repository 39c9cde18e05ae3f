"""One step of a flow-matching sampler as an SDE, with its per-step Gaussian log-probability.

Flow-matching models (SD3 / SD3.5: ``FlowMatchEulerDiscreteScheduler``) interpolate
x_σ = (1 − σ)·x0 + σ·ε and predict the velocity v = ε − x0; their sampler is the ODE
dx = v·dσ, stepped by Euler from σ = 1 to 0. A deterministic step has no density, so
step-level preference training (LPO / SPO / GRPO) turns it into the SDE with the same
marginals (the conversion Flow-GRPO uses, Liu et al. 2025; the LPO authors apply it on the
policy side only):

    x_{σ'} = x·(1 + g²·dσ/(2σ)) + v·(1 + g²·(1 − σ)/(2σ))·dσ + g·√(−dσ)·z,   dσ = σ' − σ < 0

with g = noise_level·√(σ / (1 − σ)), z ~ N(0, I). At σ = 1 the ratio is infinite, so the
first step uses σ_max = the schedule's second σ in the denominator (as Flow-GRPO does).
``noise_level`` = 0 gives back the scheduler's Euler step exactly; Flow-GRPO's default is
0.7 (0.8 in its fast SD3 configs), ours too. The step is a Gaussian with mean μ (above, z = 0)
and std g·√(−dσ); its log-probability is averaged over C, H, W as the DDIM step's is
(:func:`lpo.sampling.ddim.gaussian_log_prob`), so β and thresholds carry over between samplers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lpo.sampling.ddim import Generators, gaussian_log_prob, randn_like_per_sample

DEFAULT_NOISE_LEVEL = 0.7


@dataclass
class FlowStepOutput:
    """One SDE step, batched: ``prev_sample`` (B, C, H, W), ``mean`` (B, C, H, W) float32,
    ``std`` (B, 1, 1, 1) float32 = g·√(−dσ), ``log_prob`` (B,) float32 (NaN at noise_level 0),
    ``pred_original_sample`` x̂0 = x − σ·v (B, C, H, W), ``sigma`` / ``sigma_next`` (B,)."""

    prev_sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor
    pred_original_sample: Tensor
    sigma: Tensor
    sigma_next: Tensor


def flow_noisy_latents(latents: Tensor, noise: Tensor, sigmas: Tensor) -> Tensor:
    """x_σ = (1 − σ)·x0 + σ·ε per sample (the flow-matching path; σ (B,))."""
    view = (-1,) + (1,) * (latents.dim() - 1)
    s = sigmas.to(latents.dtype).view(view)
    return (1 - s) * latents + s * noise


def is_flow_scheduler(scheduler) -> bool:
    """A flow-matching scheduler (x_σ = (1 − σ)·x0 + σ·ε, t = σ·1000), not a DDPM-style one."""
    return hasattr(scheduler, "scale_noise") and not hasattr(scheduler, "alphas_cumprod")


def flow_predicted_x0(scheduler, velocity: Tensor, timesteps: Tensor, latents: Tensor) -> Tensor:
    """(B, C, H, W) float32 one-step x̂0 = x_σ − σ·v with σ = t / num_train_timesteps per sample
    (the flow path's x0 given the velocity; the scheduler's timesteps are σ·1000)."""
    sigmas = timesteps.float().to(latents.device) / float(scheduler.config.num_train_timesteps)
    return latents.float() - sigmas.view(-1, *([1] * (latents.dim() - 1))) * velocity.float()


def step_sigmas(scheduler, timesteps: Tensor | float, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(σ, σ_next) per sample for ``timesteps`` of the scheduler's current schedule (set_timesteps first)."""
    if scheduler.timesteps is None or scheduler.sigmas is None:
        raise ValueError("the scheduler has no schedule; call scheduler.set_timesteps(N) first")
    schedule = scheduler.timesteps.to(device=device, dtype=torch.float32)
    t = torch.as_tensor(timesteps, dtype=torch.float32, device=device).reshape(-1)
    t = t.expand(batch) if t.numel() == 1 else t
    if t.numel() != batch:
        raise ValueError(f"{t.numel()} timesteps for a batch of {batch}")
    distance = (t[:, None] - schedule[None, :]).abs()
    index = distance.argmin(dim=1)
    if bool((distance.gather(1, index[:, None]) > 1e-3 * max(1.0, float(schedule.abs().max()))).any()):
        raise ValueError(f"timesteps {t.tolist()} are not all in the scheduler's schedule {schedule.tolist()}")
    sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
    return sigmas[index], sigmas[index + 1]


def flow_sde_step_with_logprob(
    scheduler,
    model_output: Tensor,
    timestep: Tensor | float,
    sample: Tensor,
    *,
    noise_level: float = DEFAULT_NOISE_LEVEL,
    prev_sample: Tensor | None = None,
    generator: Generators = None,
    noise: Tensor | None = None,
) -> FlowStepOutput:
    """One SDE step from ``sample`` (x_σ) with the (CFG-combined) velocity ``model_output``.

    Samples x_{σ'} (from ``generator``, or ``noise`` = z itself) unless ``prev_sample`` is
    given, in which case that sample is scored. All math in float32.
    """
    if noise_level < 0 or not math.isfinite(noise_level):
        raise ValueError(f"noise_level must be a finite number >= 0, got {noise_level}")
    if prev_sample is not None and (generator is not None or noise is not None):
        raise ValueError("prev_sample is given, so nothing is sampled; pass generator/noise only when sampling")
    if prev_sample is not None and noise_level == 0:
        raise ValueError("noise_level=0 is the ODE step, which has no density to score prev_sample with; use noise_level>0")
    batch = sample.shape[0]
    sigma, sigma_next = step_sigmas(scheduler, timestep, batch, sample.device)
    sigma_max = float(scheduler.sigmas[1]) if len(scheduler.sigmas) > 1 else 1.0
    view = (batch,) + (1,) * (sample.dim() - 1)
    s, s_next = sigma.view(view), sigma_next.view(view)
    ds = s_next - s  # negative: σ decreases towards the data
    x, v = sample.float(), model_output.float()
    denominator = 1 - torch.where(s >= 1, torch.full_like(s, sigma_max), s)
    g = noise_level * torch.sqrt(s / denominator)
    mean = x * (1 + g**2 / (2 * s) * ds) + v * (1 + g**2 * (1 - s) / (2 * s)) * ds
    std = g * torch.sqrt(-ds)
    if prev_sample is None:
        if noise is None:
            noise = randn_like_per_sample(mean.shape, generator, device=mean.device, dtype=torch.float32)
        prev_sample = (mean + std * noise.float()).to(sample.dtype)
    if noise_level == 0:
        log_prob = torch.full((batch,), float("nan"), device=sample.device)  # the ODE step has no density
    else:
        log_prob = gaussian_log_prob(prev_sample.detach(), mean, std)
    return FlowStepOutput(
        prev_sample=prev_sample,
        mean=mean,
        std=std,
        log_prob=log_prob,
        pred_original_sample=(x - s * v).to(sample.dtype),
        sigma=sigma,
        sigma_next=sigma_next,
    )


def sample_flow(
    components,
    cond,
    latents: Tensor,
    *,
    uncond=None,
    guidance_scale: float = 1.0,
    num_inference_steps: int = 28,
    noise_level: float = 0.0,
    generator: Generators = None,
    record: bool = True,
):
    """Run N flow steps from x_1 = ``latents`` (B, C, H, W) with a flow pipeline's transformer.

    ``cond`` / ``uncond`` are :class:`lpo.models.flow_components.FlowConditioning` (uncond None:
    no guidance). ``noise_level`` 0 is the pipeline's own Euler ODE (log-probs NaN); above 0,
    the SDE of :func:`flow_sde_step_with_logprob` with a recorded log-prob per step, as the
    policy side of step-level preference training samples. Sets the scheduler's timesteps
    (σ·1000, SD3's shift applied by the scheduler) and runs without gradients.
    Returns a :class:`lpo.sampling.ddim.Trajectory` (timesteps, latents (B, N+1, ...) when
    ``record``, log_probs (B, N), final_latents).
    """
    from lpo.models.flow_components import predict_velocity
    from lpo.sampling.ddim import Trajectory

    scheduler = components.scheduler
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    history = [latents] if record else None
    log_probs = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            velocity = predict_velocity(components.transformer, latents, t, cond, uncond, guidance_scale)
            step = flow_sde_step_with_logprob(scheduler, velocity, t, latents, noise_level=noise_level,
                                              generator=generator)
            latents = step.prev_sample.to(latents.dtype)
            log_probs.append(step.log_prob)
            if record:
                history.append(latents)
    return Trajectory(
        timesteps=scheduler.timesteps,
        latents=torch.stack(history, dim=1) if record else None,
        log_probs=torch.stack(log_probs, dim=1),
        final_latents=latents,
    )
