"""The pairwise likelihoods a step reward model trains with, as plain functions over score tensors.

- :func:`preference_loss`: Bradley–Terry, 2-way cross-entropy on the logits [S_0, S_1] with
  soft labels [label_0, 1 − label_0] (the LPO paper's LRM loss, SPEC §4.1);
- :func:`thurstone_loss`: DiNa-LRM's noise-calibrated Thurstone likelihood (arXiv 2602.11146)
  with its fidelity loss, which believes a score gap less the noisier x_t is.

Both return :class:`PreferenceLossOutput`, whose accuracy bookkeeping is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lpo.pairs.format import TIE
from lpo.reward.data import is_flow_scheduler


@dataclass
class PreferenceLossOutput:
    """loss: weighted mean CE (scalar). ce: (B,) per-pair CE. correct: (B,) 1 / 0 / 0.5 (equal
    scores) for decisive pairs, 0 for ties. decisive: (B,) bool."""

    loss: Tensor
    ce: Tensor
    correct: Tensor
    decisive: Tensor

    @property
    def accuracy(self) -> float:
        n = int(self.decisive.sum())
        return float(self.correct.sum()) / n if n else float("nan")


def preference_loss(scores_0: Tensor, scores_1: Tensor, labels_0: Tensor, weights: Tensor | None = None) -> PreferenceLossOutput:
    """Bradley–Terry 2-way cross-entropy on logits [S_0, S_1] with soft labels [label_0, 1 − label_0]."""
    logits = torch.stack([scores_0, scores_1], dim=-1).float()  # (B, 2)
    labels_0 = labels_0.to(logits)
    targets = torch.stack([labels_0, 1.0 - labels_0], dim=-1)  # (B, 2)
    ce = F.cross_entropy(logits, targets, reduction="none")  # (B,)
    loss = (ce * weights.to(ce)).mean() if weights is not None else ce.mean()
    decisive = labels_0 != TIE
    with torch.no_grad():
        won_0 = labels_0 > TIE
        agree = torch.where(scores_0 == scores_1, 0.5, ((scores_0 > scores_1) == won_0).float())
        correct = torch.where(decisive, agree.float(), 0.0)
    return PreferenceLossOutput(loss=loss, ce=ce.detach(), correct=correct, decisive=decisive)


THURSTONE_FLOOR = 0.05  # DiNa-LRM's variance floor: Var(S_0 − S_1) = 2σ_t² + 0.05


def thurstone_loss(scores_0: Tensor, scores_1: Tensor, labels_0: Tensor, noise_variance: Tensor,
                   weights: Tensor | None = None) -> PreferenceLossOutput:
    """DiNa-LRM's noise-calibrated Thurstone likelihood with the fidelity loss.

    P(0 ≻ 1) = Φ((S_0 − S_1) / √(2σ_t² + 0.05)), σ_t² = ``noise_variance`` (B,), the variance of
    the noise in x_t (1 − ᾱ_t for DDPM latents): the noisier the latents, the less a score gap
    is believed. Loss per pair = 1 − √(y·P) − √((1 − y)(1 − P)) with y = label_0 (0 when P = y).
    ``ce`` holds this loss; accuracy bookkeeping is :func:`preference_loss`'s.
    """
    diff = (scores_0 - scores_1).float()
    z = diff / torch.sqrt(2 * noise_variance.to(diff) + THURSTONE_FLOOR)
    # P and 1 − P each from Φ (1 − Φ(z) = Φ(−z)): 1 − P computed as a difference rounds to 0 in
    # float32 for a large gap, and √0 has an infinite gradient; the floor keeps both finite
    p_win, p_lose = torch.special.ndtr(z).clamp_min(1e-12), torch.special.ndtr(-z).clamp_min(1e-12)
    y = labels_0.to(z)
    # √y·√P rather than √(y·P): the latter's gradient is 0/0 at y = 0 (a decisive label)
    fidelity = 1 - torch.sqrt(y) * torch.sqrt(p_win) - torch.sqrt(1 - y) * torch.sqrt(p_lose)
    loss = (fidelity * weights.to(fidelity)).mean() if weights is not None else fidelity.mean()
    bookkeeping = preference_loss(scores_0.detach(), scores_1.detach(), labels_0)
    return PreferenceLossOutput(loss=loss, ce=fidelity.detach(), correct=bookkeeping.correct, decisive=bookkeeping.decisive)


def noise_variance(scheduler: Any, timesteps: Tensor) -> Tensor:
    """σ_t² at ``timesteps`` (B,): 1 − ᾱ_t for a DDPM-style scheduler, σ² = (t / T)² on a flow path."""
    if is_flow_scheduler(scheduler):  # flow matching: x_σ = (1 − σ)·x0 + σ·ε
        return (timesteps.float() / float(scheduler.config.num_train_timesteps)) ** 2
    alphas = scheduler.alphas_cumprod.to(torch.float32)
    return 1 - alphas[timesteps.long().cpu()].to(timesteps.device)
