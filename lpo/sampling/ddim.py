"""DDIM sampling with per-step log-probabilities, K-candidate branching and trajectories.

Implements SPEC §3, the step shared by LPO and SPO (and the DDPO-style step function of
ddpo-pytorch): one stochastic DDIM step is a Gaussian transition

    p(x_prev | x_t) = N(μ, std²·I),

so one function can both *sample* a transition and *score* a stored one (given
``prev_sample`` it only computes the log-prob). Trainers replay stored transitions
(x_t, x_w, x_l, t) through the same function with the policy and the reference U-Net.

Paper notation -> code names (once, here):

    t, t−T/N        timestep, prev_timestep          (B,) long
    T, N            scheduler.config.num_train_timesteps, scheduler.num_inference_steps
    ᾱ_t, ᾱ_prev     alpha_prod_t, alpha_prod_prev    (B, 1, 1, 1) float32
    x_t, x_prev     latents_t, prev_sample           (B, C, H, W)
    ε̂               noise_pred (the model output; see ``prediction_type`` below)
    x̂0              pred_original_sample             (B, C, H, W)
    σ_t             sigma (see ``sigma_schedule``)
    η, std = η·σ_t  eta, std                         (B, 1, 1, 1) float32
    μ               mean                             (B, C, H, W) float32
    z               noise                            (B, C, H, W)
    log p           log_prob                         (B,) float32, a MEAN over C, H, W
    K, x_prev^k     num_candidates, candidates       (B, K, C, H, W)

The math is that of ``diffusers.DDIMScheduler.step`` (prediction types ``epsilon``,
``sample`` and ``v_prediction``; clipping and dynamic thresholding of x̂0 when the
scheduler's config asks for them), so for the same noise z our ``prev_sample`` equals
``DDIMScheduler.step(..., eta=eta, variance_noise=z).prev_sample``. Unlike ``step`` it
accepts a different timestep per sample and returns the mean, std and log-prob.

Seeds: wherever a ``generator`` is taken, a list of one ``torch.Generator`` per sample is
accepted too (as in diffusers); then sample i's noise depends only on generator i, so a
prompt's image with a fixed seed does not depend on which other prompts share its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, Union

import torch
from torch._subclasses.fake_tensor import is_fake
from diffusers import DDIMScheduler
from torch import Tensor

from lpo.models.conditioning import GuidedConditioning, TextConditioning, predict_noise

# One generator for the whole batch, one per sample, or None (global RNG).
Generators = Union[torch.Generator, Sequence[torch.Generator], None]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class DDIMStepOutput:
    """One stochastic DDIM transition x_t -> x_prev (SPEC §3).

    prev_sample: (B, C, H, W) x_prev, in the dtype of ``latents_t`` (the drawn sample, or
        the ``prev_sample`` that was passed in to be scored).
    mean: (B, C, H, W) float32 μ of the Gaussian transition.
    std: (B, 1, 1, 1) float32 η·σ_t, broadcastable against ``mean``.
    log_prob: (B,) float32 log p(prev_sample | x_t), the MEAN over C, H, W of the
        per-element Gaussian log density (not the sum; β values assume the mean).
    pred_original_sample: (B, C, H, W) x̂0 in the dtype of ``latents_t`` (after clipping
        or thresholding, if the scheduler's config asks for it).
    prev_timestep: (B,) long t − T/N (negative at the last step, where ᾱ_prev is the
        scheduler's ``final_alpha_cumprod``).
    """

    prev_sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor
    pred_original_sample: Tensor
    prev_timestep: Tensor


@dataclass
class Trajectory:
    """A batch of DDIM trajectories x_T -> x_0.

    timesteps: (N,) long, the timesteps in sampling order (951, 901, ..., 1 for SD, N=20).
    latents: (B, N + 1, C, H, W) with ``latents[:, 0]`` = x_T and ``latents[:, i + 1]`` the
        latents after step i (at ``timesteps[i] − T/N``); None when sampled with
        ``record=False``.
    log_probs: (B, N) float32, log p(latents[:, i + 1] | latents[:, i]) (mean over C, H, W).
    final_latents: (B, C, H, W) x_0, ready for the VAE (after dividing by its scaling factor).
    """

    timesteps: Tensor
    latents: Tensor | None
    log_probs: Tensor
    final_latents: Tensor


# --------------------------------------------------------------------------- helpers


def _require_ddim(scheduler) -> None:
    # The step math reads DDIM's ᾱ table, final ᾱ and prev_t = t − T/N; other schedulers
    # (SD1.5 ships a PNDMScheduler) have different timesteps or no final ᾱ.
    if not isinstance(scheduler, DDIMScheduler):
        raise ValueError(
            f"the DDIM log-prob step needs a DDIMScheduler, got {type(scheduler).__name__}; "
            "build one with DDIMScheduler.from_config(pipeline.scheduler.config)"
        )


def _check_eta(eta: float) -> None:
    if eta <= 0:
        raise ValueError(
            f"eta={eta}: the DDIM step with eta=0 is deterministic and has no density, so "
            "no log-prob; use eta>0 (eta=1 in the LPO, SPO and Diffusion-DPO code)"
        )
    if eta > 1:
        # std² = η²σ² may exceed 1 − ᾱ_prev, making √(1 − ᾱ_prev − std²) NaN.
        raise ValueError(f"eta={eta} is out of range; use 0 < eta <= 1 (eta=1 in the published code)")


def _num_inference_steps(scheduler) -> int:
    if scheduler.num_inference_steps is None:
        raise ValueError(
            "the scheduler has no num_inference_steps; call scheduler.set_timesteps(N) first "
            "(the step needs N for prev_t = t − T/N)"
        )
    return int(scheduler.num_inference_steps)


def _as_batch_timesteps(timestep: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """``timestep`` (int, 0-d or (B,)) as a (B,) long tensor on ``device``."""
    timesteps = torch.as_tensor(timestep, device=device).long().reshape(-1)
    if timesteps.numel() == 1:
        return timesteps.expand(batch)
    if timesteps.numel() != batch:
        raise ValueError(f"got {timesteps.numel()} timesteps for a batch of {batch}; pass one or one per sample")
    return timesteps


def _alphas(scheduler, timesteps: Tensor, num_inference_steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """(prev_timesteps (B,), ᾱ_t (B,), ᾱ_prev (B,)) in float32 on the timesteps' device."""
    device = timesteps.device
    prev_timesteps = timesteps - scheduler.config.num_train_timesteps // num_inference_steps
    alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    final_alpha_cumprod = torch.as_tensor(scheduler.final_alpha_cumprod, device=device, dtype=torch.float32)
    alpha_prod_t = alphas_cumprod[timesteps]
    # SPEC §3 step 1: below t = 0 use the scheduler's final ᾱ (ᾱ_0 for SD's set_alpha_to_one=False).
    alpha_prod_prev = torch.where(
        prev_timesteps >= 0, alphas_cumprod[prev_timesteps.clamp(min=0)], final_alpha_cumprod
    )
    return prev_timesteps, alpha_prod_t, alpha_prod_prev


def _sigma(alpha_prod_t: Tensor, alpha_prod_prev: Tensor) -> Tensor:
    # SPEC §3 step 4: σ_t² = (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev), as DDIMScheduler._get_variance.
    variance = (1 - alpha_prod_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)
    return variance.sqrt()


def gaussian_log_prob(sample: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Mean over the last three dims (C, H, W) of the N(mean, std²) log density, in float32.

    sample, mean: (..., C, H, W); std broadcastable to them. Returns shape (...), e.g. (B,)
    for (B, C, H, W) inputs and (B, K) for candidates (B, K, C, H, W).
    """
    sample, mean, std = sample.float(), mean.float(), std.float()
    # SPEC §3 step 7: −(x − μ)²/(2·std²) − log std − ½·log 2π, averaged (not summed).
    log_density = -((sample - mean) ** 2) / (2 * std**2) - torch.log(std) - _HALF_LOG_2PI
    return log_density.mean(dim=(-3, -2, -1))


def randn_like_per_sample(
    shape: Sequence[int],
    generators: Generators,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of ``shape`` (B, ...), drawn per sample when given a list.

    generators: None (global RNG), one ``torch.Generator`` for the whole tensor, or a list
        of B generators; with a list, row i is drawn from generator i alone, so it does not
        depend on the batch around it.
    The noise is drawn in float32 on the generator's device and then cast/moved, so fp16,
    bf16 and fp32 runs (and CPU-seeded GPU runs) see the same numbers.
    """
    shape = tuple(shape)
    if generators is None or isinstance(generators, torch.Generator):
        gen_device = generators.device if generators is not None else device
        noise = torch.randn(shape, generator=generators, device=gen_device, dtype=torch.float32)
        return noise.to(device=device, dtype=dtype)
    generators = list(generators)
    if len(generators) != shape[0]:
        raise ValueError(
            f"got {len(generators)} generators for a batch of {shape[0]}; pass one generator or one per sample"
        )
    rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)  # (B, ...)


# --------------------------------------------------------------------------- schedule


def ddim_timesteps(scheduler, num_inference_steps: int) -> Tensor:
    """(N,) long timesteps the scheduler samples at with N steps (951, 901, ..., 1 for SD, N=20).

    Uses the scheduler's own ``set_timesteps`` (so its spacing and steps_offset apply) on a
    fresh copy from its config: the caller's scheduler is left untouched.
    """
    _require_ddim(scheduler)
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(num_inference_steps)
    return fresh.timesteps.clone()


def sigma_schedule(scheduler, num_inference_steps: int, eta: float = 1.0) -> Tensor:
    """(N,) float32 std = η·σ_t per DDIM timestep, ordered like ``ddim_timesteps`` (largest t first).

    Used for LPO's threshold schedule (th_t rises linearly with σ_t). With η = 1 it is σ_t.
    """
    _check_eta(eta)
    timesteps = ddim_timesteps(scheduler, num_inference_steps)
    _, alpha_prod_t, alpha_prod_prev = _alphas(scheduler, timesteps, num_inference_steps)
    return eta * _sigma(alpha_prod_t, alpha_prod_prev)


# --------------------------------------------------------------------------- the step


def ddim_step_with_logprob(
    scheduler,
    noise_pred: Tensor,
    timestep: Tensor | int,
    latents_t: Tensor,
    eta: float = 1.0,
    prev_sample: Tensor | None = None,
    generator: Generators = None,
    noise: Tensor | None = None,
) -> DDIMStepOutput:
    """One DDIM step x_t -> x_prev with its Gaussian log-prob (SPEC §3); samples or scores.

    scheduler: a ``DDIMScheduler`` after ``set_timesteps(N)`` (N sets prev_t = t − T/N).
    noise_pred: (B, C, H, W) the (CFG-combined) model output ε̂, interpreted through the
        scheduler's ``prediction_type`` (``epsilon`` for SD1.5/SDXL).
    timestep: int, 0-d or (B,) tensor; samples may sit at different t (trainers replay
        stored transitions at mixed t).
    latents_t: (B, C, H, W) x_t.
    eta: η in (0, 1]; η = 0 has no density and raises.
    prev_sample: (B, C, H, W) x_prev to score; when given nothing is sampled (and
        ``generator``/``noise`` must be None).
    generator: one generator or one per sample (see ``randn_like_per_sample``) for z.
    noise: (B, C, H, W) z itself (diffusers' ``variance_noise``); exclusive with ``generator``.

    The log-prob treats x_prev as data (it is detached), as in ddpo-pytorch: gradients flow
    into log p only through μ, i.e. through ``noise_pred``. All math runs in float32.
    """
    _require_ddim(scheduler)
    _check_eta(eta)
    if prev_sample is not None and (generator is not None or noise is not None):
        raise ValueError("prev_sample is given, so nothing is sampled; pass generator/noise only when sampling")
    if generator is not None and noise is not None:
        raise ValueError("pass either generator or noise, not both (noise is z itself)")
    num_inference_steps = _num_inference_steps(scheduler)
    out_dtype = latents_t.dtype
    batch = latents_t.shape[0]

    # 1. prev_t = t − T/N and the ᾱ's, one per sample so mixed timesteps work.  (B, 1, 1, 1)
    timesteps = _as_batch_timesteps(timestep, batch, latents_t.device)
    prev_timesteps, alpha_prod_t, alpha_prod_prev = _alphas(scheduler, timesteps, num_inference_steps)
    alpha_prod_t = alpha_prod_t.view(batch, 1, 1, 1)
    alpha_prod_prev = alpha_prod_prev.view(batch, 1, 1, 1)
    beta_prod_t = 1 - alpha_prod_t

    # 2. x̂0 and ε̂ from the model output, in float32 (fp16 loses the small std at low t).
    model_output = noise_pred.float()
    sample = latents_t.float()
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        # SPEC §3 step 3: x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t
        pred_original_sample = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
        pred_epsilon = model_output
    elif prediction_type == "sample":
        pred_original_sample = model_output
        pred_epsilon = (sample - alpha_prod_t.sqrt() * pred_original_sample) / beta_prod_t.sqrt()
    elif prediction_type == "v_prediction":
        pred_original_sample = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
        pred_epsilon = alpha_prod_t.sqrt() * model_output + beta_prod_t.sqrt() * sample
    else:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported; use 'epsilon', 'sample' or 'v_prediction'"
        )

    # 3. Clip or threshold x̂0 exactly when DDIMScheduler.step would (off for SD1.5/SDXL),
    #    so the mean equals the scheduler's for every config. ε̂ stays unclipped, as in
    #    step's default use_clipped_model_output=False.
    if scheduler.config.thresholding:
        pred_original_sample = scheduler._threshold_sample(pred_original_sample)
    elif scheduler.config.clip_sample:
        clip = scheduler.config.clip_sample_range
        pred_original_sample = pred_original_sample.clamp(-clip, clip)

    # 4. std = η·σ_t. A zero std (e.g. the last step when set_alpha_to_one=True, where
    #    ᾱ_prev = 1) is a deterministic step without a density.
    std = eta * _sigma(alpha_prod_t, alpha_prod_prev)  # (B, 1, 1, 1)
    if not is_fake(std) and bool((std == 0).any()):  # fake tensors (lpo perf memory) hold no values
        zero_t = timesteps[(std == 0).view(-1)].tolist()
        raise ValueError(
            f"std = η·σ_t is 0 at timesteps {zero_t} (eta={eta}), so the DDIM step has no density; "
            "use eta>0 and a scheduler with set_alpha_to_one=False (as SD's config)"
        )

    # 5. μ = √ᾱ_prev·x̂0 + √(1 − ᾱ_prev − std²)·ε̂
    mean = alpha_prod_prev.sqrt() * pred_original_sample + (1 - alpha_prod_prev - std**2).sqrt() * pred_epsilon

    # 6. x_prev = μ + std·z, unless we are scoring a given x_prev.
    if prev_sample is None:
        if noise is None:
            noise = randn_like_per_sample(mean.shape, generator, device=mean.device, dtype=torch.float32)
        prev_sample = (mean + std * noise.float()).to(out_dtype)
    # 7. Log-prob of x_prev as returned (after rounding to out_dtype), so that rescoring the
    #    stored sample later gives the same number.
    log_prob = gaussian_log_prob(prev_sample.detach(), mean, std)

    return DDIMStepOutput(
        prev_sample=prev_sample,
        mean=mean,
        std=std,
        log_prob=log_prob,
        pred_original_sample=pred_original_sample.to(out_dtype),
        prev_timestep=prev_timesteps,
    )


# --------------------------------------------------------------------------- branching


def branch_candidates(step_mean: Tensor, std: Tensor, num_candidates: int, generator: Generators = None) -> Tensor:
    """K candidate next latents from one step's Gaussian: (B, K, C, H, W) = μ + std·z_k.

    step_mean: (B, C, H, W) μ (``DDIMStepOutput.mean``); std: (B, 1, 1, 1) or broadcastable.
    Each candidate gets its own z_k; with a list of per-sample generators, sample i's K
    draws come from generator i only. Returned in ``step_mean``'s dtype (float32 from the
    step); cast to the U-Net's dtype before continuing the trajectory from one.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates={num_candidates}; need at least 1")
    batch = step_mean.shape[0]
    noise = randn_like_per_sample(
        (batch, num_candidates, *step_mean.shape[1:]), generator, device=step_mean.device, dtype=torch.float32
    )  # (B, K, C, H, W)
    candidates = step_mean.float().unsqueeze(1) + _per_candidate(std) * noise
    return candidates.to(step_mean.dtype)


def candidate_log_probs(candidates: Tensor, step_mean: Tensor, std: Tensor) -> Tensor:
    """(B, K) float32 log p(x_prev^k | x_t) (mean over C, H, W) for candidates (B, K, C, H, W)."""
    return gaussian_log_prob(candidates, step_mean.unsqueeze(1), _per_candidate(std))


def _per_candidate(std: Tensor) -> Tensor:
    # (B, 1, 1, 1) -> (B, 1, 1, 1, 1) so it broadcasts over (B, K, C, H, W); a scalar stays as is.
    return std.float().unsqueeze(1) if std.dim() == 4 else std.float()


# --------------------------------------------------------------------------- trajectories


def initial_latents(
    batch: int,
    channels: int,
    height: int,
    width: int,
    generator: Generators,
    scheduler,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """x_T: (B, C, H, W) standard normal noise times ``scheduler.init_noise_sigma``.

    height, width are in latent pixels (image size / the VAE's scale factor, e.g. 64 for a
    512 px SD1.5 image). A list of per-sample generators makes x_T of sample i depend only
    on seed i.
    """
    noise = randn_like_per_sample((batch, channels, height, width), generator, device=device, dtype=torch.float32)
    return (noise * scheduler.init_noise_sigma).to(dtype)


@torch.no_grad()
def sample_trajectory(
    unet: torch.nn.Module,
    scheduler,
    conditioning: GuidedConditioning | TextConditioning,
    latents: Tensor,
    num_inference_steps: int = 20,
    eta: float = 1.0,
    generator: Generators = None,
    record: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Trajectory:
    """Run N stochastic DDIM steps from x_T = ``latents`` (B, C, H, W), recording log-probs.

    Sets the scheduler's timesteps (``scheduler.set_timesteps(N)``), as a diffusers
    pipeline does, so the scheduler can be reused by ``ddim_step_with_logprob`` afterwards.
    Runs without gradients: trainers rescore the transitions they keep with the step
    function. ``generator`` (one, or one per sample) draws each step's z; ``record=False``
    keeps only the final latents (``Trajectory.latents`` is None). ``progress`` wraps the
    timestep iterable, e.g. ``tqdm`` or ``rich.progress.track``.
    """
    _require_ddim(scheduler)
    _check_eta(eta)
    if conditioning.batch_size != latents.shape[0]:
        raise ValueError(f"conditioning has batch {conditioning.batch_size} but latents have {latents.shape[0]}")
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    timesteps = scheduler.timesteps

    # 1. Walk t = 951, 901, ..., 1 (SD, N=20): ε̂ with CFG, then the log-prob step.
    history = [latents] if record else None
    log_probs = []
    steps = progress(timesteps) if progress is not None else timesteps
    for t in steps:
        model_input = scheduler.scale_model_input(latents, t)  # identity for DDIM; kept for clarity
        noise_pred = predict_noise(unet, model_input, t, conditioning)
        step = ddim_step_with_logprob(scheduler, noise_pred, t, latents, eta=eta, generator=generator)
        latents = step.prev_sample
        log_probs.append(step.log_prob)
        if record:
            history.append(latents)

    # 2. Stack along a time axis after the batch axis.
    return Trajectory(
        timesteps=timesteps,
        latents=torch.stack(history, dim=1) if record else None,  # (B, N + 1, C, H, W)
        log_probs=torch.stack(log_probs, dim=1),  # (B, N)
        final_latents=latents,
    )
