"""The policy's stochastic step, by model family: what the step-level trainers sample and score.

LPO, SPO and step-level GRPO need the same four things from a sampler: its timesteps, the
Gaussian of one step from x_t (mean and std, with CFG), the log-probability of a given
x_prev under it, and the timestep to tell the step reward. A :class:`StepKernel` answers
them for one model family, so :mod:`lpo.trainers.rollout` and the trainers' losses are
written once:

- :class:`DDIMKernel` (U-Nets: SD1.5, SDXL, the world): the DDIM step with η
  (:func:`lpo.sampling.ddim.ddim_step_with_logprob`), timesteps 951 … 1 for N = 20, and the
  step-aware threshold rising with the DDIM σ_t (SPEC §5.1).
- :class:`FlowSDEKernel` (flow matching: SD3 / SD3.5): the SDE form of the flow ODE
  (:func:`lpo.sampling.flow.flow_sde_step_with_logprob`, ``noise_level`` g), timesteps
  σ·1000 of the scheduler's shifted schedule, and the threshold rising with the step's
  std g·√(−dσ), the flow counterpart of DDIM's σ_t (this project's choice: the LPO authors'
  SD3 recipe names no threshold schedule).

Both take the conditioning as :class:`lpo.models.conditioning.GuidedConditioning`; a flow
model's is built by :func:`flow_policy_conditioning` (pooled embedding in
``pooled_prompt_embeds``), so the rollout's row bookkeeping (index, stack, repeat) is shared.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from lpo.models.conditioning import GuidedConditioning, TextConditioning, predict_noise
from lpo.sampling.ddim import ddim_step_with_logprob, ddim_timesteps, sigma_schedule
from lpo.sampling.flow import DEFAULT_NOISE_LEVEL, flow_sde_step_with_logprob

RewardTimestepMode = str  # "current" | "prev" | "zero" (lpo.trainers.rollout.RewardTimestep)


@runtime_checkable
class StepKernel(Protocol):
    """One model family's stochastic sampler step, as the step-level trainers use it."""

    scheduler: Any

    def set_schedule(self, num_inference_steps: int, device: Any = None) -> Tensor:
        """Set the scheduler's N steps; (N,) timesteps in sampling order (largest first)."""

    def thresholds(self, num_inference_steps: int, threshold_min: float, threshold_max: float) -> Tensor:
        """(N,) float32 softmax-gap thresholds, ordered like the timesteps."""

    def reward_timestep(self, timesteps: Tensor, index: int, mode: RewardTimestepMode) -> float:
        """What the step reward is told for candidates branched at step ``index`` of ``timesteps``."""

    def predict(self, model: torch.nn.Module, latents: Tensor, timesteps: Tensor | float,
                conditioning: GuidedConditioning) -> Tensor:
        """The model's (CFG-combined) output at x_t: ε̂ for a U-Net, the velocity for a flow model."""

    def gaussian(self, prediction: Tensor, timesteps: Tensor | float, latents: Tensor) -> tuple[Tensor, Tensor]:
        """(mean (B, C, H, W) float32, std (B, 1, 1, 1) float32) of the step from x_t = ``latents``."""

    def log_prob(self, prediction: Tensor, timesteps: Tensor | float, latents: Tensor, prev_sample: Tensor) -> Tensor:
        """(B,) float32 log p(prev_sample | x_t), averaged over C, H, W."""

    @property
    def init_noise_sigma(self) -> float:
        """The std of x_T (the scheduler's init_noise_sigma; 1 for flow models)."""

    def state_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The dtype trajectories and candidates are kept in for a model of ``model_dtype``."""


class _GaussianStepKernel:
    """``gaussian`` and ``log_prob`` from one family step function (``_step``: mean, std and log-prob)."""

    def _step(self, prediction: Tensor, timesteps: Any, latents: Tensor, **sample: Any) -> Any:
        raise NotImplementedError

    def gaussian(self, prediction, timesteps, latents):
        step = self._step(prediction, timesteps, latents, noise=torch.zeros_like(prediction))
        return step.mean, step.std

    def log_prob(self, prediction, timesteps, latents, prev_sample):
        return self._step(prediction, timesteps, latents, prev_sample=prev_sample).log_prob


class DDIMKernel(_GaussianStepKernel):
    """The DDIM step with η (U-Net pipelines); numerically the functions the trainers always called."""

    def __init__(self, scheduler: Any, eta: float = 1.0) -> None:
        self.scheduler = scheduler
        self.eta = eta

    def set_schedule(self, num_inference_steps: int, device: Any = None) -> Tensor:
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        return ddim_timesteps(self.scheduler, num_inference_steps)

    def thresholds(self, num_inference_steps: int, threshold_min: float, threshold_max: float) -> Tensor:
        return _rising(sigma_schedule(self.scheduler, num_inference_steps, eta=1.0).float(), threshold_min, threshold_max)

    def reward_timestep(self, timesteps: Tensor, index: int, mode: RewardTimestepMode) -> float:
        t = int(timesteps[index])
        step_size = self.scheduler.config.num_train_timesteps // len(timesteps)
        return {"current": t, "prev": max(t - step_size, 0), "zero": 0}[mode]

    def predict(self, model, latents, timesteps, conditioning):
        return predict_noise(model, latents, timesteps, conditioning)

    def _step(self, prediction, timesteps, latents, **sample):
        return ddim_step_with_logprob(self.scheduler, prediction, timesteps, latents, eta=self.eta, **sample)

    @property
    def init_noise_sigma(self) -> float:
        return float(self.scheduler.init_noise_sigma)

    def state_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return model_dtype  # as the official LPO / SPO code (fp16 latents under fp16 U-Nets)


class FlowSDEKernel(_GaussianStepKernel):
    """The flow ODE's SDE step with per-step log-probabilities (SD3-style flow pipelines)."""

    def __init__(self, scheduler: Any, noise_level: float = DEFAULT_NOISE_LEVEL) -> None:
        if not noise_level > 0:
            raise ValueError(f"noise_level must be > 0 for step-level training (0 is the ODE, which has no "
                             f"log-prob), got {noise_level}")
        if getattr(scheduler.config, "use_dynamic_shifting", False):
            raise ValueError("the flow scheduler shifts its σ by resolution (use_dynamic_shifting, Flux-style), which "
                             "the step kernel does not compute; SD3 / SD3.5 use a fixed shift")
        self.scheduler = scheduler
        self.noise_level = noise_level

    def set_schedule(self, num_inference_steps: int, device: Any = None) -> Tensor:
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        return self.scheduler.timesteps.detach().float().cpu().clone()

    def step_stds(self, num_inference_steps: int) -> Tensor:
        """(N,) float32 std g·√(−dσ) of each SDE step (the scheduler's schedule for N steps)."""
        timesteps = self.set_schedule(num_inference_steps)
        probe = torch.zeros(len(timesteps), 1, 1, 1)
        step = flow_sde_step_with_logprob(self.scheduler, probe, timesteps, probe, noise_level=self.noise_level,
                                          noise=probe)
        return step.std.flatten()

    def thresholds(self, num_inference_steps: int, threshold_min: float, threshold_max: float) -> Tensor:
        return _rising(self.step_stds(num_inference_steps), threshold_min, threshold_max)

    def reward_timestep(self, timesteps: Tensor, index: int, mode: RewardTimestepMode) -> float:
        if mode == "zero":
            return 0.0
        if mode == "prev":  # the candidates' own noise level: the next step's σ·1000 (0 after the last)
            return float(timesteps[index + 1]) if index + 1 < len(timesteps) else 0.0
        return float(timesteps[index])

    def predict(self, model, latents, timesteps, conditioning):
        from lpo.models.flow_components import FlowConditioning, predict_velocity

        def flow(text: TextConditioning) -> FlowConditioning:
            return FlowConditioning(text.prompt_embeds, text.pooled_prompt_embeds)

        uncond = None if conditioning.uncond is None or conditioning.guidance_scale == 1.0 else flow(conditioning.uncond)
        return predict_velocity(model, latents.to(model.dtype), timesteps, flow(conditioning.cond), uncond,
                                conditioning.guidance_scale)

    def _step(self, prediction, timesteps, latents, **sample):
        return flow_sde_step_with_logprob(self.scheduler, prediction, timesteps, latents, noise_level=self.noise_level,
                                          **sample)

    @property
    def init_noise_sigma(self) -> float:
        return 1.0  # x_1 ~ N(0, I): the flow path's noise end

    def state_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        # float32 always: the SDE's last steps have std ~0.006 (SD3, 20 steps), below bf16's
        # spacing at |x| ~ 1, so bf16 states would distort the log-probs (Flow-GRPO keeps fp32)
        return torch.float32


def _rising(levels: Tensor, threshold_min: float, threshold_max: float) -> Tensor:
    """th = th_min + (s − s_min)/(s_max − s_min)·(th_max − th_min) per step; equal bounds: fixed."""
    if threshold_min == threshold_max or levels.max() == levels.min():
        return torch.full_like(levels, float(threshold_min))
    scale = (levels - levels.min()) / (levels.max() - levels.min())
    return threshold_min + scale * (threshold_max - threshold_min)


def as_step_kernel(sampler: Any, eta: float = 1.0) -> StepKernel:
    """``sampler`` when it is a :class:`StepKernel`; a DDIM scheduler becomes :class:`DDIMKernel` with ``eta``."""
    if isinstance(sampler, _GaussianStepKernel):
        return sampler
    return DDIMKernel(sampler, eta)


def kernel_for(components: Any, eta: float = 1.0, noise_level: float = DEFAULT_NOISE_LEVEL) -> StepKernel:
    """The step kernel of ``components``' family: flow SDE for flow pipelines, DDIM otherwise."""
    from lpo.models.flow_components import FlowComponents

    if isinstance(components, FlowComponents):
        return FlowSDEKernel(components.scheduler, noise_level)
    return DDIMKernel(components.scheduler, eta)


def flow_policy_conditioning(components: Any, prompts: Sequence[str], guidance_scale: float) -> GuidedConditioning:
    """A flow pipeline's prompt conditioning as :class:`GuidedConditioning` (the unconditional
    branch encodes "" as SD3's pipeline does; none at scale 1)."""
    from lpo.models.flow_components import encode_flow_prompts

    def text(batch: Sequence[str]) -> TextConditioning:
        encoded = encode_flow_prompts(components, list(batch))
        return TextConditioning(encoded.prompt_embeds, encoded.pooled)

    uncond = None if guidance_scale == 1.0 else text([""] * len(prompts))
    return GuidedConditioning(text(prompts), uncond, guidance_scale)


def policy_conditioning(components: Any, prompts: Sequence[str], guidance_scale: float,
                        negative_prompt: str | None = None) -> GuidedConditioning:
    """The policy's CFG conditioning for ``prompts``, whatever the family of ``components``."""
    from lpo.models.flow_components import FlowComponents

    if isinstance(components, FlowComponents):
        if negative_prompt:
            from lpo.core.errors import LpoError

            raise LpoError("sampler.negative_prompt is not supported for flow models yet; leave it unset")
        return flow_policy_conditioning(components, prompts, guidance_scale)
    from lpo.models.components import guided_conditioning

    return guided_conditioning(components, prompts, guidance_scale, negative_prompt)
