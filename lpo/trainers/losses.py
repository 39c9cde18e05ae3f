"""The preference losses of the trainers, as plain functions over per-sample tensors.

Two losses (SPEC §5.1.3 and §5.3); both take per-sample statistics that the trainers
compute with the policy and the reference U-Net, and return a small dataclass with the
scalar loss and what gets logged.

Step-level DPO with a clipped likelihood ratio (LPO and SPO, SPEC §5.1 step 3):

    log r   = clamp(log p_θ(x_prev | x_t) − log p_ref(x_prev | x_t), log(1−ε), log(1+ε))
    loss    = −log σ(β·log r_w − β·log r_l)                      (mean over samples)

    log p_θ, log p_ref   ``log_probs_w`` / ``log_probs_l``, ``ref_log_probs_w`` / ``_l``:
                         (B,) DDIM step log-probs, a MEAN over C, H, W (SPEC §3 step 7)
    ε, β                 ``clip_epsilon`` (0.1; None = no clamp), ``beta`` (500 LPO, 10 SPO)

The official code clamps the ratio, r = clamp(exp(Δ), 1−ε, 1+ε), then takes its log;
clamping Δ to [log(1−ε), log(1+ε)] is the same function with the same (zero outside the
interval) gradient, without overflowing exp for large Δ.

Diffusion-DPO (SPEC §5.3, Wallace et al. 2023, eq. 14 of the paper as the official code
writes it):

    mse      = mean over C, H, W of (ε_θ(x_t, t) − ε)²            (B,) per image
    inside   = −½·β·[(mse_w − mse_l) − (ref_w − ref_l)]
    loss     = −log σ(inside)                                     (mean over pairs)
    implicit accuracy = mean(inside > 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class StepDPOLossOutput:
    """Result of :func:`clipped_step_dpo_loss`.

    loss: scalar, the mean of ``losses``.   losses: (B,) −log σ(β·log r_w − β·log r_l).
    log_ratio_w / log_ratio_l: (B,) the UNclipped log p_θ − log p_ref (detached), for logs.
    clipped_w / clipped_l: (B,) bool, where the clamp acted (its gradient is zero there).
    margin: (B,) β·(log r_w − log r_l) after clipping (detached); > 0 means the policy
        already prefers the winner more than the reference does.
    """

    loss: Tensor
    losses: Tensor
    log_ratio_w: Tensor
    log_ratio_l: Tensor
    clipped_w: Tensor
    clipped_l: Tensor
    margin: Tensor

    @property
    def implicit_accuracy(self) -> Tensor:
        """Fraction of samples with a positive margin (the official code's ``implicit_acc``)."""
        return (self.margin > 0).float().mean()

    @property
    def clip_fraction(self) -> Tensor:
        """Fraction of the 2B ratios the clamp acted on."""
        return torch.cat([self.clipped_w, self.clipped_l]).float().mean()


def clipped_step_dpo_loss(
    log_probs_w: Tensor,
    log_probs_l: Tensor,
    ref_log_probs_w: Tensor,
    ref_log_probs_l: Tensor,
    beta: float,
    clip_epsilon: float | None = 0.1,
) -> StepDPOLossOutput:
    """The step-level DPO loss with clipped likelihood ratios (SPEC §5.1 step 3), in float32.

    All inputs are (B,) log-probs of the winner / loser transitions x_t -> x_w, x_t -> x_l
    under the policy (with gradients) and the reference (no gradients needed).
    ``clip_epsilon=None`` turns the clamp off (an ablation; the papers use 0.1).
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    if clip_epsilon is not None and not 0 < clip_epsilon < 1:
        raise ValueError(f"clip_epsilon must be in (0, 1) or None, got {clip_epsilon}")
    shapes = {tuple(t.shape) for t in (log_probs_w, log_probs_l, ref_log_probs_w, ref_log_probs_l)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"log-probs must all have the same shape (B,), got {sorted(shapes)}")

    # 1. log r = log p_θ − log p_ref, per transition
    delta_w = log_probs_w.float() - ref_log_probs_w.float()
    delta_l = log_probs_l.float() - ref_log_probs_l.float()

    # 2. the clamp of r to [1−ε, 1+ε], in log space
    if clip_epsilon is None:
        log_r_w, log_r_l = delta_w, delta_l
        clipped_w = clipped_l = torch.zeros_like(delta_w, dtype=torch.bool)
    else:
        low, high = math.log1p(-clip_epsilon), math.log1p(clip_epsilon)
        log_r_w, log_r_l = delta_w.clamp(low, high), delta_l.clamp(low, high)
        clipped_w = (delta_w < low) | (delta_w > high)
        clipped_l = (delta_l < low) | (delta_l > high)

    # 3. −log σ(β·log r_w − β·log r_l); logsigmoid is the stable form of log(sigmoid(·))
    margin = beta * log_r_w - beta * log_r_l
    losses = -F.logsigmoid(margin)
    return StepDPOLossOutput(
        loss=losses.mean(),
        losses=losses,
        log_ratio_w=delta_w.detach(),
        log_ratio_l=delta_l.detach(),
        clipped_w=clipped_w.detach(),
        clipped_l=clipped_l.detach(),
        margin=margin.detach(),
    )


def per_sample_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """(B,) float32 mean over C, H, W of (prediction − target)² for (B, C, H, W) inputs."""
    if prediction.shape != target.shape or prediction.dim() != 4:
        raise ValueError(
            f"prediction and target must be (B, C, H, W) of the same shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    return ((prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3))


@dataclass
class DiffusionDPOLossOutput:
    """Result of :func:`diffusion_dpo_loss`.

    loss: scalar mean of ``losses``.   losses: (B,) −log σ(inside).
    inside: (B,) −½·β·[(mse_w − mse_l) − (ref_w − ref_l)] (detached).
    model_diff / ref_diff: (B,) mse_w − mse_l for the policy / the reference (detached).
    """

    loss: Tensor
    losses: Tensor
    inside: Tensor
    model_diff: Tensor
    ref_diff: Tensor

    @property
    def implicit_accuracy(self) -> Tensor:
        """mean(inside > 0): the policy denoises the winner relatively better than the reference."""
        return (self.inside > 0).float().mean()


def diffusion_dpo_loss(
    model_mse_w: Tensor,
    model_mse_l: Tensor,
    ref_mse_w: Tensor,
    ref_mse_l: Tensor,
    beta: float,
) -> DiffusionDPOLossOutput:
    """The Diffusion-DPO loss (SPEC §5.3) from per-image denoising errors, each (B,).

    ``model_mse_*`` carry gradients (policy); ``ref_mse_*`` come from the frozen reference.
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    shapes = {tuple(t.shape) for t in (model_mse_w, model_mse_l, ref_mse_w, ref_mse_l)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"denoising errors must all have the same shape (B,), got {sorted(shapes)}")
    model_diff = model_mse_w.float() - model_mse_l.float()
    ref_diff = ref_mse_w.float() - ref_mse_l.float()
    inside = -0.5 * beta * (model_diff - ref_diff)
    losses = -F.logsigmoid(inside)
    return DiffusionDPOLossOutput(
        loss=losses.mean(),
        losses=losses,
        inside=inside.detach(),
        model_diff=model_diff.detach(),
        ref_diff=ref_diff.detach(),
    )


# --------------------------------------------------------------------------- step-level GRPO
#
# The LPO paper's appendix describes step-wise GRPO with the LRM and ships no code; these are
# this project's functions for it, in the form Flow-GRPO / DanceGRPO use per step:
#
#     A_k     = (S_k − mean_k S) / (std_k S + δ)      over the K candidates of one x_t
#     r_k     = exp(log p_θ(x_k | x_t) − log p_old(x_k | x_t))
#     loss_k  = −min(r_k·A_k, clip(r_k, 1 − ε, 1 + ε)·A_k) + β_KL·KL_k
#
# with KL_k the k3 estimator exp(q) − q − 1 of q = log p_ref − log p_θ (DeepSeek-GRPO's form),
# 0 when no reference log-probs are given.


def group_relative_advantages(scores: Tensor, eps: float = 1e-4) -> Tensor:
    """(B, K) advantages: each row's scores standardised over its K candidates (population std).

    A group whose candidates all score alike gets advantages 0 (nothing to learn from it).
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (B, K) with K >= 2 candidates, got shape {tuple(scores.shape)}")
    scores = scores.float()
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, unbiased=False, keepdim=True)
    return (scores - mean) / (std + eps)


@dataclass
class GRPOLossOutput:
    """loss: scalar mean of ``losses`` (N,). ratio: (N,) detached r. clipped: (N,) bool, where the
    clipped term is the smaller one (no gradient flows). kl: (N,) detached KL estimate."""

    loss: Tensor
    losses: Tensor
    ratio: Tensor
    clipped: Tensor
    kl: Tensor


def clipped_grpo_loss(
    log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip_epsilon: float,
    ref_log_probs: Tensor | None = None, kl_beta: float = 0.0,
) -> GRPOLossOutput:
    """PPO's clipped surrogate on per-candidate step log-probs (all (N,), flattened B·K)."""
    if not clip_epsilon > 0:
        raise ValueError(f"clip_epsilon must be > 0, got {clip_epsilon}")
    log_ratio = log_probs - old_log_probs.detach()
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach().to(ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_epsilon, 1 + clip_epsilon) * advantages
    losses = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(losses)
    if ref_log_probs is not None and kl_beta:
        q = ref_log_probs.detach() - log_probs
        kl = torch.exp(q) - q - 1
        losses = losses + kl_beta * kl
    return GRPOLossOutput(loss=losses.mean(), losses=losses, ratio=ratio.detach(), clipped=(clipped < unclipped).detach(),
                          kl=kl.detach())
