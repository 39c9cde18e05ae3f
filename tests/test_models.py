"""lpo.models.components: loading SD1.5 / SDXL / world pipelines and encoding prompts like diffusers.

The tiny pipelines (tests/tiny_models.py) are saved with ``save_pretrained`` and loaded
back through the same ``from_pretrained`` calls real checkpoints use (SPEC §1.1). Parity
tests compare our encoders with the diffusers pipelines' own ``encode_prompt``, so SDXL's
two-encoder concatenation, pooled embedding and zeroed negative can't drift silently.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lpo.models.conditioning import GuidedConditioning, TextConditioning, predict_noise
from lpo.core.errors import LpoError
from lpo.models.components import (
    WORLD_MARKER,
    DiffusionComponents,
    ddim_from_config,
    encode_negative,
    encode_prompts,
    guided_conditioning,
    load_components,
    pooled_text_embedding,
)
from tiny_models import LATENT_SIZE, MAX_LENGTH, PROJECTION_DIM, TEXT_HIDDEN, build_tiny_sd15

PROMPTS = ["a red cat on the left of a blue square", "two small green trees"]


def _copy(folder: Path, tmp_path: Path) -> Path:
    """A writable copy of a session-scoped pipeline folder (those are shared, read-only)."""
    return Path(shutil.copytree(folder, tmp_path / folder.name))


# --------------------------------------------------------------------------- loading


def test_sd15_components(sd15: DiffusionComponents, tiny_sd15_dir: Path) -> None:
    assert sd15.kind == "sd15" and sd15.source == str(tiny_sd15_dir)
    assert isinstance(sd15.unet, UNet2DConditionModel) and isinstance(sd15.vae, AutoencoderKL)
    assert type(sd15.text_encoder) is CLIPTextModel and isinstance(sd15.tokenizer, CLIPTokenizer)
    assert sd15.text_encoder_2 is None and sd15.tokenizer_2 is None
    assert not sd15.force_zeros_for_empty_prompt


def test_sdxl_components(sdxl: DiffusionComponents) -> None:
    assert sdxl.kind == "sdxl"
    assert type(sdxl.text_encoder) is CLIPTextModel
    assert type(sdxl.text_encoder_2) is CLIPTextModelWithProjection
    assert isinstance(sdxl.tokenizer_2, CLIPTokenizer) and sdxl.tokenizer_2.pad_token == "!"
    assert sdxl.force_zeros_for_empty_prompt  # from model_index.json


def test_common_properties(components: DiffusionComponents) -> None:
    c = components
    assert c.latent_channels == 4 and c.vae_scale_factor == 2
    assert c.default_resolution == LATENT_SIZE * 2
    assert c.device == torch.device("cpu") and c.dtype == torch.float32
    assert not any(m.training for m in (c.unet, c.vae, *c.text_encoders))  # eval mode
    assert all(p.requires_grad for p in c.unet.parameters())  # nothing frozen here


def test_scheduler_is_ddim_with_latent_settings(components: DiffusionComponents) -> None:
    """SDXL's folder holds an EulerDiscreteScheduler config; both must come back as DDIM."""
    cfg = components.scheduler.config
    assert type(components.scheduler) is DDIMScheduler
    assert (cfg.beta_start, cfg.beta_end, cfg.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert cfg.clip_sample is False and cfg.set_alpha_to_one is False and cfg.steps_offset == 1


def test_ddim_from_config_fills_latent_defaults_loudly(caplog) -> None:
    """DDIM's defaults would clip latent x0 to [-1, 1]; a config silent on it gets SD's values."""
    euler = {"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear", "steps_offset": 1}
    with caplog.at_level(logging.WARNING, logger="lpo.models.components"):
        scheduler = ddim_from_config(euler)
    assert scheduler.config.clip_sample is False and scheduler.config.set_alpha_to_one is False
    assert "clip_sample" in caplog.text
    stated = ddim_from_config({**euler, "clip_sample": True, "set_alpha_to_one": True})
    assert stated.config.clip_sample is True and stated.config.set_alpha_to_one is True  # never overridden


def test_dtype_and_to(tiny_sd15_dir: Path) -> None:
    c = load_components(tiny_sd15_dir, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for m in (c.unet, c.vae, c.text_encoder) for p in m.parameters())
    assert c.to(dtype=torch.float32) is c and c.dtype == torch.float32
    assert c.text_encoder.dtype == torch.float32 and c.vae.dtype == torch.float32


def test_diffusers_pipelines_load_the_same_folders(tiny_sd15_dir: Path, tiny_sdxl_dir: Path) -> None:
    """Sanity: the tiny folders are ordinary diffusers pipelines, not something only we read."""
    assert isinstance(StableDiffusionPipeline.from_pretrained(tiny_sd15_dir), StableDiffusionPipeline)
    assert isinstance(StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir), StableDiffusionXLPipeline)


def test_world_marker_gives_world_kind(tmp_path: Path) -> None:
    """Saved as the world pipeline will be: plain save_pretrained, so tokenizer.json only
    (the session folders carry the hub's vocab.json + merges.txt layout instead)."""
    folder = tmp_path / "world"
    build_tiny_sd15().save_pretrained(folder)
    (folder / WORLD_MARKER).write_text(json.dumps({"world": "tiny"}))
    assert json.loads((folder / "model_index.json").read_text())["safety_checker"] == [None, None]
    world = load_components(folder)
    assert world.kind == "world"
    assert encode_prompts(world, PROMPTS).prompt_embeds.shape == (2, MAX_LENGTH, TEXT_HIDDEN)


def test_world_marker_on_sdxl_is_an_error(tiny_sdxl_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_sdxl_dir, tmp_path)
    (folder / WORLD_MARKER).write_text("{}")
    with pytest.raises(LpoError, match="StableDiffusionPipeline"):
        load_components(folder)


def test_vae_override(tiny_sdxl_dir: Path, tiny_sd15_dir: Path) -> None:
    c = load_components(tiny_sdxl_dir, vae=tiny_sd15_dir, vae_subfolder="vae")
    assert c.vae.config.scaling_factor == pytest.approx(0.18215)  # SD1.5's, not SDXL's 0.13025


def test_unet_override(tiny_sd15_dir: Path, tiny_sdxl_dir: Path) -> None:
    c = load_components(tiny_sd15_dir, unet=tiny_sd15_dir / "unet")
    assert isinstance(c.unet, UNet2DConditionModel)
    with pytest.raises(LpoError, match="cross_attention_dim 32 .* give 64"):
        load_components(tiny_sdxl_dir, unet=tiny_sd15_dir, unet_subfolder="unet")
    with pytest.raises(LpoError, match="unet_subfolder='unet'"):
        load_components(tiny_sd15_dir, unet=tiny_sd15_dir)  # the pipeline root is no unet folder
    with pytest.raises(LpoError, match="unet folder ./no-such-unet does not exist"):
        load_components(tiny_sd15_dir, unet="./no-such-unet")


# --------------------------------------------------------------------------- user errors


def _missing_folder(root: Path) -> Path:
    return root / "no-such-model"


def _file_not_folder(root: Path) -> Path:
    return root / "model_index.json"


def _no_model_index(root: Path) -> Path:
    (root / "model_index.json").unlink()
    return root


def _no_unet(root: Path) -> Path:
    shutil.rmtree(root / "unet")
    return root


def _corrupt_unet(root: Path) -> Path:
    (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 64)
    return root


def _corrupt_text_encoder(root: Path) -> Path:
    (root / "text_encoder" / "model.safetensors").write_bytes(b"\xffnot a safetensors file" * 8)
    return root


def _empty_tokenizer(root: Path) -> Path:
    """transformers 5 silently builds a 2-token tokenizer from an empty folder."""
    for file in (root / "tokenizer").iterdir():
        file.unlink()
    return root


def _unknown_pipeline(root: Path) -> Path:
    index = json.loads((root / "model_index.json").read_text())
    (root / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    return root


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_missing_folder, "does not exist"),
        (_file_not_folder, "is a file"),
        (_no_model_index, "has no model_index.json"),
        (_no_unet, "/unet is missing"),
        (_corrupt_unet, "could not load UNet2DConditionModel"),
        (_corrupt_text_encoder, "could not load CLIPTextModel"),
        (_empty_tokenizer, "tokenizer files are missing"),
        (_unknown_pipeline, "FluxPipeline"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_user_errors_are_one_line_and_name_the_path(damage, expected, tiny_sd15_dir: Path, tmp_path: Path) -> None:
    folder = damage(_copy(tiny_sd15_dir, tmp_path))
    with pytest.raises(LpoError) as info:
        load_components(folder)
    message = str(info.value)
    assert expected in message and str(folder) in message
    assert "\n" not in message


def _fake_hub_repo(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lay ``folder`` out as the cached snapshot of hub repo ``repo_id``; return the snapshot."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = Path(shutil.copytree(folder, repo / "snapshots" / commit))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # diffusers' call
def test_hub_ids_load_from_the_local_cache(
    tiny_sd15_dir: Path, tiny_sdxl_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """The hub-id path, offline: a fake HF cache holding the tiny pipelines under hub ids."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "cache"
    _fake_hub_repo(cache, "tiny-org/sdxl", tiny_sdxl_dir)
    (_fake_hub_repo(cache, "tiny-org/world", tiny_sd15_dir) / WORLD_MARKER).write_text("{}")
    shutil.rmtree(_fake_hub_repo(cache, "tiny-org/partial", tiny_sd15_dir) / "unet")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)

    sdxl = load_components("tiny-org/sdxl")
    assert sdxl.kind == "sdxl" and sdxl.source == "tiny-org/sdxl"
    assert load_components("tiny-org/world").kind == "world"

    for repo_id, expected in [
        ("tiny-org/not-cached", "could not get model_index.json of hub id tiny-org/not-cached"),
        ("tiny-org/partial", "could not load UNet2DConditionModel from hub id tiny-org/partial/unet"),
    ]:
        with pytest.raises(LpoError) as info:
            load_components(repo_id)
        message = str(info.value)
        assert expected in message and "local Hugging Face cache" in message and "\n" not in message


# --------------------------------------------------------------------------- encoding


def test_encode_prompts_sd15_shapes(sd15: DiffusionComponents) -> None:
    cond = encode_prompts(sd15, PROMPTS)
    assert cond.prompt_embeds.shape == (2, MAX_LENGTH, TEXT_HIDDEN)
    assert cond.pooled_prompt_embeds is None and cond.add_time_ids is None


def test_encode_prompts_sdxl_shapes(sdxl: DiffusionComponents) -> None:
    cond = encode_prompts(sdxl, PROMPTS)
    assert cond.prompt_embeds.shape == (2, MAX_LENGTH, 2 * TEXT_HIDDEN)  # hidden1 + hidden2
    assert cond.pooled_prompt_embeds.shape == (2, PROJECTION_DIM)
    res = sdxl.default_resolution
    assert cond.add_time_ids.tolist() == [[res, res, 0, 0, res, res]] * 2
    assert encode_prompts(sdxl, PROMPTS, resolution=(24, 32)).add_time_ids[0].tolist() == [24, 32, 0, 0, 24, 32]


@pytest.mark.parametrize("negative_prompt", [None, "", "a black dog"])
def test_sdxl_encoding_matches_diffusers(tiny_sdxl_dir: Path, sdxl: DiffusionComponents, negative_prompt) -> None:
    """Same numbers as StableDiffusionXLPipeline.encode_prompt, incl. the zeroed default negative."""
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    with torch.no_grad():
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            PROMPTS, device=torch.device("cpu"), do_classifier_free_guidance=True, negative_prompt=negative_prompt
        )
        guided = guided_conditioning(sdxl, PROMPTS, 7.5, negative_prompt)
    torch.testing.assert_close(guided.cond.prompt_embeds, embeds)
    torch.testing.assert_close(guided.cond.pooled_prompt_embeds, pooled)
    torch.testing.assert_close(guided.uncond.prompt_embeds, neg_embeds)
    torch.testing.assert_close(guided.uncond.pooled_prompt_embeds, neg_pooled)
    assert (guided.uncond.prompt_embeds == 0).all() == (negative_prompt is None)  # only None is zeroed
    res = sdxl.default_resolution
    time_ids = pipe._get_add_time_ids((res, res), (0, 0), (res, res), torch.float32, PROJECTION_DIM)
    torch.testing.assert_close(guided.cond.add_time_ids, time_ids.expand(2, 6))
    torch.testing.assert_close(guided.uncond.add_time_ids, time_ids.expand(2, 6))


@pytest.mark.parametrize("negative_prompt", [None, "a black dog"])
def test_sd15_encoding_matches_diffusers(tiny_sd15_dir: Path, sd15: DiffusionComponents, negative_prompt) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir)
    with torch.no_grad():
        negatives = None if negative_prompt is None else [negative_prompt] * len(PROMPTS)  # SD1.5 wants a list
        embeds, neg_embeds = pipe.encode_prompt(PROMPTS, torch.device("cpu"), 1, True, negative_prompt=negatives)
        guided = guided_conditioning(sd15, PROMPTS, 7.5, negative_prompt)
    torch.testing.assert_close(guided.cond.prompt_embeds, embeds)
    torch.testing.assert_close(guided.uncond.prompt_embeds, neg_embeds)


def test_encode_negative_batch_and_list(sd15: DiffusionComponents, sdxl: DiffusionComponents) -> None:
    assert encode_negative(sdxl, 3).prompt_embeds.shape == (3, MAX_LENGTH, 2 * TEXT_HIDDEN)
    listed = encode_negative(sd15, 2, ["a dog", "a cat"]).prompt_embeds
    torch.testing.assert_close(listed, encode_prompts(sd15, ["a dog", "a cat"]).prompt_embeds)
    with pytest.raises(ValueError, match="3 entries but the batch has 2"):
        encode_negative(sd15, 2, ["a", "b", "c"])


def test_guided_conditioning_runs_through_the_unet(components: DiffusionComponents) -> None:
    """CFG through predict_noise on both U-Nets: one batched call, ε_u + w(ε_c − ε_u)."""
    c = components
    latents = torch.randn(2, c.latent_channels, LATENT_SIZE, LATENT_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        guided = guided_conditioning(c, PROMPTS, 5.0)
        noise_pred = predict_noise(c.unet, latents, 500, guided)
        eps_c = predict_noise(c.unet, latents, 500, guided.cond)
        eps_u = predict_noise(c.unet, latents, 500, guided.uncond)
    assert isinstance(guided, GuidedConditioning) and noise_pred.shape == latents.shape
    torch.testing.assert_close(noise_pred, eps_u + 5.0 * (eps_c - eps_u), atol=1e-4, rtol=1e-4)
    assert guided_conditioning(c, PROMPTS, 1.0).uncond is None  # w = 1 needs no unconditional pass


def test_pooled_text_embedding(sd15: DiffusionComponents, sdxl: DiffusionComponents) -> None:
    with torch.no_grad():
        pooled_15 = pooled_text_embedding(sd15, PROMPTS)
        ids = sd15.tokenizer(PROMPTS, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
        torch.testing.assert_close(pooled_15, sd15.text_encoder(ids).pooler_output)
        pooled_xl = pooled_text_embedding(sdxl, PROMPTS)
        torch.testing.assert_close(pooled_xl, encode_prompts(sdxl, PROMPTS).pooled_prompt_embeds)
    assert pooled_15.shape == (2, TEXT_HIDDEN)


@pytest.mark.parametrize("fixture", ["tiny_sd15_dir", "tiny_sdxl_dir"])
def test_gradients_flow_into_the_text_encoders(fixture: str, request) -> None:
    """encode_prompts must not disable autograd: the LRM trains the text encoder (SPEC §4.1)."""
    c = load_components(request.getfixturevalue(fixture))  # fresh: grads must not leak into shared fixtures
    cond: TextConditioning = encode_prompts(c, PROMPTS)
    loss = cond.prompt_embeds.square().mean()
    if cond.pooled_prompt_embeds is not None:
        loss = loss + cond.pooled_prompt_embeds.square().mean()
    loss.backward()
    for encoder in c.text_encoders:
        grads = [p.grad for p in encoder.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
