"""The step-level rollout shared by LPO and SPO (SPEC §5.1 step 1, §5.2).

For a batch of prompts, sample trajectories with the policy; at every *training*
step t branch K candidates x_prev^k from the step's Gaussian, score them with a step
reward, keep (x_t, x_w, x_l, t, prompt) when the winner is clearly better, and continue
from a uniformly random candidate. The trainers then replay the kept transitions through
the same step's log-probability with the policy and the reference. The step is the model
family's :class:`lpo.sampling.step_kernels.StepKernel`: DDIM with η for U-Nets (pass the
scheduler, or a :class:`~lpo.sampling.step_kernels.DDIMKernel`), the flow ODE's SDE for
flow models (:class:`~lpo.sampling.step_kernels.FlowSDEKernel`).

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
th_t                   the kernel's thresholds: rise linearly with σ_t from ``threshold_min``
                       (smallest σ, t = 1) to ``threshold_max`` (largest σ, t = 951); equal
                       bounds give SPO's fixed threshold (flow models: with the SDE step's std)
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

from lpo.models.conditioning import GuidedConditioning
from lpo.sampling.ddim import branch_candidates
from lpo.sampling.step_kernels import DDIMKernel, StepKernel, as_step_kernel

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
    inner_steps: int = 0  # SPO SDXL: 3 (see step_rollout)

    def __post_init__(self) -> None:
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {self.inner_steps}")
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
    return DDIMKernel(scheduler).thresholds(num_inference_steps, threshold_min, threshold_max)


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
    latents_t_l: (M, C, H, W) the loser's own x_t when the two differ (inner steps: the
        transitions of two chains, :func:`step_rollout`); None: x_w and x_l share ``latents_t``.
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
    latents_t_l: Tensor | None = None

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def to(self, device: torch.device | str) -> "KeptSteps":
        return KeptSteps(
            latents_t=self.latents_t.to(device), latents_w=self.latents_w.to(device), latents_l=self.latents_l.to(device),
            timesteps=self.timesteps.to(device), prompt_index=self.prompt_index.to(device),
            conditioning=self.conditioning.to(device=device),
            gaps=self.gaps.to(device), scores_w=self.scores_w.to(device), scores_l=self.scores_l.to(device),
            prompts=list(self.prompts), latents_t_l=None if self.latents_t_l is None else self.latents_t_l.to(device),
        )

    def select(self, rows: Tensor | Sequence[int]) -> "KeptSteps":
        """Rows ``rows`` (the prompt table is kept whole)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.timesteps.device)
        return KeptSteps(
            latents_t=self.latents_t[rows], latents_w=self.latents_w[rows], latents_l=self.latents_l[rows],
            timesteps=self.timesteps[rows], prompt_index=self.prompt_index[rows], conditioning=self.conditioning,
            gaps=self.gaps[rows], scores_w=self.scores_w[rows], scores_l=self.scores_l[rows], prompts=list(self.prompts),
            latents_t_l=None if self.latents_t_l is None else self.latents_t_l[rows],
        )

    def row_conditioning(self) -> GuidedConditioning:
        """The CFG conditioning of every row (M rows), for the training forward."""
        return self.conditioning.index(self.prompt_index.to(self.conditioning.cond.prompt_embeds.device))

    @staticmethod
    def cat(parts: Sequence["KeptSteps"]) -> "KeptSteps":
        """Concatenate (e.g. one part per process); prompt tables are stacked and indices shifted."""
        conditioning, offsets = GuidedConditioning.stack([p.conditioning for p in parts])
        return KeptSteps(
            latents_t=torch.cat([p.latents_t for p in parts]),
            latents_w=torch.cat([p.latents_w for p in parts]),
            latents_l=torch.cat([p.latents_l for p in parts]),
            timesteps=torch.cat([p.timesteps for p in parts]),
            prompt_index=torch.cat([p.prompt_index + offset for p, offset in zip(parts, offsets)]),
            conditioning=conditioning,
            gaps=torch.cat([p.gaps for p in parts]),
            scores_w=torch.cat([p.scores_w for p in parts]),
            scores_l=torch.cat([p.scores_l for p in parts]),
            prompts=[prompt for p in parts for prompt in p.prompts],
            latents_t_l=None if all(p.latents_t_l is None for p in parts) else torch.cat(
                [p.latents_t if p.latents_t_l is None else p.latents_t_l for p in parts]),
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
    kept_branches: int | None = None  # with inner steps: branchings kept (each gives inner_steps + 1 rows)

    @property
    def kept_count(self) -> int:
        """Branchings whose pair was kept (rows of ``kept`` without inner steps)."""
        return len(self.kept) if self.kept_branches is None else self.kept_branches

    @property
    def keep_rate(self) -> float:
        return self.kept_count / self.branched if self.branched else 0.0


def _schedule(kernel: StepKernel, settings: StepRolloutSettings, device: Any) -> tuple[Tensor, Tensor, Tensor, int]:
    """Sets the kernel's N timesteps; (timesteps, thresholds, trained mask, last trained index)."""
    thresholds = kernel.thresholds(settings.num_inference_steps, settings.threshold_min, settings.threshold_max)
    timesteps = kernel.set_schedule(settings.num_inference_steps, device)
    trained = trained_steps(timesteps, settings)
    last_trained = int(torch.nonzero(trained).max()) if bool(trained.any()) else -1
    return timesteps, thresholds, trained, last_trained


def _policy_step(kernel: StepKernel, unet: torch.nn.Module, latents: Tensor, t: Any,
                 conditioning: GuidedConditioning) -> tuple[Tensor, Tensor]:
    """(mean, std) of the policy's step from x_t = ``latents`` (with CFG)."""
    return kernel.gaussian(kernel.predict(unet, latents, t, conditioning), t, latents)


@torch.no_grad()
def step_rollout(
    unet: torch.nn.Module,
    sampler: StepKernel | Any,
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
    sampler: the family's :class:`~lpo.sampling.step_kernels.StepKernel`, or a DDIM scheduler
    (stepped with ``settings.eta``). Sets the scheduler's timesteps to N. Stops after the
    last trained step.
    """
    batch = latents.shape[0]
    num_candidates = settings.num_candidates
    if conditioning.batch_size != batch:
        raise ValueError(f"conditioning has {conditioning.batch_size} rows for {batch} latents")
    if settings.inner_steps:
        return chain_rollout(unet, sampler, conditioning, reward, reward_text, latents, settings, generator, prompts)
    kernel = as_step_kernel(sampler, settings.eta)
    timesteps, thresholds, trained, last_trained = _schedule(kernel, settings, latents.device)
    candidate_text = reward_text.repeat_interleave(num_candidates)  # row b·K + k is prompt b

    kept: dict[str, list[Tensor]] = {k: [] for k in ("t", "w", "l", "ts", "idx", "gap", "sw", "sl")}
    kept_by_timestep: dict[int, int] = {}
    all_scores: list[Tensor] = []
    rows = torch.arange(batch)
    for i, t in enumerate(timesteps.tolist()):
        if i > last_trained:
            break  # nothing left to keep: the rest of the trajectory is not needed
        # 1a. μ and std of the policy's step (with CFG); z = 0 makes prev_sample = μ
        mean, std = _policy_step(kernel, unet, latents, t, conditioning)
        if not bool(trained[i]):
            latents = branch_candidates(mean, std, 1, generator)[:, 0].to(latents.dtype)
            continue
        # 1a. K candidates from the one Gaussian
        candidates = branch_candidates(mean, std, num_candidates, generator).to(latents.dtype)  # (B, K, C, H, W)
        # 1b. score them (told t, or prev_t clamped at 0)
        # "zero": the paper's ablation that hides the noise level from the LRM (tells it t = 0)
        reward_t = kernel.reward_timestep(timesteps, i, settings.reward_timestep)
        flat = candidates.reshape(batch * num_candidates, *candidates.shape[2:])
        reward_timesteps = torch.full((batch * num_candidates,), reward_t, dtype=timesteps.dtype, device=flat.device)
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
            kept["ts"].append(torch.full((len(sel),), t, dtype=timesteps.dtype))
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
            mean, std = _policy_step(kernel, unet, latents, t, conditioning)
            latents = branch_candidates(mean, std, 1, generator)[:, 0].to(latents.dtype)

    def cat(key: str, like: Tensor) -> Tensor:
        return torch.cat(kept[key]) if kept[key] else like

    empty_latents = latents.new_zeros((0, *latents.shape[1:]))
    empty = torch.zeros(0)
    out = KeptSteps(
        latents_t=cat("t", empty_latents),
        latents_w=cat("w", empty_latents),
        latents_l=cat("l", empty_latents),
        timesteps=cat("ts", torch.zeros(0, dtype=timesteps.dtype)),
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


@torch.no_grad()
def chain_rollout(
    unet: torch.nn.Module,
    sampler: StepKernel | Any,
    conditioning: GuidedConditioning,
    reward: StepReward,
    reward_text: Any,
    latents: Tensor,
    settings: StepRolloutSettings,
    generator: torch.Generator,
    prompts: Sequence[str] = (),
) -> RolloutOutput:
    """:func:`step_rollout` with ``settings.inner_steps`` = n > 0 (SPO's SDXL recipe).

    At a trained step the K candidates are branched as usual, but each is then continued
    on its own for n more steps (one DDIM sample per step and chain) before the K chain ends
    are scored (told the timestep of the chains' last transition, by ``reward_timestep``).
    The winning and the losing chain give n + 1 pairs, one per transition: the branching
    step (x_t shared) and each inner step (each chain's own x_t, ``latents_t_l``). The
    σ-scheduled threshold of the branching step decides for all of them. The trajectory
    continues from a uniformly random chain end; the next trained step branches again. A
    trajectory that ends inside an inner segment scores its chains there. Random draws:
    branching, then each inner step's K samples, then the continuation, from ``generator``.
    """
    batch, k = latents.shape[0], settings.num_candidates
    kernel = as_step_kernel(sampler, settings.eta)
    timesteps, thresholds, trained, last_trained = _schedule(kernel, settings, latents.device)
    candidate_text = reward_text.repeat_interleave(k)
    chain_conditioning = conditioning.repeat_interleave(k)  # row b·K + j: chain j of prompt b
    rows = torch.arange(batch)

    kept: dict[str, list[Tensor]] = {key: [] for key in ("t", "tl", "w", "l", "ts", "idx", "gap", "sw", "sl")}
    kept_by_timestep: dict[int, int] = {}
    all_scores: list[Tensor] = []
    branchings = kept_branchings = 0
    segment: list[tuple[Tensor, Tensor, int]] | None = None  # (x_t, x_prev, step index) of every chain, (B, K, ...) each
    branch_index = left = 0
    chains = latents.new_zeros(0)

    def close_segment() -> Tensor:
        """Score the chain ends, keep the segment's pairs, return the continuation (B, ...)."""
        nonlocal kept_branchings
        reward_t = kernel.reward_timestep(timesteps, segment[-1][2], settings.reward_timestep)
        flat = chains.reshape(batch * k, *chains.shape[2:])
        reward_timesteps = torch.full((batch * k,), reward_t, dtype=timesteps.dtype, device=flat.device)
        scores = reward.score_with_conditioning(flat, reward_timesteps, candidate_text).float().reshape(batch, k).cpu()
        all_scores.append(scores)
        best, worst = scores.argmax(dim=1), scores.argmin(dim=1)
        gaps = softmax_gap(scores[rows, best], scores[rows, worst])
        keep = gaps > float(thresholds[branch_index])
        if bool(keep.any()):
            sel = torch.nonzero(keep).flatten()
            dev = sel.to(chains.device)
            w, l = best[sel].to(chains.device), worst[sel].to(chains.device)
            for x_t, x_prev, index in segment:
                t = timesteps[index].item()
                kept["t"].append(x_t[dev, w])
                kept["tl"].append(x_t[dev, l])
                kept["w"].append(x_prev[dev, w])
                kept["l"].append(x_prev[dev, l])
                kept["ts"].append(torch.full((len(sel),), t, dtype=timesteps.dtype))
                kept["idx"].append(sel)
                kept["gap"].append(gaps[sel])
                kept["sw"].append(scores[sel, best[sel]])
                kept["sl"].append(scores[sel, worst[sel]])
                kept_by_timestep[t] = kept_by_timestep.get(t, 0) + len(sel)
            kept_branchings += len(sel)
        choice = torch.randint(k, (batch,), generator=generator)
        return chains[rows.to(chains.device), choice.to(chains.device)]

    for i, t in enumerate(timesteps.tolist()):
        if segment is None and i > last_trained:
            break  # nothing left to branch, no chain open
        if segment is not None:  # one inner step of every chain
            flat = chains.reshape(batch * k, *chains.shape[2:])
            mean, std = _policy_step(kernel, unet, flat, t, chain_conditioning)
            following = branch_candidates(mean, std, 1, generator)[:, 0].to(latents.dtype).reshape(chains.shape)
            segment.append((chains, following, i))
            chains, left = following, left - 1
            if left == 0:
                latents, segment = close_segment(), None
            continue
        mean, std = _policy_step(kernel, unet, latents, t, conditioning)
        if not bool(trained[i]):
            latents = branch_candidates(mean, std, 1, generator)[:, 0].to(latents.dtype)
            continue
        candidates = branch_candidates(mean, std, k, generator).to(latents.dtype)  # (B, K, ...)
        segment = [(latents.unsqueeze(1).expand_as(candidates), candidates, i)]
        chains, left, branch_index = candidates, settings.inner_steps, i
        branchings += 1
    if segment is not None:  # the trajectory ended inside a segment: score the chains where they are
        latents, segment = close_segment(), None


    def cat(key: str, like: Tensor) -> Tensor:
        return torch.cat(kept[key]) if kept[key] else like

    empty_latents = latents.new_zeros((0, *latents.shape[1:]))
    empty = torch.zeros(0)
    out = KeptSteps(
        latents_t=cat("t", empty_latents), latents_w=cat("w", empty_latents), latents_l=cat("l", empty_latents),
        timesteps=cat("ts", torch.zeros(0, dtype=timesteps.dtype)), prompt_index=cat("idx", torch.zeros(0, dtype=torch.long)),
        conditioning=conditioning, gaps=cat("gap", empty), scores_w=cat("sw", empty), scores_l=cat("sl", empty),
        prompts=list(prompts), latents_t_l=cat("tl", empty_latents),
    )
    return RolloutOutput(
        kept=out, final_latents=None, branched=batch * branchings, kept_by_timestep=kept_by_timestep,
        scores=torch.cat(all_scores) if all_scores else empty, kept_branches=kept_branchings,
    )
