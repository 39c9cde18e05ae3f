"""``CLIPImageProcessor`` reimplemented in torch, on differentiable images in [-1, 1].

Used by the pixel step reward's scorer (:mod:`lpo.reward.pixel_scorer`), whose gradients flow
back through the preprocessing. The steps: [0, 1] → shortest-edge resize (bicubic,
antialiased) → centre crop → (x − mean)/std, with size, crop, mean and std read from the
processor config (:meth:`ImagePreprocessConfig.from_processor_dict`).

The resize runs PIL's algorithm (separable: width pass, clip to [0, 1], height pass,
clip) with ``torch.nn.functional.interpolate(antialias=True)``, whose bicubic kernel
(a = −0.5) and support scaling are PIL's. The one unavoidable difference is that PIL works
on uint8 images and rounds after each pass: on the same uint8 image the two differ by at
most about 1/255 per pixel in [0, 1] (≈ 0.004/std ≈ 0.015 after normalisation; bounded in
tests/test_pixel_reward.py). SPO's own code resizes with a non-antialiased bicubic
(a = −0.75) instead; we match the processor PickScore was trained with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# CLIPImageProcessor's defaults (OpenAI CLIP), used when a folder has no preprocessor config.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL resampling filter ids (PILImageResampling) -> torch interpolate modes we reproduce.
_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}


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
