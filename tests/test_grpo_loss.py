"""Step-level GRPO's pieces: group-relative advantages and the clipped surrogate."""

from __future__ import annotations

import pytest
import torch

from lpo.trainers.losses import clipped_grpo_loss, group_relative_advantages


def test_advantages_are_standardised_per_group():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    adv = group_relative_advantages(scores)
    expected = (scores[0] - 2.5) / (torch.tensor([1.0, 2.0, 3.0, 4.0]).std(unbiased=False) + 1e-4)
    torch.testing.assert_close(adv[0], expected)
    assert adv[1].eq(0).all()  # no spread, no signal
    with pytest.raises(ValueError, match="K >= 2"):
        group_relative_advantages(torch.ones(3, 1))


def test_clipped_surrogate_by_hand():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.5, 1.05, 0.95])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, -2.0, 2.0])
    out = clipped_grpo_loss(new, old, adv, clip_epsilon=0.2)
    # r = 1.5, A = 1: min(1.5, 1.2) = 1.2 (clipped, no gradient); r = 0.5, A = −1: min(−0.5, −0.8) = −0.8 (clipped)
    # r = 1.05, A = −2: min(−2.1, −2.1); r = 0.95, A = 2: 1.9 inside the interval
    torch.testing.assert_close(out.losses.detach(), torch.tensor([-1.2, 0.8, 2.1, -1.9]))
    assert out.clipped.tolist() == [True, True, False, False]
    (grad,) = torch.autograd.grad(out.loss, new)
    # d(−r·A)/d log p = −r·A / N where unclipped, 0 where clipped
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, 2.1, -1.9]) / 4)


def test_kl_term_is_zero_at_the_reference_and_positive_away():
    logp = torch.tensor([-1.0, -2.0])
    out = clipped_grpo_loss(logp, logp, torch.zeros(2), 0.2, ref_log_probs=logp, kl_beta=0.1)
    assert out.kl.eq(0).all() and out.losses.eq(0).all()
    away = clipped_grpo_loss(logp, logp, torch.zeros(2), 0.2, ref_log_probs=logp + 0.3, kl_beta=0.1)
    assert bool((away.kl > 0).all())
    torch.testing.assert_close(away.losses, 0.1 * away.kl)
