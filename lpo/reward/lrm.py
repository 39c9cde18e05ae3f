"""The Latent Reward Model (LRM): a noise-aware reward on noisy latents, built from the diffusion model.

Implements SPEC §4.1 (LPO paper, arXiv 2502.01051, §4) for any diffusers
``UNet2DConditionModel`` pipeline that :func:`lpo.models.components.load_components` loads (SD1.5,
SDXL, world). The LRM owns its own copies of the U-Net and text encoder(s), initialised
from the diffusion model's, so training it never touches the policy.

Paper notation -> code:

====================  ==================================================================
x_t, t                ``latents_t`` (B, C, h, w), ``timesteps`` (B,) or an int
prompt c, empty ∅     ``LRMText.conditioning.cond`` / ``.uncond`` (U-Net conditioning)
down-block features   ``LRMFeatures.down_features``: per down block, the global-average-
                      pooled output of its last resnet/attention, *before* its downsampler
                      (conditional pass)
V_c, V_u              pooled mid-block output with the prompt / with the empty prompt
g (VFE scale)         ``LRMConfig.vfe_scale`` (7.5; 1 = VFE off, one pass)
mid feature           ``LRMFeatures.mid_feature`` = V_u + g·(V_c − V_u)
V                     ``LRMFeatures.visual`` = ``visual_projection``(concat(down, mid))
T                     ``LRMFeatures.text``: SD1.5/world ``text_projection``(pooled EOS
                      state); SDXL ``text_encoder_2``'s projected ``text_embeds``
logit_scale           ``LatentRewardModel.logit_scale`` (init 2.6592, exp ≈ 14.3)
S(prompt, x_t, t)     ``LatentRewardModel.forward`` = exp(logit_scale)·cos(V, T)
====================  ==================================================================

Feature widths: SD1.5 320+640+1280+1280 (+1280 mid) = 4800; SDXL 320+640+1280 (+1280 mid)
= 3520; in general ``sum(block_out_channels) + block_out_channels[-1]``.

Visual tower: a copy of the U-Net cut after its mid block (:mod:`lpo.reward.lrm_unet`), so the
decoder half is neither stored, trained nor saved.

Precision: the U-Net and text encoders run in the model's dtype (fp32, bf16 or fp16);
pooling, VFE, the projections and the cosine run in float32, and scores are float32.

The LRM's folder (:func:`~lpo.reward.lrm_io.save_lrm`, :func:`~lpo.reward.lrm_io.load_lrm`) is
:mod:`lpo.reward.lrm_io`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpo.core.hashing import base_model_fingerprint
from lpo.models.components import DiffusionComponents, ModelKind, encode_negative, encode_prompts_and_pooled
from lpo.models.conditioning import GuidedConditioning, TextConditioning
from lpo.reward.config import LRMHeadName
from lpo.reward.time_conditioning import feature_film
from lpo.reward.lrm_unet import check_supported_unet, copy_truncated_unet, truncate_unet, unet_down_mid


# --------------------------------------------------------------------------- config and outputs

VfeUncond = Literal["empty_prompt", "zeros"]


@dataclass
class LRMConfig:
    """Settings of a Latent Reward Model (SPEC §4.1).

    ``base_model`` and ``kind`` name the diffusion model the LRM was built from; left as
    None they are filled in by :meth:`LatentRewardModel.from_components`.
    """

    vfe_scale: float = 7.5  # g: mid feature = V_u + g·(V_c − V_u); 1 turns VFE off (one U-Net pass)
    logit_scale_init: float = 2.6592  # log(1/0.07), CLIP's init: exp ≈ 14.3
    base_model: str | None = None  # hub id or folder of the base pipeline
    kind: ModelKind | None = None  # "sd15", "sdxl" or "world"
    # folder hash of the base pipeline's unet/ when it was a local folder: the same model
    # found under another path (a fresh clone, another machine) is still the same model
    base_model_hash: str | None = None
    # The VFE branch's text: "empty_prompt" encodes "" with the LRM's text encoders, as the
    # official LRM-1.5 and LRM-XL do (for SDXL both encoders, the pooled "" included);
    # "zeros" (SDXL only) gives all-zero embeddings, as the SDXL pipeline's CFG does with
    # force_zeros_for_empty_prompt: what SDXL LRM folders written by lpo before this field used.
    vfe_uncond: VfeUncond = "empty_prompt"
    # "cosine": S = exp(s)·cos(W_v·f, T) on the pooled feature f (the paper's LRM); "film":
    # f is first modulated by the timestep, (1 + γ(t))·f + β(t), zero-initialised (DiNa-LRM's
    # timestep-conditioned head, lpo.reward.time_conditioning.PooledFeatureFiLM)
    head: LRMHeadName = "cosine"

    def __post_init__(self) -> None:
        if self.head not in get_args(LRMHeadName):
            raise ValueError(f"head must be one of {', '.join(get_args(LRMHeadName))}, got {self.head!r}")
        if self.vfe_uncond not in get_args(VfeUncond):
            raise ValueError(f"vfe_uncond must be one of {', '.join(get_args(VfeUncond))}, got {self.vfe_uncond!r}")
        if self.vfe_uncond == "zeros" and self.kind is not None and self.kind != "sdxl":
            raise ValueError(f"vfe_uncond='zeros' needs an SDXL base model (pooled embeddings to zero), not {self.kind}")
        if not math.isfinite(self.vfe_scale) or self.vfe_scale < 1:
            raise ValueError(f"vfe_scale must be a finite number >= 1 (1 turns VFE off), got {self.vfe_scale}")
        if not math.isfinite(self.logit_scale_init):
            raise ValueError(f"logit_scale_init must be finite, got {self.logit_scale_init}")
        kinds = get_args(ModelKind)
        if self.kind is not None and self.kind not in kinds:
            raise ValueError(f"kind must be one of {', '.join(kinds)} (or None), got {self.kind!r}")
        if self.base_model is not None and not str(self.base_model).strip():
            raise ValueError("base_model is empty; give the base model's hub id or folder, or None")

    @property
    def vfe(self) -> bool:
        return self.vfe_scale != 1.0


@dataclass
class LRMText:
    """The text side of the LRM for B prompts, computed once and reusable for many latents.

    conditioning: U-Net conditioning; ``cond`` for the prompts, ``uncond`` for the empty
        prompt (only when VFE is on), ``guidance_scale`` = g.
    text: (B, D) float32 text feature T.
    """

    conditioning: GuidedConditioning
    text: Tensor

    @property
    def batch_size(self) -> int:
        return self.text.shape[0]

    def repeat_interleave(self, repeats: int) -> "LRMText":
        """Each prompt repeated ``repeats`` times in place, e.g. for K candidates per prompt."""
        return LRMText(self.conditioning.repeat_interleave(repeats), self.text.repeat_interleave(repeats, dim=0))

    def index(self, idx: Tensor | slice | int | Sequence[int]) -> "LRMText":
        """Rows ``idx`` (an int keeps the batch dimension)."""
        rows = slice(idx, idx + 1) if isinstance(idx, int) else idx
        return LRMText(self.conditioning.index(idx), self.text[rows])


@dataclass
class LRMFeatures:
    """Intermediate features of one LRM evaluation (all float32).

    down_features: per down block, (B, C_i) pooled pre-downsampler output of the conditional pass.
    mid_feature: (B, C_mid) pooled mid-block output after VFE.
    visual: (B, D) V.   text: (B, D) T.
    """

    down_features: list[Tensor]
    mid_feature: Tensor
    visual: Tensor
    text: Tensor

    @property
    def pooled(self) -> Tensor:
        """(B, sum C_i + C_mid) the concatenated visual feature before the projection."""
        return torch.cat([*self.down_features, self.mid_feature], dim=-1)


def _as_timesteps(timesteps: Tensor | int | float, batch: int, device: torch.device) -> Tensor:
    """(B,) timesteps from an int, a 0-d / 1-element tensor or a (B,) tensor."""
    if not torch.is_tensor(timesteps):
        timesteps = torch.tensor(timesteps, device=device)
    timesteps = timesteps.to(device)
    if timesteps.numel() == 1:
        return timesteps.reshape(1).expand(batch)
    if tuple(timesteps.shape) != (batch,):
        raise ValueError(f"timesteps has shape {tuple(timesteps.shape)}; pass an int or a tensor of shape ({batch},)")
    return timesteps


# --------------------------------------------------------------------------- the model


class LatentRewardModel(nn.Module):
    """S(prompt, x_t, t) = exp(logit_scale)·cos(V, T) on noisy latents (SPEC §4.1).

    Build it with :meth:`from_components` (copies the diffusion model's U-Net and text
    encoders) or :func:`~lpo.reward.lrm_io.load_lrm`. The constructor takes ownership of the
    modules it is given and deletes the U-Net's up path.
    """

    def __init__(
        self,
        unet: Any,
        text_encoder: nn.Module,
        tokenizer: Any,
        config: LRMConfig,
        *,
        resolution: int,
        text_encoder_2: nn.Module | None = None,
        tokenizer_2: Any = None,
        force_zeros_for_empty_prompt: bool = False,
        text_projection_init: Tensor | None = None,
    ) -> None:
        super().__init__()
        if config.kind is None or config.base_model is None:
            raise ValueError(
                "config.kind and config.base_model must be set; build the LRM with "
                "LatentRewardModel.from_components or load_lrm"
            )
        is_sdxl = config.kind == "sdxl"
        if is_sdxl != (text_encoder_2 is not None) or is_sdxl != (tokenizer_2 is not None):
            raise ValueError(f"kind {config.kind!r} needs text_encoder_2 and tokenizer_2 exactly when it is 'sdxl'")
        check_supported_unet(unet)
        self.config = config
        self.unet = truncate_unet(unet)
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.resolution = int(resolution)  # SDXL add_time_ids (res, res, 0, 0, res, res)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)

        # Down block i outputs block_out_channels[i]; the mid block keeps the last width.
        channels = list(unet.config.block_out_channels)
        self.feature_dims = (*channels, channels[-1])
        self.text_dim = int(text_encoder_2.config.projection_dim if is_sdxl else text_encoder.config.hidden_size)
        factory = {"device": self.unet.device, "dtype": self.unet.dtype}
        self.visual_projection = nn.Linear(sum(self.feature_dims), self.text_dim, bias=False, **factory)
        nn.init.normal_(self.visual_projection.weight, std=0.02)
        # SDXL's text_embeds are already projected (text_encoder_2.text_projection); SD1.5's
        # pooled EOS state gets its own D×D projection, as CLIP's text tower has.
        self.text_projection: nn.Linear | None = None
        if not is_sdxl:
            self.text_projection = nn.Linear(self.text_dim, self.text_dim, bias=False, **factory)
            with torch.no_grad():
                if text_projection_init is None:
                    self.text_projection.weight.copy_(torch.eye(self.text_dim))
                else:
                    expected = (self.text_dim, self.text_dim)
                    if tuple(text_projection_init.shape) != expected:
                        raise ValueError(
                            f"text_projection_init has shape {tuple(text_projection_init.shape)}; expected {expected} "
                            "(nn.Linear weight layout, out × in, e.g. CLIP's text_projection.weight)"
                        )
                    self.text_projection.weight.copy_(text_projection_init)
        elif text_projection_init is not None:
            raise ValueError("text_projection_init is for SD1.5/world LRMs; SDXL uses text_encoder_2's own projection")
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init), **factory))
        self.feature_film = feature_film(config.head, sum(self.feature_dims), factory)

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_components(
        cls,
        components: DiffusionComponents,
        config: LRMConfig | None = None,
        *,
        text_projection_init: Tensor | None = None,
    ) -> "LatentRewardModel":
        """An LRM initialised from ``components``, which stay untouched (the LRM gets copies).

        Every LRM parameter starts trainable, whatever the source modules' flags (SPEC §4.1
        trains the U-Net and the text encoders); freeze a scorer with ``requires_grad_(False)``.
        ``text_projection_init``: (D, D) weight for the SD1.5/world text projection (e.g.
        CLIP-L's ``text_projection.weight``); identity when None.
        """
        config = config or LRMConfig()
        if config.kind is not None and config.kind != components.kind:
            raise ValueError(f"config.kind is {config.kind!r} but the components are {components.kind!r}")
        config = replace(config, kind=components.kind, base_model=config.base_model or components.source,
                         base_model_hash=config.base_model_hash or base_model_fingerprint(components.source))
        check_supported_unet(components.unet)  # before copying gigabytes
        model = cls(
            copy_truncated_unet(components.unet),
            copy.deepcopy(components.text_encoder),
            components.tokenizer,
            config,
            resolution=components.default_resolution,
            text_encoder_2=copy.deepcopy(components.text_encoder_2),
            tokenizer_2=components.tokenizer_2,
            force_zeros_for_empty_prompt=components.force_zeros_for_empty_prompt,
            text_projection_init=text_projection_init,
        )
        model.requires_grad_(True)
        return model

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def kind(self) -> ModelKind:
        return self.config.kind  # type: ignore[return-value]

    def _text_components(self) -> DiffusionComponents:
        """A components view over the LRM's own text encoders, for lpo.models.components' encoders.

        Reusing lpo.models.components keeps tokenisation, SDXL's hidden-state concatenation and its
        zeroed negative identical to the pipelines'. No VAE or scheduler is needed: the
        resolution is always passed explicitly.
        """
        return DiffusionComponents(
            kind=self.kind,
            source=str(self.config.base_model),
            unet=self.unet,
            vae=None,
            scheduler=None,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
        )

    # ----------------------------------------------------------------- text tower

    def encode_text(self, prompts: str | Sequence[str]) -> LRMText:
        """U-Net conditioning and T for ``prompts``; with gradients unless under no_grad."""
        view = self._text_components()
        # 1. prompt conditioning and the pooled text vector from one run of each encoder
        cond, pooled = encode_prompts_and_pooled(view, prompts, resolution=self.resolution)
        # 2. the empty-prompt branch for VFE, encoded once and shared by every row: "" through
        # the text encoders (an explicit "" is never zeroed), or zeros (vfe_uncond="zeros")
        uncond = None
        if self.config.vfe:
            if self.config.vfe_uncond == "zeros":
                empty = encode_negative(replace(view, force_zeros_for_empty_prompt=True), 1, None, resolution=self.resolution)
            else:
                empty = encode_negative(view, 1, "", resolution=self.resolution)
            uncond = empty.repeat_interleave(cond.batch_size)
        conditioning = GuidedConditioning(cond=cond, uncond=uncond, guidance_scale=self.config.vfe_scale)
        # 3. T, in float32
        text = pooled.to(device=self.device, dtype=torch.float32)
        if self.text_projection is not None:
            text = F.linear(text, self.text_projection.weight.float())
        return LRMText(conditioning=conditioning, text=text)

    # ----------------------------------------------------------------- visual tower and score

    def _features(self, latents_t: Tensor, timesteps: Tensor | int, text: LRMText) -> LRMFeatures:
        batch = latents_t.shape[0]
        if text.batch_size != batch:
            raise ValueError(
                f"{batch} latents but text for {text.batch_size} prompts; for K latents per prompt "
                "use text.repeat_interleave(K)"
            )
        latents_t = latents_t.to(device=self.device, dtype=self.dtype)
        timesteps = _as_timesteps(timesteps, batch, self.device)
        guided = text.conditioning
        # 1. one U-Net call; with VFE the unconditional and conditional halves are batched
        # (uncond first, as lpo.models.conditioning.predict_noise orders CFG)
        if guided.uncond is None:
            down_maps, mid_map = unet_down_mid(self.unet, latents_t, timesteps, guided.cond)
        else:
            both = TextConditioning.cat([guided.uncond, guided.cond])
            down_maps, mid_map = unet_down_mid(
                self.unet, torch.cat([latents_t, latents_t]), torch.cat([timesteps, timesteps]), both
            )
        # 2. global average pooling over H, W in float32: (n·B, C, H, W) -> (n·B, C)
        pooled_down = [h.float().mean(dim=(2, 3)) for h in down_maps]
        pooled_mid = mid_map.float().mean(dim=(2, 3))
        # 3. VFE on the mid vector only; down features from the conditional pass
        if guided.uncond is not None:
            pooled_down = [p.chunk(2)[1] for p in pooled_down]
            mid_uncond, mid_cond = pooled_mid.chunk(2)
            pooled_mid = mid_uncond + guided.guidance_scale * (mid_cond - mid_uncond)
        # 4. V = W_v · concat(down, mid), the concatenation modulated by t first with head="film"
        pooled = torch.cat([*pooled_down, pooled_mid], dim=-1)
        if self.feature_film is not None:
            pooled = self.feature_film(pooled, timesteps)
        visual = F.linear(pooled, self.visual_projection.weight.float())
        return LRMFeatures(down_features=pooled_down, mid_feature=pooled_mid, visual=visual, text=text.text)

    def features(self, latents_t: Tensor, timesteps: Tensor | int, prompts: Sequence[str] | LRMText) -> LRMFeatures:
        """Pooled down/mid features, V and T for ``latents_t`` (B, C, h, w) and B prompts."""
        text = prompts if isinstance(prompts, LRMText) else self.encode_text(prompts)
        return self._features(latents_t, timesteps, text)

    def score_features(self, features: LRMFeatures) -> Tensor:
        """(B,) float32 exp(logit_scale)·cos(V, T)."""
        cosine = F.cosine_similarity(features.visual.float(), features.text.float(), dim=-1)
        return self.logit_scale.float().exp() * cosine

    def score_with_conditioning(self, latents_t: Tensor, timesteps: Tensor | int, text: LRMText) -> Tensor:
        """(B,) scores for precomputed text (:meth:`encode_text`), e.g. K candidates per prompt."""
        return self.score_features(self._features(latents_t, timesteps, text))

    def forward(self, latents_t: Tensor, timesteps: Tensor | int, prompts: Sequence[str]) -> Tensor:
        """(B,) float32 scores S(prompt_i, x_t^i, t_i); ``timesteps`` an int or (B,)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) != latents_t.shape[0]:
            raise ValueError(f"{latents_t.shape[0]} latents but {len(prompts)} prompts; pass one prompt per latent")
        return self.score_with_conditioning(latents_t, timesteps, self.encode_text(prompts))
