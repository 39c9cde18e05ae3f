"""Generated images on disk, so each image is generated once per checkpoint and protocol.

Layout (one PNG per image; PNG is lossless, so a cached image scores exactly as a fresh
one)::

    CACHE/<checkpoint hash>/<protocol hash>/protocol.json        what the hash stands for
    CACHE/<checkpoint hash>/<protocol hash>/<prompt hash>/prompt.txt
    CACHE/<checkpoint hash>/<protocol hash>/<prompt hash>/<index>.png

The protocol hash covers only what changes pixels (sampler, steps, CFG, eta, resolution,
precision, seed), not the number of images per prompt or the batch size: asking for more
images per prompt later adds PNGs beside the existing ones, and image ``k`` of a prompt
is the same whatever the batch (per-image seeds, :func:`lpo.sampling.generate.image_seed`). Every
write is atomic, so an interrupted run leaves only whole images and resumes from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lpo.evals.benchmarks.base import prompt_hash
from lpo.core.io import atomic_write_file, atomic_write_json, atomic_write_text
from lpo.core.paths import lpo_home


def default_cache_dir() -> Path:
    return lpo_home() / "eval-images"


class ImageCache:
    """The images of one checkpoint under one protocol."""

    def __init__(self, root: Path, checkpoint_hash: str, protocol_hash: str) -> None:
        self.folder = Path(root) / checkpoint_hash / protocol_hash

    def path(self, prompt: str, index: int) -> Path:
        return self.folder / prompt_hash(prompt) / f"{index:04d}.png"

    def has(self, prompt: str, index: int) -> bool:
        return self.path(prompt, index).is_file()

    def load(self, prompt: str, index: int) -> Image.Image:
        with Image.open(self.path(prompt, index)) as image:
            return image.convert("RGB")

    def save(self, prompt: str, index: int, image: np.ndarray) -> Path:
        """Write one (H, W, 3) uint8 image atomically."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
        path = self.path(prompt, index)
        prompt_file = path.parent / "prompt.txt"
        if not prompt_file.is_file():
            atomic_write_text(prompt_file, prompt + "\n")  # for people browsing the cache
        atomic_write_file(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
        return path

    def write_description(self, description: dict[str, Any]) -> None:
        """Record what the folder's hashes stand for (checkpoint, protocol), once."""
        target = self.folder / "protocol.json"
        if not target.is_file():
            atomic_write_json(target, description)
