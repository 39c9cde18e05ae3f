"""Tests for lpo.sampling.ddim: parity with DDIMScheduler.step, the analytic Gaussian, SPEC §3's
σ list, mixed timesteps, branching, and trajectories with tiny random U-Nets (CPU, offline)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler, UNet2DConditionModel

from lpo.models.conditioning import GuidedConditioning, TextConditioning, predict_noise
from lpo.sampling.ddim import (
    DDIMStepOutput,
    Trajectory,
    branch_candidates,
    candidate_log_probs,
    ddim_step_with_logprob,
    ddim_timesteps,
    gaussian_log_prob,
    initial_latents,
    randn_like_per_sample,
    sample_trajectory,
    sigma_schedule,
)

SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)

# SPEC §3's 20-step σ_t for t = 1, 51, ..., 951 (a test oracle: the code computes them).
SPEC_SIGMAS = [
    0.0206, 0.0406, 0.1673, 0.2144, 0.2509, 0.2836, 0.3144, 0.3442, 0.3732, 0.4016,
    0.4293, 0.4565, 0.4829, 0.5087, 0.5336, 0.5576, 0.5807, 0.6029, 0.6241, 0.6444,
]  # fmt: skip

SHAPE = (2, 4, 8, 8)
EMBED_DIM = 32


def sd_scheduler(num_inference_steps: int | None = 20, **overrides) -> DDIMScheduler:
    scheduler = DDIMScheduler(**{**SD15_SCHEDULER, **overrides})
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    return scheduler


def randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def tiny_unet(sdxl: bool = False) -> UNet2DConditionModel:
    torch.manual_seed(0)
    extra = {}
    if sdxl:
        # SDXL's micro-conditioning: 6 time ids, each embedded in 8 dims, plus the pooled text.
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=EMBED_DIM + 6 * 8,
        )
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=EMBED_DIM,
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,
        **extra,
    ).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def sdxl_unet():
    return tiny_unet(sdxl=True)


def guided(batch: int, sdxl: bool = False, seed: int = 1) -> GuidedConditioning:
    def text(s):
        return TextConditioning(
            prompt_embeds=randn(batch, 5, EMBED_DIM, seed=s),
            pooled_prompt_embeds=randn(batch, EMBED_DIM, seed=s + 100) if sdxl else None,
            add_time_ids=torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).repeat(batch, 1) if sdxl else None,
        )

    return GuidedConditioning(cond=text(seed), uncond=text(seed + 1000), guidance_scale=5.0)


# --------------------------------------------------------------------------- schedule


def test_timesteps_sd_20_steps_are_951_to_1_and_leave_the_scheduler_alone():
    scheduler = sd_scheduler(num_inference_steps=None)
    assert ddim_timesteps(scheduler, 20).tolist() == list(range(951, 0, -50))
    assert scheduler.num_inference_steps is None


def test_sigma_schedule_matches_spec_list():
    scheduler = sd_scheduler(num_inference_steps=None)
    sigmas = sigma_schedule(scheduler, 20)  # ordered like the timesteps: t = 951 first
    expected = torch.tensor(SPEC_SIGMAS).flip(0)  # the SPEC lists t = 1 first
    torch.testing.assert_close(sigmas, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(sigma_schedule(scheduler, 20, eta=0.5), 0.5 * sigmas)


def test_sigma_schedule_equals_diffusers_variance():
    scheduler = sd_scheduler()
    expected = torch.stack([scheduler._get_variance(t, t - 50).sqrt() for t in scheduler.timesteps.tolist()])
    torch.testing.assert_close(sigma_schedule(scheduler, 20), expected.float(), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "config",
    [
        {},  # SD1.5 / SDXL
        {"prediction_type": "v_prediction"},
        {"prediction_type": "sample"},
        {"clip_sample": True, "clip_sample_range": 1.0},
        {"thresholding": True},
    ],
    ids=["sd15", "v_prediction", "sample", "clip_sample", "thresholding"],
)
def test_step_matches_diffusers_ddim_step_at_every_timestep(config):
    scheduler = sd_scheduler(**config)
    for i, t in enumerate(scheduler.timesteps.tolist()):
        latents_t, noise_pred, z = randn(*SHAPE, seed=3 * i), randn(*SHAPE, seed=3 * i + 1), randn(*SHAPE, seed=3 * i + 2)
        ours = ddim_step_with_logprob(scheduler, noise_pred, t, latents_t, eta=1.0, noise=z)
        theirs = scheduler.step(noise_pred, t, latents_t, eta=1.0, variance_noise=z)
        theirs_mean = scheduler.step(noise_pred, t, latents_t, eta=1.0, variance_noise=torch.zeros(SHAPE))
        torch.testing.assert_close(ours.prev_sample, theirs.prev_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.pred_original_sample, theirs.pred_original_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.mean, theirs_mean.prev_sample, atol=1e-5, rtol=1e-5)
        assert ours.prev_timestep.tolist() == [t - 50] * SHAPE[0]


def test_log_prob_equals_torch_normal():
    scheduler = sd_scheduler()
    for t in (951, 501, 1):
        out = ddim_step_with_logprob(
            scheduler, randn(*SHAPE, seed=t), t, randn(*SHAPE, seed=t + 1), generator=torch.Generator().manual_seed(t)
        )
        assert isinstance(out, DDIMStepOutput)
        assert out.log_prob.shape == (SHAPE[0],) and out.std.shape == (SHAPE[0], 1, 1, 1)
        expected = torch.distributions.Normal(out.mean, out.std).log_prob(out.prev_sample).mean(dim=(1, 2, 3))
        torch.testing.assert_close(out.log_prob, expected, atol=1e-5, rtol=1e-6)


# --------------------------------------------------------------------------- guards


@pytest.mark.parametrize("eta", [0.0, 0])
def test_eta_zero_raises_with_a_clear_message(eta):
    scheduler = sd_scheduler()
    with pytest.raises(ValueError, match=r"eta=0.*no density.*eta>0"):
        ddim_step_with_logprob(scheduler, randn(*SHAPE), 951, randn(*SHAPE), eta=eta)
    with pytest.raises(ValueError, match="eta=0"):
        sigma_schedule(scheduler, 20, eta=eta)


def test_other_bad_inputs_raise():
    scheduler = sd_scheduler()
    x = randn(*SHAPE)
    with pytest.raises(ValueError, match="0 < eta <= 1"):
        ddim_step_with_logprob(scheduler, x, 951, x, eta=1.5)
    with pytest.raises(ValueError, match="set_timesteps"):
        ddim_step_with_logprob(sd_scheduler(num_inference_steps=None), x, 951, x)
    with pytest.raises(ValueError, match="DDIMScheduler.from_config"):
        ddim_step_with_logprob(PNDMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k != "clip_sample"}), x, 951, x)
    with pytest.raises(ValueError, match="nothing is sampled"):
        ddim_step_with_logprob(scheduler, x, 951, x, prev_sample=x, generator=torch.Generator())
    with pytest.raises(ValueError, match="not both"):
        ddim_step_with_logprob(scheduler, x, 951, x, generator=torch.Generator(), noise=x)
    with pytest.raises(ValueError, match="3 timesteps for a batch of 2"):
        ddim_step_with_logprob(scheduler, x, torch.tensor([951, 501, 1]), x)
    # set_alpha_to_one=True makes ᾱ_prev = 1 at the last step: σ = 0, a deterministic step.
    with pytest.raises(ValueError, match=r"std = η·σ_t is 0 at timesteps \[1, 1\]"):
        ddim_step_with_logprob(sd_scheduler(set_alpha_to_one=True), x, 1, x)


# --------------------------------------------------------------------------- scoring


def test_scoring_a_given_prev_sample_returns_the_drawn_log_prob():
    scheduler = sd_scheduler()
    latents_t, noise_pred = randn(*SHAPE, seed=1), randn(*SHAPE, seed=2)
    drawn = ddim_step_with_logprob(scheduler, noise_pred, 501, latents_t, generator=torch.Generator().manual_seed(0))
    expected_next_draw = torch.manual_seed(123) and torch.rand(1)
    torch.manual_seed(123)
    scored = ddim_step_with_logprob(scheduler, noise_pred, 501, latents_t, prev_sample=drawn.prev_sample)
    assert torch.equal(torch.rand(1), expected_next_draw)  # scoring drew no noise
    assert scored.prev_sample is drawn.prev_sample
    torch.testing.assert_close(scored.log_prob, drawn.log_prob, atol=0, rtol=0)
    # A sample far from the mean scores lower.
    far = ddim_step_with_logprob(scheduler, noise_pred, 501, latents_t, prev_sample=drawn.prev_sample + 1.0)
    assert (far.log_prob < drawn.log_prob).all()


def test_gradient_reaches_noise_pred_but_not_the_scored_sample():
    scheduler = sd_scheduler()
    noise_pred = randn(*SHAPE, seed=1).requires_grad_()
    prev = randn(*SHAPE, seed=2).requires_grad_()
    out = ddim_step_with_logprob(scheduler, noise_pred, 501, randn(*SHAPE, seed=3), prev_sample=prev)
    out.log_prob.sum().backward()
    assert noise_pred.grad is not None and noise_pred.grad.abs().sum() > 0
    assert prev.grad is None


def test_low_precision_inputs_keep_dtype_and_score_consistently():
    scheduler = sd_scheduler()
    latents_t, noise_pred = randn(*SHAPE, seed=1).bfloat16(), randn(*SHAPE, seed=2).bfloat16()
    drawn = ddim_step_with_logprob(scheduler, noise_pred, 51, latents_t, generator=torch.Generator().manual_seed(0))
    assert drawn.prev_sample.dtype == torch.bfloat16 and drawn.pred_original_sample.dtype == torch.bfloat16
    assert drawn.log_prob.dtype == torch.float32 and drawn.mean.dtype == torch.float32
    scored = ddim_step_with_logprob(scheduler, noise_pred, 51, latents_t, prev_sample=drawn.prev_sample)
    torch.testing.assert_close(scored.log_prob, drawn.log_prob, atol=0, rtol=0)


def test_mixed_per_sample_timesteps_equal_separate_calls():
    scheduler = sd_scheduler()
    timesteps = torch.tensor([951, 501, 1])
    shape = (3, *SHAPE[1:])
    latents_t, noise_pred, z = randn(*shape, seed=1), randn(*shape, seed=2), randn(*shape, seed=3)
    sampled = ddim_step_with_logprob(scheduler, noise_pred, timesteps, latents_t, noise=z)
    scored = ddim_step_with_logprob(scheduler, noise_pred, timesteps, latents_t, prev_sample=z)
    for i, t in enumerate(timesteps.tolist()):
        one = ddim_step_with_logprob(scheduler, noise_pred[i : i + 1], t, latents_t[i : i + 1], noise=z[i : i + 1])
        torch.testing.assert_close(sampled.prev_sample[i : i + 1], one.prev_sample, atol=1e-6, rtol=0)
        torch.testing.assert_close(sampled.mean[i : i + 1], one.mean, atol=1e-6, rtol=0)
        torch.testing.assert_close(sampled.std[i : i + 1], one.std, atol=0, rtol=0)
        torch.testing.assert_close(sampled.log_prob[i : i + 1], one.log_prob, atol=1e-6, rtol=0)
        one_scored = ddim_step_with_logprob(
            scheduler, noise_pred[i : i + 1], t, latents_t[i : i + 1], prev_sample=z[i : i + 1]
        )
        torch.testing.assert_close(scored.log_prob[i : i + 1], one_scored.log_prob, atol=1e-6, rtol=0)
    assert sampled.prev_timestep.tolist() == [901, 451, -49]


# --------------------------------------------------------------------------- branching


def test_branch_candidates_share_the_mean_and_score_like_the_step():
    scheduler = sd_scheduler()
    latents_t, noise_pred = randn(*SHAPE, seed=1), randn(*SHAPE, seed=2)
    step = ddim_step_with_logprob(scheduler, noise_pred, 501, latents_t, generator=torch.Generator().manual_seed(0))
    k = 4
    candidates = branch_candidates(step.mean, step.std, k, generator=torch.Generator().manual_seed(1))
    assert candidates.shape == (SHAPE[0], k, *SHAPE[1:])
    # Different samples around the same mean: standardised offsets look like N(0, 1).
    z = (candidates - step.mean.unsqueeze(1)) / step.std.unsqueeze(1)
    assert abs(z.mean().item()) < 0.1 and abs(z.std().item() - 1) < 0.1
    for a in range(k):
        for b in range(a + 1, k):
            assert not torch.allclose(candidates[:, a], candidates[:, b])
    # Each candidate's log-prob equals the step's log-prob when the step scores it.
    log_probs = candidate_log_probs(candidates, step.mean, step.std)
    assert log_probs.shape == (SHAPE[0], k)
    for i in range(k):
        scored = ddim_step_with_logprob(scheduler, noise_pred, 501, latents_t, prev_sample=candidates[:, i])
        torch.testing.assert_close(log_probs[:, i], scored.log_prob, atol=1e-6, rtol=0)
    expected = torch.distributions.Normal(step.mean.unsqueeze(1), step.std.unsqueeze(1)).log_prob(candidates)
    torch.testing.assert_close(log_probs, expected.mean(dim=(2, 3, 4)), atol=1e-5, rtol=1e-6)


def test_per_sample_generators_make_rows_independent_of_the_batch():
    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    batch = randn_like_per_sample((3, 4, 8, 8), gens([7, 8, 9]))
    alone = randn_like_per_sample((1, 4, 8, 8), gens([8]))
    assert torch.equal(batch[1:2], alone)
    mean, std = torch.zeros(3, 4, 8, 8), torch.full((3, 1, 1, 1), 0.5)
    cands = branch_candidates(mean, std, 2, generator=gens([7, 8, 9]))
    assert torch.equal(cands[2:3], branch_candidates(mean[2:3], std[2:3], 2, generator=gens([9])))
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn_like_per_sample((3, 4), gens([1, 2]))


def test_gaussian_log_prob_is_a_mean_not_a_sum():
    x = torch.zeros(1, 4, 8, 8)
    std = torch.ones(1, 1, 1, 1)
    torch.testing.assert_close(gaussian_log_prob(x, x, std), torch.tensor([-0.5 * torch.log(torch.tensor(2 * torch.pi))]))


# --------------------------------------------------------------------------- trajectories


def _per_sample(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _trajectory(unet, conditioning, seeds, steps=4, **kwargs):
    scheduler = sd_scheduler(num_inference_steps=None)
    latents = initial_latents(len(seeds), 4, 8, 8, _per_sample(seeds), scheduler)
    return sample_trajectory(
        unet, scheduler, conditioning, latents, num_inference_steps=steps, generator=_per_sample(seeds), **kwargs
    ), scheduler


def test_trajectory_shapes_finite_and_consistent_with_rescoring(unet):
    seen = []

    def progress(steps):
        for t in steps:
            seen.append(int(t))
            yield t

    conditioning = guided(3)
    traj, scheduler = _trajectory(unet, conditioning, [0, 1, 2], progress=progress)
    assert isinstance(traj, Trajectory)
    assert traj.timesteps.tolist() == [751, 501, 251, 1] == seen
    assert traj.latents.shape == (3, 5, 4, 8, 8)
    assert traj.log_probs.shape == (3, 4) and torch.isfinite(traj.log_probs).all()
    assert torch.equal(traj.final_latents, traj.latents[:, -1])
    # Replaying a recorded transition through the step function gives the recorded log-prob.
    i = 2
    t = traj.timesteps[i]
    with torch.no_grad():
        noise_pred = predict_noise(unet, traj.latents[:, i], t, conditioning)
    replay = ddim_step_with_logprob(scheduler, noise_pred, t, traj.latents[:, i], prev_sample=traj.latents[:, i + 1])
    torch.testing.assert_close(replay.log_prob, traj.log_probs[:, i], atol=1e-5, rtol=0)


def test_trajectory_same_seeds_same_result_and_batch_independent(unet):
    conditioning = guided(3)
    first, _ = _trajectory(unet, conditioning, [10, 11, 12])
    again, _ = _trajectory(unet, conditioning, [10, 11, 12], record=False)
    assert again.latents is None
    assert torch.equal(first.final_latents, again.final_latents)
    assert torch.equal(first.log_probs, again.log_probs)
    alone, _ = _trajectory(unet, conditioning.index(0), [10])
    # Same per-sample seed -> same sample, whatever else is in the batch: x_T bit-identical,
    # later latents up to float32 batching noise in the U-Net (~1e-6 relative; the random
    # U-Net with CFG 5 drives latents to |x| ~ 20, hence the absolute tolerance).
    assert torch.equal(alone.latents[:, 0], first.latents[:1, 0])
    torch.testing.assert_close(alone.latents, first.latents[:1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(alone.log_probs, first.log_probs[:1], atol=1e-4, rtol=1e-5)
    other, _ = _trajectory(unet, conditioning, [20, 21, 22])
    assert not torch.allclose(other.final_latents, first.final_latents)


def test_sdxl_style_conditioning_runs_through_step_and_trajectory(sdxl_unet):
    conditioning = guided(2, sdxl=True)
    traj, _ = _trajectory(sdxl_unet, conditioning, [0, 1], steps=3)
    assert traj.latents.shape == (2, 4, 4, 8, 8)
    assert torch.isfinite(traj.log_probs).all() and torch.isfinite(traj.final_latents).all()
    # The pooled text and time ids reach the U-Net: changing them changes the result.
    changed = GuidedConditioning(
        cond=TextConditioning(
            conditioning.cond.prompt_embeds,
            conditioning.cond.pooled_prompt_embeds + 1.0,
            conditioning.cond.add_time_ids * 2,
        ),
        uncond=conditioning.uncond,
        guidance_scale=conditioning.guidance_scale,
    )
    traj_changed, _ = _trajectory(sdxl_unet, changed, [0, 1], steps=3)
    assert not torch.allclose(traj.final_latents, traj_changed.final_latents)


def test_initial_latents_scale_by_init_noise_sigma():
    scheduler = sd_scheduler()
    scheduler.init_noise_sigma = 2.0  # DDIM's is 1; check the scaling is applied, not assumed
    latents = initial_latents(2, 4, 8, 8, torch.Generator().manual_seed(0), scheduler)
    torch.testing.assert_close(latents, 2.0 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
