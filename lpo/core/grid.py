"""Image grids with captions (PNG), for `lpo sample` and reports."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def make_grid(images: np.ndarray, captions: list[str], columns: int = 4, cell: int = 128) -> Image.Image:
    """Images (N, H, W, 3) uint8, each upscaled to ``cell`` px with its caption underneath."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    font = ImageFont.load_default()
    chars_per_line = max(8, cell // 6)
    wrapped = [textwrap.wrap(c, chars_per_line)[:4] or [""] for c in captions]
    line_h = 11
    caption_h = line_h * max(len(w) for w in wrapped) + 4
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * (cell + 4) + 4, rows * (cell + caption_h + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (image, lines) in enumerate(zip(images, wrapped)):
        r, c = divmod(i, columns)
        x, y = 4 + c * (cell + 4), 4 + r * (cell + caption_h + 4)
        # Nearest-neighbour keeps small world images crisp; large images are resampled smoothly.
        resample = Image.NEAREST if image.shape[0] < cell else Image.BICUBIC
        canvas.paste(Image.fromarray(image).resize((cell, cell), resample), (x, y))
        for j, line in enumerate(lines):
            draw.text((x, y + cell + 2 + j * line_h), line, fill=(0, 0, 0), font=font)
    return canvas


def save_grid(path: Path, images: np.ndarray, captions: list[str], columns: int = 4, cell: int = 128) -> Path:
    from lpo.core.io import atomic_write_bytes

    import io

    buffer = io.BytesIO()
    make_grid(images, captions, columns, cell).save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
