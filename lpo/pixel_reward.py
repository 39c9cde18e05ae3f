"""SPO's step-aware preference model: a timestep-conditioned pixel reward on the decoded one-step x̂0.

Implements SPEC §4.3 (SPO paper, arXiv 2406.04314, §4.2 and its official code) as the
pixel-space counterpart of the LRM (:mod:`lpo.lrm`, SPEC §4.1): the same call signature
``forward(latents_t, timesteps, prompts) -> (B,)``, the same scores (exp(logit_scale)·cos),
trained on the same pairs the same way (2-way cross-entropy). SPO's step loop (SPEC §5.2)
uses it as the step reward where LPO uses the LRM.

Paper notation -> code:

====================  ==================================================================
x_t, t                ``latents_t`` (B, C, h, w), ``timesteps`` (B,) or an int
ε̂                     CFG-combined noise prediction of the FROZEN base U-Net, w = 5.0
                      (``PixelRewardConfig.guidance_scale``), empty negative prompt
x̂0                    ``predicted_original_sample`` = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t  (B, C, h, w)
D(x̂0)                 ``PixelStepReward.decode_x0``: frozen VAE decode of x̂0/scaling_factor,
                      an image (B, 3, H, W) in [-1, 1]
e_t                   timestep embedding: sinusoid(t) -> MLP (``TimestepEmbedding``)
AdaLN                 per vision layer l: (shift, scale, gate) × 2 = Linear(SiLU(e_t)),
                      zero-initialised (``EncoderLayerAdaLN``); pooled output: (shift, scale)
I, T                  ``TimestepConditionedScorer.encode_images`` / ``encode_text`` (B, P)
S(prompt, x_t, t)     ``PixelStepReward.forward`` = exp(logit_scale)·cos(I(D(x̂0), t), T)
====================  ==================================================================

The scorer (:class:`TimestepConditionedScorer`) is a transformers ``CLIPModel`` left
completely intact (its state-dict keys are the official ones under ``clip.``), plus a time
embedding and AdaLN modules attached with forward hooks on its *vision* encoder layers,
following SPO's ``TimeConditionedCLIPEncoderLayer`` (DiT-style adaLN):

    h = h + (1 + g_a)·Attn((1 + s_a)·LN1(h) + b_a)
    h = h + (1 + g_m)·MLP((1 + s_m)·LN2(h) + b_m)
    pooled = (1 + s_p)·post_LN(h_cls) + b_p

All of (b, s, g) come from zero-initialised linear maps of SiLU(e_t), so at
initialisation the scorer *is* the plain CLIP model (SPO starts from PickScore). SPO writes
the gates as ``g·x`` with a bias of 1; ``(1 + g)·x`` with a zero bias is the same function
family with the zero-init identity stated explicitly. Outside a scoring call (e.g.
``scorer.clip`` used directly) the hooks do nothing. Gradient checkpointing of the vision
tower is refused: its backward recomputation would run outside the call and drop the AdaLN.

Two ways to build a scorer:

- real mode, :meth:`TimestepConditionedScorer.from_clip_pretrained`: any ``CLIPModel``
  folder or hub id, e.g. PickScore ``yuvalkirstain/PickScore_v1`` with the processor
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (tokenizer and ``preprocessor_config.json``).
- world, :func:`world_pixel_scorer`: there is no PickScore for the embedded world, so a
  small randomly initialised CLIP (vision ViT on 32×32 images, patch 4, width 64, 3 layers;
  text transformer width 64 on the world's grammar tokenizer) is trained from scratch on
  the world's preference pairs. Its text tower can optionally start from the world
  pipeline's own text encoder.

Image preprocessing (:func:`preprocess_images`) reimplements ``CLIPImageProcessor`` in
torch on differentiable tensors in [-1, 1]: [0, 1] → shortest-edge resize (bicubic,
antialiased) → centre crop → (x − mean)/std, with size, crop, mean and std read from the
processor config. The resize runs PIL's algorithm (separable: width pass, clip to [0, 1],
height pass, clip) with ``torch.nn.functional.interpolate(antialias=True)``, whose
bicubic kernel (a = −0.5) and support scaling are PIL's. The one unavoidable difference is
that PIL works on uint8 images and rounds after each pass: on the same uint8 image the two
differ by at most about 1/255 per pixel in [0, 1] (≈ 0.004/std ≈ 0.015 after
normalisation; bounded in tests/test_pixel_reward.py). SPO's own code resizes with a
non-antialiased bicubic (a = −0.75) instead; we match the processor PickScore was trained
with.

Precision: the scorer runs in its dtype; preprocessing, the cosine and the scores are
float32. x̂0 is float32; the VAE decodes in its own dtype (for fp16 SDXL use an fp16-safe
VAE such as ``madebyollin/sdxl-vae-fp16-fix``, see ``load_components(vae=...)``).

Saving (:func:`save_pixel_reward`) writes one folder atomically: ``model.safetensors``
(the scorer's weights only), ``pixel_reward_config.json`` (the :class:`PixelRewardConfig`
naming the base model, and the scorer's CLIP config, AdaLN config, preprocessing and the
source it was initialised from) and ``tokenizer/``. The base U-Net and VAE are never
saved: :func:`load_pixel_reward` takes them from the components it is given and refuses a
scorer trained for another base model.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator, Sequence, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpo.conditioning import GuidedConditioning, predict_noise
from lpo.errors import LpoError
from lpo.io import atomic_directory, load_safetensors_strict, one_line
from lpo.models import DiffusionComponents, ModelKind, guided_conditioning

PIXEL_REWARD_CONFIG_NAME = "pixel_reward_config.json"
PIXEL_REWARD_WEIGHTS_NAME = "model.safetensors"
PIXEL_REWARD_FORMAT = "lpo-pixel-reward"
PIXEL_REWARD_FORMAT_VERSION = 1

# SPEC §4.3 / §6.1: the paper initialises the step-aware model from PickScore.
PICKSCORE_MODEL_ID = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
# CLIPImageProcessor's defaults (OpenAI CLIP), used when a folder has no preprocessor config.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL resampling filter ids (PILImageResampling) -> torch interpolate modes we reproduce.
_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}


# --------------------------------------------------------------------------- configs


@dataclass
class ImagePreprocessConfig:
    """``CLIPImageProcessor`` steps, applied in torch to images in [-1, 1] (see module docstring).

    shortest_edge: resize so the shorter side has this length (the long side
        ``int(shortest_edge·long/short)``, as transformers computes it); or
    size: resize to exactly (height, width). At most one of the two; neither = no resize.
    crop_size: (height, width) centre crop (zero-padded if the image is smaller), or None.
    image_mean, image_std: per-channel normalisation of [0, 1] values.
    resample: "bicubic" (CLIP's 3) or "bilinear" (2), both antialiased like PIL.
    """

    shortest_edge: int | None = 224
    size: tuple[int, int] | None = None
    crop_size: tuple[int, int] | None = (224, 224)
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        # JSON gives lists back; keep tuples so configs compare equal after a round trip.
        self.size = None if self.size is None else tuple(int(v) for v in self.size)
        self.crop_size = None if self.crop_size is None else tuple(int(v) for v in self.crop_size)
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if self.shortest_edge is not None and self.size is not None:
            raise ValueError(f"give shortest_edge ({self.shortest_edge}) or size ({self.size}), not both")
        for name in ("size", "crop_size"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or min(value) < 1):
                raise ValueError(f"{name} must be (height, width) with positive entries, got {value}")
        if self.shortest_edge is not None and self.shortest_edge < 1:
            raise ValueError(f"shortest_edge must be positive, got {self.shortest_edge}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(
                f"image_mean and image_std need 3 entries and std > 0, got {self.image_mean} and {self.image_std}"
            )
        if self.resample not in _RESAMPLE_MODES.values():
            raise ValueError(f"resample must be one of {', '.join(_RESAMPLE_MODES.values())}, got {self.resample!r}")

    @classmethod
    def from_processor_dict(cls, config: dict[str, Any]) -> "ImagePreprocessConfig":
        """From a ``preprocessor_config.json`` (new-style dict sizes or old-style ints).

        Raises ValueError for steps this reimplementation does not reproduce.
        """
        unsupported = []
        if not config.get("do_rescale", True) or not math.isclose(
            float(config.get("rescale_factor", 1 / 255)), 1 / 255, rel_tol=1e-6
        ):
            unsupported.append(f"rescale {config.get('do_rescale')}/{config.get('rescale_factor')} (need 1/255)")
        resample = int(config.get("resample", 3))
        if resample not in _RESAMPLE_MODES:
            unsupported.append(f"resample {resample} (supported: 2 bilinear, 3 bicubic)")
        shortest_edge = size = None
        if config.get("do_resize", True):
            raw = config.get("size", 224)
            if isinstance(raw, int):  # old CLIPFeatureExtractor format: an int is the shortest edge
                shortest_edge = raw
            elif isinstance(raw, dict) and set(raw) == {"shortest_edge"}:
                shortest_edge = int(raw["shortest_edge"])
            elif isinstance(raw, dict) and set(raw) == {"height", "width"}:
                size = (int(raw["height"]), int(raw["width"]))
            else:
                unsupported.append(f"size {raw!r}")
        crop_size = None
        if config.get("do_center_crop", True):
            raw = config.get("crop_size", 224)
            if isinstance(raw, int):
                crop_size = (raw, raw)
            elif isinstance(raw, dict) and {"height", "width"} <= set(raw):
                crop_size = (int(raw["height"]), int(raw["width"]))
            else:
                unsupported.append(f"crop_size {raw!r}")
        if unsupported:
            raise ValueError(f"unsupported image processor settings: {'; '.join(unsupported)}")
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if config.get("do_normalize", True):
            mean = tuple(config.get("image_mean", OPENAI_CLIP_MEAN))
            std = tuple(config.get("image_std", OPENAI_CLIP_STD))
        return cls(
            shortest_edge=shortest_edge,
            size=size,
            crop_size=crop_size,
            image_mean=mean,
            image_std=std,
            resample=_RESAMPLE_MODES[resample],
        )

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the resize step, for an input of (height, width)."""
        if self.size is not None:
            return self.size
        if self.shortest_edge is None:
            return height, width
        # transformers.image_transforms.get_resize_output_image_size(default_to_square=False)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the pixel values for an input of (height, width)."""
        return self.crop_size if self.crop_size is not None else self.resized_size(height, width)


@dataclass
class AdaLNConfig:
    """The timestep conditioning of the vision tower (SPO's ``TimestepEmbedder`` + adaLN).

    frequency_dim: width of the sinusoidal embedding of t (cos then sin, as DiT / SPO).
    max_period: its longest period.
    The MLP and AdaLN widths follow the vision tower's hidden size.
    """

    frequency_dim: int = 256
    max_period: float = 10000.0

    def __post_init__(self) -> None:
        if self.frequency_dim < 2 or self.frequency_dim % 2:
            raise ValueError(f"frequency_dim must be an even number >= 2, got {self.frequency_dim}")
        if not math.isfinite(self.max_period) or self.max_period <= 1:
            raise ValueError(f"max_period must be a finite number > 1, got {self.max_period}")


@dataclass
class WorldScorerConfig:
    """Architecture of the world's step-aware scorer (:func:`world_pixel_scorer`), trained from scratch.

    Vision: a ViT for 32×32 images with 4×4 patches (64 patches + CLS), width 64, 3 layers.
    Text: a CLIP text transformer of width 64 on the world tokenizer (ignored when the
    text tower is copied from a text encoder). Preprocessing: resize/crop to
    ``image_size``, mean = std = 0.5, so the pixel values are the decoded image in [-1, 1].
    """

    image_size: int = 32
    patch_size: int = 4
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate_size: int = 256
    projection_dim: int = 64
    logit_scale_init: float = 2.6592  # log(1/0.07), CLIP's init

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        towers = ((self.hidden_size, self.num_heads, ""), (self.text_hidden_size, self.text_heads, "text_"))
        for width, heads, what in towers:
            if width % heads:
                raise ValueError(f"{what}hidden_size {width} must be divisible by {what}heads {heads}")


@dataclass
class PixelRewardConfig:
    """Settings of the pixel step reward (SPEC §4.3, §5.2).

    ``base_model`` and ``kind`` name the diffusion model whose U-Net predicts x̂0 and whose
    VAE decodes it; left as None they are filled in from the components.
    """

    guidance_scale: float = 5.0  # CFG weight of the one-step x̂0 prediction (SPO: 5)
    negative_prompt: str | None = None  # None: the pipeline's default ("" for SD1.5/world, zeros for SDXL)
    base_model: str | None = None
    kind: ModelKind | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 1:
            raise ValueError(
                f"guidance_scale must be a finite number >= 1 (1 turns CFG off), got {self.guidance_scale}"
            )
        kinds = get_args(ModelKind)
        if self.kind is not None and self.kind not in kinds:
            raise ValueError(f"kind must be one of {', '.join(kinds)} (or None), got {self.kind!r}")
        if self.base_model is not None and not str(self.base_model).strip():
            raise ValueError("base_model is empty; give the base model's hub id or folder, or None")


# --------------------------------------------------------------------------- preprocessing


def _resize_like_pil(images: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """PIL's resize of (B, C, H, W) values in [0, 1]: width pass, clip, height pass, clip."""
    height, width = images.shape[-2:]
    new_height, new_width = size
    if new_width != width:  # PIL resamples horizontally first and clips to the pixel range
        images = F.interpolate(images, size=(height, new_width), mode=mode, antialias=True, align_corners=False)
        images = images.clamp(0, 1)
    if new_height != height:
        images = F.interpolate(images, size=(new_height, new_width), mode=mode, antialias=True, align_corners=False)
        images = images.clamp(0, 1)
    return images


def _center_crop(images: Tensor, size: tuple[int, int]) -> Tensor:
    """transformers' ``center_crop``: top = (H − h)//2, zero padding when the image is smaller."""
    height, width = images.shape[-2:]
    crop_height, crop_width = size
    if crop_height > height or crop_width > width:
        new_height, new_width = max(crop_height, height), max(crop_width, width)
        top_pad, left_pad = math.ceil((new_height - height) / 2), math.ceil((new_width - width) / 2)
        images = F.pad(images, (left_pad, new_width - width - left_pad, top_pad, new_height - height - top_pad))
        height, width = new_height, new_width
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return images[..., top : top + crop_height, left : left + crop_width]


def preprocess_images(images: Tensor, config: ImagePreprocessConfig) -> Tensor:
    """(B, 3, H, W) images in [-1, 1] -> (B, 3, h, w) float32 pixel values, differentiably.

    Values outside [-1, 1] are clipped, as saving the image would.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
    # 1. [-1, 1] -> [0, 1], what the processor's rescale (1/255) gives for a uint8 image
    pixels = (images.float() / 2 + 0.5).clamp(0, 1)
    # 2. resize (shortest edge or exact size)
    new_size = config.resized_size(*pixels.shape[-2:])
    if new_size != tuple(pixels.shape[-2:]):
        pixels = _resize_like_pil(pixels, new_size, config.resample)
    # 3. centre crop
    if config.crop_size is not None:
        pixels = _center_crop(pixels, config.crop_size)
    # 4. normalise
    mean = torch.tensor(config.image_mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


# --------------------------------------------------------------------------- time conditioning


def timestep_sinusoid(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B, dim) float32 [cos, sin] embedding of (B,) timesteps (GLIDE / DiT / SPO)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """e_t = MLP(sinusoid(t)): Linear(F, D) -> SiLU -> Linear(D, D), weights N(0, 0.02) as SPO."""

    def __init__(self, hidden_size: int, config: AdaLNConfig) -> None:
        super().__init__()
        self.config = config
        self.mlp = nn.Sequential(
            nn.Linear(config.frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, timesteps: Tensor) -> Tensor:
        sinusoid = timestep_sinusoid(timesteps, self.config.frequency_dim, self.config.max_period)
        return self.mlp(sinusoid.to(self.mlp[0].weight.dtype))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """(1 + scale)·x + shift, with (B, D) shift/scale broadcast over x's middle dims."""
    view = (shift.shape[0],) + (1,) * (x.dim() - 2) + (shift.shape[-1],)
    return x * (1 + scale.view(view).to(x.dtype)) + shift.view(view).to(x.dtype)


class EncoderLayerAdaLN(nn.Module):
    """AdaLN of one CLIP vision encoder layer, attached by forward hooks (module docstring).

    ``linear`` maps SiLU(e_t) to (shift, scale, gate) for the attention branch and the MLP
    branch; zero-initialised, so the layer starts as the plain CLIP layer. The hooks read
    the modulation set by :meth:`condition` and do nothing when none is set.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 6 * hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self._modulation: tuple[Tensor, ...] | None = None

    def condition(self, time_embedding: Tensor | None) -> None:
        """Set (time_embedding (B, D)) or clear (None) the modulation the hooks apply."""
        if time_embedding is None:
            self._modulation = None
        else:
            self._modulation = self.linear(F.silu(time_embedding)).chunk(6, dim=-1)  # 6 × (B, D)

    def attach(self, layer: nn.Module) -> list[Any]:
        """Register the hooks on a ``CLIPEncoderLayer``; returns the handles."""
        return [
            layer.layer_norm1.register_forward_hook(self._after_layer_norm1),
            layer.self_attn.register_forward_hook(self._after_attention),
            layer.layer_norm2.register_forward_hook(self._after_layer_norm2),
            layer.mlp.register_forward_hook(self._after_mlp),
        ]

    # Bound methods (not closures), so copy.deepcopy of the scorer re-binds them to the copy.
    def _after_layer_norm1(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if self._modulation is None:
            return None
        shift, scale = self._modulation[0], self._modulation[1]
        return _modulate(output, shift, scale)

    def _after_attention(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self._modulation is None:
            return None
        gate = self._modulation[2]
        if isinstance(output, tuple):  # (attn_output, attn_weights)
            return (_modulate(output[0], torch.zeros_like(gate), gate),) + output[1:]
        return _modulate(output, torch.zeros_like(gate), gate)

    def _after_layer_norm2(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if self._modulation is None:
            return None
        return _modulate(output, self._modulation[3], self._modulation[4])

    def _after_mlp(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if self._modulation is None:
            return None
        gate = self._modulation[5]
        return _modulate(output, torch.zeros_like(gate), gate)


class PooledAdaLN(nn.Module):
    """(1 + scale)·post_layernorm(h_cls) + shift, zero-initialised (SPO's final adaLN)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 2 * hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self._modulation: tuple[Tensor, ...] | None = None

    def condition(self, time_embedding: Tensor | None) -> None:
        self._modulation = None if time_embedding is None else self.linear(F.silu(time_embedding)).chunk(2, dim=-1)

    def attach(self, post_layernorm: nn.Module) -> list[Any]:
        return [post_layernorm.register_forward_hook(self._after_post_layernorm)]

    def _after_post_layernorm(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if self._modulation is None:
            return None
        return _modulate(output, self._modulation[0], self._modulation[1])


# --------------------------------------------------------------------------- the scorer


def _as_timesteps(timesteps: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """(B,) long timesteps from an int, a 0-d / 1-element tensor or a (B,) tensor."""
    timesteps = torch.as_tensor(timesteps, device=device)
    if timesteps.is_floating_point():
        raise ValueError(f"timesteps must be integers (training timesteps 0..T−1), got dtype {timesteps.dtype}")
    timesteps = timesteps.long().reshape(-1)
    if timesteps.numel() == 1:
        return timesteps.expand(batch)
    if timesteps.numel() != batch:
        raise ValueError(f"got {timesteps.numel()} timesteps for a batch of {batch}; pass one or one per sample")
    return timesteps


def _prompt_list(prompts: str | Sequence[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    return prompts


class TimestepConditionedScorer(nn.Module):
    """SPO's step-aware preference model: a CLIP whose vision tower is conditioned on t.

    score(image, t, prompt) = exp(logit_scale)·cos(visual_projection(pooled(image, t)),
    text_projection(pooled(prompt))), exactly PickScore's formula; at initialisation (zero
    AdaLN) it equals the wrapped ``CLIPModel`` for every t.

    clip: a transformers ``CLIPModel`` (kept intact: official weights load unchanged).
    tokenizer: its CLIP tokenizer.
    preprocess: how images in [-1, 1] become its pixel values; the output must be the
        vision tower's ``image_size`` square.
    source: where the CLIP weights came from (hub id / folder, or "random"), for the record.
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Any,
        preprocess: ImagePreprocessConfig,
        adaln: AdaLNConfig | None = None,
        *,
        source: str = "random",
    ) -> None:
        super().__init__()
        vision_config = clip.config.vision_config
        side = int(vision_config.image_size)
        probe = preprocess.output_size(side, side)
        if preprocess.crop_size is None and preprocess.size is None:
            raise ValueError(
                "preprocess needs crop_size or an exact size: a shortest-edge resize alone gives "
                f"non-square pixel values for non-square images, and the vision tower takes {side}×{side}"
            )
        if tuple(probe) != (side, side):
            raise ValueError(
                f"preprocess produces {probe[0]}×{probe[1]} pixel values but the vision tower takes "
                f"{side}×{side}; set the crop (or size) to {side}"
            )
        self.clip = clip
        self.tokenizer = tokenizer
        self.preprocess_config = preprocess
        self.adaln_config = adaln or AdaLNConfig()
        self.source = str(source)
        hidden = int(vision_config.hidden_size)
        vision = clip.vision_model
        layers = vision.encoder.layers
        param = next(clip.parameters())
        self.time_embedding = TimestepEmbedding(hidden, self.adaln_config)
        self.layer_adaln = nn.ModuleList(EncoderLayerAdaLN(hidden) for _ in layers)
        self.pooled_adaln = PooledAdaLN(hidden)
        for module in (self.time_embedding, self.layer_adaln, self.pooled_adaln):
            module.to(device=param.device, dtype=param.dtype)
        for adaln_module, layer in zip(self.layer_adaln, layers):
            adaln_module.attach(layer)
        self.pooled_adaln.attach(vision.post_layernorm)

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_clip_pretrained(
        cls,
        model: str | Path,
        processor: str | Path | None = None,
        *,
        adaln: AdaLNConfig | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> "TimestepConditionedScorer":
        """Wrap ``CLIPModel.from_pretrained(model)`` (e.g. PickScore) with zero-initialised AdaLN.

        ``processor`` (default ``model``) holds the tokenizer and, when present,
        ``preprocessor_config.json`` (a ``CLIPImageProcessor`` config: size, crop, mean,
        std); without one, CLIP's defaults at the vision tower's ``image_size`` are used.
        For PickScore: ``from_clip_pretrained(PICKSCORE_MODEL_ID, PICKSCORE_PROCESSOR_ID)``.
        Returned in eval mode; call ``.train()`` to train it.
        """
        from transformers import CLIPModel, CLIPTokenizer

        processor = model if processor is None else processor
        hint = (f"allow hub access or fetch {model} (and {processor}) into the Hugging Face cache with `hf download` "
                "(lpo lrm train --preset spo-pixel-* always loads PickScore from the hub; in Python pass a local folder)")
        clip = _guarded_load(
            lambda: CLIPModel.from_pretrained(str(model), dtype=dtype), f"CLIPModel from {model}", hint
        )
        tokenizer = _guarded_load(
            lambda: CLIPTokenizer.from_pretrained(str(processor)), f"the CLIP tokenizer from {processor}", hint
        )
        processor_dict = _read_processor_dict(processor)
        side = int(clip.config.vision_config.image_size)
        if processor_dict is None:
            preprocess = ImagePreprocessConfig(shortest_edge=side, crop_size=(side, side))
        else:
            try:
                preprocess = ImagePreprocessConfig.from_processor_dict(processor_dict)
            except ValueError as err:
                raise LpoError(f"the image processor config of {processor} cannot be reproduced: {err}") from err
        return cls(clip, tokenizer, preprocess, adaln, source=str(model)).to(device).eval()

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.logit_scale.dtype

    @property
    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale

    def describe(self) -> dict[str, Any]:
        """The architecture as JSON-able data (what :func:`load_pixel_reward` rebuilds from)."""
        return {
            "class": type(self.clip).__name__,
            "clip_config": self.clip.config.to_dict(),
            "adaln": asdict(self.adaln_config),
            "preprocess": asdict(self.preprocess_config),
            "source": self.source,
        }

    # ----------------------------------------------------------------- towers

    def _max_length(self) -> int:
        return min(int(self.tokenizer.model_max_length), int(self.clip.config.text_config.max_position_embeddings))

    def encode_text(self, prompts: str | Sequence[str]) -> Tensor:
        """(B, P) text embeddings T (projected, not normalised), with gradients."""
        input_ids = self.tokenizer(
            _prompt_list(prompts),
            padding="max_length",
            max_length=self._max_length(),
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        pooled = self.clip.text_model(input_ids=input_ids).pooler_output
        return self.clip.text_projection(pooled)

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images in [-1, 1] -> (B, 3, S, S) pixel values in the scorer's dtype."""
        return preprocess_images(images.to(self.device), self.preprocess_config).to(self.dtype)

    @contextmanager
    def _conditioned_on(self, timesteps: Tensor) -> Iterator[None]:
        """Set every AdaLN's modulation for ``timesteps`` (B,) for the duration of one forward."""
        encoder = self.clip.vision_model.encoder
        if any(getattr(m, "gradient_checkpointing", False) for m in (encoder, *encoder.layers)):
            raise ValueError(
                "gradient checkpointing is on in the scorer's CLIP model: its backward recomputation would run "
                "without the AdaLN hooks' modulation; call scorer.clip.gradient_checkpointing_disable()"
            )
        time_embedding = self.time_embedding(timesteps)  # (B, D)
        modules = [*self.layer_adaln, self.pooled_adaln]
        try:
            for module in modules:
                module.condition(time_embedding)
            yield
        finally:
            for module in modules:
                module.condition(None)

    def encode_images(self, images: Tensor, timesteps: Tensor | int) -> Tensor:
        """(B, P) image embeddings I(image, t) of images in [-1, 1] at timesteps t (int or (B,))."""
        pixel_values = self.preprocess(images)
        timesteps = _as_timesteps(timesteps, pixel_values.shape[0], self.device)
        with self._conditioned_on(timesteps):
            pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output  # (B, D), AdaLN applied
        return self.clip.visual_projection(pooled)

    def score(self, images: Tensor, timesteps: Tensor | int, text: str | Sequence[str] | Tensor) -> Tensor:
        """(B,) float32 exp(logit_scale)·cos(I(image, t), T(prompt)); ``text`` prompts or (B, P) embeddings."""
        text_embeds = text if torch.is_tensor(text) else self.encode_text(text)
        if text_embeds.shape[0] != images.shape[0]:
            raise ValueError(
                f"{images.shape[0]} images but text for {text_embeds.shape[0]} prompts; pass one per image"
            )
        image_embeds = self.encode_images(images, timesteps)
        cosine = F.cosine_similarity(image_embeds.float(), text_embeds.float().to(image_embeds.device), dim=-1)
        return self.clip.logit_scale.float().exp() * cosine

    def forward(self, images: Tensor, timesteps: Tensor | int, prompts: str | Sequence[str] | Tensor) -> Tensor:
        return self.score(images, timesteps, prompts)


def world_pixel_scorer(
    tokenizer: Any,
    config: WorldScorerConfig | None = None,
    *,
    text_encoder: nn.Module | None = None,
    adaln: AdaLNConfig | None = None,
    seed: int = 0,
) -> TimestepConditionedScorer:
    """A randomly initialised step-aware scorer for the embedded world (there is no PickScore).

    tokenizer: the world pipeline's tokenizer (``components.tokenizer``), so prompts
        tokenize exactly as the diffusion model's.
    text_encoder: optionally a ``CLIPTextModel`` (e.g. the world pipeline's own) whose
        architecture and weights the text tower copies; by default the text tower is a
        fresh ``CLIPTextModel`` of ``config``'s width.
    seed: the initialisation seed (the global RNG is left untouched).
    Returned in eval mode, like a loaded model; call ``.train()`` to train it.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    config = config or WorldScorerConfig()
    if text_encoder is not None:
        text_config = CLIPTextConfig.from_dict(text_encoder.config.to_dict())
    else:
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_hidden_size,
            intermediate_size=config.text_intermediate_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=min(int(tokenizer.model_max_length), 77),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,  # pooled output at the first EOS
            pad_token_id=tokenizer.pad_token_id,
        )
    vision_config = CLIPVisionConfig(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=3,
    )
    clip_config = CLIPConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init,
    )
    side = config.image_size
    preprocess = ImagePreprocessConfig(
        shortest_edge=side, crop_size=(side, side), image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPModel(clip_config)
        scorer = TimestepConditionedScorer(clip, tokenizer, preprocess, adaln, source="random")
    if text_encoder is not None:
        scorer.clip.text_model.load_state_dict(text_encoder.state_dict())
        scorer.source = "random (text tower from the world text encoder)"
    return scorer.eval()


# --------------------------------------------------------------------------- the step reward


def predicted_original_sample(scheduler: Any, noise_pred: Tensor, timesteps: Tensor, latents_t: Tensor) -> Tensor:
    """(B, C, h, w) float32 one-step x̂0 from the model output at (B,) timesteps (SPEC §3 step 3).

    ε-prediction: x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t with ᾱ = ``scheduler.alphas_cumprod``;
    ``sample`` and ``v_prediction`` models as ``DDIMScheduler.step`` does, and x̂0 clipped
    or thresholded exactly when the scheduler's config asks (never for SD1.5/SDXL), so
    this equals ``ddim_step_with_logprob(...).pred_original_sample``.
    """
    alpha_prod_t = scheduler.alphas_cumprod.to(device=latents_t.device, dtype=torch.float32)[timesteps]
    alpha_prod_t = alpha_prod_t.view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    beta_prod_t = 1 - alpha_prod_t
    model_output, sample = noise_pred.float(), latents_t.float()
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        x0 = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
    elif prediction_type == "sample":
        x0 = model_output
    elif prediction_type == "v_prediction":
        x0 = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
    else:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported; use 'epsilon', 'sample' or 'v_prediction'"
        )
    if getattr(scheduler.config, "thresholding", False):
        x0 = scheduler._threshold_sample(x0)
    elif getattr(scheduler.config, "clip_sample", False):
        clip = scheduler.config.clip_sample_range
        x0 = x0.clamp(-clip, clip)
    return x0


def _tuner_layers(module: nn.Module) -> list[Any]:
    """peft adapter layers (LoRA etc.) inside ``module``; empty without peft."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def _freeze_base_weights(module: nn.Module) -> None:
    """requires_grad False and eval mode for every weight except peft adapter weights.

    The base U-Net is shared with the policy, whose LoRA may already be attached: those
    adapter weights keep their flag (they are switched off during the reward's call).
    """
    adapter_params = set()
    for layer in _tuner_layers(module):
        for name in layer.adapter_layer_names:
            adapter_params.update(id(p) for p in getattr(layer, name).parameters())
    for param in module.parameters():
        if id(param) not in adapter_params:
            param.requires_grad_(False)
    module.eval()


@contextmanager
def _base_model(module: nn.Module) -> Iterator[None]:
    """Run ``module`` as the frozen base model: no grad, eval mode, peft adapters switched off.

    Adapters are switched off through the layer's flag itself rather than
    ``enable_adapters(False)``, which would also change the adapter weights' requires_grad.
    Everything is restored afterwards.
    """
    switched = [layer for layer in _tuner_layers(module) if not layer.disable_adapters]
    was_training = module.training
    for layer in switched:
        layer._disable_adapters = True
    if was_training:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for layer in switched:
            layer._disable_adapters = False
        if was_training:
            module.train()


@dataclass
class PixelRewardText:
    """The text side of the pixel reward for B prompts, reusable for many latents.

    conditioning: the base U-Net's CFG conditioning (computed without gradients).
    text_embeds: (B, P) the scorer's text embeddings T (with gradients when training).
    """

    conditioning: GuidedConditioning
    text_embeds: Tensor

    @property
    def batch_size(self) -> int:
        return self.text_embeds.shape[0]

    def repeat_interleave(self, repeats: int) -> "PixelRewardText":
        """Each prompt repeated ``repeats`` times in place, e.g. for K candidates per prompt."""
        return PixelRewardText(
            self.conditioning.repeat_interleave(repeats), self.text_embeds.repeat_interleave(repeats, dim=0)
        )

    def index(self, idx: Tensor | slice | int | Sequence[int]) -> "PixelRewardText":
        """Rows ``idx`` (an int keeps the batch dimension)."""
        rows = slice(idx, idx + 1) if isinstance(idx, int) else idx
        return PixelRewardText(self.conditioning.index(idx), self.text_embeds[rows])


class PixelStepReward(nn.Module):
    """SPO's step reward S(prompt, x_t, t) on noisy latents, via the decoded one-step x̂0.

    Same call as :class:`~lpo.lrm.LatentRewardModel`: ``forward(latents_t, timesteps,
    prompts) -> (B,)`` float32. Steps (each timeable on its own):

    1. :meth:`predict_x0`: the frozen base U-Net predicts ε̂ with CFG; x̂0 in one step;
    2. :meth:`decode_x0`: the frozen VAE decodes x̂0 to an image in [-1, 1];
    3. :meth:`score_images`: the trainable :class:`TimestepConditionedScorer` on (image, t, prompt).

    The U-Net, VAE, scheduler and text encoder are the components' own modules, shared with
    the caller and not registered as submodules: ``parameters()``, ``state_dict()``,
    ``train()`` and ``to()`` cover the scorer only. With ``freeze_base`` (default) the VAE
    and the U-Net's base weights get requires_grad False and eval mode (peft adapter
    weights already on the U-Net are left alone); steps 1–2 always run under no_grad, in
    eval mode and with any peft adapters switched off, so the policy's LoRA never leaks
    into the reward.
    """

    def __init__(
        self,
        components: DiffusionComponents,
        scorer: TimestepConditionedScorer,
        config: PixelRewardConfig | None = None,
        *,
        freeze_base: bool = True,
    ) -> None:
        super().__init__()
        config = config or PixelRewardConfig()
        if config.kind is not None and config.kind != components.kind:
            raise ValueError(f"config.kind is {config.kind!r} but the components are {components.kind!r}")
        self.config = replace(config, kind=components.kind, base_model=config.base_model or components.source)
        self.scorer = scorer
        self.components = components  # a dataclass, not a Module: not registered, not saved
        if freeze_base:
            _freeze_base_weights(components.vae)
            _freeze_base_weights(components.unet)

    @classmethod
    def from_components(
        cls,
        components: DiffusionComponents,
        scorer: TimestepConditionedScorer | None = None,
        config: PixelRewardConfig | None = None,
        *,
        freeze_base: bool = True,
    ) -> "PixelStepReward":
        """A pixel reward on ``components``; the scorer defaults to the paper's.

        Without ``scorer``: world -> :func:`world_pixel_scorer` on the world tokenizer
        (random init); SD1.5/SDXL -> PickScore (``PICKSCORE_MODEL_ID`` with the processor
        ``PICKSCORE_PROCESSOR_ID``), which needs hub access or the local cache.
        """
        if scorer is None:
            if components.kind == "world":
                scorer = world_pixel_scorer(components.tokenizer)
            else:
                scorer = TimestepConditionedScorer.from_clip_pretrained(PICKSCORE_MODEL_ID, PICKSCORE_PROCESSOR_ID)
        scorer.to(components.device)
        return cls(components, scorer, config, freeze_base=freeze_base)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The scorer's parameters: the only ones the pixel reward trains."""
        return list(self.scorer.parameters())

    @property
    def device(self) -> torch.device:
        return self.scorer.device

    @property
    def kind(self) -> ModelKind:
        return self.config.kind  # type: ignore[return-value]

    # ----------------------------------------------------------------- the three steps

    def encode_text(self, prompts: str | Sequence[str]) -> PixelRewardText:
        """The base U-Net's CFG conditioning (no grad) and the scorer's T (grad) for ``prompts``."""
        prompts = _prompt_list(prompts)
        with torch.no_grad():  # the base text encoder is frozen too
            conditioning = guided_conditioning(
                self.components, prompts, self.config.guidance_scale, self.config.negative_prompt
            )
        return PixelRewardText(conditioning=conditioning, text_embeds=self.scorer.encode_text(prompts))

    def predict_x0(
        self,
        latents_t: Tensor,
        timesteps: Tensor | int,
        text: str | Sequence[str] | PixelRewardText | GuidedConditioning,
    ) -> Tensor:
        """(B, C, h, w) float32 one-step x̂0 of the frozen base U-Net with CFG (no grad)."""
        unet = self.components.unet
        batch = latents_t.shape[0]
        if isinstance(text, PixelRewardText):
            conditioning = text.conditioning
        elif isinstance(text, GuidedConditioning):
            conditioning = text
        else:
            with torch.no_grad():
                conditioning = guided_conditioning(
                    self.components, _prompt_list(text), self.config.guidance_scale, self.config.negative_prompt
                )
        if conditioning.batch_size != batch:
            raise ValueError(
                f"{batch} latents but conditioning for {conditioning.batch_size} prompts; "
                "for K latents per prompt use text.repeat_interleave(K)"
            )
        timesteps = _as_timesteps(timesteps, batch, unet.device)
        latents_t = latents_t.to(device=unet.device, dtype=unet.dtype)
        with _base_model(unet):
            noise_pred = predict_noise(unet, latents_t, timesteps, conditioning)
            return predicted_original_sample(self.components.scheduler, noise_pred, timesteps, latents_t)

    def decode_x0(self, pred_original_sample: Tensor) -> Tensor:
        """(B, 3, H, W) float32 image in [-1, 1]: the frozen VAE's decode of x̂0 / scaling_factor (no grad)."""
        vae = self.components.vae
        latents = pred_original_sample.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:  # latents were (z − shift)·scale; SD1.5/SDXL have no shift
            latents = latents + shift
        with _base_model(vae):
            return vae.decode(latents).sample.float().clamp(-1, 1)

    def score_images(
        self, images: Tensor, timesteps: Tensor | int, text: str | Sequence[str] | PixelRewardText | Tensor
    ) -> Tensor:
        """(B,) float32 scorer output on decoded images in [-1, 1] at timesteps t (with grad)."""
        text_embeds = text.text_embeds if isinstance(text, PixelRewardText) else text
        return self.scorer.score(images, timesteps, text_embeds)

    def score_with_conditioning(self, latents_t: Tensor, timesteps: Tensor | int, text: PixelRewardText) -> Tensor:
        """(B,) scores for precomputed text (:meth:`encode_text`), e.g. K candidates per prompt."""
        pred_original_sample = self.predict_x0(latents_t, timesteps, text)
        return self.score_images(self.decode_x0(pred_original_sample), timesteps, text)

    def forward(self, latents_t: Tensor, timesteps: Tensor | int, prompts: str | Sequence[str]) -> Tensor:
        """(B,) float32 scores S(prompt_i, x_t^i, t_i); ``timesteps`` an int or (B,)."""
        prompts = _prompt_list(prompts)
        if len(prompts) != latents_t.shape[0]:
            raise ValueError(f"{latents_t.shape[0]} latents but {len(prompts)} prompts; pass one prompt per latent")
        return self.score_with_conditioning(latents_t, timesteps, self.encode_text(prompts))


# --------------------------------------------------------------------------- loading helpers


def _load_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, EntryNotFoundError, SafetensorError)


def _guarded_load(load: Any, what: str, hint: str) -> Any:
    try:
        return load()
    except _load_errors() as err:
        raise LpoError(f"could not load {what} ({one_line(err)}); {hint}") from err


def _read_processor_dict(processor: str | Path) -> dict[str, Any] | None:
    """``preprocessor_config.json`` of a folder or hub id as a dict; None when there is none."""
    name = "preprocessor_config.json"
    path = Path(processor).expanduser()
    if path.is_dir():
        file = path / name
        if not file.is_file():
            return None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            file = Path(hf_hub_download(str(processor), name))
        except EntryNotFoundError:
            return None
        except _load_errors() as err:
            raise LpoError(
                f"could not get {name} of {processor} ({one_line(err)}); pass a local processor folder "
                "or allow hub access"
            ) from err
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise LpoError(f"could not read {file} ({one_line(err)}); re-save the processor") from err
    if not isinstance(data, dict):
        raise LpoError(f"{file} is not a JSON object; re-save the processor")
    return data


# --------------------------------------------------------------------------- save / load


def save_pixel_reward(model: PixelStepReward, folder: str | Path) -> Path:
    """Write the scorer of ``model`` and its config to ``folder`` atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if type(model.scorer.clip).__name__ != "CLIPModel":
        raise LpoError(
            f"cannot save a scorer around a {type(model.scorer.clip).__name__}; load_pixel_reward rebuilds a CLIPModel"
        )
    meta = {
        "format": PIXEL_REWARD_FORMAT,
        "format_version": PIXEL_REWARD_FORMAT_VERSION,
        "config": asdict(model.config),
        "scorer": model.scorer.describe(),
        "dtype": str(model.scorer.dtype).removeprefix("torch."),
    }
    state = {key: tensor.detach().to("cpu").contiguous() for key, tensor in model.scorer.state_dict().items()}
    with atomic_directory(folder) as tmp:
        save_file(state, str(tmp / PIXEL_REWARD_WEIGHTS_NAME), metadata={"format": "pt"})
        model.scorer.tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / PIXEL_REWARD_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def load_pixel_reward(
    folder: str | Path,
    components: DiffusionComponents,
    expected_base: str | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    freeze_base: bool = True,
) -> PixelStepReward:
    """Rebuild a pixel reward saved by :func:`save_pixel_reward` on ``components``, scorer in eval mode.

    ``expected_base`` (default ``components.source``) must name the base model the scorer
    was trained for. ``device`` defaults to the components' device; ``dtype`` to the saved
    one. Failures a user can fix raise a one-line LpoError.
    """
    from lpo.lrm import same_base_model

    folder = Path(folder)
    hint = "pass a folder written by save_pixel_reward"
    if not folder.exists():
        raise LpoError(f"pixel reward folder {folder} does not exist; {hint}")
    if not folder.is_dir():
        raise LpoError(f"pixel reward path {folder} is a file, not a folder; {hint}")
    config_path, weights_path = folder / PIXEL_REWARD_CONFIG_NAME, folder / PIXEL_REWARD_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise LpoError(
                f"{path} is missing: {folder} is not a complete pixel reward folder; {hint}, or train it again"
            )

    # 1. the saved description, and whether it is for this base model
    meta = _read_meta(config_path)
    try:
        known = {f.name for f in fields(PixelRewardConfig)}
        config = PixelRewardConfig(**{k: v for k, v in meta["config"].items() if k in known})
        if config.kind is None or config.base_model is None:
            raise ValueError("base_model and kind must be set")
        spec = meta["scorer"]
        preprocess = ImagePreprocessConfig(**spec["preprocess"])
        adaln = AdaLNConfig(**spec["adaln"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise LpoError(f"{config_path} has an invalid pixel reward config ({one_line(err)}); train it again") from err
    expected = expected_base if expected_base is not None else components.source
    if not same_base_model(config.base_model, expected):
        raise LpoError(
            f"pixel reward {folder} was trained for base model {config.base_model} but you are using {expected}; "
            f"train a step-aware scorer for {expected}"
        )
    if components.kind != config.kind:
        raise LpoError(
            f"pixel reward {folder} is for a {config.kind} model but the components are {components.kind}; "
            f"train a step-aware scorer for {components.source}"
        )

    # 2. the architecture with empty (meta) weights, then the weights strictly
    from accelerate import init_empty_weights
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    try:
        if spec.get("class") != "CLIPModel":
            raise ValueError(f"scorer class {spec.get('class')!r} is not CLIPModel")
        tokenizer_dir = folder / "tokenizer"
        if not tokenizer_dir.is_dir():
            raise OSError(f"{tokenizer_dir} is missing")
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
        with init_empty_weights(include_buffers=False):  # buffers such as position_ids stay real
            clip = CLIPModel(CLIPConfig.from_dict(spec["clip_config"]))
            source = str(spec.get("source", "random"))
            scorer = TimestepConditionedScorer(clip, tokenizer, preprocess, adaln, source=source)
    except (KeyError, TypeError, ValueError, OSError) as err:
        raise LpoError(
            f"could not rebuild the scorer described by {config_path} ({one_line(err)}); train it again"
        ) from err
    vocab_size = clip.config.text_config.vocab_size
    # transformers builds a 2-token default tokenizer from a folder without vocabulary files
    if not vocab_size / 2 <= len(tokenizer) <= vocab_size:
        raise LpoError(
            f"{folder / 'tokenizer'} has {len(tokenizer)} tokens but the text tower has {vocab_size}; "
            "the tokenizer files are missing or damaged: train it again"
        )
    load_safetensors_strict(
        scorer, weights_path, what="pixel reward weights", config_name=PIXEL_REWARD_CONFIG_NAME,
        fix="the file is damaged or from another scorer: train it again or restore the folder",
    )
    scorer.eval()
    device = components.device if device is None else device
    scorer.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
    return PixelStepReward(components, scorer, config, freeze_base=freeze_base)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LpoError(
            f"could not read {path} ({one_line(err)}); the pixel reward folder is damaged: train it again"
        ) from err
    if not isinstance(meta, dict) or meta.get("format") != PIXEL_REWARD_FORMAT:
        raise LpoError(
            f'{path} is not an lpo pixel reward config (no "format": "{PIXEL_REWARD_FORMAT}"); '
            "pass a folder written by save_pixel_reward"
        )
    if meta.get("format_version") != PIXEL_REWARD_FORMAT_VERSION:
        raise LpoError(
            f"{path} has pixel reward format version {meta.get('format_version')}; this lpo reads version "
            f"{PIXEL_REWARD_FORMAT_VERSION}: upgrade lpo or train it again"
        )
    return meta
