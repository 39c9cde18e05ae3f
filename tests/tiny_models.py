"""Tiny, seeded, randomly initialised SD1.5-style and SDXL-style pipelines for tests.

Real weights are never downloaded (SPEC §1.1): these builders make every component from
a config, save the assembled diffusers pipeline with ``save_pretrained`` and return the
folder, so tests go through the very same ``from_pretrained`` path as real checkpoints.

Shapes are chosen to mirror the real models' structure at toy size:

- SD1.5: one CLIP text encoder (hidden 32), U-Net cross-attention width 32, no added
  conditioning; a DDIM scheduler with SD1.5's beta schedule.
- SDXL: two text encoders (``CLIPTextModel`` hidden 32 + ``CLIPTextModelWithProjection``
  hidden 32, projection 32), U-Net cross-attention width 32 + 32 = 64,
  ``addition_embed_type="text_time"`` with input 32 + 6·8 = 80, and the real SDXL
  scheduler class and config (``EulerDiscreteScheduler``), so loading exercises the
  conversion to DDIM.

The tokenizer is written as ``vocab.json`` + ``merges.txt`` (the file layout of the real
SD1.5/SDXL tokenizer folders) from a vocabulary built here: every printable ASCII
character plus a handful of whole words, so no prompt falls back to the unknown token
(which is ``<|endoftext|>`` for CLIP and would move the pooled EOS position).

Sizes: latents (4, 8, 8), images 16×16 (two VAE blocks: scale factor 2).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch

from lpo.models.components import SD15_SCHEDULER_CONFIG

SEED = 0
MAX_LENGTH = 16  # tokenizer model_max_length == text encoder max_position_embeddings
TEXT_HIDDEN = 32  # width of each tiny CLIP text encoder
PROJECTION_DIM = 32  # SDXL text_encoder_2 projection (pooled ``text_embeds`` width)
TIME_EMBED_DIM = 8  # SDXL addition_time_embed_dim
LATENT_SIZE = 8  # U-Net sample_size
VAE_BLOCKS = (16, 32)  # two blocks: vae_scale_factor 2, images 16×16
WORDS = (
    "a an the photo of red green blue yellow black white cat dog bird car house tree "
    "circle square triangle star on left right above below next to big small two three"
).split()

SD15_SCHEDULER = SD15_SCHEDULER_CONFIG
SDXL_SCHEDULER = dict(  # stable-diffusion-xl-base-1.0 scheduler_config.json (Euler)
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    interpolation_type="linear",
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="leading",
    use_karras_sigmas=False,
)


def write_tiny_vocab(folder: Path) -> Path:
    """Write a byte-level BPE ``vocab.json`` + ``merges.txt`` for CLIP's tokenizer; return folder."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    # Printable ASCII maps to itself under GPT-2's byte-to-unicode table, so single
    # characters (plain and word-final "</w>") cover any prompt without the unknown token.
    chars = [c for c in string.printable if not c.isspace()]
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[str] = []
    for word in WORDS:  # merge each word left to right into one token
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def tiny_tokenizer(folder: Path, *, pad_token: str = "<|endoftext|>"):
    """A CLIPTokenizer loaded from files written into ``folder`` (SDXL's second one pads with "!")."""
    from transformers import CLIPTokenizer

    write_tiny_vocab(folder)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_LENGTH, pad_token=pad_token)


def _text_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # the pooled output is taken at the first EOS
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def tiny_vae(*, scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
        block_out_channels=VAE_BLOCKS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=LATENT_SIZE * 2 ** (len(VAE_BLOCKS) - 1),
        scaling_factor=scaling_factor,
    )


def tiny_sd15_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def tiny_sdxl_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # SDXL: no attention at full res
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_HIDDEN,  # both encoders' hidden states concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=PROJECTION_DIM + 6 * TIME_EMBED_DIM,
        norm_num_groups=8,
    )


def build_tiny_sd15():
    """Assemble a seeded tiny ``StableDiffusionPipeline`` in memory (not saved)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    with tempfile.TemporaryDirectory() as vocab_dir:
        tokenizer = tiny_tokenizer(Path(vocab_dir))
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    return StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_sd15_unet(),
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl():
    """Assemble a seeded tiny ``StableDiffusionXLPipeline`` in memory (not saved)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with tempfile.TemporaryDirectory() as vocab_dir:
        tokenizer = tiny_tokenizer(Path(vocab_dir) / "1")
        tokenizer_2 = tiny_tokenizer(Path(vocab_dir) / "2", pad_token="!")  # as SDXL's real tokenizer_2
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    torch.manual_seed(SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, projection_dim=PROJECTION_DIM))
    return StableDiffusionXLPipeline(
        vae=tiny_vae(scaling_factor=0.13025),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=tiny_sdxl_unet(),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def tiny_sd15_pipeline(tmp_path: Path) -> Path:
    """Save a tiny SD1.5 pipeline into ``tmp_path`` with ``save_pretrained``; return that folder.

    ``model_index.json`` lists ``safety_checker`` and ``feature_extractor`` as ``[null, null]``,
    as the world pipeline's folder will.
    """
    folder = Path(tmp_path)
    build_tiny_sd15().save_pretrained(folder)
    _hub_tokenizer_layout(folder / "tokenizer")
    return folder


def tiny_sdxl_pipeline(tmp_path: Path) -> Path:
    """Save a tiny SDXL pipeline into ``tmp_path`` with ``save_pretrained``; return that folder."""
    folder = Path(tmp_path)
    build_tiny_sdxl().save_pretrained(folder)
    _hub_tokenizer_layout(folder / "tokenizer")
    _hub_tokenizer_layout(folder / "tokenizer_2")
    # The hub's SDXL scheduler_config.json also carries DDIM/PNDM keys that Euler ignores
    # but DDIMScheduler.from_pretrained reads; without them DDIM would clip x0 to [-1, 1].
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config.update(clip_sample=False, set_alpha_to_one=False, sample_max_value=1.0, skip_prk_steps=True)
    config_path.write_text(json.dumps(config, indent=2))
    return folder


def _hub_tokenizer_layout(folder: Path) -> None:
    """Replace the saved ``tokenizer.json`` by ``vocab.json`` + ``merges.txt``.

    transformers 5 saves only ``tokenizer.json``, but the hub's SD1.5/SDXL tokenizer folders
    hold only vocab.json + merges.txt; loading must work from that layout.
    """
    (folder / "tokenizer.json").unlink()
    write_tiny_vocab(folder)


def save_random_lrm(base: Path, out: Path, poison: bool = False) -> Path:
    """A seeded, untrained LRM on the pipeline in ``base``, saved to ``out`` (all-NaN weights with ``poison``)."""
    import torch

    from lpo.models.components import load_components
    from lpo.reward.lrm import LatentRewardModel, LRMConfig
    from lpo.reward.lrm_io import save_lrm

    torch.manual_seed(0)
    model = LatentRewardModel.from_components(load_components(base), LRMConfig(vfe_scale=1.0))
    if poison:
        with torch.no_grad():
            for param in model.parameters():
                param.fill_(float("nan"))
    save_lrm(model, out)
    return out
