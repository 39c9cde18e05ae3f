"""The flow-matching SDE step: its ODE limit, its density, its formula and its marginals."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from lpo.sampling.ddim import branch_candidates
from lpo.sampling.flow import flow_sde_step_with_logprob, step_sigmas


def _scheduler(steps: int = 10, shift: float = 3.0) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)  # SD3's shift
    scheduler.set_timesteps(steps)
    return scheduler


def test_noise_level_zero_is_the_schedulers_euler_step():
    scheduler = _scheduler()
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(3, 4, 8, 8, generator=g)
    for index in (0, 4, 9):  # the first (σ = 1), a middle and the last (σ' = 0) step
        t = scheduler.timesteps[index]
        velocity = torch.randn(3, 4, 8, 8, generator=g)
        ours = flow_sde_step_with_logprob(scheduler, velocity, t, sample, noise_level=0.0)
        scheduler._step_index = None  # the scheduler looks its step up from t, as for a fresh call
        theirs = scheduler.step(velocity, t, sample).prev_sample
        torch.testing.assert_close(ours.prev_sample, theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.mean, theirs.float(), rtol=1e-5, atol=1e-6)
        assert torch.isnan(ours.log_prob).all()


def test_one_step_by_hand():
    # σ = 0.5 -> 0.4, x = 1, v = 2, noise level 0.7: g = 0.7·√(0.5/0.5) = 0.7, dσ = −0.1
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=[1.0, 0.5, 0.4, 0.1])
    sigma, sigma_next = step_sigmas(scheduler, scheduler.timesteps[1], 1, torch.device("cpu"))
    assert float(sigma) == pytest.approx(0.5) and float(sigma_next) == pytest.approx(0.4)
    out = flow_sde_step_with_logprob(scheduler, torch.full((1, 1, 1, 1), 2.0), scheduler.timesteps[1],
                                     torch.ones(1, 1, 1, 1), noise=torch.zeros(1, 1, 1, 1))
    # mean = 1·(1 + 0.49·(−0.1)/(2·0.5)) + 2·(1 + 0.49·0.5/(2·0.5))·(−0.1) = 0.951 − 0.249
    assert float(out.mean) == pytest.approx(0.702, abs=1e-6)
    assert float(out.std) == pytest.approx(0.7 * math.sqrt(0.1), rel=1e-6)
    assert float(out.pred_original_sample) == pytest.approx(1 - 0.5 * 2.0)


def test_first_step_uses_the_second_sigma_in_the_ratio():
    scheduler = _scheduler(steps=4, shift=1.0)
    sigma_max = float(scheduler.sigmas[1])
    out = flow_sde_step_with_logprob(scheduler, torch.zeros(1, 1, 1, 1), scheduler.timesteps[0], torch.zeros(1, 1, 1, 1),
                                     noise_level=0.5, noise=torch.zeros(1, 1, 1, 1))
    ds = float(scheduler.sigmas[1] - scheduler.sigmas[0])
    assert float(out.std) == pytest.approx(0.5 * math.sqrt(1.0 / (1 - sigma_max)) * math.sqrt(-ds), rel=1e-6)


def test_log_prob_is_the_gaussian_density_averaged_over_pixels():
    scheduler = _scheduler()
    g = torch.Generator().manual_seed(1)
    sample, velocity = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    timesteps = scheduler.timesteps[[2, 6]]  # a different step per sample
    drawn = flow_sde_step_with_logprob(scheduler, velocity, timesteps, sample, generator=g)
    rescored = flow_sde_step_with_logprob(scheduler, velocity, timesteps, sample, prev_sample=drawn.prev_sample)
    reference = torch.distributions.Normal(drawn.mean, drawn.std).log_prob(drawn.prev_sample).mean(dim=(1, 2, 3))
    torch.testing.assert_close(drawn.log_prob, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rescored.log_prob, reference, rtol=1e-5, atol=1e-5)
    assert not torch.equal(drawn.sigma[0], drawn.sigma[1])


def test_candidates_from_one_state_share_mean_and_std():
    scheduler = _scheduler()
    g = torch.Generator().manual_seed(2)
    sample, velocity = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    step = flow_sde_step_with_logprob(scheduler, velocity, scheduler.timesteps[3], sample, noise=torch.zeros_like(sample))
    candidates = branch_candidates(step.mean, step.std, 4, g)  # (B, K, C, H, W)
    scores = [flow_sde_step_with_logprob(scheduler, velocity, scheduler.timesteps[3], sample,
                                         prev_sample=candidates[:, k]).log_prob for k in range(4)]
    assert len({tuple(s.tolist()) for s in scores}) == 4  # each candidate has its own density


@pytest.mark.parametrize("noise_level", [0.0, 0.7])
def test_sde_keeps_the_flows_marginals(noise_level):
    # 1-D Gaussian data x0 ~ N(0, s²): x_σ = (1 − σ)x0 + σε has variance (1 − σ)²s² + σ², and the
    # exact velocity is E[ε − x0 | x_σ] = x·(σ − (1 − σ)s²)/Var(σ). Any correct sampler, ODE or SDE,
    # must carry N(0, 1) at σ = 1 to these variances.
    s2 = 0.25
    scheduler = _scheduler(steps=200, shift=1.0)
    x = torch.randn(40000, 1, 1, 1, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    checks = {}
    for index, t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[index])
        var = (1 - sigma) ** 2 * s2 + sigma**2
        velocity = x * (sigma - (1 - sigma) * s2) / var
        x = flow_sde_step_with_logprob(scheduler, velocity, t, x, noise_level=noise_level, generator=g).prev_sample
        sigma_next = float(scheduler.sigmas[index + 1])
        if index in (99, 199):
            checks[sigma_next] = (float(x.var()), (1 - sigma_next) ** 2 * s2 + sigma_next**2)
    for sigma_next, (measured, expected) in checks.items():
        assert measured == pytest.approx(expected, rel=0.04), (sigma_next, measured, expected)


def test_refusals_are_one_line():
    scheduler = _scheduler()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="noise_level"):
        flow_sde_step_with_logprob(scheduler, x, scheduler.timesteps[0], x, noise_level=-1)
    with pytest.raises(ValueError, match="not all in the scheduler"):
        flow_sde_step_with_logprob(scheduler, x, 123.456, x)
    with pytest.raises(ValueError, match="no density"):
        flow_sde_step_with_logprob(scheduler, x, scheduler.timesteps[0], x, noise_level=0.0, prev_sample=x)
