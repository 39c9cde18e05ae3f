"""Image preprocessing of the upstream scorers, rebuilt on PIL (no torchvision).

Each function reproduces one upstream pipeline operation for operation, because a crop
offset or a rounding rule shifts every score a little:

- ``resize_shorter_center_crop``: torchvision ``Resize(n, BICUBIC)`` + ``CenterCrop(n)``
  as used by OpenAI CLIP's ``preprocess`` and by ImageReward/BLIP. The longer side
  becomes ``int(n * long / short)`` (truncated) and the crop offset is
  ``int(round((size - n) / 2))`` (Python's round-half-to-even), unlike transformers'
  CLIP image processor, which floors the offset (that one is used as is where the
  upstream scorer used it: PickScore, torchmetrics' CLIP score).
- ``resize_longest_pad``: open_clip's ``ResizeMaxSize`` as HPSv2 evaluates: the longer
  side becomes ``n`` (``round`` on both sides), bicubic, then black padding to n×n split
  as ``pad // 2`` before and the rest after. No centre crop: nothing is cut off.
- ``to_pixel_values``: ``ToTensor`` + ``Normalize`` (float32 /255, then (x − mean)/std).

Torchvision resizes PIL images with PIL itself, so the PIL calls here give the same
pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

# OpenAI CLIP's normalisation; BLIP (and so ImageReward) and open_clip's ViT-H-14 use it too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_shorter_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic), then the central size×size square."""
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def resize_longest_pad(image: Image.Image, size: int) -> Image.Image:
    """Longer side to ``size`` (bicubic), then black padding to size×size, centred."""
    width, height = image.size
    scale = size / float(max(height, width))
    new_h, new_w = round(height * scale), round(width * scale)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    if (new_w, new_h) == (size, size):
        return image
    # open_clip pads only when it resized (scale != 1); a non-square image whose longer
    # side is already ``size`` would then reach the ViT unpadded and fail there, so it is
    # padded here too, the only case where this differs (from an error).
    pad_w, pad_h = size - new_w, size - new_h
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(image, (pad_w // 2, pad_h // 2))
    return canvas


def to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def to_pixel_values(
    images: Sequence[Image.Image], mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> torch.Tensor:
    """RGB PIL images of one size -> normalised (B, 3, H, W) float32, as ToTensor + Normalize."""
    arrays = [np.asarray(to_rgb(image), dtype=np.float32) / np.float32(255.0) for image in images]  # (H, W, 3)
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, H, W)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t
