"""Tests for lpo.sampling.guided (LRM-guided sampling, SPEC §5.4) and `lpo world guided-eval`, on tiny
random models: parity with plain sampling, the pick rules, exact call counts, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lpo.cli import app
from lpo.sampling.guided import (
    GuidanceConfig,
    LRMCandidateScorer,
    branch_seed,
    generators_for,
    guided_sample,
    lrm_scorer,
    select_candidates,
)
from lpo.sampling.guided_generation import (
    SamplerSettings,
    _conditioning_and_noise,
    best_of_k_final,
    best_of_k_seeds,
    final_candidates,
    guided_generate,
    plain_generate,
)
from lpo.reward.lrm import LatentRewardModel, LRMConfig
from lpo.reward.lrm_io import save_lrm
from lpo.sampling.ddim import sample_trajectory, sigma_schedule

STEPS = 4
PROMPTS = ["a red circle", "a blue square"]
SEEDS = [11, 12]
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tiny_world_dir):
    from lpo.models.components import load_components

    return load_components(tiny_world_dir)


@pytest.fixture(params=["world", "sd15", "sdxl"])
def any_components(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def world_lrm(world):
    return LatentRewardModel.from_components(world, LRMConfig(vfe_scale=3.0)).eval().requires_grad_(False)


# --------------------------------------------------------------------------- helpers


class PreferIndex:
    """A scorer whose top candidate is always ``index``; records what it was shown."""

    def __init__(self, index: int = 0):
        self.index, self.calls, self.rows, self.timesteps = index, 0, 0, []

    def __call__(self, candidates, timesteps):
        batch, k = candidates.shape[:2]
        self.calls += 1
        self.rows += batch * k
        self.timesteps.append(timesteps.clone())
        scores = torch.zeros(batch, k)
        scores[:, self.index] = 1.0
        return scores


class RandomScores:
    """Known but arbitrary preferences: seeded random scores; keeps every input and output."""

    def __init__(self, seed: int = 0):
        self.gen = torch.Generator().manual_seed(seed)
        self.candidates, self.scores, self.rows = [], [], 0

    def __call__(self, candidates, timesteps):
        batch, k = candidates.shape[:2]
        self.rows += batch * k
        scores = torch.randn(batch, k, generator=self.gen)
        self.candidates.append(candidates.clone())
        self.scores.append(scores)
        return scores


class CountingUNet(torch.nn.Module):
    """Forwards to a U-Net, counting forward rows and keeping the latents it was given."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.rows, self.inputs = unet, 0, []

    def forward(self, sample, timestep, **kwargs):
        self.rows += sample.shape[0]
        self.inputs.append(sample.clone())
        return self.unet(sample, timestep, **kwargs)


def _setup(components, prompts=PROMPTS, seeds=SEEDS, guidance_scale=5.0):
    return _conditioning_and_noise(components, prompts, seeds, SamplerSettings(STEPS, guidance_scale))


def _guided(components, scorer, config, unet=None, prompts=PROMPTS, seeds=SEEDS, **kwargs):
    conditioning, latents, generators = _setup(components, prompts, seeds)
    return guided_sample(
        unet or components.unet, components.scheduler, conditioning, latents, scorer, config,
        num_inference_steps=STEPS, generator=generators,
        branch_generator=generators_for([branch_seed(s) for s in seeds]), **kwargs,
    )


def _plain(components, prompts=PROMPTS, seeds=SEEDS):
    conditioning, latents, generators = _setup(components, prompts, seeds)
    return sample_trajectory(
        components.unet, components.scheduler, conditioning, latents, num_inference_steps=STEPS, generator=generators
    )


# --------------------------------------------------------------------------- parity with plain sampling


def test_a_scorer_preferring_candidate_0_reproduces_plain_sampling_exactly(any_components):
    plain = _plain(any_components)
    scorer = PreferIndex(0)
    guided = _guided(any_components, scorer, GuidanceConfig(num_candidates=3, select="best"))
    assert torch.equal(guided.final_latents, plain.final_latents)
    assert guided.choices.shape == (2, STEPS) and bool((guided.choices == 0).all())
    assert scorer.calls == STEPS


def test_one_candidate_is_plain_sampling_and_scores_nothing(world):
    plain = _plain(world)
    scorer = PreferIndex(0)
    for select in ("random", "best"):
        guided = _guided(world, scorer, GuidanceConfig(num_candidates=1, select=select))
        assert torch.equal(guided.final_latents, plain.final_latents)
        assert guided.counts.lrm_calls == 0
    assert scorer.calls == 0


def test_another_preferred_index_leaves_plain_sampling(world):
    plain = _plain(world)
    guided = _guided(world, PreferIndex(2), GuidanceConfig(num_candidates=3))
    assert bool((guided.choices == 2).all())
    assert not torch.allclose(guided.final_latents, plain.final_latents)


def test_guided_generate_starts_from_the_plain_images_noise_and_matches_it_with_candidate_0(world):
    settings = SamplerSettings(STEPS, 5.0, batch_size=2)
    plain = plain_generate(world, PROMPTS, SEEDS, settings)
    guided = guided_generate(world, PROMPTS, SEEDS, lambda prompts: PreferIndex(0), GuidanceConfig(3), settings)
    assert torch.equal(guided.final_latents, plain.final_latents)
    np.testing.assert_array_equal(guided.images, plain.images)


def test_plain_generate_matches_the_diffusers_pipeline_at_eta_1_with_the_same_seeds(world):
    from lpo.sampling.generate import build_pipeline, generate_images

    pipe = build_pipeline(world)
    pipe.set_progress_bar_config(disable=True)
    expected = generate_images(pipe, PROMPTS, SEEDS, num_inference_steps=STEPS, guidance_scale=5.0, eta=1.0)
    ours = plain_generate(world, PROMPTS, SEEDS, SamplerSettings(STEPS, 5.0, eta=1.0)).images
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


# --------------------------------------------------------------------------- the pick rules


@pytest.mark.parametrize("select,pick", [("best", torch.argmax), ("worst", torch.argmin)])
def test_the_trajectory_continues_from_the_picked_candidate(world, select, pick):
    scorer, unet = RandomScores(seed=3), CountingUNet(world.unet)
    guided = _guided(world, scorer, GuidanceConfig(num_candidates=4, select=select), unet=unet, record=True)
    batch = len(PROMPTS)
    for i, (candidates, scores) in enumerate(zip(scorer.candidates, scorer.scores)):
        chosen = candidates[torch.arange(batch), pick(scores, dim=1)]
        assert torch.equal(guided.choices[:, i], pick(scores, dim=1))
        # what the U-Net sees next (cond half of the CFG batch) is the chosen candidate
        following = unet.inputs[i + 1][:batch] if i + 1 < STEPS else guided.final_latents
        assert torch.equal(following, chosen)
        assert torch.equal(guided.latents[:, i + 1], chosen)
    assert torch.equal(guided.candidates[:, 0], scorer.candidates[0])


def test_candidates_are_distinct_draws_around_one_mean(world):
    guided = _guided(world, PreferIndex(0), GuidanceConfig(num_candidates=4), record=True)
    first = guided.candidates[:, 0]  # (B, K, C, H, W) at t = T
    assert all(not torch.equal(first[:, 0], first[:, k]) for k in range(1, 4))
    # x_prev^k − x_prev^0 = std·(z_k − z_0): mean ≈ 0, variance ≈ 2·std² (η = 1: std = σ_t)
    std = float(sigma_schedule(world.scheduler, STEPS)[0])
    diff = first[:, 1:] - first[:, :1]
    assert abs(float(diff.mean())) < 0.1
    assert float(diff.var()) == pytest.approx(2 * std**2, rel=0.15)


def test_softmax_at_tiny_temperature_is_best_and_at_huge_temperature_is_random(world):
    best = _guided(world, RandomScores(5), GuidanceConfig(num_candidates=4, select="best"))
    cold = _guided(world, RandomScores(5), GuidanceConfig(num_candidates=4, select="softmax", temperature=1e-8))
    assert torch.equal(cold.final_latents, best.final_latents)
    random = _guided(world, RandomScores(5), GuidanceConfig(num_candidates=4, select="random"))
    hot = _guided(world, RandomScores(5), GuidanceConfig(num_candidates=4, select="softmax", temperature=1e9))
    assert torch.equal(hot.choices, random.choices)
    assert torch.equal(hot.final_latents, random.final_latents)


def test_select_candidates_softmax_follows_the_softmax_probabilities():
    scores = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    n = 20000
    uniforms = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # a deterministic uniform grid
    for tau in (0.5, 1.0, 3.0):
        picks = torch.stack([select_candidates(scores, "softmax", u.reshape(1), tau) for u in uniforms[::20]]).flatten()
        freq = torch.bincount(picks, minlength=4).double() / picks.numel()
        expected = torch.exp(scores[0].double() / tau) / torch.exp(scores[0].double() / tau).sum()
        assert torch.allclose(freq, expected, atol=2e-3)
    random = select_candidates(scores.expand(4, 4), "random", torch.tensor([0.0, 0.26, 0.5, 0.999]))
    assert random.tolist() == [0, 1, 2, 3]
    assert select_candidates(scores, "best", torch.zeros(1)).item() == 2
    assert select_candidates(scores, "worst", torch.zeros(1)).item() == 3


def test_random_pick_is_deterministic_and_does_not_depend_on_the_batch(world):
    config = GuidanceConfig(num_candidates=3, select="random")
    both = _guided(world, PreferIndex(0), config)
    again = _guided(world, PreferIndex(0), config)
    alone = _guided(world, PreferIndex(0), config, prompts=PROMPTS[1:], seeds=SEEDS[1:])
    assert torch.equal(both.final_latents, again.final_latents)
    assert torch.equal(both.choices[1:], alone.choices)
    assert torch.allclose(both.final_latents[1:], alone.final_latents, atol=1e-5)
    assert set(both.choices.flatten().tolist()) - {0}  # the pick is not always candidate 0


# --------------------------------------------------------------------------- timesteps, counts


@pytest.mark.parametrize("mode", ["current", "prev"])
def test_the_lrm_is_told_the_current_or_the_previous_timestep(world, mode):
    scorer = PreferIndex(0)
    guided = _guided(world, scorer, GuidanceConfig(num_candidates=2, lrm_timestep=mode))
    told = [int(t[0]) for t in scorer.timesteps]
    current = [int(t) for t in guided.timesteps]  # 751, 501, 251, 1 for 4 steps
    expected = current if mode == "current" else [max(t - 1000 // STEPS, 0) for t in current]
    assert told == expected
    assert all(t.shape == (len(PROMPTS),) for t in scorer.timesteps)


def test_call_counts_are_exact_on_every_step_and_on_a_subset(world):
    for branch, cfg in ((None, 5.0), ((751, 251), 5.0), ((501,), 1.0)):
        conditioning, latents, generators = _conditioning_and_noise(world, PROMPTS, SEEDS, SamplerSettings(STEPS, cfg))
        unet, scorer = CountingUNet(world.unet), PreferIndex(1)
        guided = guided_sample(
            unet, world.scheduler, conditioning, latents, scorer, GuidanceConfig(3, branch_timesteps=branch),
            num_inference_steps=STEPS, generator=generators,
        )
        branched = STEPS if branch is None else len(branch)
        rows_per_eval = 2 if cfg != 1.0 else 1
        assert guided.counts.images == 2
        assert guided.counts.unet_calls == 2 * STEPS
        assert guided.counts.unet_passes == unet.rows == rows_per_eval * 2 * STEPS
        assert guided.counts.lrm_calls == scorer.rows == 2 * 3 * branched
        assert guided.scores.shape == (2, branched, 3)
        assert guided.branch_timesteps.tolist() == ([751, 501, 251, 1] if branch is None else list(branch))
        assert guided.counts.per_image() == {"unet_calls": STEPS, "unet_passes": rows_per_eval * STEPS, "lrm_calls": 3 * branched}


def test_bad_settings_are_one_line_errors(world):
    from lpo.core.errors import LpoError

    with pytest.raises(LpoError, match="eta"):
        SamplerSettings(eta=0.0)
    with pytest.raises(LpoError, match="select"):
        GuidanceConfig(select="median")
    with pytest.raises(LpoError, match="temperature"):
        GuidanceConfig(temperature=0.0)
    with pytest.raises(LpoError, match="not DDIM timesteps"):
        _guided(world, PreferIndex(0), GuidanceConfig(2, branch_timesteps=(950,)))


# --------------------------------------------------------------------------- the LRM as scorer


def test_lrm_scorer_scores_each_candidate_with_its_own_prompt(world, world_lrm):
    candidates = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([501, 501])
    scores = LRMCandidateScorer(world_lrm, PROMPTS)(candidates, t)
    with torch.no_grad():
        expected = world_lrm(candidates.flatten(0, 1), 501, [p for p in PROMPTS for _ in range(3)]).view(2, 3)
    assert torch.allclose(scores, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["world", "sdxl"])
def test_guided_generate_with_a_real_lrm(request, name):
    components = request.getfixturevalue(name)
    lrm = LatentRewardModel.from_components(components).eval().requires_grad_(False)
    settings = SamplerSettings(STEPS, 5.0, batch_size=2)
    result = guided_generate(components, PROMPTS, SEEDS, lrm_scorer(lrm), GuidanceConfig(2), settings)
    side = components.default_resolution
    assert result.images.shape == (2, side, side, 3) and result.images.dtype == np.uint8
    assert result.counts.per_image() == {"unet_calls": STEPS, "unet_passes": 2 * STEPS, "lrm_calls": 2 * STEPS}
    # the scores recorded are the LRM's on the chosen candidates' step
    assert torch.equal(result.choices, result.scores.argmax(dim=2))
    again = guided_generate(components, PROMPTS, SEEDS, lrm_scorer(lrm), GuidanceConfig(2), settings)
    assert torch.equal(again.final_latents, result.final_latents)


# --------------------------------------------------------------------------- best of K final images


def test_best_of_k_final_keeps_the_preferred_of_k_plain_images(world):
    settings = SamplerSettings(STEPS, 5.0, batch_size=4)
    k = 3

    def by_mean(prompts):  # prefers the final latent with the largest mean
        return lambda candidates, t: candidates.float().mean(dim=(2, 3, 4))

    result = best_of_k_final(world, PROMPTS, SEEDS, k, by_mean, settings)
    # independently: the K plain images of each prompt, from the documented seeds
    for i, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
        seeds = best_of_k_seeds(seed, k)
        assert seeds[0] == seed and len(set(seeds)) == k
        plain = plain_generate(world, [prompt] * k, seeds, settings).final_latents
        best = int(plain.mean(dim=(1, 2, 3)).argmax())
        assert result.choices[i].item() == best
        assert torch.allclose(result.final_latents[i], plain[best], atol=1e-5)
    assert result.counts.per_image() == {"unet_calls": k * STEPS, "unet_passes": 2 * k * STEPS, "lrm_calls": k}
    finals, _ = final_candidates(world, PROMPTS, SEEDS, k, settings)
    assert torch.allclose(finals[:, 0], plain_generate(world, PROMPTS, SEEDS, settings).final_latents, atol=1e-5)


def test_best_of_k_final_with_the_lrm_scores_at_t0(world, world_lrm):
    seen = []

    def spy(prompts):
        inner = LRMCandidateScorer(world_lrm, prompts)

        def score(candidates, t):
            seen.append(t.clone())
            return inner(candidates, t)

        return score

    result = best_of_k_final(world, PROMPTS, SEEDS, 2, spy, SamplerSettings(STEPS, 5.0))
    assert all(bool((t == 0).all()) for t in seen)
    assert torch.equal(result.choices, result.scores.argmax(dim=1))


# --------------------------------------------------------------------------- CLI


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = result.output.strip()
    assert text.startswith("error:") and "\n" not in text, text
    for needle in needles:
        assert needle in text


@pytest.fixture(scope="module")
def saved_world_lrm(world, tmp_path_factory):
    return save_lrm(LatentRewardModel.from_components(world), tmp_path_factory.mktemp("lrm") / "world-lrm")


def test_cli_guided_sample_errors_are_one_line(tiny_world_dir, sd15, saved_world_lrm, tmp_path):
    base = ["sample", tiny_world_dir, "--num-prompts", 2, "--steps", 2, "--out", tmp_path / "g.png", "--device", "cpu"]
    _one_line_error(_invoke(*base, "--guide", "lrm"), "--lrm")
    _one_line_error(_invoke(*base, "--guide", "lrm", "--lrm", saved_world_lrm, "--candidates", 1), "--candidates 1")
    _one_line_error(_invoke(*base, "--guide", "lrm", "--lrm", saved_world_lrm, "--eta", 0), "eta")
    _one_line_error(_invoke(*base, "--guide", "pixel", "--lrm", saved_world_lrm), "pixel")
    _one_line_error(_invoke(*base, "--lrm", saved_world_lrm), "--guide lrm")
    _one_line_error(_invoke(*base, "--guide", "lrm", "--lrm", saved_world_lrm, "--select", "median"), "median")
    other = save_lrm(LatentRewardModel.from_components(sd15), tmp_path / "sd15-lrm")
    _one_line_error(_invoke(*base, "--guide", "lrm", "--lrm", other), "trained for base model")
    assert not (tmp_path / "g.png").exists()


def test_cli_guided_sample_writes_a_grid(tiny_world_dir, saved_world_lrm, tmp_path):
    out = tmp_path / "guided.png"
    r = _invoke(
        "sample", tiny_world_dir, "--num-prompts", 2, "--steps", 2, "--out", out, "--device", "cpu",
        "--guide", "lrm", "--lrm", saved_world_lrm, "--candidates", 2, "--select", "softmax", "--temperature", 0.5,
    )
    assert r.exit_code == 0, r.output
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 U-Net calls" in r.output and "4 LRM calls" in r.output


def test_world_guided_eval_writes_paired_results(tiny_world_dir, saved_world_lrm, tmp_path):
    out = tmp_path / "guided-eval.json"
    r = _invoke(
        "world", "guided-eval", "--lrm", saved_world_lrm, "--model", tiny_world_dir, "--num-prompts", 3, "--seeds", 2,
        "--candidates", 2, "--steps", 2, "--out", out, "--device", "cpu",
        "--methods", "plain,guided-best,guided-softmax,guided-random,guided-worst,best-of-k-lrm,best-of-k-judge",
    )
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    methods = result["methods"]
    assert result["n_prompts"] == 3 and result["n_images"] == 6
    assert methods["plain"]["unet_calls_per_image"] == 2 and methods["plain"]["lrm_calls_per_image"] == 0
    assert methods["guided-best"]["unet_calls_per_image"] == 2 and methods["guided-best"]["lrm_calls_per_image"] == 4
    assert methods["best-of-k-lrm"]["unet_calls_per_image"] == 4 and methods["best-of-k-lrm"]["lrm_calls_per_image"] == 2
    # the judge-picked best of K is, image by image, at least as good as the plain image (one of its K)
    rows = {(r["method"], r["prompt"], r["index"]): r for r in result["per_image"]}
    for (method, prompt, index), row in rows.items():
        if method == "best-of-k-judge":
            assert row["utility"] >= rows[("plain", prompt, index)]["utility"] - 1e-12
    # a paired difference is the difference of the means (balanced design) and has an SE over 3 prompts
    diff = result["differences"]["guided-best - plain"]["utility"]
    assert diff["mean"] == pytest.approx(methods["guided-best"]["utility"] - methods["plain"]["utility"], abs=1e-12)
    assert diff["n_prompts"] == 3 and diff["se"] >= 0
    assert "guided-worst - guided-random" in result["differences"]
    assert "guided-best" in r.output and "best-of-k-judge" in r.output


def test_paired_difference_se_is_over_prompts():
    from lpo.world.guided_eval import paired_difference

    a = np.array([1.0, 3.0, 2.0, 2.0, 0.0, 1.0])
    b = np.zeros(6)
    ids = np.array([0, 0, 1, 1, 2, 2])
    stats = paired_difference(a, b, ids)
    per_prompt = np.array([2.0, 2.0, 0.5])
    assert stats["mean"] == pytest.approx(per_prompt.mean())
    assert stats["se"] == pytest.approx(per_prompt.std(ddof=1) / np.sqrt(3))
