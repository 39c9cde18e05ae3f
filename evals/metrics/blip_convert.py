"""BLIP's original checkpoints (salesforce/BLIP ``models/vit.py`` + ``med.py``) in transformers' names.

BLIP's ViT is timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1,
attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``); transformers' ``BlipVisionModel``
renames each of them (:func:`vit_key`). BLIP's text towers (``med.py``) are the BERT that
transformers' ``BlipText*`` classes port, under the same names. ImageReward's checkpoint and
BLIP's VQA checkpoints both use this layout.

:func:`convert_blip_vqa` turns ``model_base_vqa_capfilt_large.pth`` (the 480-px checkpoint
T2I-CompBench++ runs) into a ``BlipForQuestionAnswering`` folder at its native 480 px, so its
position embeddings are the original ones rather than the hub conversion's 384-px resize
interpolated back (``lpo convert blip-vqa``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping

import torch

from lpo.core.errors import LpoError

_VIT_BLOCK = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.projection",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VIT_DIRECT = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight",
    "norm.bias": "post_layernorm.bias",
}
_VIT_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
_BUFFER = re.compile(r"(^|\.)position_ids$")  # med.py's persistent buffer; transformers rebuilds it


def vit_key(key: str) -> str | None:
    """transformers ``BlipVisionModel`` name of BLIP ViT tensor ``key`` (no prefix); None if it is not one."""
    if key in _VIT_DIRECT:
        return _VIT_DIRECT[key]
    match = _VIT_BLOCK_KEY.match(key)
    if match and match.group(2) in _VIT_BLOCK:
        return f"encoder.layers.{match.group(1)}.{_VIT_BLOCK[match.group(2)]}.{match.group(3)}"
    return None


def blip_vqa_to_transformers(state: Mapping[str, torch.Tensor], *, metric: str, source: str, fix: str) -> dict[str, torch.Tensor]:
    """BLIP_VQA's state dict (visual_encoder, text_encoder, text_decoder) in ``BlipForQuestionAnswering``'s names."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if _BUFFER.search(key):
            continue
        if key.startswith("visual_encoder."):
            name = vit_key(key[len("visual_encoder."):])
            if name is not None:
                out["vision_model." + name] = tensor
                continue
        elif key.startswith(("text_encoder.", "text_decoder.")):
            out[key] = tensor
            continue
        raise LpoError(f"{metric}: {source} holds {key!r}, not a tensor of BLIP's VQA model "
                       f"(visual_encoder, text_encoder, text_decoder); {fix}")
    return out


def native_image_size(state: Mapping[str, torch.Tensor], patch_size: int) -> int:
    """The image side a BLIP ViT was trained at, read from its position embeddings (1 + side² patches)."""
    patches = state["visual_encoder.pos_embed"].shape[1] - 1
    side = math.isqrt(patches)
    if side * side != patches:
        raise LpoError(f"BLIP ViT position embeddings hold {patches} patches, not a square grid")
    return side * patch_size


def convert_blip_vqa(source: str | Path, out: str | Path, *, config_ref: str) -> Path:
    """Write ``BlipForQuestionAnswering`` (+ tokenizer) at the checkpoint's native size to ``out``.

    source: BLIP's VQA checkpoint (``torch.save`` of {"model": state dict, ...}, read with
    ``weights_only``). config_ref: a transformers BLIP VQA folder or hub id whose config
    (widths, vocabulary, special tokens) and tokenizer describe the same architecture;
    only the vision image size is taken from the checkpoint.
    """
    from accelerate import init_empty_weights
    from transformers import AutoTokenizer, BlipConfig, BlipForQuestionAnswering

    from lpo.core.io import atomic_directory
    from lpo.evals.metrics.weights import from_pretrained, load_checkpoint, load_into

    metric, fix = "blip-vqa", f"pass BLIP's model_base_vqa_capfilt_large.pth and a BLIP VQA config ({config_ref})"
    state = load_checkpoint(Path(source), metric=metric, fix=fix)
    config = from_pretrained(BlipConfig.from_pretrained, config_ref, metric=metric, what="BLIP config", fix=fix)
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, config_ref, metric=metric, what="BLIP tokenizer", fix=fix)
    if "visual_encoder.pos_embed" not in state:
        raise LpoError(f"{metric}: {source} has no visual_encoder.pos_embed; it is not a BLIP checkpoint; {fix}")
    config.vision_config.image_size = native_image_size(state, config.vision_config.patch_size)
    converted = blip_vqa_to_transformers(state, metric=metric, source=str(source), fix=fix)
    with init_empty_weights():
        model = BlipForQuestionAnswering(config)
    load_into(model, converted, metric=metric, source=str(source), layout="BLIP's VQA model for this config", fix=fix)
    with atomic_directory(Path(out)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out)
