"""The step-level rollout shared by LPO and SPO (SPEC §5.1 step 1, §5.2).

For a batch of prompts, sample DDIM trajectories with the policy; at every *training*
step t branch K candidates x_prev^k from the step's Gaussian, score them with a step
reward, keep (x_t, x_w, x_l, t, prompt) when the winner is clearly better, and continue
from a uniformly random candidate. The trainers then replay the kept transitions through
:func:`lpo.sampling.ddim.ddim_step_with_logprob` with the policy and the reference.

Paper notation -> code:

=====================  =================================================================
x_t                    ``latents`` (B, C, H, W), the policy's current state
μ, std                 the DDIM step's mean and η·σ_t (SPEC §3), from the policy with CFG
x_prev^k, K            ``candidates`` (B, K, C, H, W) = μ + std·z_k; ``num_candidates``
S(x_prev^k)            the step reward's scores (B, K); LRM on the candidate latents, or
                       SPO's pixel model on their decoded one-step x̂0
reward timestep        ``reward_timestep="current"``: the reward is told t although the
                       candidates are at prev_t (the official LPO code; default); "prev":
                       told prev_t (clamped at 0 after the last step), as SPO's code does;
                       "zero": told t = 0 (the paper's ablation that hides the noise level)
w, l                   argmax / argmin of S over the K candidates
p_w − p_l              the 2-way softmax gap = tanh((S_w − S_l)/2)
th_t                   ``step_thresholds``: rises linearly with σ_t from ``threshold_min``
                       (smallest σ, t = 1) to ``threshold_max`` (largest σ, t = 951); equal
                       bounds give SPO's fixed threshold
kept                   :class:`KeptSteps`: rows with p_w − p_l > th_t
skipped steps          the first ``skip_first_steps`` steps (SPO: 4 of 20) and every step
                       with t < ``min_timestep`` draw one sample and keep nothing
=====================  =================================================================

Randomness: every draw (the K candidates' noise and the continuation choice) comes from
the one ``generator`` passed in, in a fixed order, so a round is reproducible from its
seed (the trainers key it by seed, round and process). Everything runs without gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from lpo.models.conditioning import GuidedConditioning, TextConditioning, predict_noise
from lpo.sampling.ddim import branch_candidates, ddim_step_with_logprob, ddim_timesteps, sigma_schedule

RewardTimestep = Literal["current", "prev", "zero"]


@runtime_checkable
class StepReward(Protocol):
    """A reward on noisy latents for K candidates per prompt: the LRM (:mod:`lpo.reward.lrm`) or
    SPO's pixel model (:mod:`lpo.reward.pixel`) both satisfy it.

    ``encode_text(prompts)`` -> a text handle with ``repeat_interleave(k)``;
    ``score_with_conditioning(latents_t (N, C, H, W), timesteps (N,), text)`` -> (N,) float32.
    """

    def encode_text(self, prompts: Sequence[str]) -> Any: ...

    def score_with_conditioning(self, latents_t: Tensor, timesteps: Tensor, text: Any) -> Tensor: ...


@dataclass(frozen=True)
class StepRolloutSettings:
    """What one rollout needs to know (the trainers' sampler config maps onto it)."""

    num_inference_steps: int = 20
    eta: float = 1.0
    num_candidates: int = 4
    skip_first_steps: int = 0
    min_timestep: int = 0
    reward_timestep: RewardTimestep = "current"
    threshold_min: float = 0.35
    threshold_max: float = 0.5

    def __post_init__(self) -> None:
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates must be >= 2 (a winner and a loser), got {self.num_candidates}")
        if not 0 <= self.skip_first_steps < self.num_inference_steps:
            raise ValueError(
                f"skip_first_steps must be in [0, {self.num_inference_steps - 1}], got {self.skip_first_steps}"
            )
        if self.reward_timestep not in ("current", "prev", "zero"):
            raise ValueError(f"reward_timestep must be current, prev or zero, got {self.reward_timestep!r}")
        if not 0 <= self.threshold_min <= self.threshold_max < 1:
            raise ValueError(
                f"thresholds must satisfy 0 <= threshold_min <= threshold_max < 1, got "
                f"{self.threshold_min} and {self.threshold_max}"
            )


def step_thresholds(scheduler: Any, num_inference_steps: int, threshold_min: float, threshold_max: float) -> Tensor:
    """(N,) float32 th_t per DDIM step, ordered like ``ddim_timesteps`` (largest t first).

    th_t = th_min + (σ_t − σ_min)/(σ_max − σ_min)·(th_max − th_min) with σ_t the η = 1 DDIM
    σ (SPEC §3), as LPO's ``dynamic_threshold_sigma``; th_min == th_max is a fixed threshold.
    """
    sigmas = sigma_schedule(scheduler, num_inference_steps, eta=1.0).float()
    if threshold_min == threshold_max or sigmas.max() == sigmas.min():
        return torch.full_like(sigmas, float(threshold_min))
    scale = (sigmas - sigmas.min()) / (sigmas.max() - sigmas.min())
    return threshold_min + scale * (threshold_max - threshold_min)


def trained_steps(timesteps: Tensor, settings: StepRolloutSettings) -> Tensor:
    """(N,) bool: which steps of ``timesteps`` (sampling order) branch and keep pairs."""
    index = torch.arange(len(timesteps))
    return (index >= settings.skip_first_steps) & (timesteps.cpu() >= settings.min_timestep)


def softmax_gap(scores_w: Tensor, scores_l: Tensor) -> Tensor:
    """p_w − p_l of the 2-way softmax over [S_w, S_l] = tanh((S_w − S_l)/2)."""
    return torch.tanh((scores_w.float() - scores_l.float()) / 2)


@dataclass
class KeptSteps:
    """Kept step-level preference samples (SPEC §5.1 step 1d), M rows.

    latents_t: (M, C, H, W) x_t.   latents_w / latents_l: (M, C, H, W) winner / loser x_prev.
    timesteps: (M,) long t of the transition x_t -> x_prev.
    prompt_index: (M,) long row of ``conditioning`` holding the prompt's embeddings.
    conditioning: the prompts' CFG conditioning (P rows; cond and uncond embeddings).
    gaps: (M,) float32 p_w − p_l.   scores_w / scores_l: (M,) the reward's S_w, S_l.
    prompts: the P prompt strings (for logs).
    """

    latents_t: Tensor
    latents_w: Tensor
    latents_l: Tensor
    timesteps: Tensor
    prompt_index: Tensor
    conditioning: GuidedConditioning
    gaps: Tensor
    scores_w: Tensor
    scores_l: Tensor
    prompts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def to(self, device: torch.device | str) -> "KeptSteps":
        def move(c: TextConditioning | None) -> TextConditioning | None:
            return None if c is None else c.to(device=device)

        cond = self.conditioning
        return KeptSteps(
            latents_t=self.latents_t.to(device), latents_w=self.latents_w.to(device), latents_l=self.latents_l.to(device),
            timesteps=self.timesteps.to(device), prompt_index=self.prompt_index.to(device),
            conditioning=GuidedConditioning(move(cond.cond), move(cond.uncond), cond.guidance_scale),
            gaps=self.gaps.to(device), scores_w=self.scores_w.to(device), scores_l=self.scores_l.to(device),
            prompts=list(self.prompts),
        )

    def select(self, rows: Tensor | Sequence[int]) -> "KeptSteps":
        """Rows ``rows`` (the prompt table is kept whole)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.timesteps.device)
        return KeptSteps(
            latents_t=self.latents_t[rows], latents_w=self.latents_w[rows], latents_l=self.latents_l[rows],
            timesteps=self.timesteps[rows], prompt_index=self.prompt_index[rows], conditioning=self.conditioning,
            gaps=self.gaps[rows], scores_w=self.scores_w[rows], scores_l=self.scores_l[rows], prompts=list(self.prompts),
        )

    def row_conditioning(self) -> GuidedConditioning:
        """The CFG conditioning of every row (M rows), for the training forward."""
        return self.conditioning.index(self.prompt_index.to(self.conditioning.cond.prompt_embeds.device))

    @staticmethod
    def cat(parts: Sequence["KeptSteps"]) -> "KeptSteps":
        """Concatenate (e.g. one part per process); prompt tables are stacked and indices shifted."""
        if not parts:
            raise ValueError("nothing to concatenate")
        offsets, total = [], 0
        for part in parts:
            offsets.append(total)
            total += part.conditioning.batch_size
        guidance = {p.conditioning.guidance_scale for p in parts}
        if len(guidance) != 1:
            raise ValueError(f"parts were sampled with different guidance scales {sorted(guidance)}")
        uncond = None
        if parts[0].conditioning.uncond is not None:
            uncond = TextConditioning.cat([p.conditioning.uncond for p in parts])
        return KeptSteps(
            latents_t=torch.cat([p.latents_t for p in parts]),
            latents_w=torch.cat([p.latents_w for p in parts]),
            latents_l=torch.cat([p.latents_l for p in parts]),
            timesteps=torch.cat([p.timesteps for p in parts]),
            prompt_index=torch.cat([p.prompt_index + offset for p, offset in zip(parts, offsets)]),
            conditioning=GuidedConditioning(
                TextConditioning.cat([p.conditioning.cond for p in parts]), uncond, guidance.pop()
            ),
            gaps=torch.cat([p.gaps for p in parts]),
            scores_w=torch.cat([p.scores_w for p in parts]),
            scores_l=torch.cat([p.scores_l for p in parts]),
            prompts=[prompt for p in parts for prompt in p.prompts],
        )


@dataclass
class RolloutOutput:
    """kept: the kept samples.   final_latents: (B, C, H, W) x_0, or None when the rollout
    stopped early (no trained step left).   branched: rows that were branched and scored
    (B × trained steps).   kept_by_timestep: {t: kept rows}.   scores: every candidate score."""

    kept: KeptSteps
    final_latents: Tensor | None
    branched: int
    kept_by_timestep: dict[int, int]
    scores: Tensor

    @property
    def keep_rate(self) -> float:
        return len(self.kept) / self.branched if self.branched else 0.0


@torch.no_grad()
def step_rollout(
    unet: torch.nn.Module,
    scheduler: Any,
    conditioning: GuidedConditioning,
    reward: StepReward,
    reward_text: Any,
    latents: Tensor,
    settings: StepRolloutSettings,
    generator: torch.Generator,
    prompts: Sequence[str] = (),
) -> RolloutOutput:
    """Roll out B trajectories from x_T = ``latents`` with the policy ``unet`` (SPEC §5.1 step 1).

    conditioning: the prompts' CFG conditioning (B rows), used for the policy's ε̂.
    reward_text: ``reward.encode_text(prompts)`` for the same B prompts (not repeated).
    generator: the source of every random draw of the round (see the module docstring).
    Sets ``scheduler``'s timesteps to N. Stops after the last trained step.
    """
    batch = latents.shape[0]
    num_candidates = settings.num_candidates
    if conditioning.batch_size != batch:
        raise ValueError(f"conditioning has {conditioning.batch_size} rows for {batch} latents")
    scheduler.set_timesteps(settings.num_inference_steps, device=latents.device)
    timesteps = ddim_timesteps(scheduler, settings.num_inference_steps)
    thresholds = step_thresholds(scheduler, settings.num_inference_steps, settings.threshold_min, settings.threshold_max)
    trained = trained_steps(timesteps, settings)
    last_trained = int(torch.nonzero(trained).max()) if bool(trained.any()) else -1
    candidate_text = reward_text.repeat_interleave(num_candidates)  # row b·K + k is prompt b
    step_size = scheduler.config.num_train_timesteps // settings.num_inference_steps

    kept: dict[str, list[Tensor]] = {k: [] for k in ("t", "w", "l", "ts", "idx", "gap", "sw", "sl")}
    kept_by_timestep: dict[int, int] = {}
    all_scores: list[Tensor] = []
    rows = torch.arange(batch)
    for i, t in enumerate(timesteps.tolist()):
        if i > last_trained:
            break  # nothing left to keep: the rest of the trajectory is not needed
        # 1a. μ and std of the policy's step (with CFG); z = 0 makes prev_sample = μ
        noise_pred = predict_noise(unet, latents, t, conditioning)
        step = ddim_step_with_logprob(scheduler, noise_pred, t, latents, eta=settings.eta, noise=torch.zeros_like(noise_pred))
        if not bool(trained[i]):
            latents = branch_candidates(step.mean, step.std, 1, generator)[:, 0].to(latents.dtype)
            continue
        # 1a. K candidates from the one Gaussian
        candidates = branch_candidates(step.mean, step.std, num_candidates, generator).to(latents.dtype)  # (B, K, C, H, W)
        # 1b. score them (told t, or prev_t clamped at 0)
        # "zero": the paper's ablation that hides the noise level from the LRM (tells it t = 0)
        reward_t = {"current": t, "prev": max(t - step_size, 0), "zero": 0}[settings.reward_timestep]
        flat = candidates.reshape(batch * num_candidates, *candidates.shape[2:])
        reward_timesteps = torch.full((batch * num_candidates,), reward_t, dtype=torch.long, device=flat.device)
        scores = reward.score_with_conditioning(flat, reward_timesteps, candidate_text).float().reshape(batch, num_candidates)
        all_scores.append(scores.cpu())
        # 1c. winner / loser and the σ_t-scheduled threshold on the softmax gap
        best, worst = scores.argmax(dim=1).cpu(), scores.argmin(dim=1).cpu()
        scores_cpu = scores.cpu()
        gaps = softmax_gap(scores_cpu[rows, best], scores_cpu[rows, worst])
        keep = gaps > float(thresholds[i])
        # 1d. store (x_t, x_w, x_l, t, prompt)
        if bool(keep.any()):
            sel = torch.nonzero(keep).flatten()
            dev = sel.to(candidates.device)
            kept["t"].append(latents[dev])
            kept["w"].append(candidates[dev, best[sel].to(candidates.device)])
            kept["l"].append(candidates[dev, worst[sel].to(candidates.device)])
            kept["ts"].append(torch.full((len(sel),), t, dtype=torch.long))
            kept["idx"].append(sel)
            kept["gap"].append(gaps[sel])
            kept["sw"].append(scores_cpu[sel, best[sel]])
            kept["sl"].append(scores_cpu[sel, worst[sel]])
            kept_by_timestep[t] = len(sel)
        # 1e. continue from a uniformly random candidate (not the winner)
        choice = torch.randint(num_candidates, (batch,), generator=generator)
        latents = candidates[rows.to(candidates.device), choice.to(candidates.device)]

    finished = last_trained == len(timesteps) - 1 or last_trained < 0
    if last_trained < 0:  # no trained step at all: run the plain trajectory for the final latents
        for t in timesteps.tolist():
            noise_pred = predict_noise(unet, latents, t, conditioning)
            step = ddim_step_with_logprob(scheduler, noise_pred, t, latents, eta=settings.eta, noise=torch.zeros_like(noise_pred))
            latents = branch_candidates(step.mean, step.std, 1, generator)[:, 0].to(latents.dtype)

    def cat(key: str, like: Tensor) -> Tensor:
        return torch.cat(kept[key]) if kept[key] else like

    empty_latents = latents.new_zeros((0, *latents.shape[1:]))
    empty = torch.zeros(0)
    out = KeptSteps(
        latents_t=cat("t", empty_latents),
        latents_w=cat("w", empty_latents),
        latents_l=cat("l", empty_latents),
        timesteps=cat("ts", torch.zeros(0, dtype=torch.long)),
        prompt_index=cat("idx", torch.zeros(0, dtype=torch.long)),
        conditioning=conditioning,
        gaps=cat("gap", empty),
        scores_w=cat("sw", empty),
        scores_l=cat("sl", empty),
        prompts=list(prompts),
    )
    return RolloutOutput(
        kept=out,
        final_latents=latents if finished else None,
        branched=batch * int(trained.sum()),
        kept_by_timestep=kept_by_timestep,
        scores=torch.cat(all_scores) if all_scores else empty,
    )
