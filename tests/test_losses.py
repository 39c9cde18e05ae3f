"""lpo.trainers.losses against independent computations in float64 (the official code's formulas)."""

from __future__ import annotations

import math

import pytest
import torch

from lpo.trainers.losses import clipped_step_dpo_loss, diffusion_dpo_loss, per_sample_mse


def _official_step_loss(lp_w, lp_l, ref_w, ref_l, beta, eps):
    """The LPO/SPO training scripts' formula: clamp the ratio, log it, −log(sigmoid(·))."""
    ratio_w = torch.clamp(torch.exp(lp_w - ref_w), 1 - eps, 1 + eps)
    ratio_l = torch.clamp(torch.exp(lp_l - ref_l), 1 - eps, 1 + eps)
    return -torch.log(torch.sigmoid(beta * torch.log(ratio_w) - beta * torch.log(ratio_l)))


def test_step_loss_matches_the_official_formula_in_float64():
    gen = torch.Generator().manual_seed(0)
    lp_w, lp_l, ref_w, ref_l = (torch.randn(64, generator=gen, dtype=torch.float64) * 0.05 - 1.3 for _ in range(4))
    for beta, eps in ((500.0, 0.1), (10.0, 0.1), (50.0, 0.2)):
        out = clipped_step_dpo_loss(lp_w, lp_l, ref_w, ref_l, beta, eps)
        expected = _official_step_loss(lp_w, lp_l, ref_w, ref_l, beta, eps)
        assert torch.allclose(out.losses.double(), expected, rtol=1e-4, atol=1e-4)  # float32 inside
        assert out.loss.item() == pytest.approx(expected.mean().item(), rel=1e-4)
        # where the clamp acted the log-ratio is outside [log(1−ε), log(1+ε)]
        delta_w = lp_w - ref_w
        acted = (torch.exp(delta_w) < 1 - eps) | (torch.exp(delta_w) > 1 + eps)
        assert torch.equal(out.clipped_w, acted)


def test_at_initialisation_the_loss_is_log_2_and_the_gradient_favours_the_winner():
    ref_w, ref_l = torch.tensor([-1.2, -0.7]), torch.tensor([-1.0, -0.9])
    lp_w = ref_w.clone().requires_grad_(True)
    lp_l = ref_l.clone().requires_grad_(True)
    out = clipped_step_dpo_loss(lp_w, lp_l, ref_w, ref_l, beta=500.0, clip_epsilon=0.1)
    assert out.loss.item() == pytest.approx(math.log(2.0))
    out.loss.backward()
    # d/dΔ_w of −log σ(β(Δ_w − Δ_l)) at 0 = −β/2, averaged over B = 2: raise the winner's log-prob
    assert torch.allclose(lp_w.grad, torch.full((2,), -500.0 / 2 / 2))
    assert torch.allclose(lp_l.grad, torch.full((2,), 500.0 / 2 / 2))
    assert out.implicit_accuracy.item() == 0.0 and out.clip_fraction.item() == 0.0


def test_the_clamp_stops_the_gradient_outside_the_trust_region():
    ref = torch.zeros(3)
    lp_w = torch.tensor([0.5, 0.01, -0.5], requires_grad=True)  # log r = 0.5 > log 1.1, inside, < log 0.9
    lp_l = torch.zeros(3, requires_grad=True)
    out = clipped_step_dpo_loss(lp_w, lp_l, ref, ref, beta=10.0, clip_epsilon=0.1)
    out.loss.backward()
    assert lp_w.grad[0] == 0 and lp_w.grad[2] == 0 and lp_w.grad[1] != 0
    assert out.clipped_w.tolist() == [True, False, True]
    # no clamp: every sample has a gradient, and the margin uses the raw ratio
    lp_w.grad = None
    free = clipped_step_dpo_loss(lp_w, lp_l, ref, ref, beta=10.0, clip_epsilon=None)
    free.loss.backward()
    assert bool((lp_w.grad != 0).all())
    assert torch.allclose(free.margin, 10.0 * lp_w.detach())


def test_huge_log_ratios_do_not_overflow():
    out = clipped_step_dpo_loss(torch.tensor([1e4]), torch.tensor([-1e4]), torch.zeros(1), torch.zeros(1), 500.0, 0.1)
    expected = -math.log(1 / (1 + math.exp(-500 * (math.log(1.1) - math.log(0.9)))))
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("bad", [dict(beta=0.0), dict(beta=float("inf")), dict(clip_epsilon=1.0), dict(clip_epsilon=0.0)])
def test_bad_settings_raise(bad):
    kwargs = dict(beta=500.0, clip_epsilon=0.1) | bad
    with pytest.raises(ValueError):
        clipped_step_dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), **kwargs)
    with pytest.raises(ValueError, match="same shape"):
        clipped_step_dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2), 1.0)


def test_diffusion_dpo_loss_matches_the_official_formula():
    gen = torch.Generator().manual_seed(1)
    pred_w, pred_l, ref_pred_w, ref_pred_l, noise = (torch.randn(8, 4, 5, 5, generator=gen) for _ in range(5))
    mse = lambda a, b: ((a.double() - b.double()) ** 2).mean(dim=[1, 2, 3])  # noqa: E731
    model_w, model_l, ref_w, ref_l = mse(pred_w, noise), mse(pred_l, noise), mse(ref_pred_w, noise), mse(ref_pred_l, noise)
    assert torch.allclose(per_sample_mse(pred_w, noise).double(), model_w, rtol=1e-6)
    beta = 5000.0
    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
    out = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, beta)
    assert torch.allclose(out.inside.double(), inside, rtol=1e-5)
    assert out.loss.item() == pytest.approx((-torch.nn.functional.logsigmoid(inside)).mean().item(), rel=1e-5)
    assert out.implicit_accuracy.item() == pytest.approx((inside > 0).double().mean().item())


def test_diffusion_dpo_gradient_lowers_the_winner_error():
    ref = torch.tensor([0.5, 0.5])
    model_w = ref.clone().requires_grad_(True)
    model_l = ref.clone().requires_grad_(True)
    out = diffusion_dpo_loss(model_w, model_l, ref, ref, beta=2000.0)
    assert out.loss.item() == pytest.approx(math.log(2.0))
    out.loss.backward()
    # d/d mse_w of −log σ(−β/2 (mse_w − …)) at 0 = +β/4, over B = 2
    assert torch.allclose(model_w.grad, torch.full((2,), 2000.0 / 4 / 2))
    assert torch.allclose(model_l.grad, torch.full((2,), -2000.0 / 4 / 2))
