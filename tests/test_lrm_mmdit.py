"""The LRM on an MMDiT: features are the transformer's own block-N tokens; it trains without touching the policy."""

from __future__ import annotations

import pytest
import torch

from lpo.models.flow_components import load_flow_components
from lpo.reward.lrm_mmdit import MMDiTLatentRewardModel, MMDiTLRMConfig
from lpo.sampling.flow import flow_noisy_latents
from tiny_flow_models import T5_LENGTH, tiny_sd3_pipeline

PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    return load_flow_components(tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3") / "pipe"))


def test_image_feature_is_the_transformers_block_n_output(components):
    lrm = MMDiTLatentRewardModel.from_components(components, MMDiTLRMConfig(num_blocks=1, max_sequence_length=T5_LENGTH))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([900.0, 250.0])
    text = lrm.encode_text(PROMPTS)
    captured = {}
    hook = components.transformer.transformer_blocks[0].register_forward_hook(
        lambda module, args, out: captured.setdefault("tokens", out[1]))
    with torch.no_grad():
        components.transformer(hidden_states=latents, timestep=timesteps, encoder_hidden_states=text.cond.prompt_embeds,
                               pooled_projections=text.cond.pooled)
        feature = lrm.image_feature(latents, timesteps, text)
    hook.remove()
    torch.testing.assert_close(feature, captured["tokens"].float().mean(dim=1))
    scores = lrm(latents, timesteps, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert float(scores.detach().abs().max()) <= float(lrm.logit_scale.detach().exp()) + 1e-5


def test_training_the_lrm_leaves_the_policy_and_vfe_mixes_the_empty_prompt(components):
    policy_before = {k: v.clone() for k, v in components.transformer.state_dict().items()}
    lrm = MMDiTLatentRewardModel.from_components(components, MMDiTLRMConfig(num_blocks=2, vfe_scale=3.0,
                                                                            max_sequence_length=T5_LENGTH))
    assert len(lrm.backbone.blocks) == 2
    optimizer = torch.optim.AdamW(lrm.parameters(), lr=1e-2)
    x0 = torch.randn(2, 4, 8, 8)
    noisy = flow_noisy_latents(x0, torch.randn_like(x0), torch.tensor([0.2, 0.8]))
    loss = -lrm(noisy, torch.tensor([200.0, 800.0]), PROMPTS).sum()
    loss.backward()
    assert lrm.visual_projection.weight.grad is not None and lrm.backbone.blocks[0].attn.to_q.weight.grad is not None
    assert lrm.text_encoder.text_model.embeddings.token_embedding.weight.grad is not None
    optimizer.step()
    for key, value in components.transformer.state_dict().items():
        torch.testing.assert_close(value, policy_before[key])
    text = lrm.encode_text(PROMPTS)
    assert text.uncond is not None and text.repeat_interleave(3).batch_size == 6
    with pytest.raises(ValueError, match="num_blocks is 5 but the transformer has 2"):
        MMDiTLatentRewardModel.from_components(components, MMDiTLRMConfig(num_blocks=5))


def test_flow_noising_is_the_flow_path():
    x0, noise = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    out = flow_noisy_latents(x0, noise, torch.tensor([0.0, 0.25]))
    assert out[0].eq(1).all() and torch.allclose(out[1], torch.full((1, 2, 2), 0.75))


def test_the_mmdit_lrm_trains_and_is_evaluated_through_the_reward_training_loop(components):
    """The same train_step_reward / accuracy-by-t as the U-Net LRM, on the flow path (t = σ·1000)."""
    import numpy as np

    from lpo.pairs.format import PreferencePair
    from lpo.reward.config import RewardTrainingConfig
    from lpo.reward.data import encode_pairs, noise_pairs, timestep_pool
    from lpo.reward.training import pairwise_accuracy_by_timestep, train_step_reward

    rng = np.random.default_rng(0)
    pairs = [PreferencePair(f"p{i}", PROMPTS[i % 2], rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                            rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), float(i % 2), "test") for i in range(8)]
    pool = timestep_pool(components.scheduler, "ddim", 4)
    assert pool.dtype == torch.float32 and float(pool.max()) == pytest.approx(1000.0) and float(pool.min()) < 1000
    encoded = encode_pairs(components, pairs)
    batch = noise_pairs(encoded, torch.arange(2), components.scheduler, torch.Generator().manual_seed(0),
                        timesteps=torch.tensor(250.0))
    expected = flow_noisy_latents(batch.latents_0, batch.noise_0, torch.full((2,), 0.25))
    torch.testing.assert_close(batch.latents_t_0, expected)  # the flow path, not DDPM's add_noise

    lrm = MMDiTLatentRewardModel.from_components(components, MMDiTLRMConfig(num_blocks=1, max_sequence_length=T5_LENGTH))
    for likelihood in ("bradley_terry", "thurstone"):
        config = RewardTrainingConfig(lr=1e-3, warmup_steps=0, max_steps=3, batch_size=4, mixed_precision="no",
                                      num_inference_steps=4, save_every=0, eval_every=0, log_every=1, likelihood=likelihood)
        result = train_step_reward(lrm, components, pairs, config)
        assert len(result.history) == 3 and all(np.isfinite(r["loss"]) for r in result.history)
    accuracy = pairwise_accuracy_by_timestep(lrm.eval(), components, encoded, (100, 900), seed=0)
    assert set(accuracy) == {100, 900} and all(0 <= a <= 1 for a, _ in accuracy.values())


def test_lpo_lrm_train_and_eval_on_a_flow_pipeline(tmp_path):
    """The CLI path: `lpo lrm train` builds the MMDiT LRM for an SD3 folder, saves it, `lpo lrm eval` loads it."""
    import numpy as np

    from lpo.pairs.format import PreferencePair, save_pairs
    from lpo.reward.jobs import eval_reward_job, train_reward_job
    from lpo.reward.lrm_mmdit_io import is_mmdit_lrm_folder, load_mmdit_lrm

    pipe = tiny_sd3_pipeline(tmp_path / "sd3")
    rng = np.random.default_rng(1)
    pairs = [PreferencePair(f"p{i}", PROMPTS[i % 2], rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                            rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), float(i % 2), "test") for i in range(8)]
    save_pairs(pairs, tmp_path / "pairs.parquet")
    overrides = ["max_steps=2", "batch_size=4", "warmup_steps=0", "mixed_precision=no", "save_every=0", "eval_every=0",
                 "vfe_scale=1.0", "mmdit_blocks=1"]
    train_reward_job(str(pipe), str(tmp_path / "pairs.parquet"), "lrm-world", overrides, run_dir=tmp_path / "run")
    folder = tmp_path / "run" / "model"
    assert is_mmdit_lrm_folder(folder)
    lrm = load_mmdit_lrm(folder)
    assert lrm.config.num_blocks == 1 and len(lrm.backbone.blocks) == 1
    result = eval_reward_job(str(pipe), str(tmp_path / "pairs.parquet"), tmp_path / "eval", lrm_dir=folder)
    assert set(result["accuracy"]) == {"LRM (latent)"}


def test_the_film_head_on_an_mmdit_starts_as_the_plain_one_and_round_trips(components, tmp_path):
    from lpo.reward.lrm_mmdit_io import load_mmdit_lrm, save_mmdit_lrm

    config = MMDiTLRMConfig(num_blocks=1, max_sequence_length=T5_LENGTH)
    torch.manual_seed(0)
    plain = MMDiTLatentRewardModel.from_components(components, config)
    torch.manual_seed(0)
    film = MMDiTLatentRewardModel.from_components(components, MMDiTLRMConfig(**{**config.__dict__, "head": "film"}))
    film.load_state_dict(plain.state_dict(), strict=False)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(film(latents, 500.0, PROMPTS), plain(latents, 500.0, PROMPTS), rtol=0, atol=0)
        film.feature_film.linear.weight.normal_(std=0.5)
        expected = film(latents, 500.0, PROMPTS)
        assert not torch.allclose(expected, plain(latents, 500.0, PROMPTS))
    loaded = load_mmdit_lrm(save_mmdit_lrm(film, tmp_path / "film"), components)
    with torch.no_grad():
        assert torch.equal(loaded(latents, 500.0, PROMPTS), expected)
