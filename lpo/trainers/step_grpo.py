"""Step-level GRPO with the LRM: the LPO loop with group-relative advantages instead of winner/loser pairs.

The LPO paper's appendix describes step-wise GRPO with the LRM and ships no code; this is
this project's version, in the harness of :mod:`lpo.trainers.step_dpo`:

1. roll out with the policy as LPO does; at every trained step t branch K candidates
   x_k ~ N(μ_θ(x_t), σ_t²) from one state, score them with the frozen LRM and keep the whole
   group (no threshold): x_t, the K candidates, their scores, the group-relative advantages
   A_k = (S_k − mean S)/(std S + δ), clipped to ±5, and the rollout policy's log p_old(x_k | x_t); continue
   from a uniformly random candidate;
2. after the round, one pass over the kept groups: the policy's log p_θ(x_k | x_t) of every
   candidate (one U-Net call per x_t, with CFG), PPO's clipped surrogate
   −min(r·A, clip(r, 1 − ε, 1 + ε)·A), r = p_θ / p_old, plus β_KL times the k3 estimate of
   KL(p_θ ‖ p_ref) when ``loss.kl_beta`` > 0 (:func:`lpo.trainers.losses.clipped_grpo_loss`).

Log-probabilities are means over C, H, W like every step log-prob in lpo, so ε means the
same per-element ratio as in the DPO loss. Thresholds of the sampler are not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor

from lpo.core.errors import LpoError
from lpo.models.conditioning import GuidedConditioning
from lpo.sampling.ddim import branch_candidates, candidate_log_probs
from lpo.sampling.step_kernels import StepKernel, as_step_kernel
from lpo.trainers.losses import clipped_grpo_loss, group_relative_advantages
from lpo.trainers.rollout import StepReward, StepRolloutSettings, _policy_step, _schedule, softmax_gap
from lpo.trainers.step_dpo import StepDPOTrainer

ADVANTAGE_CLIP = 5.0  # DDPO's / Flow-GRPO's adv_clip_max: |A| <= 5


@dataclass
class GroupSteps:
    """M kept groups: x_t (M, C, H, W), candidates (M, K, C, H, W), t (M,), the prompt row of each,
    the prompts' CFG conditioning, scores / advantages / old_log_probs (M, K)."""

    latents_t: Tensor
    candidates: Tensor
    timesteps: Tensor
    prompt_index: Tensor
    scores: Tensor
    advantages: Tensor
    old_log_probs: Tensor
    conditioning: GuidedConditioning
    prompts: list[str] = field(default_factory=list)

    _ROWS: ClassVar[tuple[str, ...]] = ("latents_t", "candidates", "timesteps", "prompt_index", "scores", "advantages",
                                        "old_log_probs")

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def gaps(self) -> Tensor:
        """(M,) the best-vs-worst softmax gap of each group, as LPO logs it."""
        if not len(self):
            return torch.zeros(0)
        return softmax_gap(self.scores.max(dim=1).values, self.scores.min(dim=1).values)

    def _with(self, **rows: Any) -> "GroupSteps":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return GroupSteps(**{**values, **rows})

    def to(self, device: torch.device | str) -> "GroupSteps":
        return self._with(**{name: getattr(self, name).to(device) for name in self._ROWS},
                          conditioning=self.conditioning.to(device=device))

    def select(self, rows: Tensor | Sequence[int]) -> "GroupSteps":
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.timesteps.device)
        return self._with(**{name: getattr(self, name)[rows] for name in self._ROWS})

    def row_conditioning(self) -> GuidedConditioning:
        return self.conditioning.index(self.prompt_index.to(self.conditioning.cond.prompt_embeds.device))

    @staticmethod
    def cat(parts: Sequence["GroupSteps"]) -> "GroupSteps":
        """One part per process: prompt tables stacked, prompt indices shifted."""
        conditioning, offsets = GuidedConditioning.stack([p.conditioning for p in parts])
        rows = {name: torch.cat([getattr(p, name) for p in parts]) for name in GroupSteps._ROWS}
        rows["prompt_index"] = torch.cat([p.prompt_index + o for p, o in zip(parts, offsets)])
        return GroupSteps(**rows, conditioning=conditioning, prompts=[q for p in parts for q in p.prompts])


@dataclass
class GroupRolloutOutput:
    kept: GroupSteps
    branched: int
    scores: Tensor

    @property
    def kept_count(self) -> int:
        return len(self.kept)


@torch.no_grad()
def group_rollout(unet: torch.nn.Module, sampler: StepKernel | Any, conditioning: GuidedConditioning, reward: StepReward,
                  reward_text: Any, latents: Tensor, settings: StepRolloutSettings, generator: torch.Generator,
                  prompts: Sequence[str] = ()) -> GroupRolloutOutput:
    """Step 1 of the module docstring for B trajectories from x_T = ``latents``; draws from ``generator`` only."""
    batch, k = latents.shape[0], settings.num_candidates
    kernel = as_step_kernel(sampler, settings.eta)
    timesteps, _, trained, last_trained = _schedule(kernel, settings, latents.device)
    candidate_text = reward_text.repeat_interleave(k)
    kept: dict[str, list[Tensor]] = {name: [] for name in GroupSteps._ROWS}
    rows = torch.arange(batch)
    for i, t in enumerate(timesteps.tolist()):
        if i > last_trained:
            break
        mean, std = _policy_step(kernel, unet, latents, t, conditioning)
        if not bool(trained[i]):
            latents = branch_candidates(mean, std, 1, generator)[:, 0].to(latents.dtype)
            continue
        candidates = branch_candidates(mean, std, k, generator).to(latents.dtype)  # (B, K, C, H, W)
        reward_t = kernel.reward_timestep(timesteps, i, settings.reward_timestep)
        flat = candidates.reshape(batch * k, *candidates.shape[2:])
        told = torch.full((batch * k,), reward_t, dtype=timesteps.dtype, device=flat.device)
        scores = reward.score_with_conditioning(flat, told, candidate_text).float().reshape(batch, k)
        kept["latents_t"].append(latents.cpu())
        kept["candidates"].append(candidates.cpu())
        kept["timesteps"].append(torch.full((batch,), t, dtype=timesteps.dtype))
        kept["prompt_index"].append(rows.clone())
        kept["scores"].append(scores.cpu())
        kept["advantages"].append(group_relative_advantages(scores).clamp(-ADVANTAGE_CLIP, ADVANTAGE_CLIP).cpu())
        kept["old_log_probs"].append(candidate_log_probs(candidates.float(), mean, std).cpu())
        choice = torch.randint(k, (batch,), generator=generator)
        latents = candidates[rows.to(candidates.device), choice.to(candidates.device)]
    if not kept["timesteps"]:
        shape = latents.shape[1:]
        empty = {"latents_t": latents.new_zeros((0, *shape)).cpu(), "candidates": latents.new_zeros((0, k, *shape)).cpu(),
                 "timesteps": torch.zeros(0, dtype=timesteps.dtype), "prompt_index": torch.zeros(0, dtype=torch.long),
                 "scores": torch.zeros(0, k), "advantages": torch.zeros(0, k), "old_log_probs": torch.zeros(0, k)}
        groups = GroupSteps(**empty, conditioning=conditioning, prompts=list(prompts))
    else:
        groups = GroupSteps(**{n: torch.cat(v) for n, v in kept.items()}, conditioning=conditioning, prompts=list(prompts))
    return GroupRolloutOutput(kept=groups, branched=batch * int(trained.sum()), scores=groups.scores)


class GRPOTrainer(StepDPOTrainer):
    """Step-level GRPO with the LRM (``--method grpo``): LPO's rollout and harness, GRPO's objective."""

    method = "grpo"
    reward_kind = "lrm"
    rollout = staticmethod(group_rollout)  # every group kept, with advantages and old log-probs

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        if config.loss.clip_epsilon is None:
            raise LpoError("grpo needs loss.clip_epsilon (the PPO clip range, 1e-4 in the presets); none is only for the DPO loss")
        super().__init__(config, *args, **kwargs)

    def _loss_fn(self, model: Any, samples: GroupSteps) -> Callable[[Tensor], tuple[Tensor, dict]]:
        kernel = self.kernel
        epsilon, kl_beta = self.config.loss.clip_epsilon, self.config.loss.kl_beta

        def group_log_probs(unet: Any, batch: GroupSteps, conditioning: GuidedConditioning) -> Tensor:
            mean, std = _policy_step(kernel, unet, batch.latents_t, batch.timesteps, conditioning)
            return candidate_log_probs(batch.candidates.float(), mean, std)  # (m, K)

        def loss_fn(rows: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            batch = samples.select(rows)
            conditioning = batch.row_conditioning()
            log_probs = group_log_probs(model, batch, conditioning)
            ref = None
            if kl_beta:
                with self.policy.reference() as reference:
                    ref = group_log_probs(reference, batch, conditioning).flatten()
            out = clipped_grpo_loss(log_probs.flatten(), batch.old_log_probs.flatten(), batch.advantages.flatten(),
                                    epsilon, ref, kl_beta)
            groups = len(batch)
            per_group = lambda x: x.float().view(groups, -1).mean(dim=1)  # noqa: E731  (one value per kept row)
            logs = {"ratio": per_group(out.ratio), "abs_log_ratio": per_group(out.ratio.log().abs()),
                    "clip_fraction": per_group(out.clipped), "kl": per_group(out.kl),
                    "advantage_abs": per_group(batch.advantages.abs())}
            return per_group(out.losses), logs

        return loss_fn
