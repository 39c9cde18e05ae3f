"""A tiny, seeded SD3-style pipeline (MMDiT + two CLIPs with projection + optional T5) saved for tests.

Built from configs and saved with ``save_pretrained``, so tests load it through the same
``from_pretrained`` path as a real SD3 / SD3.5 checkpoint. Widths mirror SD3's structure at
toy size: CLIP-L 8 and CLIP-G 16 wide (concatenated 24, zero-padded to T5's 32 as 2048 is
padded to 4096), pooled projection 8 + 16 = 24, joint attention width 32, latents (4, 8, 8),
the VAE with SD3's scaling and shift factors, and the scheduler SD3 ships
(``FlowMatchEulerDiscreteScheduler``, shift 3.0). The T5 tokenizer is a unigram vocabulary of
single characters (no sentencepiece file needed).
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from tiny_models import tiny_tokenizer, tiny_vae

T5_LENGTH = 16  # max_sequence_length for the tiny pipeline (SD3's default is 256)


def _clip(tokenizer, hidden: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=hidden, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def tiny_t5(folder: Path):
    """(T5Tokenizer, T5EncoderModel) at toy size."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in string.printable if not c.isspace()]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.save_pretrained(folder)
    model = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, num_layers=2, num_heads=2, d_kv=8))
    return tokenizer, model


def tiny_sd3_pipeline(folder: Path, *, with_t5: bool = True, seed: int = 0) -> Path:
    """Save a random tiny ``StableDiffusion3Pipeline`` to ``folder``; returns it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(folder.parent / f"{folder.name}-clip-tokenizer")
    t5_tokenizer, t5 = tiny_t5(folder.parent / f"{folder.name}-t5-tokenizer") if with_t5 else (None, None)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=24, out_channels=4,
    )
    vae = tiny_vae(scaling_factor=1.5305)
    vae.register_to_config(shift_factor=0.0609)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=_clip(tokenizer, 8), tokenizer=tokenizer, text_encoder_2=_clip(tokenizer, 16), tokenizer_2=tokenizer,
        text_encoder_3=t5, tokenizer_3=t5_tokenizer,
    )
    pipe.save_pretrained(folder)
    return folder
