"""Randomly initialised models at the real architectures' sizes, for cost benchmarks.

Timing does not depend on weight values, so the benchmarks build SD1.5, SDXL and
PickScore-sized modules from their published configs (the ``config.json`` files of
``stable-diffusion-v1-5``, ``stable-diffusion-xl-base-1.0`` and ``PickScore_v1``) with
random weights: nothing is downloaded and nothing needs a hub. The tokenizer is the
world's (a CLIP BPE over the world grammar, plugged in as its model family's
``build_tokenizer`` by ``lpo.world.install()``), padded to CLIP's 77 tokens, so text
encoding runs at the real sequence length.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from lpo.models.components import SD15_SCHEDULER_CONFIG, DiffusionComponents

Architecture = Literal["sd15", "sdxl"]
ARCHITECTURES: tuple[str, ...] = ("sd15", "sdxl")

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
CLIP_L_TEXT = dict(  # SD1.5's and SDXL's first text encoder (OpenAI CLIP ViT-L/14)
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    projection_dim=768, hidden_act="quick_gelu", max_position_embeddings=77,
)
OPENCLIP_BIGG_TEXT = dict(  # SDXL's text_encoder_2
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    projection_dim=1280, hidden_act="gelu", max_position_embeddings=77,
)
PICKSCORE_VISION = dict(  # CLIP ViT-H/14 (PickScore_v1)
    hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
    patch_size=14, image_size=224, hidden_act="gelu",
)
PICKSCORE_TEXT = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    hidden_act="gelu", max_position_embeddings=77,
)
CLIP_VOCAB_SIZE = 49408


def _clip_tokenizer() -> Any:
    """The world's CLIP BPE tokenizer with CLIP's 77-token length (ids fit CLIP's vocabulary)."""
    from lpo.models.families import offline_tokenizer_builder

    tokenizer = offline_tokenizer_builder()(Path(tempfile.mkdtemp(prefix="lpo-perf-tok-")))
    tokenizer.model_max_length = 77
    return tokenizer


def _text_config(spec: dict[str, Any], tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec,
    )


def random_components(
    architecture: Architecture, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> DiffusionComponents:
    """SD1.5- or SDXL-sized components with random weights, built directly on ``device``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    tokenizer = _clip_tokenizer()
    sdxl = architecture == "sdxl"
    with torch.device(device):
        unet = UNet2DConditionModel(**(SDXL_UNET if sdxl else SD15_UNET))
        vae = AutoencoderKL(
            sample_size=1024 if sdxl else 512, scaling_factor=0.13025 if sdxl else 0.18215, **SD_VAE
        )
        text_encoder = CLIPTextModel(_text_config(CLIP_L_TEXT, tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(OPENCLIP_BIGG_TEXT, tokenizer)) if sdxl else None
    modules = [unet, vae, text_encoder] + ([text_encoder_2] if sdxl else [])
    for module in modules:
        module.to(dtype=dtype).eval().requires_grad_(False)
    return DiffusionComponents(
        kind=architecture,
        source=f"random-{architecture}",
        unet=unet,
        vae=vae,
        scheduler=DDIMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer if sdxl else None,
        force_zeros_for_empty_prompt=sdxl,
    )


def random_pickscore_scorer(*, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """SPO's step-aware scorer at PickScore's size (CLIP ViT-H/14), random weights."""
    from transformers import CLIPConfig, CLIPModel

    from lpo.reward.clip_preprocess import ImagePreprocessConfig
    from lpo.reward.pixel_scorer import TimestepConditionedScorer

    tokenizer = _clip_tokenizer()
    config = CLIPConfig(
        text_config=_text_config(PICKSCORE_TEXT, tokenizer).to_dict(),
        vision_config=PICKSCORE_VISION,
        projection_dim=1024,
    )
    with torch.device(device):
        clip = CLIPModel(config)
    clip.to(dtype=dtype)
    preprocess = ImagePreprocessConfig(shortest_edge=224, crop_size=(224, 224))
    return TimestepConditionedScorer(clip, tokenizer, preprocess, None, source="random PickScore-size").to(device).eval()
