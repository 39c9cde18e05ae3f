"""DiNa-LRM's noise-calibrated Thurstone likelihood: the formula, its calibration, and training with it."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from lpo.reward.likelihood import noise_variance, preference_loss, thurstone_loss


def test_thurstone_fidelity_by_hand():
    scores_0, scores_1 = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 0.5, 1.0])
    labels_0, variance = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.0, 0.5, 1.0])
    out = thurstone_loss(scores_0, scores_1, labels_0, variance)
    expected = []
    for d, y, v in zip([1.0, -0.5, 0.0], [1.0, 0.0, 0.5], [0.0, 0.5, 1.0]):
        p = NormalDist().cdf(d / math.sqrt(2 * v + 0.05))
        expected.append(1 - math.sqrt(y * p) - math.sqrt((1 - y) * (1 - p)))
    torch.testing.assert_close(out.ce, torch.tensor(expected))
    assert float(out.ce[2]) == pytest.approx(0.0, abs=1e-6)  # a tie with equal scores: P = y, no loss
    assert out.accuracy == preference_loss(scores_0, scores_1, labels_0).accuracy


def test_noisier_latents_believe_a_gap_less():
    # the same wrong-way gap of 1: at σ² = 0 P(right) = Φ(−1/√0.05) ≈ 0 (loss ≈ 1), at σ² = 0.9 P ≈ Φ(−0.73)
    losses, grads = [], []
    for variance in (0.0, 0.9):
        gap = torch.tensor([1.0], requires_grad=True)
        loss = thurstone_loss(gap, torch.zeros(1), torch.tensor([0.0]), torch.tensor([variance])).loss
        grads.append(float(torch.autograd.grad(loss, gap)[0]))
        losses.append(float(loss.detach()))
    assert losses[0] > 0.99 and losses[1] == pytest.approx(1 - math.sqrt(1 - NormalDist().cdf(1 / math.sqrt(1.85))), abs=1e-5)
    assert all(math.isfinite(g) and g > 0 for g in grads)  # finite at a decisive label (no 0/0 from √(y·P))


def test_gradients_stay_finite_for_large_gaps():
    # a gap of 30 at σ² = 0: z ≈ 134, 1 − Φ(z) is 0 in float32; both labels must still give finite gradients
    scores_0 = torch.tensor([30.0, 30.0, -30.0], requires_grad=True)
    out = thurstone_loss(scores_0, torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]), torch.zeros(3))
    (grad,) = torch.autograd.grad(out.loss, scores_0)
    assert bool(torch.isfinite(grad).all()) and bool(torch.isfinite(out.loss))
    assert float(out.ce[0]) == pytest.approx(0.0, abs=1e-5) and float(out.ce[1]) == pytest.approx(1.0, abs=1e-5)


def test_noise_variance_is_one_minus_alpha_bar():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([1, 501, 951])
    torch.testing.assert_close(noise_variance(scheduler, t), 1 - scheduler.alphas_cumprod[t].float())
