"""The Latent Reward Model on an MMDiT (SD3 / SD3.5): the LRM of SPEC §4.1 for flow-matching models.

The U-Net LRM pools the U-Net's down/mid features; an MMDiT has no down path, so this one
runs the first ``num_blocks`` joint transformer blocks of a copy of the diffusion model's
transformer and pools their image tokens:

====================  ==================================================================
x_σ, t                ``latents_t`` (B, C, h, w) on the flow path x_σ = (1 − σ)·x0 + σ·ε,
                      ``timesteps`` = σ·1000 as the transformer takes them
prompt c, empty ∅     ``MMDiTText.cond`` / ``.uncond`` (SD3 prompt embeddings, pooled)
image feature         mean over the image tokens after block ``num_blocks`` (float32)
VFE (optional)        V_u + g·(V_c − V_u) on that mean with the "" prompt, g = ``vfe_scale``
V                     ``visual_projection``(image feature), width = the pooled text width
T                     ``text_projection``(pooled CLIP-L ⊕ CLIP-G embedding), identity init
S(prompt, x_σ, t)     exp(logit_scale)·cos(V, T)
====================  ==================================================================

Default depth: ``num_blocks`` = 18 of SD3-medium's 24 blocks, the LPO authors' recipe for
LRM-SD3 (Kwai-Kolors/LPO issue 10: features from MMDiT block 18, ~68% accuracy); VFE is off
by default (``vfe_scale`` = 1), since that recipe does not use it. Both are this project's
reading of a forum answer, not published hyperparameters. The text side is the pipeline's
own encoders (:func:`lpo.models.flow_components.encode_flow_prompts`), copied into the LRM.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any, Sequence, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpo.models.flow_components import FlowComponents, FlowConditioning, encode_flow_prompts
from lpo.reward.config import LRMHeadName
from lpo.reward.time_conditioning import feature_film

DEFAULT_NUM_BLOCKS = 18


@dataclass
class MMDiTLRMConfig:
    num_blocks: int = DEFAULT_NUM_BLOCKS
    vfe_scale: float = 1.0  # 1: one pass with the prompt; >1: also the "" pass, V_u + g·(V_c − V_u)
    logit_scale_init: float = 2.6592
    max_sequence_length: int = 256  # T5 tokens, as the pipeline's default
    base_model: str | None = None
    head: LRMHeadName = "cosine"  # "film": the pooled image feature modulated by t first (lpo.reward.lrm.LRMConfig.head)

    def __post_init__(self) -> None:
        if self.head not in get_args(LRMHeadName):
            raise ValueError(f"head must be one of {', '.join(get_args(LRMHeadName))}, got {self.head!r}")
        if not isinstance(self.num_blocks, int) or self.num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive integer, got {self.num_blocks!r}")
        if not math.isfinite(self.vfe_scale) or self.vfe_scale < 1:
            raise ValueError(f"vfe_scale must be a finite number >= 1 (1 turns VFE off), got {self.vfe_scale}")


@dataclass
class MMDiTText:
    """The text side for B prompts: transformer conditioning (+ "" when VFE is on) and T (B, P) float32."""

    cond: FlowConditioning
    uncond: FlowConditioning | None
    text: Tensor

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    def repeat_interleave(self, repeats: int) -> "MMDiTText":
        def rep(c: FlowConditioning | None) -> FlowConditioning | None:
            if c is None:
                return None
            return FlowConditioning(c.prompt_embeds.repeat_interleave(repeats, 0), c.pooled.repeat_interleave(repeats, 0))

        return MMDiTText(rep(self.cond), rep(self.uncond), self.text.repeat_interleave(repeats, 0))


class _TruncatedMMDiT(nn.Module):
    """The input embedders and the first N joint blocks of an ``SD3Transformer2DModel``."""

    def __init__(self, transformer: Any, num_blocks: int) -> None:
        super().__init__()
        self.pos_embed = transformer.pos_embed
        self.time_text_embed = transformer.time_text_embed
        self.context_embedder = transformer.context_embedder
        self.blocks = nn.ModuleList(list(transformer.transformer_blocks)[:num_blocks])
        self.inner_dim = int(transformer.config.num_attention_heads * transformer.config.attention_head_dim)

    def forward(self, latents: Tensor, timesteps: Tensor, cond: FlowConditioning) -> Tensor:
        """(B, tokens, inner) image tokens after the last kept block."""
        hidden = self.pos_embed(latents)
        temb = self.time_text_embed(timesteps, cond.pooled)
        context = self.context_embedder(cond.prompt_embeds)
        for block in self.blocks:
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
        return hidden


class MMDiTLatentRewardModel(nn.Module):
    """S(prompt, x_σ, t) = exp(logit_scale)·cos(V, T) from the first N blocks of an MMDiT."""

    def __init__(self, components: FlowComponents, config: MMDiTLRMConfig) -> None:
        super().__init__()
        if getattr(components.transformer, "peft_config", None):
            raise ValueError("the transformer carries peft adapters; build the MMDiT LRM from the base transformer")
        layers = int(components.transformer.config.num_layers)
        if config.num_blocks > layers:
            raise ValueError(f"num_blocks is {config.num_blocks} but the transformer has {layers} blocks")
        self.config = replace(config, base_model=config.base_model or components.source)
        transformer = copy.deepcopy(components.transformer)
        # blocks past N and the output head are never run: drop them from the copy
        transformer.transformer_blocks = nn.ModuleList(list(transformer.transformer_blocks)[: config.num_blocks])
        transformer.norm_out = transformer.proj_out = None
        self.backbone = _TruncatedMMDiT(transformer, config.num_blocks)
        # the text side: copies of the pipeline's encoders, tokenizers shared
        self._text = replace(components, transformer=transformer, vae=None, scheduler=None,
                             text_encoder=copy.deepcopy(components.text_encoder),
                             text_encoder_2=copy.deepcopy(components.text_encoder_2),
                             text_encoder_3=copy.deepcopy(components.text_encoder_3))
        self.text_encoder, self.text_encoder_2 = self._text.text_encoder, self._text.text_encoder_2
        self.text_encoder_3 = self._text.text_encoder_3
        text_dim = int(components.transformer.config.pooled_projection_dim)
        factory = {"device": components.device, "dtype": components.dtype}
        self.visual_projection = nn.Linear(self.backbone.inner_dim, text_dim, bias=False, **factory)
        nn.init.normal_(self.visual_projection.weight, std=0.02)
        self.text_projection = nn.Linear(text_dim, text_dim, bias=False, **factory)
        with torch.no_grad():
            self.text_projection.weight.copy_(torch.eye(text_dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init), **factory))
        self.feature_film = feature_film(config.head, self.backbone.inner_dim, factory)
        self.requires_grad_(True)

    @classmethod
    def from_components(cls, components: FlowComponents, config: MMDiTLRMConfig | None = None) -> "MMDiTLatentRewardModel":
        """An LRM initialised from ``components``, which stay untouched (the LRM gets copies)."""
        return cls(components, config or MMDiTLRMConfig())

    @property
    def device(self) -> torch.device:
        return self.visual_projection.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual_projection.weight.dtype

    def encode_text(self, prompts: str | Sequence[str]) -> MMDiTText:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        length = self.config.max_sequence_length
        cond = encode_flow_prompts(self._text, prompts, max_sequence_length=length)
        uncond = None
        if self.config.vfe_scale != 1.0:
            empty = encode_flow_prompts(self._text, [""], max_sequence_length=length)
            uncond = FlowConditioning(empty.prompt_embeds.expand(len(prompts), -1, -1), empty.pooled.expand(len(prompts), -1))
        text = F.linear(cond.pooled.float(), self.text_projection.weight.float())
        return MMDiTText(cond, uncond, text)

    def image_feature(self, latents_t: Tensor, timesteps: Tensor | float, text: MMDiTText) -> Tensor:
        """(B, inner) float32 pooled image tokens after block N (VFE-combined when on, then
        modulated by t with ``head="film"``)."""
        batch = latents_t.shape[0]
        if text.batch_size != batch:
            raise ValueError(f"{batch} latents but text for {text.batch_size} prompts; use text.repeat_interleave(K)")
        latents_t = latents_t.to(device=self.device, dtype=self.dtype)
        t = torch.as_tensor(timesteps, device=self.device, dtype=torch.float32).reshape(-1)
        t = t.expand(batch) if t.numel() == 1 else t
        if text.uncond is None:
            feature = self.backbone(latents_t, t, text.cond).float().mean(dim=1)
        else:
            pooled = self.backbone(torch.cat([latents_t, latents_t]), torch.cat([t, t]), text.uncond.cat(text.cond))
            uncond, cond = pooled.float().mean(dim=1).chunk(2)
            feature = uncond + self.config.vfe_scale * (cond - uncond)
        return feature if self.feature_film is None else self.feature_film(feature, t)

    def score_with_conditioning(self, latents_t: Tensor, timesteps: Tensor | float, text: MMDiTText) -> Tensor:
        visual = F.linear(self.image_feature(latents_t, timesteps, text), self.visual_projection.weight.float())
        return self.logit_scale.float().exp() * F.cosine_similarity(visual, text.text.float(), dim=-1)

    def forward(self, latents_t: Tensor, timesteps: Tensor | float, prompts: Sequence[str]) -> Tensor:
        """(B,) float32 scores; ``timesteps`` σ·1000, a number or (B,)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.score_with_conditioning(latents_t, timesteps, self.encode_text(prompts))
