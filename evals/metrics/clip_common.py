"""Shared CLIP pieces: loading a transformers CLIP with its PIL processor, and the
normalised image / text embeddings every CLIP-based metric starts from.

Embeddings follow CLIP's own definition: the vision tower's pooled [CLS] (after
``post_layernorm``) through ``visual_projection``; the text tower's pooled end-of-text
token (after ``final_layer_norm``) through ``text_projection``; each divided by its
L2 norm, as the upstream scorers do (``x / x.norm(dim=-1, keepdim=True)``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from lpo.evals.metrics.weights import from_pretrained, model_from_pretrained


def normalise(embeds: torch.Tensor) -> torch.Tensor:
    return embeds / embeds.norm(dim=-1, keepdim=True)


def image_embeds(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> L2-normalised (B, D) CLIP image embeddings."""
    pooled = model.vision_model(pixel_values=pixel_values).pooler_output
    return normalise(model.visual_projection(pooled))


def text_embeds(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids (B, L) -> L2-normalised (B, D) CLIP text embeddings."""
    pooled = model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return normalise(model.text_projection(pooled))


def tokenize(
    tokenizer, prompts: Sequence[str], max_length: int, *, padding: str | bool, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, truncated to ``max_length`` with the end token kept."""
    tokens = tokenizer(list(prompts), padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
    return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)


def load_clip_image_processor(ref: str, *, metric: str, fix: str):
    """transformers' CLIP image processor on its PIL backend, the one upstream scorers ran.

    transformers 5 defaults to a torchvision backend (not installed here, and resizing
    differently); 4.x's ``CLIPImageProcessor`` is the PIL one.
    """
    try:
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as processor_class

    return from_pretrained(processor_class.from_pretrained, ref, metric=metric, what="CLIP image processor", fix=fix)


def load_clip_tokenizer(ref: str, *, metric: str, fix: str):
    from transformers import CLIPTokenizer

    return from_pretrained(CLIPTokenizer.from_pretrained, ref, metric=metric, what="CLIP tokenizer", fix=fix)


class TransformersClip:
    """A transformers ``CLIPModel`` with the image processor and tokenizer it was
    evaluated with upstream (PickScore, CLIP score): cosine of the two embeddings."""

    def __init__(self, weights: str, processor: str, *, metric: str, fix: str, device: torch.device, dtype: torch.dtype):
        from transformers import CLIPModel

        self.model = model_from_pretrained(CLIPModel, weights, metric=metric, what="CLIP model", fix=fix)
        self.model.to(device=device, dtype=dtype).eval()
        self.image_processor = load_clip_image_processor(processor, metric=metric, fix=fix)
        self.tokenizer = load_clip_tokenizer(processor, metric=metric, fix=fix)
        self.device, self.dtype = device, dtype
        self.max_length = self.model.config.text_config.max_position_embeddings  # 77 for real CLIPs

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels.to(device=self.device, dtype=self.dtype)

    def cosine(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """cos(image_i, prompt_i) for each pair, shape (B,)."""
        image = image_embeds(self.model, self.pixel_values(images))
        input_ids, attention_mask = tokenize(self.tokenizer, prompts, self.max_length, padding=True, device=self.device)
        text = text_embeds(self.model, input_ids, attention_mask)
        return (image * text).sum(dim=-1)
