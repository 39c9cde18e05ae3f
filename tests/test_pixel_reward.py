"""SPO's step-aware preference model (SPEC §4.3) and the pixel step reward: lpo.reward.pixel and its
parts lpo.reward.pixel_scorer, lpo.reward.time_conditioning, lpo.reward.clip_preprocess and lpo.reward.pixel_io.

Real mode is exercised with a tiny random ``CLIPModel`` saved to a temporary folder with
its tokenizer and a ``CLIPImageProcessor`` config, loaded through the same
``from_pretrained`` path as PickScore. Checks are against independent computations: the
plain ``CLIPModel``'s own logits, ``CLIPImageProcessor`` on PIL images,
``DDIMScheduler.step`` on raw U-Net calls, and the VAE's own decode.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lpo.core.errors import LpoError
from lpo.models.components import DiffusionComponents, load_components
from lpo.reward.clip_preprocess import ImagePreprocessConfig, preprocess_images
from lpo.reward.pixel import PixelRewardConfig, PixelStepReward, predicted_original_sample
from lpo.reward.pixel_io import PIXEL_REWARD_CONFIG_NAME, PIXEL_REWARD_WEIGHTS_NAME, load_pixel_reward, save_pixel_reward
from lpo.reward.pixel_scorer import TimestepConditionedScorer, world_pixel_scorer
from lpo.sampling.ddim import ddim_step_with_logprob
from tiny_models import LATENT_SIZE, MAX_LENGTH, tiny_tokenizer

PROMPTS = ["a red cat on the left of a blue square", "two small green trees", "a photo of a dog"]
CLIP_IMAGE_SIZE = 30  # tiny SD1.5 images are 16×16: the resize upsamples, as 512 -> 224 downsamples for real



@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPModel folder with tokenizer and image processor config (PickScore's layout)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = tiny_tokenizer(folder)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=CLIP_IMAGE_SIZE,
            patch_size=6,
        ),
        projection_dim=24,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = {"shortest_edge": CLIP_IMAGE_SIZE}
    crop_size = {"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}
    CLIPImageProcessor(size=size, crop_size=crop_size).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd15(tiny_sd15_dir: Path) -> DiffusionComponents:
    return load_components(tiny_sd15_dir)


@pytest.fixture(scope="module")
def reward(sd15: DiffusionComponents, tiny_clip_dir: Path) -> PixelStepReward:
    """Real-mode path: a tiny random CLIP loaded like PickScore on the tiny SD1.5 pipeline."""
    return PixelStepReward.from_components(sd15, TimestepConditionedScorer.from_clip_pretrained(tiny_clip_dir))


def _latents(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 4, LATENT_SIZE, LATENT_SIZE, generator=torch.Generator().manual_seed(seed))


def _images(batch: int = 3, size: tuple[int, int] = (16, 16), seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _perturb_adaln(scorer: TimestepConditionedScorer, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (*scorer.layer_adaln, scorer.pooled_adaln):
            module.linear.weight.copy_(torch.randn(module.linear.weight.shape, generator=generator) * 0.5)


# --------------------------------------------------------------------------- the scorer


def test_zero_init_adaln_scores_equal_the_plain_clip_logits(tiny_clip_dir: Path) -> None:
    from transformers import CLIPModel, CLIPTokenizer

    scorer = TimestepConditionedScorer.from_clip_pretrained(tiny_clip_dir)
    plain = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip_dir)
    images = _images()
    timesteps = torch.tensor([1, 501, 951])
    with torch.no_grad():
        scores = scorer(images, timesteps, PROMPTS)
        ids = tokenizer(PROMPTS, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
        out = plain(input_ids=ids.input_ids, pixel_values=scorer.preprocess(images))
    # PickScore: exp(logit_scale)·cos(image_embeds, text_embeds), the diagonal of the logits
    expected = out.logits_per_image.diagonal()
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    # the time embedding itself is not zero: the zero AdaLN projections make it irrelevant
    assert scorer.time_embedding.mlp[0].weight.abs().sum() > 0
    assert scorer.source == str(tiny_clip_dir) and scorer.preprocess_config.crop_size == (30, 30)


def test_perturbed_adaln_makes_scores_depend_on_t(tiny_clip_dir: Path) -> None:
    from transformers import CLIPModel

    scorer = TimestepConditionedScorer.from_clip_pretrained(tiny_clip_dir)
    _perturb_adaln(scorer)
    images, prompt = _images(1), PROMPTS[:1]
    with torch.no_grad():
        by_t = torch.cat([scorer(images, t, prompt) for t in (1, 251, 501, 951)])
        mixed = scorer(images.expand(4, -1, -1, -1), torch.tensor([1, 251, 501, 951]), prompt * 4)
        # outside a scoring call the hooks do nothing: scorer.clip is the plain CLIP again
        pooled = scorer.clip.vision_model(pixel_values=scorer.preprocess(images)).pooler_output
        plain = CLIPModel.from_pretrained(tiny_clip_dir).eval()
        plain_pooled = plain.vision_model(pixel_values=scorer.preprocess(images)).pooler_output
    assert (by_t.max() - by_t.min()) > 1e-2, by_t
    torch.testing.assert_close(mixed, by_t, atol=1e-5, rtol=1e-5)  # each row uses its own t
    torch.testing.assert_close(pooled, plain_pooled)


def test_scores_backpropagate_into_the_adaln_and_time_embedding(tiny_clip_dir: Path) -> None:
    scorer = TimestepConditionedScorer.from_clip_pretrained(tiny_clip_dir)
    _perturb_adaln(scorer)
    scorer(_images(2), torch.tensor([51, 901]), PROMPTS[:2]).sum().backward()
    for name, param in scorer.named_parameters():
        assert param.grad is not None, name
    assert scorer.layer_adaln[0].linear.weight.grad.abs().sum() > 0
    assert scorer.time_embedding.mlp[0].weight.grad.abs().sum() > 0


def test_gradient_checkpointing_is_refused(tiny_clip_dir: Path) -> None:
    scorer = TimestepConditionedScorer.from_clip_pretrained(tiny_clip_dir)
    scorer.clip.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="gradient checkpointing"):
        scorer(_images(1), 1, PROMPTS[:1])


# --------------------------------------------------------------------------- preprocessing


def _pil_test_image(height: int, width: int, seed: int = 0):
    """A uint8 PIL image with flat patches and a saturated rectangle (hard edges, overshoot)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = (rng.random((height // 4 + 1, width // 4 + 1, 3)) * 255).astype(np.uint8)
    pixels = np.array(Image.fromarray(coarse).resize((width, height), Image.NEAREST))
    pixels[height // 3 : height // 2, width // 4 : width // 2] = (250, 10, 30)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    "image_size, processor_kwargs",
    [
        ((16, 16), dict(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})),  # upsample
        ((48, 40), dict(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})),  # down, crop rows
        ((41, 67), dict(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28})),  # odd sizes, crop
        ((64, 64), dict(size={"height": 24, "width": 20}, crop_size={"height": 24, "width": 20})),  # exact size
        ((20, 20), dict(size={"shortest_edge": 20}, crop_size={"height": 24, "width": 24})),  # crop pads
    ],
)
def test_preprocessing_matches_clip_image_processor(image_size, processor_kwargs, tmp_path: Path) -> None:
    """Same resize + crop + normalise as CLIPImageProcessor (PIL backend) on the same image.

    PIL resamples uint8 images and rounds to uint8 after its horizontal and its vertical
    pass; we resample floats. On [0, 1] values that leaves at most ~1/255 per pixel
    (measured ≤ 1.06/255); after normalisation by std ≈ 0.26–0.28 that is ≤ ~0.016.
    """
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(**processor_kwargs).save_pretrained(tmp_path)
    processor = CLIPImageProcessor.from_pretrained(tmp_path)
    config = ImagePreprocessConfig.from_processor_dict(json.loads((tmp_path / "preprocessor_config.json").read_text()))
    image = _pil_test_image(*image_size)
    expected = torch.as_tensor(np.asarray(processor(images=image, return_tensors="np").pixel_values))
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1  # [-1, 1]
    got = preprocess_images(tensor, config)
    assert got.shape == expected.shape and got.dtype == torch.float32
    # compare in [0, 1] pixel units
    diff = ((got - expected) * torch.tensor(config.image_std).view(1, 3, 1, 1)).abs() * 255
    assert diff.max() <= 1.5, f"max {diff.max():.3f}/255"
    assert diff.mean() <= 0.6, f"mean {diff.mean():.3f}/255"


def test_preprocess_config_reads_old_style_processor_configs_and_rejects_the_unsupported() -> None:
    old = {"size": 224, "crop_size": 224, "resample": 3, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    config = ImagePreprocessConfig.from_processor_dict(old)
    assert config.shortest_edge == 224 and config.crop_size == (224, 224) and config.image_std == (0.25,) * 3
    assert config.output_size(512, 768) == (224, 224) and config.resized_size(512, 768) == (224, 336)
    with pytest.raises(ValueError, match="resample 1"):
        ImagePreprocessConfig.from_processor_dict({**old, "resample": 1})
    with pytest.raises(ValueError, match="rescale"):
        ImagePreprocessConfig.from_processor_dict({**old, "rescale_factor": 1.0})


def test_preprocess_must_produce_the_vision_tower_size(tiny_clip_dir: Path) -> None:
    scorer = TimestepConditionedScorer.from_clip_pretrained(tiny_clip_dir)
    with pytest.raises(ValueError, match="30×30"):
        preprocess = ImagePreprocessConfig(shortest_edge=30, crop_size=(28, 28))
        TimestepConditionedScorer(scorer.clip, scorer.tokenizer, preprocess)


# --------------------------------------------------------------------------- the step reward


def test_x0_matches_ddim_scheduler_step_on_raw_unet_calls(reward: PixelStepReward, sd15: DiffusionComponents) -> None:
    from diffusers import DDIMScheduler

    latents_t = _latents()
    prompts = PROMPTS
    with torch.no_grad():
        # independent ε̂: the pipeline's text encoder and two raw U-Net calls, CFG 5 with ""
        def embed(texts):
            ids = sd15.tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
            return sd15.text_encoder(ids)[0]

        t = 501
        eps_c = sd15.unet(latents_t, t, encoder_hidden_states=embed(prompts)).sample
        eps_u = sd15.unet(latents_t, t, encoder_hidden_states=embed([""] * 3)).sample
        noise_pred = eps_u + 5.0 * (eps_c - eps_u)
        scheduler = DDIMScheduler.from_config(sd15.scheduler.config)
        scheduler.set_timesteps(20)
        expected = scheduler.step(noise_pred, t, latents_t, eta=1.0).pred_original_sample
        got = reward.predict_x0(latents_t, t, prompts)
    assert got.dtype == torch.float32 and got.shape == latents_t.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # mixed timesteps: the formula x̂0 = (x_t − √(1−ᾱ_t)ε̂)/√ᾱ_t per row, and lpo.sampling.ddim's step
    timesteps = torch.tensor([1, 451, 951])
    alphas = sd15.scheduler.alphas_cumprod[timesteps].view(3, 1, 1, 1)
    by_hand = (latents_t - (1 - alphas).sqrt() * noise_pred) / alphas.sqrt()
    mixed = predicted_original_sample(sd15.scheduler, noise_pred, timesteps, latents_t)
    torch.testing.assert_close(mixed, by_hand)
    step = ddim_step_with_logprob(scheduler, noise_pred, timesteps, latents_t, noise=torch.zeros_like(latents_t))
    torch.testing.assert_close(mixed, step.pred_original_sample)


def test_decode_x0_is_the_vae_decode(reward: PixelStepReward, sd15: DiffusionComponents) -> None:
    x0 = _latents(2, seed=3)
    with torch.no_grad():
        expected = sd15.vae.decode(x0 / sd15.vae.config.scaling_factor).sample.clamp(-1, 1)
    images = reward.decode_x0(x0)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    torch.testing.assert_close(images, expected)


def test_forward_is_the_three_steps_and_matches_precomputed_text(reward: PixelStepReward) -> None:
    latents_t, timesteps = _latents(), torch.tensor([1, 501, 951])
    with torch.no_grad():
        scores = reward(latents_t, timesteps, PROMPTS)
        images = reward.decode_x0(reward.predict_x0(latents_t, timesteps, PROMPTS))
        by_steps = reward.score_images(images, timesteps, PROMPTS)
        # K = 2 candidates per prompt through precomputed, repeated text
        text = reward.encode_text(PROMPTS[:2]).repeat_interleave(2)
        repeated = reward.score_with_conditioning(torch.cat([latents_t[:1]] * 2 + [latents_t[1:2]] * 2), 501, text)
    assert scores.shape == (3,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, by_steps)
    single = torch.cat([reward(latents_t[i : i + 1], 501, PROMPTS[i : i + 1]) for i in (0, 1)]).detach()
    torch.testing.assert_close(repeated, single.repeat_interleave(2), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="3 latents but 2 prompts"):
        reward(latents_t, 1, PROMPTS[:2])


def test_gradients_reach_the_scorer_but_not_the_unet_or_vae(reward: PixelStepReward, sd15: DiffusionComponents) -> None:
    reward.scorer.zero_grad(set_to_none=True)
    _perturb_adaln(reward.scorer)
    try:
        reward(_latents(2), torch.tensor([101, 701]), PROMPTS[:2]).sum().backward()
        assert all(p.grad is not None for p in reward.trainable_parameters())
        assert reward.scorer.layer_adaln[1].linear.weight.grad.abs().sum() > 0
        for module in (sd15.unet, sd15.vae, sd15.text_encoder):
            assert all(p.grad is None for p in module.parameters())
        assert not any(p.requires_grad for p in (*sd15.unet.parameters(), *sd15.vae.parameters()))
        assert not sd15.unet.training and not sd15.vae.training
        # only the scorer is a submodule: shared base modules are neither trained, moved nor saved
        assert [id(p) for p in reward.parameters()] == [id(p) for p in reward.trainable_parameters()]
        assert all(key.startswith("scorer.") for key in reward.state_dict())
        assert reward.components.unet is sd15.unet
    finally:
        reward.scorer.zero_grad(set_to_none=True)
        for module in (*reward.scorer.layer_adaln, reward.scorer.pooled_adaln):
            torch.nn.init.zeros_(module.linear.weight)


def test_sdxl_pipeline_runs_with_its_added_conditioning(tiny_sdxl_dir: Path, tiny_clip_dir: Path) -> None:
    sdxl = load_components(tiny_sdxl_dir)
    reward = PixelStepReward.from_components(sdxl, TimestepConditionedScorer.from_clip_pretrained(tiny_clip_dir))
    with torch.no_grad():
        scores = reward(_latents(2), torch.tensor([1, 951]), PROMPTS[:2])
    assert scores.shape == (2,) and torch.isfinite(scores).all() and reward.kind == "sdxl"


def test_policy_lora_is_switched_off_for_the_reward_and_left_trainable(tiny_sd15_dir: Path, tiny_clip_dir: Path):
    from peft import LoraConfig

    components = load_components(tiny_sd15_dir)
    latents_t = _latents()
    reward = PixelStepReward.from_components(components, TimestepConditionedScorer.from_clip_pretrained(tiny_clip_dir))
    base_x0 = reward.predict_x0(latents_t, 501, PROMPTS)
    components.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    lora = [p for name, p in components.unet.named_parameters() if "lora_B" in name]
    with torch.no_grad():
        for param in lora:
            param.normal_(std=0.5)
    # built after the adapter: the adapter keeps its requires_grad, the base weights are frozen
    reward = PixelStepReward(components, reward.scorer)
    assert all(p.requires_grad for p in lora)
    torch.testing.assert_close(reward.predict_x0(latents_t, 501, PROMPTS), base_x0)
    assert all(p.requires_grad for p in lora)  # the reward's call left the adapter's flags alone
    # the policy still sees its adapter afterwards
    hidden = reward.encode_text(PROMPTS).conditioning.cond.prompt_embeds
    with torch.no_grad():
        with_lora = components.unet(latents_t, 501, encoder_hidden_states=hidden).sample
        components.unet.disable_adapters()
        without = components.unet(latents_t, 501, encoder_hidden_states=hidden).sample
    assert (with_lora - without).abs().max() > 1e-3


def test_world_pipeline_gets_a_small_world_scorer(tiny_world_dir: Path, tmp_path: Path) -> None:
    world = load_components(tiny_world_dir)
    reward = PixelStepReward.from_components(world)
    scorer = reward.scorer
    assert reward.kind == "world" and reward.config.base_model == str(tiny_world_dir)
    assert scorer.tokenizer is world.tokenizer and scorer.source == "random"
    assert scorer.clip.config.vision_config.image_size == world.default_resolution == 32
    assert scorer.clip.config.vision_config.patch_size == 4
    latents = torch.randn(2, world.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "two blue squares"]
    scores = reward(latents, torch.tensor([1, 951]), prompts)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    scores.sum().backward()
    assert all(p.grad is not None for p in reward.trainable_parameters())
    # same seed, same scorer; the text tower can start from the world's text encoder
    again = world_pixel_scorer(world.tokenizer)
    torch.testing.assert_close(again.clip.visual_projection.weight, scorer.clip.visual_projection.weight)
    seeded = world_pixel_scorer(world.tokenizer, text_encoder=world.text_encoder)
    with torch.no_grad():
        length = world.tokenizer.model_max_length
        ids = world.tokenizer(prompts, padding="max_length", max_length=length, return_tensors="pt").input_ids
        torch.testing.assert_close(seeded.clip.text_model(ids).pooler_output, world.text_encoder(ids).pooler_output)
    # round trip through the folder format
    reward.eval()
    save_pixel_reward(reward, tmp_path / "world-reward")
    loaded = load_pixel_reward(tmp_path / "world-reward", world)
    with torch.no_grad():
        timesteps = torch.tensor([1, 951])
        torch.testing.assert_close(loaded(latents, timesteps, prompts), reward(latents, timesteps, prompts))


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip_is_identical(reward: PixelStepReward, sd15: DiffusionComponents, tmp_path: Path) -> None:
    _perturb_adaln(reward.scorer, seed=5)
    try:
        folder = save_pixel_reward(reward, tmp_path / "pixel-reward")
        expected_files = [PIXEL_REWARD_WEIGHTS_NAME, PIXEL_REWARD_CONFIG_NAME, "tokenizer"]
        assert sorted(p.name for p in folder.iterdir()) == expected_files
        assert [p.name for p in tmp_path.iterdir()] == ["pixel-reward"]  # no temporary folders left
        meta = json.loads((folder / PIXEL_REWARD_CONFIG_NAME).read_text())
        assert meta["config"]["base_model"] == sd15.source and meta["config"]["guidance_scale"] == 5.0
        assert meta["scorer"]["clip_config"]["vision_config"]["image_size"] == CLIP_IMAGE_SIZE
        loaded = load_pixel_reward(folder, sd15)
        assert loaded.config == reward.config and loaded.scorer.preprocess_config == reward.scorer.preprocess_config
        assert not loaded.scorer.training
        original, restored = reward.scorer.state_dict(), loaded.scorer.state_dict()
        assert original.keys() == restored.keys()
        assert all(torch.equal(original[k], restored[k]) for k in original)
        latents_t, timesteps = _latents(), torch.tensor([1, 501, 951])
        with torch.no_grad():
            expected = reward(latents_t, timesteps, PROMPTS)
            torch.testing.assert_close(loaded(latents_t, timesteps, PROMPTS), expected, atol=1e-6, rtol=1e-6)
        save_pixel_reward(loaded, folder)  # overwriting an existing folder works
        assert [p.name for p in tmp_path.iterdir()] == ["pixel-reward"]
    finally:
        for module in (*reward.scorer.layer_adaln, reward.scorer.pooled_adaln):
            torch.nn.init.zeros_(module.linear.weight)


def _one_line_error(match: str):
    return pytest.raises(LpoError, match=match)


def test_load_errors_are_one_line(reward: PixelStepReward, sd15: DiffusionComponents, tmp_path: Path) -> None:
    folder = save_pixel_reward(reward, tmp_path / "saved")
    cases = []
    with _one_line_error("does not exist") as err:
        load_pixel_reward(tmp_path / "nowhere", sd15)
    cases.append(err)
    with _one_line_error("trained for base model .* but you are using other/model") as err:
        load_pixel_reward(folder, sd15, expected_base="other/model")
    cases.append(err)
    shutil.copytree(folder, tmp_path / "corrupt")
    (tmp_path / "corrupt" / PIXEL_REWARD_WEIGHTS_NAME).write_bytes(b"not safetensors at all")
    with _one_line_error("could not read pixel reward weights") as err:
        load_pixel_reward(tmp_path / "corrupt", sd15)
    cases.append(err)
    (tmp_path / "corrupt" / PIXEL_REWARD_WEIGHTS_NAME).unlink()
    with _one_line_error("is missing") as err:
        load_pixel_reward(tmp_path / "corrupt", sd15)
    cases.append(err)
    (tmp_path / "corrupt" / PIXEL_REWARD_CONFIG_NAME).write_text("{not json")
    (tmp_path / "corrupt" / PIXEL_REWARD_WEIGHTS_NAME).write_bytes(b"")
    with _one_line_error("could not read") as err:
        load_pixel_reward(tmp_path / "corrupt", sd15)
    cases.append(err)
    world_like = DiffusionComponents(**{**sd15.__dict__, "kind": "world"})
    with _one_line_error("is for a sd15 model but the components are world") as err:
        load_pixel_reward(folder, world_like)
    cases.append(err)
    with _one_line_error("could not load CLIPModel") as err:
        TimestepConditionedScorer.from_clip_pretrained(tmp_path / "no-clip-here")
    cases.append(err)
    assert all("\n" not in str(e.value) for e in cases)


def test_config_validation() -> None:
    assert PixelRewardConfig().guidance_scale == 5.0 and PixelRewardConfig().negative_prompt is None
    with pytest.raises(ValueError, match="0.5"):
        PixelRewardConfig(guidance_scale=0.5)
    with pytest.raises(ValueError, match="'flux'"):
        PixelRewardConfig(kind="flux")
    assert PixelRewardConfig(kind="sd3").kind == "sd3"  # flow models' x̂0 is scored too
    with pytest.raises(ValueError, match="not both"):
        ImagePreprocessConfig(shortest_edge=224, size=(224, 224))


def test_the_spo_pixel_preset_starts_from_the_configured_clip_folder(sd15, tiny_clip_dir: Path, tmp_path: Path) -> None:
    """Offline real mode: the preset's PickScore hub id is a config key, so a local copy works,
    and the error for an unreachable one names that key."""
    from lpo.core.config import apply_overrides
    from lpo.reward.config import reward_training_preset
    from lpo.reward.jobs import build_reward_model

    config = apply_overrides(reward_training_preset("spo-pixel-sd15"),
                             [f"pixel_scorer={tiny_clip_dir}", f"pixel_scorer_processor={tiny_clip_dir}"])
    model, _ = build_reward_model(config, sd15)
    assert model.scorer.source == str(tiny_clip_dir)
    missing = apply_overrides(reward_training_preset("spo-pixel-sd15"),
                              [f"pixel_scorer={tmp_path / 'nope'}", f"pixel_scorer_processor={tmp_path / 'nope'}"])
    with pytest.raises(LpoError, match=r"--set pixel_scorer=FOLDER") as err:
        build_reward_model(missing, sd15)
    assert "\n" not in str(err.value)


def test_chunked_decode_gives_the_same_scores(reward: PixelStepReward) -> None:
    # reward.decode_batch_size (the trainers' reward.decode_batch_size) bounds the decoder's batch, not the scores
    latents, prompts = _latents(5), ["a red cat"] * 5
    with torch.no_grad():
        whole = reward(latents, 501, prompts)
        reward.decode_batch_size = 2
        try:
            chunked = reward(latents, 501, prompts)
        finally:
            reward.decode_batch_size = None
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
