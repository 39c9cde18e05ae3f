"""The Latent Reward Model (LRM): a noise-aware reward on noisy latents, built from the diffusion model.

Implements SPEC §4.1 (LPO paper, arXiv 2502.01051, §4) for any diffusers
``UNet2DConditionModel`` pipeline that :func:`lpo.models.load_components` loads (SD1.5,
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

Visual tower: the LRM holds a ``UNet2DConditionModel`` whose up path (``up_blocks``,
``conv_norm_out``, ``conv_act``, ``conv_out``) has been *deleted*, so those weights are
neither stored, trained nor saved, and the copy's own ``forward`` fails loudly if called.
:func:`unet_down_mid` runs what remains the way ``UNet2DConditionModel.forward`` does
(time embedding, SDXL ``add_embedding``, ``conv_in``, down blocks, mid block).

Precision: the U-Net and text encoders run in the model's dtype (fp32, bf16 or fp16);
pooling, VFE, the projections and the cosine run in float32, and scores are float32.

Saving (:func:`save_lrm`) writes one folder: ``model.safetensors`` (every LRM weight),
``lrm_config.json`` (the :class:`LRMConfig`, including the base model and kind, plus the
U-Net and text-encoder configs, so :func:`load_lrm` rebuilds the architecture without the
base model) and the tokenizer(s).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpo.conditioning import GuidedConditioning, TextConditioning
from lpo.errors import LpoError
from lpo.io import atomic_directory, load_safetensors_strict, one_line
from lpo.models import DiffusionComponents, ModelKind, encode_negative, encode_prompts_and_pooled

LRM_CONFIG_NAME = "lrm_config.json"
LRM_WEIGHTS_NAME = "model.safetensors"
LRM_FORMAT = "lpo-lrm"
LRM_FORMAT_VERSION = 1
# The U-Net's decoder half: never used by the LRM, so removed from its copy.
UNET_UP_PATH = ("up_blocks", "conv_norm_out", "conv_act", "conv_out")
TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")


# --------------------------------------------------------------------------- config and outputs


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

    def __post_init__(self) -> None:
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


# --------------------------------------------------------------------------- the truncated U-Net


def check_supported_unet(unet: Any) -> None:
    """Raise LpoError for U-Nets the LRM cannot run without extra inputs or a mid block."""
    cfg = unet.config
    problems = []
    if getattr(unet, "class_embedding", None) is not None:
        problems.append(f"it is class-conditioned (class_embed_type={cfg.class_embed_type!r})")
    if cfg.addition_embed_type not in (None, "text", "text_time"):
        problems.append(f"addition_embed_type {cfg.addition_embed_type!r} needs image inputs")
    if cfg.encoder_hid_dim_type not in (None, "text_proj"):
        problems.append(f"encoder_hid_dim_type {cfg.encoder_hid_dim_type!r} needs image inputs")
    if getattr(unet, "mid_block", None) is None:
        problems.append("it has no mid block (mid_block_type=None), whose output the LRM scores")
    if getattr(unet, "peft_config", None):
        problems.append("it carries peft adapters; build the LRM from the base U-Net")
    if problems:
        raise LpoError(
            f"the LRM cannot be built from this U-Net: {'; '.join(problems)}; "
            "use an SD1.5-, SDXL- or world-style text-to-image U-Net"
        )


def truncate_unet(unet: nn.Module) -> nn.Module:
    """Delete the up path (``UNET_UP_PATH``) from ``unet`` in place and return it."""
    for name in UNET_UP_PATH:
        if hasattr(unet, name):
            delattr(unet, name)
    return unet


def copy_truncated_unet(unet: nn.Module) -> nn.Module:
    """A deep copy of ``unet`` without its up path; ``unet`` itself is untouched.

    The up-path modules are pre-seeded in deepcopy's memo as None, so their weights (about
    half of SDXL's U-Net) are never copied, then the None placeholders are deleted.
    """
    memo: dict[int, Any] = {}
    for name in ("up_blocks", "conv_norm_out", "conv_out"):  # the ones with weights; each owned by the U-Net alone
        module = getattr(unet, name, None)
        if module is not None:
            memo[id(module)] = None
    return truncate_unet(copy.deepcopy(unet, memo))


def unet_down_mid(
    unet: Any, sample: Tensor, timesteps: Tensor, conditioning: TextConditioning
) -> tuple[list[Tensor], Tensor]:
    """Run a (truncated) ``UNet2DConditionModel`` up to its mid block.

    Mirrors ``UNet2DConditionModel.forward`` steps 0–4 (diffusers 0.3x–0.4x) without
    attention masks, class labels, adapters or ControlNet residuals. Returns the last output
    of each down block *before its downsampler* (B, C_i, H_i, W_i) and the mid-block output
    (B, C_mid, H, W).
    """
    kwargs = conditioning.unet_kwargs()
    encoder_hidden_states = kwargs["encoder_hidden_states"]
    added_cond_kwargs = kwargs.get("added_cond_kwargs") or {}

    # 0. centre the input if the model was trained that way
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0

    # 1. time embedding (+ SDXL's add_embedding of text_embeds and time_ids)
    t_emb = unet.get_time_embed(sample=sample, timestep=timesteps)
    emb = unet.time_embedding(t_emb, None)
    aug_emb = unet.get_aug_embed(
        emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    if aug_emb is not None:
        emb = emb + aug_emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )

    # 2. pre-process
    hidden = unet.conv_in(sample)

    # 3. down blocks. Each returns (hidden after its downsampler, res_samples) where res_samples
    # holds one entry per resnet(+attention) and, when the block downsamples, the downsampler's
    # output last. The wanted "last output before the downsampler" is entry len(resnets) - 1.
    down_maps = []
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            hidden, res_samples = block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states)
        else:
            hidden, res_samples = block(hidden_states=hidden, temb=emb)
        num_layers = len(block.resnets)
        if len(res_samples) != num_layers + (block.downsamplers is not None):
            raise RuntimeError(  # a block type with another output layout: fail rather than pool the wrong map
                f"{type(block).__name__} returned {len(res_samples)} residuals for {num_layers} layers; "
                "the LRM does not know which is the pre-downsampler output"
            )
        down_maps.append(res_samples[num_layers - 1])

    # 4. mid block
    if getattr(unet.mid_block, "has_cross_attention", False):
        hidden = unet.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states)
    else:
        hidden = unet.mid_block(hidden, emb)
    return down_maps, hidden


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
    encoders) or :func:`load_lrm`. The constructor takes ownership of the modules it is
    given and deletes the U-Net's up path.
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
        config = replace(config, kind=components.kind, base_model=config.base_model or components.source)
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
        """A components view over the LRM's own text encoders, for lpo.models' encoders.

        Reusing lpo.models keeps tokenisation, SDXL's hidden-state concatenation and its
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
        # 2. the empty-prompt branch for VFE, built as guided_conditioning builds CFG's
        # (SDXL: zeros when force_zeros_for_empty_prompt); encoded once, shared by every row
        uncond = None
        if self.config.vfe:
            uncond = encode_negative(view, 1, resolution=self.resolution).repeat_interleave(cond.batch_size)
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
        # (uncond first, as lpo.conditioning.predict_noise orders CFG)
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
        # 4. V = W_v · concat(down, mid)
        visual = F.linear(torch.cat([*pooled_down, pooled_mid], dim=-1), self.visual_projection.weight.float())
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


# --------------------------------------------------------------------------- save / load


def save_lrm(model: LatentRewardModel, folder: str | Path) -> Path:
    """Write ``model`` to ``folder`` atomically (a temporary sibling renamed into place)."""
    folder = Path(folder)
    from safetensors.torch import save_file

    encoders = {"text_encoder": model.text_encoder, "text_encoder_2": model.text_encoder_2}
    for name, encoder in encoders.items():
        if encoder is not None and type(encoder).__name__ not in TEXT_ENCODER_CLASSES:
            raise LpoError(
                f"cannot save an LRM whose {name} is a {type(encoder).__name__}; "
                f"load_lrm rebuilds only {', '.join(TEXT_ENCODER_CLASSES)}"
            )
    meta = {
        "format": LRM_FORMAT,
        "format_version": LRM_FORMAT_VERSION,
        "config": asdict(model.config),
        "resolution": model.resolution,
        "force_zeros_for_empty_prompt": model.force_zeros_for_empty_prompt,
        "feature_dims": list(model.feature_dims),
        "text_dim": model.text_dim,
        "dtype": str(model.dtype).removeprefix("torch."),
        # The full U-Net config: load_lrm builds the U-Net from it, then deletes this up path.
        "unet": {"config": json.loads(model.unet.to_json_string()), "removed": list(UNET_UP_PATH)},
        **{
            name: None
            if encoder is None
            else {"class": type(encoder).__name__, "config": json.loads(encoder.config.to_json_string())}
            for name, encoder in encoders.items()
        },
    }
    state = {key: tensor.detach().to("cpu").contiguous() for key, tensor in model.state_dict().items()}
    with atomic_directory(folder) as tmp:
        save_file(state, str(tmp / LRM_WEIGHTS_NAME), metadata={"format": "pt"})
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        if model.tokenizer_2 is not None:
            model.tokenizer_2.save_pretrained(tmp / "tokenizer_2")
        (tmp / LRM_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def load_lrm(
    folder: str | Path,
    components: DiffusionComponents | None = None,
    expected_base: str | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LatentRewardModel:
    """Rebuild an LRM saved by :func:`save_lrm`, in eval mode, from its folder alone.

    ``expected_base`` (default: ``components.source`` when components are given) must name
    the same base model the LRM was built from. ``device`` defaults to the components'
    device (else CPU); ``dtype`` to the saved one. Failures a user can fix (missing or
    damaged files, another base model) raise a one-line LpoError.
    """
    folder = Path(folder)
    hint = "pass a folder written by `lpo lrm train` (or save_lrm)"
    if not folder.exists():
        raise LpoError(f"LRM folder {folder} does not exist; {hint}")
    if not folder.is_dir():
        raise LpoError(f"LRM path {folder} is a file, not a folder; {hint}")
    config_path, weights_path = folder / LRM_CONFIG_NAME, folder / LRM_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise LpoError(f"{path} is missing: {folder} is not a complete LRM folder; {hint}, or train the LRM again")

    # 1. the saved description, and whether it is for this base model
    meta = _read_meta(config_path)
    try:
        known = {f.name for f in fields(LRMConfig)}
        config = LRMConfig(**{k: v for k, v in meta["config"].items() if k in known})
        if config.kind is None or config.base_model is None:
            raise ValueError("base_model and kind must be set")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise LpoError(f"{config_path} has an invalid LRM config ({one_line(err)}); train the LRM again") from err
    expected = expected_base if expected_base is not None else (components.source if components is not None else None)
    if expected is not None and not same_base_model(config.base_model, expected):
        raise LpoError(
            f"LRM {folder} was trained for base model {config.base_model} but you are using {expected}; "
            f"train an LRM for {expected} with `lpo lrm train --model {expected}`"
        )
    if components is not None and components.kind != config.kind:
        raise LpoError(
            f"LRM {folder} is for a {config.kind} model but the components are {components.kind}; "
            f"train an LRM for {components.source} with `lpo lrm train --model {components.source}`"
        )

    # 2. the architecture, with empty (meta) weights: nothing is initialised only to be overwritten
    from accelerate import init_empty_weights

    try:
        tokenizer = _load_tokenizer(folder / "tokenizer")
        tokenizer_2 = _load_tokenizer(folder / "tokenizer_2") if config.kind == "sdxl" else None
        with init_empty_weights(include_buffers=False):  # buffers such as position_ids stay real
            unet = _build_unet(meta["unet"]["config"])
            text_encoder = _build_text_encoder(meta["text_encoder"])
            text_encoder_2 = _build_text_encoder(meta["text_encoder_2"]) if config.kind == "sdxl" else None
            model = LatentRewardModel(
                unet,
                text_encoder,
                tokenizer,
                config,
                resolution=int(meta["resolution"]),
                text_encoder_2=text_encoder_2,
                tokenizer_2=tokenizer_2,
                force_zeros_for_empty_prompt=bool(meta.get("force_zeros_for_empty_prompt", False)),
            )
    except (KeyError, TypeError, ValueError, OSError) as err:
        raise LpoError(
            f"could not rebuild the LRM described by {config_path} ({one_line(err)}); train the LRM again"
        ) from err
    pairs = (("tokenizer", tokenizer, text_encoder), ("tokenizer_2", tokenizer_2, text_encoder_2))
    for name, tokenizer_, encoder in pairs:
        # transformers builds a 2-token default tokenizer from a folder without vocabulary files
        if tokenizer_ is not None and not encoder.config.vocab_size / 2 <= len(tokenizer_) <= encoder.config.vocab_size:
            raise LpoError(
                f"{folder / name} has {len(tokenizer_)} tokens but the text encoder has {encoder.config.vocab_size}; "
                "the tokenizer files are missing or damaged: train the LRM again"
            )

    # 3. the weights, strictly
    load_safetensors_strict(
        model, weights_path, what="LRM weights", config_name=LRM_CONFIG_NAME,
        fix="the file is damaged or from another LRM: train the LRM again or restore the folder",
    )
    model.eval()
    if device is None and components is not None:
        device = components.device
    kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    return model.to(**kwargs) if kwargs else model


def same_base_model(a: str, b: str) -> bool:
    """Whether two base-model names mean the same model: equal strings, or the same local folder."""
    if str(a) == str(b):
        return True
    path_a, path_b = Path(a).expanduser(), Path(b).expanduser()
    return path_a.exists() and path_b.exists() and path_a.resolve() == path_b.resolve()


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LpoError(
            f"could not read {path} ({one_line(err)}); the LRM folder is damaged: train the LRM again"
        ) from err
    if not isinstance(meta, dict) or meta.get("format") != LRM_FORMAT:
        raise LpoError(
            f"{path} is not an lpo LRM config (no \"format\": \"{LRM_FORMAT}\"); pass a folder written by save_lrm"
        )
    if meta.get("format_version") != LRM_FORMAT_VERSION:
        raise LpoError(
            f"{path} has LRM format version {meta.get('format_version')}; this lpo reads version "
            f"{LRM_FORMAT_VERSION}: upgrade lpo or train the LRM again"
        )
    return meta


def _load_tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    if not folder.is_dir():
        raise OSError(f"{folder} is missing")
    return CLIPTokenizer.from_pretrained(folder)


def _build_unet(config: dict[str, Any]) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(config)


def _build_text_encoder(spec: dict[str, Any]) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    classes = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
    if spec["class"] not in classes:
        raise ValueError(f"text encoder class {spec['class']!r} is not one of {', '.join(classes)}")
    return classes[spec["class"]](CLIPTextConfig.from_dict(spec["config"]))
