"""lpo.reward.lrm: the Latent Reward Model (SPEC §4.1) on tiny SD1.5-, SDXL- and world-shaped pipelines.

The LRM's features are checked against an independent computation: the diffusion
model's own, full diffusers U-Net run with forward hooks on each down block's last
resnet/attention (the output *before* its downsampler) and on the mid block, conditioned
through lpo.models.components.guided_conditioning. Real-sized SD1.5 / SDXL architectures are built
on the meta device (no weights allocated) to check the published widths 4800 and 3520.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lpo.models.conditioning import TextConditioning
from lpo.core.errors import LpoError
from lpo.reward.lrm import LatentRewardModel, LRMConfig
from lpo.reward.lrm_io import LRM_CONFIG_NAME, LRM_WEIGHTS_NAME, load_lrm, save_lrm
from lpo.reward.lrm_unet import UNET_UP_PATH, unet_down_mid
from lpo.models.components import DiffusionComponents, guided_conditioning, load_components, pooled_text_embedding
from tiny_models import LATENT_SIZE

PROMPTS = ["a red cat on the left of a blue square", "two small green trees"]
LOGIT_SCALE_INIT = 2.6592



def _latents(batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, LATENT_SIZE, LATENT_SIZE, generator=generator)


def _lrm(components: DiffusionComponents, vfe_scale: float = 7.5, seed: int = 0) -> LatentRewardModel:
    torch.manual_seed(seed)  # visual projection init
    return LatentRewardModel.from_components(components, LRMConfig(vfe_scale=vfe_scale))


def _hooked_unet_pass(
    unet, latents, timesteps, cond: TextConditioning
) -> tuple[list[torch.Tensor], torch.Tensor, dict]:
    """Run the *full* U-Net; capture each down block's last resnet/attention output, the output of
    its downsampler (if any) and the mid-block output, all pooled over H, W."""
    captured: dict = {}

    def keep(key):
        def hook(module, args, output):
            captured[key] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = []
    for i, block in enumerate(unet.down_blocks):
        last = block.attentions[-1] if getattr(block, "has_cross_attention", False) else block.resnets[-1]
        handles.append(last.register_forward_hook(keep(("down", i))))
        if block.downsamplers is not None:
            handles.append(block.downsamplers[-1].register_forward_hook(keep(("downsampled", i))))
    handles.append(unet.mid_block.register_forward_hook(keep("mid")))
    try:
        with torch.no_grad():
            unet(latents, timesteps, **cond.unet_kwargs())
    finally:
        for handle in handles:
            handle.remove()
    down = [captured[("down", i)].mean(dim=(2, 3)) for i in range(len(unet.down_blocks))]
    return down, captured["mid"].mean(dim=(2, 3)), captured


# --------------------------------------------------------------------------- config


def test_config_defaults_and_validation() -> None:
    config = LRMConfig()
    assert config.vfe_scale == 7.5 and config.logit_scale_init == LOGIT_SCALE_INIT and config.vfe
    assert not LRMConfig(vfe_scale=1).vfe
    with pytest.raises(ValueError, match="0.5"):
        LRMConfig(vfe_scale=0.5)
    with pytest.raises(ValueError, match="nan"):
        LRMConfig(logit_scale_init=float("nan"))
    with pytest.raises(ValueError, match="'sd3'"):
        LRMConfig(kind="sd3")


# --------------------------------------------------------------------------- architecture


def test_real_sized_feature_widths_on_meta_device() -> None:
    """SD1.5: 320+640+1280+1280 (+1280 mid) = 4800 -> 768; SDXL: 320+640+1280 (+1280) = 3520 -> 1280.

    Built without allocating weights; running the truncated U-Net on meta tensors checks the
    spatial sizes too: pre-downsampler maps keep each block's input resolution.
    """
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def clip(width, cls=CLIPTextModel, **extra):
        return cls(CLIPTextConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1,
                                  num_attention_heads=width // 64, **extra))

    meta = torch.device("meta")
    with init_empty_weights():
        sd15_unet = UNet2DConditionModel(cross_attention_dim=768)  # the defaults are SD1.5's U-Net
        lrm_15 = LatentRewardModel(
            sd15_unet, clip(768), None, LRMConfig(kind="sd15", base_model="sd15"), resolution=512
        )
        sdxl_unet = UNet2DConditionModel(  # stable-diffusion-xl-base-1.0/unet/config.json
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, use_linear_projection=True,
        )
        lrm_xl = LatentRewardModel(
            sdxl_unet, clip(768), None, LRMConfig(kind="sdxl", base_model="sdxl"), resolution=1024,
            text_encoder_2=clip(1280, CLIPTextModelWithProjection, projection_dim=1280), tokenizer_2=object(),
        )
    assert lrm_15.feature_dims == (320, 640, 1280, 1280, 1280)
    assert (lrm_15.visual_projection.in_features, lrm_15.visual_projection.out_features) == (4800, 768)
    assert (lrm_15.text_projection.in_features, lrm_15.text_projection.out_features) == (768, 768)
    assert lrm_xl.feature_dims == (320, 640, 1280, 1280)
    assert (lrm_xl.visual_projection.in_features, lrm_xl.visual_projection.out_features) == (3520, 1280)
    assert lrm_xl.text_projection is None

    cond_15 = TextConditioning(torch.empty(1, 77, 768, device=meta))
    t = torch.tensor([1], device=meta)
    down, mid = unet_down_mid(lrm_15.unet, torch.empty(1, 4, 64, 64, device=meta), t, cond_15)
    assert [tuple(h.shape[1:]) for h in down] == [(320, 64, 64), (640, 32, 32), (1280, 16, 16), (1280, 8, 8)]
    assert tuple(mid.shape[1:]) == (1280, 8, 8)
    cond_xl = TextConditioning(
        torch.empty(1, 77, 2048, device=meta), torch.empty(1, 1280, device=meta), torch.empty(1, 6, device=meta)
    )
    down, mid = unet_down_mid(lrm_xl.unet, torch.empty(1, 4, 128, 128, device=meta), t, cond_xl)
    assert [tuple(h.shape[1:]) for h in down] == [(320, 128, 128), (640, 64, 64), (1280, 32, 32)]
    assert tuple(mid.shape[1:]) == (1280, 32, 32)


def test_up_path_is_not_part_of_the_lrm(sd15: DiffusionComponents) -> None:
    lrm = _lrm(sd15)
    names = [name for name, _ in lrm.named_parameters()]
    assert not [n for n in names if n.startswith("unet.") and n.split(".")[1] in UNET_UP_PATH]
    assert not any(hasattr(lrm.unet, name) for name in UNET_UP_PATH)
    # Exactly the diffusion U-Net's non-up-path weights were copied.
    kept = sum(p.numel() for n, p in sd15.unet.named_parameters() if n.split(".")[0] not in UNET_UP_PATH)
    assert sum(p.numel() for p in lrm.unet.parameters()) == kept
    # The source U-Net still has its decoder.
    assert hasattr(sd15.unet, "up_blocks") and hasattr(sd15.unet, "conv_out")


# --------------------------------------------------------------------------- features and score


def test_features_match_hooked_full_unet(components: DiffusionComponents) -> None:
    """Down features = the conditional pass's pre-downsampler outputs; mid = V_u + g(V_c − V_u);
    T = pooled text embedding (identity projection / SDXL text_embeds); S = exp(s)·cos(V, T)."""
    g = 7.5
    lrm = _lrm(components, vfe_scale=g)
    latents, timesteps = _latents(), torch.tensor([951, 301])
    with torch.no_grad():
        features = lrm.features(latents, timesteps, PROMPTS)
        scores = lrm(latents, timesteps, PROMPTS)

    # Independent: the full diffusion U-Net, cond and uncond branches as CFG builds them with
    # an explicit "" (encoded, never zeroed: the official LRMs' VFE branch)
    guided = guided_conditioning(components, PROMPTS, g, negative_prompt="")
    down_c, mid_c, captured = _hooked_unet_pass(components.unet, latents, timesteps, guided.cond)
    _, mid_u, _ = _hooked_unet_pass(components.unet, latents, timesteps, guided.uncond)

    channels = list(components.unet.config.block_out_channels)
    assert [f.shape[1] for f in features.down_features] == channels
    assert features.pooled.shape == (2, sum(channels) + channels[-1])
    for ours, reference in zip(features.down_features, down_c):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(features.mid_feature, mid_u + g * (mid_c - mid_u), atol=1e-5, rtol=1e-4)
    # "Before the downsampler" is not a no-op: the downsampled map pools to something else.
    assert captured[("down", 0)].shape[-1] == LATENT_SIZE and captured[("downsampled", 0)].shape[-1] == LATENT_SIZE // 2
    assert not torch.allclose(features.down_features[0], captured[("downsampled", 0)].mean(dim=(2, 3)), atol=1e-3)

    with torch.no_grad():
        text = pooled_text_embedding(components, PROMPTS).float()  # SD1.5: EOS state; SDXL: text_embeds
    torch.testing.assert_close(features.text, text, atol=1e-5, rtol=1e-4)  # identity text projection at init
    visual = torch.cat([*down_c, mid_u + g * (mid_c - mid_u)], dim=-1) @ lrm.visual_projection.weight.detach().T
    torch.testing.assert_close(features.visual, visual, atol=1e-5, rtol=1e-4)
    expected = torch.exp(torch.tensor(LOGIT_SCALE_INIT)) * F.cosine_similarity(visual, text, dim=-1)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert lrm.logit_scale.item() == pytest.approx(LOGIT_SCALE_INIT) and lrm.logit_scale.requires_grad


def test_vfe_runs_two_batched_passes_and_g1_one(sd15: DiffusionComponents) -> None:
    """g = 1: one conditional pass of B rows; g = 7.5: one call of 2B rows (uncond + cond)."""
    latents = _latents()
    seen = {}
    for g in (1.0, 7.5):
        lrm = _lrm(sd15, vfe_scale=g)
        rows: list[int] = []
        handle = lrm.unet.conv_in.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
        mids: list[int] = []
        lrm.unet.mid_block.register_forward_hook(lambda m, args, out: mids.append(out.shape[0]))
        with torch.no_grad():
            seen[g] = lrm.features(latents, 501, PROMPTS)
        handle.remove()
        assert rows == mids == ([2] if g == 1 else [4]), (g, rows, mids)
    # g = 1 is the plain conditional pass: the same down features, mid = V_c.
    with torch.no_grad():
        guided = guided_conditioning(sd15, PROMPTS, 1.0)
    _, mid_c, _ = _hooked_unet_pass(sd15.unet, latents, torch.tensor([501, 501]), guided.cond)
    torch.testing.assert_close(seen[1.0].mid_feature, mid_c, atol=1e-5, rtol=1e-4)
    for a, b in zip(seen[1.0].down_features, seen[7.5].down_features):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(seen[1.0].mid_feature, seen[7.5].mid_feature, atol=1e-4)


def test_score_with_conditioning_encodes_text_once(sd15: DiffusionComponents) -> None:
    lrm = _lrm(sd15)
    latents = _latents(3, seed=1)
    with torch.no_grad():
        text = lrm.encode_text(PROMPTS[:1])
        assert text.conditioning.guidance_scale == 7.5 and text.conditioning.uncond is not None
        once = lrm.score_with_conditioning(latents, 751, text.repeat_interleave(3))
        direct = lrm(latents, torch.tensor([751] * 3), PROMPTS[:1] * 3)
    torch.testing.assert_close(once, direct, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="repeat_interleave"):
        lrm.score_with_conditioning(latents, 751, text)
    with pytest.raises(ValueError, match="3 latents but 2 prompts"):
        lrm(latents, 751, PROMPTS)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        lrm(latents, torch.tensor([1, 2]), PROMPTS[:1] * 3)


def test_text_projection_init(sd15: DiffusionComponents) -> None:
    width = sd15.text_encoder.config.hidden_size
    matrix = torch.randn(width, width, generator=torch.Generator().manual_seed(3))
    lrm = LatentRewardModel.from_components(sd15, text_projection_init=matrix)
    torch.testing.assert_close(lrm.text_projection.weight.detach(), matrix)
    with torch.no_grad():
        text = lrm.encode_text(PROMPTS).text
        torch.testing.assert_close(text, pooled_text_embedding(sd15, PROMPTS) @ matrix.T, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        LatentRewardModel.from_components(sd15, text_projection_init=torch.eye(3))


def test_sdxl_text_tower_is_text_encoder_2_text_embeds(sdxl: DiffusionComponents) -> None:
    lrm = _lrm(sdxl)
    assert lrm.text_projection is None and lrm.text_dim == sdxl.text_encoder_2.config.projection_dim
    with torch.no_grad():
        text = lrm.encode_text(PROMPTS)
        ids = sdxl.tokenizer_2(PROMPTS, padding="max_length", max_length=sdxl.tokenizer_2.model_max_length,
                               truncation=True, return_tensors="pt").input_ids
        torch.testing.assert_close(text.text, sdxl.text_encoder_2(ids).text_embeds, atol=1e-5, rtol=1e-4)
    cond, uncond = text.conditioning.cond, text.conditioning.uncond
    assert cond.add_time_ids.tolist()[0] == [lrm.resolution, lrm.resolution, 0, 0, lrm.resolution, lrm.resolution]
    # The VFE branch is "" through both encoders, as the official LRM-XL encodes it, although
    # the pipeline's own CFG zeros it (force_zeros_for_empty_prompt)
    assert sdxl.force_zeros_for_empty_prompt and lrm.config.vfe_uncond == "empty_prompt"
    with torch.no_grad():
        ids = [tok([""], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
               for tok in (sdxl.tokenizer, sdxl.tokenizer_2)]
        hidden_1 = sdxl.text_encoder(ids[0], output_hidden_states=True).hidden_states[-2]
        out_2 = sdxl.text_encoder_2(ids[1], output_hidden_states=True)
    expected = torch.cat([hidden_1, out_2.hidden_states[-2]], dim=-1)
    torch.testing.assert_close(uncond.prompt_embeds, expected.expand(len(PROMPTS), -1, -1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(uncond.pooled_prompt_embeds, out_2.text_embeds.expand(len(PROMPTS), -1), atol=1e-5, rtol=1e-4)
    assert uncond.prompt_embeds.abs().sum() > 0 and uncond.pooled_prompt_embeds.abs().sum() > 0


def test_sdxl_lrm_folders_saved_before_vfe_uncond_keep_their_zeros(sdxl: DiffusionComponents, tmp_path: Path) -> None:
    """An SDXL LRM lpo wrote before ``vfe_uncond`` was trained with an all-zero VFE branch; it
    loads as "zeros" and scores as it was trained. "zeros" is refused for other kinds."""
    torch.manual_seed(0)
    zeros = LatentRewardModel.from_components(sdxl, LRMConfig(vfe_uncond="zeros"))
    with torch.no_grad():
        uncond = zeros.encode_text(PROMPTS).conditioning.uncond
    assert not uncond.prompt_embeds.any() and not uncond.pooled_prompt_embeds.any()
    folder = save_lrm(zeros, tmp_path / "old")
    meta = json.loads((folder / LRM_CONFIG_NAME).read_text())
    del meta["config"]["vfe_uncond"]  # as written before the field existed
    (folder / LRM_CONFIG_NAME).write_text(json.dumps(meta))
    loaded = load_lrm(folder, sdxl)
    assert loaded.config.vfe_uncond == "zeros"
    latents = _latents(2, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(latents, 501, PROMPTS), zeros(latents, 501, PROMPTS))
    with pytest.raises(ValueError, match="vfe_uncond='zeros' needs an SDXL base model"):
        LRMConfig(vfe_uncond="zeros", kind="sd15")


# --------------------------------------------------------------------------- training


def test_gradients_reach_the_copies_and_not_the_originals(components: DiffusionComponents) -> None:
    before = {n: p.detach().clone() for n, p in components.unet.named_parameters()}
    lrm = _lrm(components)
    lrm.train()
    latents = _latents(2, seed=2)  # one pair for one prompt: x_w, x_l at the same t
    scores = lrm(latents, torch.tensor([501, 501]), PROMPTS[:1] * 2)
    loss = F.cross_entropy(scores.view(1, 2), torch.tensor([[1.0, 0.0]]))  # soft label: first wins
    loss.backward()

    def has_grad(param) -> bool:
        return param.grad is not None and bool(param.grad.abs().sum() > 0)

    assert has_grad(lrm.unet.conv_in.weight) and has_grad(lrm.unet.time_embedding.linear_1.weight)
    assert all(has_grad(p) for p in lrm.unet.down_blocks[0].resnets[0].parameters() if p.ndim > 1)
    assert has_grad(lrm.unet.mid_block.resnets[-1].conv2.weight)
    assert has_grad(lrm.visual_projection.weight) and has_grad(lrm.logit_scale)
    for encoder in filter(None, (lrm.text_encoder, lrm.text_encoder_2)):
        # transformers 5 dropped CLIPTextModel's text_model wrapper: find the weight by suffix
        q_proj = next(p for n, p in encoder.named_parameters() if n.endswith("layers.0.self_attn.q_proj.weight"))
        assert has_grad(q_proj)
    if components.kind == "sdxl":
        assert has_grad(lrm.text_encoder_2.text_projection.weight)
        assert has_grad(lrm.unet.add_embedding.linear_1.weight)
    else:
        assert has_grad(lrm.text_projection.weight)
    # An optimiser step moves the LRM's copies and never the diffusion model's modules.
    torch.optim.SGD(lrm.parameters(), lr=0.1).step()
    assert not torch.equal(lrm.unet.conv_in.weight, before["conv_in.weight"])
    for name, param in components.unet.named_parameters():
        assert param.grad is None and torch.equal(param, before[name]), name
    assert all(p.grad is None for e in components.text_encoders for p in e.parameters())


def test_bf16_scores_are_float32_and_finite(sd15: DiffusionComponents) -> None:
    lrm = _lrm(sd15).to(torch.bfloat16)
    with torch.no_grad():
        scores = lrm(_latents(), 301, PROMPTS)  # fp32 latents are cast to the LRM's dtype
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert lrm.visual_projection.weight.dtype == torch.bfloat16


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip(components: DiffusionComponents, tmp_path: Path) -> None:
    lrm = _lrm(components)
    with torch.no_grad():
        lrm.logit_scale.fill_(3.0)  # a trained-looking value must survive too
    folder = save_lrm(lrm, tmp_path / "lrm")
    meta = json.loads((folder / LRM_CONFIG_NAME).read_text())
    assert meta["config"]["base_model"] == components.source and meta["config"]["kind"] == components.kind
    assert meta["unet"]["config"]["block_out_channels"] == list(components.unet.config.block_out_channels)
    assert not list(tmp_path.glob(".lrm.*"))  # no temporary folder left behind

    loaded = load_lrm(folder, components)
    assert not loaded.training and loaded.config == lrm.config
    assert loaded.state_dict().keys() == lrm.state_dict().keys()
    latents = _latents(2, seed=4)
    with torch.no_grad():
        assert torch.equal(loaded(latents, 651, PROMPTS), lrm(latents, 651, PROMPTS))
    # The folder alone is enough (no base model needed); saving again replaces it.
    save_lrm(loaded, folder)
    with torch.no_grad():
        assert torch.equal(load_lrm(folder)(latents, 651, PROMPTS), lrm(latents, 651, PROMPTS))


def test_load_errors_are_one_line(sd15: DiffusionComponents, tmp_path: Path) -> None:
    folder = save_lrm(_lrm(sd15), tmp_path / "lrm")

    def one_line_error(*args, **kwargs) -> str:
        with pytest.raises(LpoError) as info:
            load_lrm(*args, **kwargs)
        message = str(info.value)
        assert "\n" not in message, message
        return message

    message = one_line_error(folder, expected_base="other/model")
    assert message == (
        f"LRM {folder} was trained for base model {sd15.source} but you are using other/model; "
        "train an LRM for other/model with `lpo lrm train --model other/model`"
    )
    assert load_lrm(folder, expected_base=str(sd15.source) + "/.").kind == "sd15"  # same folder, other spelling
    assert "does not exist" in one_line_error(tmp_path / "nowhere")

    broken = Path(shutil.copytree(folder, tmp_path / "broken"))
    (broken / LRM_WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    assert str(broken / LRM_WEIGHTS_NAME) in one_line_error(broken)

    truncated = Path(shutil.copytree(folder, tmp_path / "truncated"))
    data = (truncated / LRM_WEIGHTS_NAME).read_bytes()
    (truncated / LRM_WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    assert str(truncated / LRM_WEIGHTS_NAME) in one_line_error(truncated)

    no_config = Path(shutil.copytree(folder, tmp_path / "no-config"))
    (no_config / LRM_CONFIG_NAME).unlink()
    assert str(no_config / LRM_CONFIG_NAME) in one_line_error(no_config)

    other_arch = Path(shutil.copytree(folder, tmp_path / "other-arch"))
    meta = json.loads((other_arch / LRM_CONFIG_NAME).read_text())
    meta["unet"]["config"]["layers_per_block"] = 2
    (other_arch / LRM_CONFIG_NAME).write_text(json.dumps(meta))
    assert "do not match" in one_line_error(other_arch)


# --------------------------------------------------------------------------- world


def test_world_pipeline(tiny_world_dir: Path, tmp_path: Path) -> None:
    world = load_components(tiny_world_dir)
    lrm = _lrm(world)
    assert lrm.kind == "world" and lrm.config.base_model == str(tiny_world_dir)
    channels = list(world.unet.config.block_out_channels)
    assert lrm.visual_projection.in_features == sum(channels) + channels[-1]
    assert lrm.text_dim == world.text_encoder.config.hidden_size
    size = world.unet.config.sample_size
    latents = torch.randn(2, world.latent_channels, size, size, generator=torch.Generator().manual_seed(5))
    prompts = ["a red circle", "a blue square"]  # world grammar words
    with torch.no_grad():
        scores = lrm(latents, torch.tensor([1, 951]), prompts)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    loaded = load_lrm(save_lrm(lrm, tmp_path / "world-lrm"), world)
    with torch.no_grad():
        assert torch.equal(loaded(latents, torch.tensor([1, 951]), prompts), scores)


def test_the_film_head_starts_as_the_plain_lrm_learns_a_per_t_modulation_and_round_trips(
        sd15: DiffusionComponents, tmp_path: Path) -> None:
    plain = _lrm(sd15, vfe_scale=1.0)
    torch.manual_seed(0)
    film = LatentRewardModel.from_components(sd15, LRMConfig(vfe_scale=1.0, head="film"))
    assert film.feature_film is not None and plain.feature_film is None
    film.load_state_dict(plain.state_dict(), strict=False)  # the same backbone and projections
    latents = _latents(2, seed=5)
    with torch.no_grad():  # zero-initialised modulation: the plain LRM's scores
        torch.testing.assert_close(film(latents, 651, PROMPTS), plain(latents, 651, PROMPTS), rtol=0, atol=0)
    # the modulation's own weights get gradients (it is trained with the LRM)
    film(latents, torch.tensor([1, 951]), PROMPTS).sum().backward()
    assert film.feature_film.linear.weight.grad is not None and film.feature_film.linear.weight.grad.abs().sum() > 0
    with torch.no_grad():  # once trained, the same latent scores differently at different t
        film.feature_film.linear.weight.normal_(std=0.5)
        expected = film(latents, 651, PROMPTS)
        assert not torch.allclose(film(latents, 1, PROMPTS), plain(latents, 1, PROMPTS))
    loaded = load_lrm(save_lrm(film, tmp_path / "film"), sd15)
    assert loaded.config.head == "film"
    with torch.no_grad():
        assert torch.equal(loaded(latents, 651, PROMPTS), expected)
    with pytest.raises(ValueError, match="head must be one of cosine, film"):
        LRMConfig(head="mlp")
