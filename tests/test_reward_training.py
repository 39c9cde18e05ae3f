"""lpo.reward.training: the step reward model training loop (SPEC §4.1 data, loss, optimisation).

Runs on the shipped world model (lpo.sampling.generate.resolve_model_name("world")): its VAE
separates colours, so an LRM learns "the image in the prompt's colour wins" in a few steps. The tiny
test pipeline's VAE (4 training steps) does not: its posterior noise swamps the colour.
Expectations are computed independently of the code under test (the noising formula from
ᾱ, the soft-label cross-entropy from log-sigmoids, the DDIM set as range(1, 1000, 50)).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lpo.core.config import apply_overrides
from lpo.core.errors import LpoError
from lpo.reward.lrm import LatentRewardModel, LRMConfig
from lpo.reward.lrm_io import load_lrm, save_lrm
from lpo.pairs.format import PreferencePair
from lpo.reward.config import REWARD_TRAINING_PRESETS, RewardTrainingConfig, reward_training_preset
from lpo.core.seeding import keyed_generator, pair_indices
from lpo.reward.data import EncodedPairs, encode_pairs, image_to_tensor, loss_weights, noise_pairs, timestep_pool
from lpo.reward.training import StepRewardModel, pairwise_accuracy_by_timestep, preference_loss, train_step_reward
from lpo.core.runs import RunFolder, read_cost

DDIM_20 = list(range(1, 1000, 50))  # {1, 51, …, 951}: SD's "leading" spacing with offset 1
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def world():
    from lpo.sampling.generate import resolve_model_name
    from lpo.models.components import load_components

    return load_components(resolve_model_name("world"))


def _image(rgb: tuple[int, int, int], rng: np.random.Generator, size: int = 32) -> np.ndarray:
    pixels = np.array(rgb, dtype=float)[None, None, :] + rng.normal(0, 25, (size, size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _red_blue_pairs(n: int, seed: int = 0, prefix: str = "p") -> list[PreferencePair]:
    """Reddish images beat bluish ones; the winner alternates between image_0 and image_1."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        red, blue = _image((200, 40, 40), rng), _image((40, 40, 200), rng)
        if i % 2:
            pairs.append(PreferencePair(f"{prefix}{i}", PROMPT, red, blue, 1.0, "test"))
        else:
            pairs.append(PreferencePair(f"{prefix}{i}", PROMPT, blue, red, 0.0, "test"))
    return pairs


def _colour_matches_prompt_pairs(n: int, seed: int = 0, prefix: str = "c") -> list[PreferencePair]:
    """"a red circle" prefers the reddish image, "a blue circle" the bluish one: learnable only
    by a model that reads each latent together with ITS prompt."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        red, blue = _image((200, 40, 40), rng), _image((40, 40, 200), rng)
        prompt = "a red circle" if i % 4 < 2 else "a blue circle"
        image_0, image_1 = (red, blue) if i % 2 else (blue, red)
        label_0 = float((prompt == "a red circle") == (i % 2 == 1))
        pairs.append(PreferencePair(f"{prefix}{i}", prompt, image_0, image_1, label_0, "test"))
    return pairs


@pytest.fixture(scope="module")
def train_pairs() -> list[PreferencePair]:
    return _red_blue_pairs(32)


@pytest.fixture(scope="module")
def encoded(world, train_pairs) -> EncodedPairs:
    return encode_pairs(world, train_pairs[:8])


def _lrm(world, seed: int = 0) -> LatentRewardModel:
    torch.manual_seed(seed)
    return LatentRewardModel.from_components(world, LRMConfig(vfe_scale=1.0))  # one U-Net pass: faster


def _config(**values) -> RewardTrainingConfig:
    base = dict(lr=1e-3, warmup_steps=0, max_steps=6, batch_size=8, mixed_precision="no", log_every=1,
                save_every=0, eval_every=0)
    return RewardTrainingConfig(**{**base, **values})


# --------------------------------------------------------------------------- data


def test_timestep_pool_is_the_20_ddim_timesteps(world):
    assert timestep_pool(world.scheduler, "ddim", 20).tolist() == DDIM_20
    assert timestep_pool(world.scheduler, "uniform").tolist() == list(range(1000))


def test_encoding_keeps_the_vae_posterior_of_both_images(world, train_pairs, encoded):
    pair = train_pairs[1]
    assert encoded.mean.shape == encoded.std.shape == (8, 2, 4, 8, 8)
    with torch.no_grad():
        pixels = torch.from_numpy(np.stack([pair.image_0, pair.image_1])).permute(0, 3, 1, 2).float() / 127.5 - 1
        posterior = world.vae.encode(pixels).latent_dist
    # (encoded in a batch of 16 images here: batch-size-dependent rounding only)
    torch.testing.assert_close(encoded.mean[1], posterior.mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(encoded.std[1], posterior.std, atol=1e-4, rtol=1e-4)
    assert encoded.scaling_factor == world.vae.config.scaling_factor
    assert encoded.labels_0.tolist() == [0.0, 1.0] * 4


def test_same_t_for_winner_and_loser_independent_noise(world, encoded):
    pool = timestep_pool(world.scheduler, "ddim", 20)
    batch = noise_pairs(encoded, torch.arange(8), world.scheduler, keyed_generator(0, 0), pool=pool)

    assert batch.timesteps.shape == (8,)
    assert set(batch.timesteps.tolist()) <= set(DDIM_20)
    assert not torch.equal(batch.noise_0, batch.noise_1)
    assert not torch.equal(batch.latents_t_0, batch.latents_t_1)
    # x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε, with ONE t per pair used for both images
    alpha_bar = world.scheduler.alphas_cumprod[batch.timesteps].reshape(-1, 1, 1, 1)
    for clean, noise, noisy in ((batch.latents_0, batch.noise_0, batch.latents_t_0),
                                (batch.latents_1, batch.noise_1, batch.latents_t_1)):
        torch.testing.assert_close(noisy, alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise)
    # the noises are uncorrelated standard normals
    corr = torch.corrcoef(torch.stack([batch.noise_0.flatten(), batch.noise_1.flatten()]))[0, 1]
    assert abs(float(corr)) < 0.15
    # x_0 is a posterior SAMPLE × scaling factor: standardised, it is N(0, 1) noise
    z = (batch.latents_0 / encoded.scaling_factor - encoded.mean[:, 0]) / encoded.std[:, 0]
    assert 0.8 < float(z.std()) < 1.2 and float(z.abs().max()) < 6
    # SPO's variant shares one noise per pair
    shared = noise_pairs(encoded, torch.arange(8), world.scheduler, keyed_generator(0, 0), pool=pool, noise="shared")
    assert torch.equal(shared.noise_0, shared.noise_1)


def test_t_is_uniform_over_the_ddim_set(world, encoded):
    pool = timestep_pool(world.scheduler, "ddim", 20)
    draws = torch.cat([
        noise_pairs(encoded, torch.arange(8), world.scheduler, keyed_generator(1, 0, k), pool=pool).timesteps
        for k in range(250)
    ])
    counts = torch.bincount(draws, minlength=1000)[DDIM_20]
    assert int(counts.sum()) == len(draws) == 2000  # nothing outside the set
    assert int(counts.min()) > 60 and int(counts.max()) < 140  # expected 100 each


def test_pair_stream_visits_every_pair_once_per_epoch():
    first_epoch = pair_indices(10, 0, 10, seed=3)
    assert sorted(first_epoch.tolist()) == list(range(10))
    # position p always names the same pair, however the stream is cut
    torch.testing.assert_close(pair_indices(10, 4, 12, seed=3), torch.cat([pair_indices(10, 4, 6, 3), pair_indices(10, 10, 6, 3)]))


def test_images_of_another_size_are_resized_and_bad_images_fail():
    rng = np.random.default_rng(0)
    tensor = image_to_tensor(_image((255, 0, 0), rng, size=48)[:, :40], 32)
    assert tensor.shape == (3, 32, 32)
    assert -1.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
    assert float(tensor[0].mean()) > 0.8  # still red
    with pytest.raises(LpoError, match="float32 array of shape \\(32, 32, 3\\)"):
        image_to_tensor(np.zeros((32, 32, 3), dtype=np.float32), 32, "image_0 of pair x")


def test_a_tie_gets_soft_labels(world, train_pairs):
    tie = PreferencePair("tie", PROMPT, train_pairs[0].image_0, train_pairs[0].image_1, 0.5, "test")
    assert encode_pairs(world, [tie]).labels_0.tolist() == [0.5]
    # a tie's targets are (0.5, 0.5): no gradient when the two scores agree
    scores_0 = torch.tensor([1.3], requires_grad=True)
    scores_1 = torch.tensor([1.3], requires_grad=True)
    out = preference_loss(scores_0, scores_1, torch.tensor([0.5]))
    out.loss.backward()
    assert float(out.loss.detach()) == pytest.approx(math.log(2))
    assert float(scores_0.grad) == pytest.approx(0.0, abs=1e-7)
    assert not bool(out.decisive[0])


def test_loss_is_the_soft_label_cross_entropy():
    scores_0 = torch.tensor([2.0, -1.0, 0.3, 0.7, 1.1])
    scores_1 = torch.tensor([0.5, 0.5, 0.3, 1.9, 1.1])
    labels_0 = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0])
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 0.5])
    out = preference_loss(scores_0, scores_1, labels_0, weights)

    # Bradley–Terry: −[y·log σ(S_0 − S_1) + (1 − y)·log σ(S_1 − S_0)]
    margin = scores_0 - scores_1
    expected_ce = -(labels_0 * torch.nn.functional.logsigmoid(margin) + (1 - labels_0) * torch.nn.functional.logsigmoid(-margin))
    torch.testing.assert_close(out.ce, expected_ce)
    torch.testing.assert_close(out.loss, (weights * expected_ce).mean())
    torch.testing.assert_close(preference_loss(scores_0, scores_1, labels_0).loss, expected_ce.mean())
    # accuracy on decisive pairs only: right, right, (tie), wrong, equal scores = half
    assert out.decisive.tolist() == [True, True, False, True, True]
    assert out.accuracy == pytest.approx((1 + 1 + 0 + 0.5) / 4)


def test_loss_weights(world, train_pairs):
    pairs = [*train_pairs[:3], PreferencePair("other", "a blue square", train_pairs[0].image_0, train_pairs[0].image_1, 1.0, "t", weight=3.0)]
    enc = encode_pairs(world, pairs)
    assert loss_weights(enc, "none").tolist() == [1.0] * 4
    torch.testing.assert_close(loss_weights(enc, "pair"), torch.tensor([1.0, 1.0, 1.0, 3.0]) * 4 / 6)
    # per prompt: three pairs share PROMPT, one has its own: 1/3, 1/3, 1/3, 1 → mean 1
    torch.testing.assert_close(loss_weights(enc, "per_prompt"), torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0]) * 2)


# --------------------------------------------------------------------------- config


def test_presets_validate_and_carry_the_papers_values():
    assert set(REWARD_TRAINING_PRESETS) >= {"lrm-sd15", "lrm-sdxl", "lrm-world", "spo-pixel-sd15", "spo-pixel-sdxl", "spo-pixel-world"}
    for name, preset in REWARD_TRAINING_PRESETS.items():
        assert preset.preset == name
        assert RewardTrainingConfig(**{f: getattr(preset, f) for f in preset.__dataclass_fields__}) == preset
    sd15 = reward_training_preset("lrm-sd15")
    assert (sd15.lr, sd15.weight_decay, sd15.grad_clip, sd15.mixed_precision) == (1e-5, 0.3, 1.0, "bf16")
    assert (sd15.max_steps, sd15.batch_size, sd15.lr_scheduler) == (4000, 128, "linear")
    assert (sd15.timestep_sampling, sd15.num_inference_steps, sd15.noise, sd15.vfe_scale) == ("ddim", 20, "independent", 7.5)
    sdxl = reward_training_preset("lrm-sdxl")
    assert (sdxl.max_steps, sdxl.batch_size) == (8000, 32)
    spo = reward_training_preset("spo-pixel-sd15")
    assert (spo.lr, spo.weight_decay, spo.max_steps, spo.noise) == (3e-6, 0.3, 8000, "shared")
    assert reward_training_preset("lrm-world").mixed_precision == "no"
    reward_training_preset("lrm-sd15").lr = 1.0  # a copy: the table is untouched
    assert REWARD_TRAINING_PRESETS["lrm-sd15"].lr == 1e-5
    with pytest.raises(LpoError, match="lrm-sd15"):
        reward_training_preset("lrm-sd14")
    assert "learning rate" in RewardTrainingConfig.help()["lr"]


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(lr=-1e-5), "lr must be a finite number > 0, got -1e-05"),
        (dict(batch_size=10, gradient_accumulation_steps=4), "batch_size 10 is not divisible by gradient_accumulation_steps 4"),
        (dict(warmup_steps=600, max_steps=500), "warmup_steps \\(600\\) must not exceed max_steps \\(500\\)"),
        (dict(mixed_precision="fp8"), "mixed_precision must be one of no, fp16, bf16, got 'fp8'"),
        (dict(eval_fraction=1.5), "eval_fraction must be in \\[0, 1\\), got 1.5"),
        (dict(adam_beta2=1.0), "adam_beta2 must be in \\[0, 1\\), got 1.0"),
        (dict(grad_clip=0.0), "grad_clip must be a positive number or none, got 0.0"),
        (dict(vfe_scale=0.5), "vfe_scale must be a finite number >= 1"),
        (dict(timestep_sampling="ddpm"), "timestep_sampling must be one of ddim, uniform"),
        (dict(max_steps=0), "max_steps must be >= 1, got 0"),
    ],
)
def test_bad_values_raise_with_the_numbers(values, message):
    with pytest.raises(ValueError, match=message):
        RewardTrainingConfig(**values)


def test_overrides_are_type_checked():
    config = apply_overrides(
        reward_training_preset("lrm-world"),
        ["lr=3e-4", "grad_clip=none", "eval_timesteps=1,501", "mixed_precision=bf16", "noise=shared"],
    )
    assert (config.lr, config.grad_clip, config.eval_timesteps) == (3e-4, None, (1, 501))
    assert (config.mixed_precision, config.noise, config.preset) == ("bf16", "shared", "lrm-world")
    with pytest.raises(LpoError, match="batch_size must be >= 1, got 0"):
        apply_overrides(config, ["batch_size=0"])
    with pytest.raises(LpoError, match="unknown config key 'learning_rate'"):
        apply_overrides(config, ["learning_rate=1"])
    with pytest.raises(LpoError, match="mixed_precision must be one of"):
        apply_overrides(config, ["mixed_precision=fp8"])


# --------------------------------------------------------------------------- training


def test_training_learns_the_preference_and_leaves_the_vae_alone(world, tmp_path):
    model = _lrm(world)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    vae_before = {n: p.detach().clone() for n, p in world.vae.named_parameters()}
    unet_before = {n: p.detach().clone() for n, p in world.unet.named_parameters()}
    config = _config(max_steps=24, batch_size=16, lr_scheduler="constant", log_every=4)
    run = RunFolder.create(config, name="lrm", root=tmp_path)
    calls = []

    pairs = _colour_matches_prompt_pairs(32)
    result = train_step_reward(model, world, pairs, config, run, save_model=save_lrm,
                               progress=lambda *args: calls.append(args))

    losses = [row["loss"] for row in result.history]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[0] > 0.5 and np.mean(losses[3:]) < 0.6 * losses[0]  # measured: ≈ 0.6–0.7, then ≈ 0.15–0.25
    assert result.final_accuracy >= 0.75
    assert [c[1] for c in calls] == list(range(1, 25)) and calls[-1][2] == 24
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert {"logit_scale", "visual_projection.weight", "text_projection.weight"} <= set(changed)
    assert any(n.startswith("unet.") for n in changed) and any(n.startswith("text_encoder.") for n in changed)
    for name, value in world.vae.named_parameters():  # frozen: never updated, never given gradients
        assert torch.equal(value, vae_before[name]) and value.grad is None
    for name, value in world.unet.named_parameters():  # the LRM trains its own copy
        assert torch.equal(value, unet_before[name])

    # the final model, its cost, the metrics
    loaded = load_lrm(result.model_folder, world)
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[name])
    cost = read_cost(result.model_folder)
    assert cost == json.loads(run.cost_path.read_text()) == result.cost
    assert cost["device_type"] == "cpu" and cost["device_count"] == 1
    assert cost["seconds"]["reward_model_training"] > 0
    assert len((run.path / "metrics.jsonl").read_text().splitlines()) == 6
    # held-out accuracy by t: new pairs, fixed t, the same noise for every t
    held_out = _colour_matches_prompt_pairs(12, seed=1, prefix="h")
    table = pairwise_accuracy_by_timestep(model, world, held_out, [1, 501, 951], batch_size=8, seed=0)
    assert list(table) == [1, 501, 951] and all(n == 12 for _, n in table.values())
    assert table[1][0] >= 0.9
    assert table == pairwise_accuracy_by_timestep(model, world, encode_pairs(world, held_out), [1, 501, 951], 8, 0)


def test_accuracy_by_timestep_counts_decisive_pairs_only(world, train_pairs):
    tie = PreferencePair("tie", PROMPT, train_pairs[0].image_0, train_pairs[0].image_1, 0.5, "test")
    table = pairwise_accuracy_by_timestep(_lrm(world), world, [*train_pairs[:3], tie], [51], batch_size=2)
    assert table[51][1] == 3
    with pytest.raises(LpoError, match="ties"):
        pairwise_accuracy_by_timestep(_lrm(world), world, [tie], [51])
    with pytest.raises(LpoError, match="\\[0, 999\\].*1000"):
        pairwise_accuracy_by_timestep(_lrm(world), world, train_pairs[:2], [1000])


class _LatentProbe(nn.Module):
    """A non-LRM step reward: a linear read-out of the pooled latents (ignores the prompt and t)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4, 1))

    def forward(self, latents_t, timesteps, prompts):
        return (latents_t.float().mean(dim=(2, 3)) @ self.weight).squeeze(-1)


def test_the_loop_is_generic_over_step_reward_models(world, train_pairs):
    probe = _LatentProbe()
    assert isinstance(probe, StepRewardModel)
    config = _config(max_steps=20, batch_size=16, lr=0.05, lr_scheduler="constant", log_every=5, noise="shared",
                     eval_every=10, eval_timesteps=(1, 951))
    result = train_step_reward(probe, world, train_pairs[:24], config, eval_pairs=_red_blue_pairs(8, seed=2, prefix="e"))
    assert result.steps == 20 and result.run_folder is None and result.model_folder is None
    assert [row["step"] for row in result.eval_history] == [10, 20]
    assert result.final_eval[1][0] == 1.0 and result.final_eval[1][1] == 8
    with pytest.raises(LpoError, match="not both"):
        train_step_reward(probe, world, train_pairs, _config(eval_fraction=0.2), eval_pairs=train_pairs[:2])


def test_gradient_accumulation_sees_the_same_batch(world, train_pairs):
    whole = train_step_reward(_lrm(world), world, train_pairs[:16], _config(max_steps=1))
    split = train_step_reward(_lrm(world), world, train_pairs[:16], _config(max_steps=1, gradient_accumulation_steps=2))
    assert split.plan.micro_batch_size == 4 and whole.plan.micro_batch_size == 8
    assert split.history[0]["loss"] == pytest.approx(whole.history[0]["loss"], rel=1e-5)
    assert split.history[0]["grad_norm"] == pytest.approx(whole.history[0]["grad_norm"], rel=1e-4)


class _Crash(Exception):
    pass


def test_resume_gives_the_weights_of_an_uninterrupted_run(world, train_pairs, tmp_path):
    config = _config(max_steps=6, save_every=3, warmup_steps=2)  # warmup + linear decay: the schedule must resume too
    pairs = train_pairs[:12]  # 8 pairs per step: epochs end mid-batch

    straight = _lrm(world)
    straight_run = RunFolder.create(config, name="straight", root=tmp_path)
    train_step_reward(straight, world, pairs, config, straight_run, save_model=save_lrm)

    def crash_in_step_4(stage, step, total, loss):
        if step == 4:  # after the checkpoint of step 3, with step 4's update already applied
            raise _Crash

    interrupted = _lrm(world)
    run = RunFolder.create(config, name="interrupted", root=tmp_path)
    with pytest.raises(_Crash):
        train_step_reward(interrupted, world, pairs, config, run, save_model=save_lrm, progress=crash_in_step_4)
    assert [p.name for p in (run.path / "checkpoints").iterdir()] == ["step-000003"]
    # the checkpoint's model/ loads, is finite and moved away from the initial weights (three updates)
    saved = load_lrm(run.path / "checkpoints" / "step-000003" / "model", world)
    assert all(torch.isfinite(p).all() for p in saved.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(saved.state_dict().values(), _lrm(world).state_dict().values()))
    cost_before = json.loads(run.cost_path.read_text())["seconds"]["reward_model_training"]

    resumed_model = _lrm(world, seed=1)  # other initial weights: everything must come from the checkpoint
    resumed_run = RunFolder.resume(run.path, config)
    result = train_step_reward(resumed_model, world, pairs, config, resumed_run, save_model=save_lrm, resume=True)

    assert result.resumed_from == 3 and result.steps == 6
    assert [row["step"] for row in result.history] == [1, 2, 3, 4, 5, 6]
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name
    assert result.cost["seconds"]["reward_model_training"] > cost_before  # the earlier part is still counted
    assert len(resumed_run.read_run()["resumes"]) == 1

    # a different config or other pairs cannot resume this run
    with pytest.raises(LpoError, match="lr: 0.001 -> 0.002"):
        train_step_reward(_lrm(world), world, pairs, _config(max_steps=6, save_every=3, warmup_steps=2, lr=2e-3), run,
                          resume=True)
    with pytest.raises(LpoError, match="other pairs"):
        train_step_reward(_lrm(world), world, train_pairs[:10], config, run, resume=True)


def test_a_new_lrm_does_not_depend_on_the_global_rng(world):
    import torch

    from lpo.reward.jobs import build_reward_model
    from lpo.reward.config import reward_training_preset

    config = reward_training_preset("lrm-world")
    weights = []
    for state in (1, 2):
        torch.manual_seed(state)  # whatever ran before in the process
        model, _ = build_reward_model(config, world)
        weights.append(model.visual_projection.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_accuracy_from_scores_counts_decisive_pairs_and_half_for_equal_scores():
    from lpo.reward.training import accuracy_from_scores

    scores_0 = torch.tensor([2.0, 0.0, 1.0, 5.0])
    scores_1 = torch.tensor([1.0, 1.0, 1.0, 0.0])
    labels_0 = torch.tensor([1.0, 1.0, 0.0, 0.5])  # right, wrong, equal scores (half), tie (not counted)
    assert accuracy_from_scores(scores_0, scores_1, labels_0) == (pytest.approx(1.5 / 3), 3)


def test_models_scored_together_share_x0_and_give_the_scores_of_scoring_each_alone(world, encoded):
    """lpo lrm eval scores the LRM, SPO's pixel model and the world's ceiling on one x_t per
    (batch, t), decoding x̂0 once for the last two: exactly the scores of scoring each alone."""
    from lpo.reward.pixel import PixelStepReward
    from lpo.reward.training import pair_scores_by_timestep, pair_scores_by_timestep_many
    from lpo.world.utility_reward import WorldUtilityOnX0

    torch.manual_seed(0)
    models = {"lrm": _lrm(world), "pixel": PixelStepReward.from_components(world), "ceiling": WorldUtilityOnX0(world)}
    assert models["pixel"].x0_key == models["ceiling"].x0_key  # same U-Net, VAE, CFG 5: one decode serves both
    subset = encoded  # 8 pairs: 3 batches of 3
    timesteps = [1, 501]
    decodes = {"n": 0}
    real = PixelStepReward.decode_x0

    def counting(self, x0):
        decodes["n"] += 1
        return real(self, x0)

    PixelStepReward.decode_x0 = counting
    try:
        together = pair_scores_by_timestep_many(models, world, subset, timesteps, batch_size=3, seed=3)
        shared_decodes = decodes["n"]
        alone = {name: pair_scores_by_timestep(m, world, subset, timesteps, batch_size=3, seed=3) for name, m in models.items()}
    finally:
        PixelStepReward.decode_x0 = real
    batches = -(-len(subset) // 3)
    assert shared_decodes == batches * len(timesteps)  # once per (batch, t), not once per model
    # the split path is the models' own forward
    unet = world.unet.config
    latents = torch.randn(4, unet.in_channels, unet.sample_size, unet.sample_size) * 0.5
    prompts = ["a red circle", "two blue squares"] * 2
    for name in ("pixel", "ceiling"):
        with torch.no_grad():
            split = models[name].score_decoded(models[name].decode_for_scoring(latents, 251, prompts), 251, prompts)
            assert torch.equal(split, models[name](latents, 251, prompts)), name
    for name in models:
        for t in timesteps:
            assert torch.equal(together[name][t][0], alone[name][t][0]) and torch.equal(together[name][t][1], alone[name][t][1]), (name, t)
