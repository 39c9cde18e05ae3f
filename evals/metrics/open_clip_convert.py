"""open_clip CLIP state dicts -> transformers ``CLIPModel`` ones (names and layouts).

open_clip (the ``CLIP`` class with a ViT image tower and its own text transformer, as
HPSv2's checkpoints are) and transformers compute the same network; only the names and
three layouts differ:

- attention: ``attn.in_proj_weight`` (3D, D) / ``in_proj_bias`` (3D,) stack q, k, v
  (``nn.MultiheadAttention``); transformers has ``q_proj``, ``k_proj``, ``v_proj``.
- projections: open_clip's ``visual.proj`` and ``text_projection`` are (width, embed) and
  applied as ``x @ proj``; transformers' are ``nn.Linear`` weights (embed, width).
- positional embeddings are plain (N, D) parameters in open_clip and ``nn.Embedding``
  weights in transformers (same tensor).

Layer norms (``ln_pre``, ``ln_1``, ``ln_2``, ``ln_post``, ``ln_final``), MLPs (``c_fc`` /
``c_proj``; GELU in both for ViT-H-14) and the pooling (image: [CLS] after ``ln_post``;
text: the end-of-text token after ``ln_final``) correspond one to one.

Every source tensor must be converted and every target tensor produced: an unknown name
is an error, not a silently dropped weight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch

from lpo.core.errors import LpoError


@dataclass(frozen=True)
class OpenClipArchitecture:
    """An open_clip ViT CLIP's shape; ``VIT_H_14`` is open_clip's ViT-H-14.json."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int  # open_clip: width // head_width (ViT-H-14: 1280 // 80)
    vision_mlp: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    layer_norm_eps: float = 1e-5  # open_clip's nn.LayerNorm default

    def clip_config(self, *, bos_token_id: int, eos_token_id: int, pad_token_id: int):
        """The transformers ``CLIPConfig`` of this architecture.

        The text tower pools at the first ``eos_token_id``; open_clip pools at the argmax
        token id, the same position since end-of-text has the largest id in CLIP's vocabulary.
        """
        from transformers import CLIPConfig

        text = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.text_width,
            intermediate_size=self.text_mlp,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            max_position_embeddings=self.context_length,
            hidden_act="gelu",
            layer_norm_eps=self.layer_norm_eps,
            projection_dim=self.embed_dim,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
        vision = dict(
            hidden_size=self.vision_width,
            intermediate_size=self.vision_mlp,
            num_hidden_layers=self.vision_layers,
            num_attention_heads=self.vision_heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act="gelu",
            layer_norm_eps=self.layer_norm_eps,
            projection_dim=self.embed_dim,
        )
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=self.embed_dim)


VIT_H_14 = OpenClipArchitecture(
    embed_dim=1024,
    image_size=224,
    patch_size=14,
    vision_width=1280,
    vision_layers=32,
    vision_heads=16,
    vision_mlp=5120,
    context_length=77,
    vocab_size=49408,
    text_width=1024,
    text_layers=24,
    text_heads=16,
    text_mlp=4096,
)

_DIRECT = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic, transformers' name
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_BLOCK = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_STACKED = {"attn.in_proj_weight": "weight", "attn.in_proj_bias": "bias"}
_RESBLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def open_clip_to_transformers(
    state: Mapping[str, torch.Tensor], *, metric: str, source: str, fix: str
) -> dict[str, torch.Tensor]:
    """Rename (and split / transpose) an open_clip ViT CLIP state dict for ``CLIPModel``."""
    out: dict[str, torch.Tensor] = {}

    def unexpected(key: str) -> LpoError:
        return LpoError(f"{metric}: {source} holds {key!r}, not a tensor of an open_clip ViT CLIP; {fix}")

    for key, tensor in state.items():
        if key in _DIRECT:
            out[_DIRECT[key]] = tensor
        elif key in _TRANSPOSED:
            if tensor.ndim != 2:
                raise LpoError(f"{metric}: {source}: {key} has shape {tuple(tensor.shape)}, expected a matrix; {fix}")
            out[_TRANSPOSED[key]] = tensor.t().contiguous()
        elif match := _RESBLOCK.match(key):
            tower = "vision_model" if match.group(1) else "text_model"
            prefix, rest = f"{tower}.encoder.layers.{match.group(2)}.", match.group(3)
            if rest in _BLOCK:
                out[prefix + _BLOCK[rest]] = tensor
            elif rest in _STACKED:
                if tensor.shape[0] % 3:
                    raise LpoError(f"{metric}: {source}: {key} has shape {tuple(tensor.shape)}, not 3 stacked q/k/v; {fix}")
                for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}.{_STACKED[rest]}"] = part.contiguous()
            else:
                raise unexpected(key)
        else:
            raise unexpected(key)
    return out
