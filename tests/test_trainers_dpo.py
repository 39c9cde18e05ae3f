"""Diffusion-DPO specifics (SPEC §5.3): one t and one ε per pair, caption dropout, flips, the
LoRA variant's label, the implicit accuracy in the logs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lpo.models.components import encode_prompts, load_components
from lpo.pairs.format import PreferencePair
from lpo.trainers.diffusion_dpo import DiffusionDPOTrainer, draw_batch
from lpo.trainers.harness import build_policy
from lpo.trainers.jobs import resolve_config


def _pairs(n: int, identical: bool = False) -> list[PreferencePair]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        b = a.copy() if identical else rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        out.append(PreferencePair(f"p{i}", f"a red circle {i}", a, b, (1.0, 0.0)[i % 2], "test"))
    return out


def _trainer(world_dir, pairs, *overrides):
    config = resolve_config("diffusion-dpo", "dpo-world", [f"model.base={world_dir}", "train.batch_size=8", *overrides])
    components = load_components(world_dir)
    policy = build_policy(components.unet, config.policy, config.run.seed)
    return DiffusionDPOTrainer(config, components, policy, pairs)


def test_winner_and_loser_share_t_and_noise(tiny_world_dir):
    trainer = _trainer(tiny_world_dir, _pairs(8, identical=True), "data.random_flip=false")
    draws = draw_batch(trainer.config, 8, 0, (4, 8, 8), 1000)
    assert draws.timesteps.shape == (8,) and draws.noise.shape == (8, 4, 8, 8)  # one per pair
    # identical images and the same posterior noise for both sides: x_t differ only if t or ε did
    draws.posterior_noise[:, 1] = draws.posterior_noise[:, 0]
    x_t, _, timesteps, target = trainer._encode(draws, torch.arange(8))
    x_t_w, x_t_l = x_t.chunk(2)
    assert torch.equal(x_t_w, x_t_l) and torch.equal(timesteps, draws.timesteps.repeat(2))
    assert torch.equal(target[:, 0], draws.noise) and torch.equal(target[:, 1], draws.noise)  # ε-prediction target
    # x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε with x0 = (posterior mean + std·z)·scale of the winner image
    from lpo.reward.data import image_to_tensor

    vae = trainer.components.vae
    with torch.no_grad():
        pixels = torch.stack([image_to_tensor(trainer.pairs[int(i)].winner, 32) for i in draws.pair_rows])
        posterior = vae.encode(pixels).latent_dist
    x0 = (posterior.mean + posterior.std * draws.posterior_noise[:, 0]) * vae.config.scaling_factor
    alpha = trainer.components.scheduler.alphas_cumprod[draws.timesteps].view(-1, 1, 1, 1)
    assert torch.allclose(x_t_w, alpha.sqrt() * x0 + (1 - alpha).sqrt() * draws.noise, atol=1e-5)


def test_caption_dropout_and_flips_follow_their_rates(tiny_world_dir):
    config = resolve_config("diffusion-dpo", "dpo-world", ["train.batch_size=64"])
    drops, flips = [], []
    for step in range(40):
        draws = draw_batch(config, 100, step, (4, 8, 8), 1000)
        drops.append(draws.drop_caption.float().mean())
        flips.append(draws.flips.float())
    assert float(torch.stack(drops).mean()) == pytest.approx(0.2, abs=0.03)
    flips = torch.cat(flips)
    assert float(flips.mean()) == pytest.approx(0.5, abs=0.03)
    assert float((flips[:, 0] == flips[:, 1]).float().mean()) == pytest.approx(0.5, abs=0.05)  # independent per image
    assert torch.equal(draw_batch(config, 100, 3, (4, 8, 8), 1000).noise, draw_batch(config, 100, 3, (4, 8, 8), 1000).noise)


def test_dropped_captions_are_encoded_as_empty(tiny_world_dir):
    trainer = _trainer(tiny_world_dir, _pairs(8), "data.caption_dropout=0.5")
    draws = draw_batch(trainer.config, 8, 0, (4, 8, 8), 1000)
    _, cond, _, _ = trainer._encode(draws, torch.arange(8))
    empty = encode_prompts(trainer.components, [""]).prompt_embeds[0]
    dropped = draws.drop_caption
    assert 0 < int(dropped.sum()) < 8
    for row in range(16):  # winners then losers: the same caption for both images of a pair
        assert torch.equal(cond.prompt_embeds[row], empty) == bool(dropped[row % 8])


@pytest.mark.parametrize("mode", ["fixed", "per-image"])
def test_sdxl_size_and_crop_conditioning_fixed_or_from_each_image(tiny_sdxl_dir, mode):
    from lpo.reward.data import sdxl_image_time_ids

    rng = np.random.default_rng(1)
    shapes = [((48, 32), (32, 32)), ((32, 56), (40, 40))]  # (winner (h, w), loser (h, w)) per pair
    pairs = [PreferencePair(f"p{i}", "a cat", rng.integers(0, 255, (*w, 3), dtype=np.uint8),
                            rng.integers(0, 255, (*l, 3), dtype=np.uint8), 1.0, "test")
             for i, (w, l) in enumerate(shapes)]
    config = resolve_config("diffusion-dpo", "dpo-sdxl", [f"model.base={tiny_sdxl_dir}", "train.batch_size=2",
                                                          "data.resolution=32", f"data.micro_conditioning={mode}",
                                                          "data.caption_dropout=0", "policy.mode=lora",
                                                          "optim.gradient_accumulation_steps=1", "model.vae=none",
                                                          "optim.mixed_precision=no", "optim.optimizer=adamw"])
    components = load_components(tiny_sdxl_dir)
    trainer = DiffusionDPOTrainer(config, components, build_policy(components.unet, config.policy, 0), pairs)
    side = 32 // components.vae_scale_factor
    draws = draw_batch(config, 2, 0, (components.latent_channels, side, side), 1000)
    _, cond, _, _ = trainer._encode(draws, torch.arange(2))
    got = cond.add_time_ids.tolist()
    if mode == "fixed":  # the official DiffusionDPO train.py: (R, R, 0, 0, R, R) for every image
        assert got == [[32, 32, 0, 0, 32, 32]] * 4
        return
    rows = [int(i) for i in draws.pair_rows]
    expected = [sdxl_image_time_ids(*shapes[r][side], 32, bool(draws.flips[k, side]))
                for side in (0, 1) for k, r in enumerate(rows)]  # winners first, then losers
    assert got == [list(e) for e in expected]
    # a 48 × 32 portrait resized to 48 × 32 keeps its size and is cropped 8 px from the top
    assert sdxl_image_time_ids(48, 32, 32) == (48, 32, 8, 0, 32, 32)
    # a 32 × 56 landscape: cropped 12 px from the left, mirrored by a flip of 56 − 32 − 12 = 12
    assert sdxl_image_time_ids(32, 56, 32) == (32, 56, 0, 12, 32, 32)
    assert sdxl_image_time_ids(32, 57, 32, flipped=True) == (32, 57, 0, 13, 32, 32)


def test_ties_are_skipped_and_the_lora_variant_is_labelled(tiny_world_dir):
    pairs = _pairs(6)
    pairs.append(PreferencePair("tie", "a tie", pairs[0].image_0, pairs[0].image_1, 0.5, "test"))
    trainer = _trainer(tiny_world_dir, pairs, "policy.mode=lora")
    assert len(trainer.pairs) == 6 and trainer.num_ties == 1
    assert trainer.label == "diffusion-dpo-lora" and trainer.plan().num_ties_skipped == 1
    assert resolve_config("diffusion-dpo", "dpo-world", []).label == "diffusion-dpo"


def test_a_short_run_logs_loss_and_implicit_accuracy(tiny_world_dir, tmp_path):
    from lpo.pairs.format import save_pairs
    from lpo.core.runs import RunFolder
    from lpo.trainers.jobs import run_training

    save_pairs(_pairs(16), tmp_path / "pairs.parquet")
    result = run_training("diffusion-dpo", "dpo-world", [
        f"model.base={tiny_world_dir}", f"data.pairs={tmp_path / 'pairs.parquet'}", "train.max_steps=3",
        "train.batch_size=8", "optim.gradient_accumulation_steps=2", "optim.warmup_steps=0", "run.log_every=1",
        "policy.mode=lora", "optim.lr=1e-3",
    ], run_dir=tmp_path / "run")
    assert [row["step"] for row in result.history] == [1, 2, 3]
    for row in result.history:
        assert 0 <= row["implicit_accuracy"] <= 1 and np.isfinite(row["loss"])
    assert result.history[0]["implicit_accuracy"] == 0.0 and result.history[0]["inside"] == 0.0  # θ = ref at step 1
    assert result.history[-1]["inside"] != 0.0
    assert RunFolder.open(tmp_path / "run").read_run()["label"] == "diffusion-dpo-lora"
    assert (result.model_folder / "pytorch_lora_weights.safetensors").is_file()
