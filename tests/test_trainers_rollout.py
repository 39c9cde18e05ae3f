"""lpo.trainers.rollout: the K-candidate step loop of LPO and SPO (SPEC §5.1 step 1, §5.2).

A recording fake reward (score = a fixed linear function of the candidate latents) lets
each rule be checked from the outside: what the reward saw, at which t, which rows were
kept, and where each trajectory continued.
"""

from __future__ import annotations

import math

import pytest
import torch

from lpo.models.components import guided_conditioning, load_components
from lpo.sampling.ddim import ddim_step_with_logprob, ddim_timesteps, initial_latents
from lpo.models.conditioning import predict_noise
from lpo.trainers.rollout import (
    KeptSteps,
    StepReward,
    StepRolloutSettings,
    softmax_gap,
    step_rollout,
    step_thresholds,
)

SPEC_SIGMAS = [
    0.0206, 0.0406, 0.1673, 0.2144, 0.2509, 0.2836, 0.3144, 0.3442, 0.3732, 0.4016,
    0.4293, 0.4565, 0.4829, 0.5087, 0.5336, 0.5576, 0.5807, 0.6029, 0.6241, 0.6444,
]  # fmt: skip  (SPEC §3, t = 1, 51, ..., 951)
PROMPTS = ["a red circle", "a blue square", "a green triangle"]


class _Text:
    def __init__(self, rows: int):
        self.rows = rows

    def repeat_interleave(self, k: int) -> "_Text":
        return _Text(self.rows * k)


class RecordingReward:
    """S(x) = scale·⟨w, x⟩ for a fixed random w; records every call."""

    def __init__(self, shape, scale: float = 30.0, seed: int = 0):
        self.direction = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        self.scale = scale
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def encode_text(self, prompts):
        return _Text(len(prompts))

    def score_with_conditioning(self, latents_t, timesteps, text):
        assert text.rows == latents_t.shape[0]
        self.calls.append((latents_t.clone(), timesteps.clone()))
        return self.scale * (latents_t.float() * self.direction).mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def world(tiny_world_dir):
    return load_components(tiny_world_dir)


def _rollout(world, settings, reward=None, seed=0, prompts=PROMPTS):
    cond = guided_conditioning(world, list(prompts), 5.0)
    reward = reward or RecordingReward((4, 8, 8))
    latents = initial_latents(len(prompts), 4, 8, 8, torch.Generator().manual_seed(seed), world.scheduler)
    out = step_rollout(world.unet, world.scheduler, cond, reward, reward.encode_text(prompts), latents, settings,
                       torch.Generator().manual_seed(seed + 100), prompts)
    return out, reward, latents, cond


def test_thresholds_rise_linearly_with_sigma(world):
    th = step_thresholds(world.scheduler, 20, 0.35, 0.5)
    ts = ddim_timesteps(world.scheduler, 20)
    assert ts[0] == 951 and ts[-1] == 1
    by_t = dict(zip(ts.tolist(), th.tolist()))
    lo, hi = SPEC_SIGMAS[0], SPEC_SIGMAS[-1]
    for k, sigma in enumerate(SPEC_SIGMAS):  # the official dynamic_threshold_sigma on SPEC's σ list
        assert by_t[1 + 50 * k] == pytest.approx(0.35 + (sigma - lo) / (hi - lo) * 0.15, abs=2e-4)
    assert by_t[1] == pytest.approx(0.35) and by_t[951] == pytest.approx(0.5)
    assert torch.all(step_thresholds(world.scheduler, 20, 0.3, 0.3) == 0.3)  # SPO: fixed


def test_gap_is_the_two_way_softmax_difference():
    s_w, s_l = torch.tensor([2.0, 0.3]), torch.tensor([-1.0, 0.3])
    p = torch.softmax(torch.stack([s_w, s_l]), dim=0)
    assert torch.allclose(softmax_gap(s_w, s_l), p[0] - p[1])


def test_every_step_branches_k_candidates_from_the_policy_gaussian_and_continues_from_one(world):
    settings = StepRolloutSettings(num_candidates=4, threshold_min=0.0, threshold_max=0.0)  # keep every row
    out, reward, x_T, cond = _rollout(world, settings)
    B, K = len(PROMPTS), 4
    ts = ddim_timesteps(world.scheduler, 20).tolist()
    assert len(reward.calls) == 20 and out.branched == 20 * B
    assert [int(c[1][0]) for c in reward.calls] == ts  # told the current t (official LPO)
    assert len(out.kept) == 20 * B and out.final_latents is not None
    winner_continues = 0
    for i, t in enumerate(ts):
        rows = torch.nonzero(out.kept.timesteps == t).flatten()
        assert out.kept.prompt_index[rows].tolist() == list(range(B))
        x_t = out.kept.latents_t[rows]
        candidates = reward.calls[i][0].reshape(B, K, 4, 8, 8)
        scores = reward.scale * (candidates * reward.direction).mean(dim=(2, 3, 4))
        # x_t is x_T at the first step, else one of the previous step's candidates
        if i == 0:
            assert torch.equal(x_t, x_T)
        else:
            previous = reward.calls[i - 1][0].reshape(B, K, 4, 8, 8)
            for b in range(B):
                match = [k for k in range(K) if torch.equal(previous[b, k], x_t[b])]
                assert len(match) == 1
                prev_scores = reward.scale * (previous[b] * reward.direction).mean(dim=(1, 2, 3))
                winner_continues += int(match[0] == int(prev_scores.argmax()))
        # candidates = μ + std·z with μ, std of the policy's CFG step from x_t
        noise_pred = predict_noise(world.unet, x_t, t, cond)
        world.scheduler.set_timesteps(20)
        step = ddim_step_with_logprob(world.scheduler, noise_pred, t, x_t, eta=1.0, noise=torch.zeros_like(x_t))
        z = (candidates - step.mean.unsqueeze(1)) / step.std.unsqueeze(1)
        z = z.detach()
        assert abs(float(z.mean())) < 0.15 and abs(float(z.std()) - 1) < 0.15
        # winner = argmax, loser = argmin of the candidates' scores
        for b in range(B):
            assert torch.equal(out.kept.latents_w[rows[b]], candidates[b, scores[b].argmax()])
            assert torch.equal(out.kept.latents_l[rows[b]], candidates[b, scores[b].argmin()])
    # uniformly random continuation: the winner is taken about 1/K of the time, not always
    assert winner_continues < 0.6 * 19 * B


def test_threshold_keeps_only_clear_winners(world):
    settings = StepRolloutSettings(num_candidates=4, threshold_min=0.35, threshold_max=0.5)
    out, reward, _, _ = _rollout(world, settings, reward=RecordingReward((4, 8, 8), scale=60.0))
    th = dict(zip(ddim_timesteps(world.scheduler, 20).tolist(), step_thresholds(world.scheduler, 20, 0.35, 0.5).tolist()))
    assert 0 < len(out.kept) < out.branched  # some kept, some dropped at this reward scale
    for gap, t, s_w, s_l in zip(out.kept.gaps, out.kept.timesteps, out.kept.scores_w, out.kept.scores_l):
        assert float(gap) > th[int(t)]
        assert float(gap) == pytest.approx(math.tanh((float(s_w) - float(s_l)) / 2), abs=1e-6)
    # every dropped row had a gap at or below its threshold
    dropped = 0
    for (latents, ts) in reward.calls:
        scores = reward.scale * (latents.float() * reward.direction).mean(dim=(1, 2, 3))
        scores = scores.reshape(len(PROMPTS), 4)
        gaps = torch.tanh((scores.max(1).values - scores.min(1).values) / 2)
        dropped += int((gaps <= th[int(ts[0])]).sum())
    assert dropped == out.branched - len(out.kept)
    assert sum(out.kept_by_timestep.values()) == len(out.kept)


def test_spo_skips_the_first_steps_and_tells_the_reward_prev_t(world):
    settings = StepRolloutSettings(num_candidates=2, skip_first_steps=4, reward_timestep="prev", threshold_min=0.0,
                                   threshold_max=0.0)
    out, reward, _, _ = _rollout(world, settings)
    told = [int(c[1][0]) for c in reward.calls]
    assert told == [751 - 50 - 50 * k for k in range(15)] + [0]  # prev_t of 751 ... 51, then 0 after t = 1
    assert int(out.kept.timesteps.max()) == 751 and out.branched == 16 * len(PROMPTS)


def test_zero_tells_the_reward_t_0_at_every_step(world):
    settings = StepRolloutSettings(reward_timestep="zero", threshold_min=0.0, threshold_max=0.0)
    out, reward, _, _ = _rollout(world, settings)
    assert {int(c[1][0]) for c in reward.calls} == {0} and len(reward.calls) == 20
    assert sorted({int(t) for t in out.kept.timesteps})[-1] == 951  # pairs still at their real t


def test_min_timestep_trains_only_high_t_and_stops_early(world):
    settings = StepRolloutSettings(min_timestep=501, threshold_min=0.0, threshold_max=0.0)
    out, reward, _, _ = _rollout(world, settings)
    assert int(out.kept.timesteps.min()) == 501 and len(reward.calls) == 10
    assert out.final_latents is None  # the other 10 steps were never run


def test_same_generator_same_rollout(world):
    settings = StepRolloutSettings()
    a, _, _, _ = _rollout(world, settings, seed=3)
    b, _, _, _ = _rollout(world, settings, seed=3)
    assert torch.equal(a.kept.latents_w, b.kept.latents_w) and torch.equal(a.kept.timesteps, b.kept.timesteps)


def test_kept_steps_concatenate_with_shifted_prompt_rows(world):
    settings = StepRolloutSettings(threshold_min=0.0, threshold_max=0.0, min_timestep=851)
    a, _, _, cond_a = _rollout(world, settings, prompts=PROMPTS[:2])
    b, _, _, cond_b = _rollout(world, settings, prompts=PROMPTS[2:], seed=1)
    both = KeptSteps.cat([a.kept, b.kept])
    assert len(both) == len(a.kept) + len(b.kept) and both.prompts == PROMPTS
    rows = both.row_conditioning().cond.prompt_embeds
    expected = torch.cat([cond_a.cond.prompt_embeds[a.kept.prompt_index], cond_b.cond.prompt_embeds[b.kept.prompt_index]])
    assert torch.equal(rows, expected)
    sub = both.select([len(a.kept)])  # the first row of the second part
    assert sub.prompts == PROMPTS and torch.equal(sub.row_conditioning().cond.prompt_embeds[0], cond_b.cond.prompt_embeds[0])


def test_the_lrm_and_the_pixel_model_are_step_rewards_and_drive_a_rollout(world):
    from lpo.reward.lrm import LatentRewardModel, LRMConfig
    from lpo.reward.pixel import PixelStepReward

    torch.manual_seed(0)
    lrm = LatentRewardModel.from_components(world, LRMConfig(vfe_scale=1.0)).eval()
    pixel = PixelStepReward.from_components(world)
    assert isinstance(lrm, StepReward) and isinstance(pixel, StepReward)
    for reward in (lrm, pixel):
        cond = guided_conditioning(world, PROMPTS, 5.0)
        latents = initial_latents(3, 4, 8, 8, torch.Generator().manual_seed(0), world.scheduler)
        settings = StepRolloutSettings(threshold_min=0.0, threshold_max=0.0, min_timestep=801)
        out = step_rollout(world.unet, world.scheduler, cond, reward, reward.encode_text(PROMPTS), latents, settings,
                           torch.Generator().manual_seed(1), PROMPTS)
        assert len(out.kept) > 0 and torch.isfinite(out.scores).all()
        assert torch.all(out.kept.scores_w >= out.kept.scores_l)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="num_candidates"):
        StepRolloutSettings(num_candidates=1)
    with pytest.raises(ValueError, match="threshold"):
        StepRolloutSettings(threshold_min=0.6, threshold_max=0.5)
    with pytest.raises(ValueError, match="skip_first_steps"):
        StepRolloutSettings(skip_first_steps=20)


# --------------------------------------------------------------------------- inner steps (SPO SDXL)


def test_inner_steps_continue_each_chain_and_pair_every_transition(world):
    """K = 2, 2 inner steps: a branching, two more steps of each chain, then the chain ends are
    scored; the winning and losing chains give 3 pairs each, linked transition by transition."""
    settings = StepRolloutSettings(num_candidates=2, inner_steps=2, threshold_min=0.0, threshold_max=0.0,
                                   min_timestep=651)  # branchings at 951, 801, 651 (each + 2 inner steps)
    out, reward, _, cond = _rollout(world, settings)
    kept = out.kept
    assert kept.latents_t_l is not None and len(kept) == 3 * 3 * len(PROMPTS)  # 3 branchings × 3 pairs × prompts
    assert out.branched == 3 * len(PROMPTS) and out.kept_count == 3 * len(PROMPTS) and out.keep_rate == 1.0
    assert out.kept_by_timestep == {t: len(PROMPTS) for t in (951, 901, 851, 801, 751, 701, 651, 601, 551)}
    # the reward saw the chain ends only: 3 calls of B·K latents, told the last inner step's t
    assert [int(ts[0]) for _, ts in reward.calls] == [851, 701, 551]
    assert all(x.shape[0] == 2 * len(PROMPTS) for x, _ in reward.calls)
    for segment, (ends, _) in enumerate(reward.calls):
        rows = [segment * 3 * len(PROMPTS) + j * len(PROMPTS) + b for j in range(3) for b in range(len(PROMPTS))]
        part = kept.select(rows)
        first, second, third = (part.select(range(j * len(PROMPTS), (j + 1) * len(PROMPTS))) for j in range(3))
        assert torch.equal(first.latents_t, first.latents_t_l)  # the branching step: one x_t
        assert torch.equal(second.latents_t, first.latents_w) and torch.equal(second.latents_t_l, first.latents_l)
        assert torch.equal(third.latents_t, second.latents_w) and torch.equal(third.latents_t_l, second.latents_l)
        scores = reward.scale * (ends.float() * reward.direction).mean(dim=(1, 2, 3))
        by_prompt = scores.reshape(len(PROMPTS), 2)
        ends_by_prompt = ends.reshape(len(PROMPTS), 2, *ends.shape[1:])
        for b in range(len(PROMPTS)):  # the winner's chain ends at the better-scored end
            best, worst = int(by_prompt[b].argmax()), int(by_prompt[b].argmin())
            assert torch.equal(third.latents_w[b], ends_by_prompt[b, best])
            assert torch.equal(third.latents_l[b], ends_by_prompt[b, worst])
    # each inner transition is a sample of the policy's step from its own chain's x_t
    row = second.select([0])
    cond_row = cond.index(row.prompt_index)
    for x_t, x_prev in ((row.latents_t, row.latents_w), (row.latents_t_l, row.latents_l)):
        t = int(row.timesteps[0])
        step = ddim_step_with_logprob(world.scheduler, predict_noise(world.unet, x_t, t, cond_row), t, x_t, eta=1.0,
                                      noise=torch.zeros_like(x_t))
        z = (x_prev - step.mean) / step.std
        assert z.abs().max() < 6  # a draw from that Gaussian (not from the other chain's)


def test_without_inner_steps_the_loser_shares_x_t(world):
    out, _, _, _ = _rollout(world, StepRolloutSettings(num_candidates=2, threshold_min=0.0, threshold_max=0.0,
                                                       min_timestep=851))
    assert out.kept.latents_t_l is None and out.kept_count == len(out.kept)
    parts = KeptSteps.cat([out.kept, out.kept])
    assert parts.latents_t_l is None


def test_a_trajectory_ending_inside_a_segment_scores_its_chains_there(world):
    settings = StepRolloutSettings(num_inference_steps=4, num_candidates=2, inner_steps=3, threshold_min=0.0,
                                   threshold_max=0.0, skip_first_steps=2)  # branch at step 3 of 4: 1 inner step left
    out, reward, _, _ = _rollout(world, settings)
    assert len(reward.calls) == 1 and len(out.kept) == 2 * len(PROMPTS)
