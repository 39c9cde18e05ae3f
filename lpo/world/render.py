"""Procedural renderer: a prompt spec -> a ground-truth scene -> an RGB image.

Images are ``IMAGE_SIZE``² uint8 RGB on a plain background. Objects are drawn without
anti-aliasing so the ground truth is exact; the judges are built to also read the
blurrier images a diffusion model produces.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from lpo.world.grammar import PromptSpec

IMAGE_SIZE = 32
BACKGROUND = (24, 24, 32)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (45, 190, 70),
    "blue": (55, 95, 240),
    "yellow": (235, 215, 45),
    "purple": (170, 70, 220),
    "white": (235, 235, 235),
}
OUTLINE_WIDTH = 2
TRIANGLE_OUTLINE_WIDTH = 1.5
MIN_SIZE, MAX_SIZE = 9, 13  # object bounding-box side in pixels
MIN_HOLLOW_SIZE = 11
_MARGIN = 1


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    texture: str  # "solid" | "hollow"
    size: int  # bounding-box side, pixels
    x: int  # top-left corner
    y: int

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + (self.size - 1) / 2, self.y + (self.size - 1) / 2)


def shape_mask(shape: str, width: int, height: int, texture: str = "solid") -> np.ndarray:
    """Boolean (height, width) mask of a shape filling its box; the judges use it as a template."""
    return _shape_mask_cached(shape, width, height, texture).copy()


@lru_cache(maxsize=4096)
def _shape_mask_cached(shape: str, width: int, height: int, texture: str) -> np.ndarray:
    img = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(img)
    _draw_shape(draw, shape, 0, 0, width, height, 1)
    mask = np.array(img, dtype=bool)
    if texture == "hollow":
        inner_w, inner_h = width - 2 * OUTLINE_WIDTH, height - 2 * OUTLINE_WIDTH
        if inner_w > 2 and inner_h > 2:
            inner = Image.new("1", (width, height), 0)
            inner_draw = ImageDraw.Draw(inner)
            if shape == "triangle":
                # A 2-pixel inset leaves almost no hole in a small triangle; 1.5 keeps it visible.
                _draw_inset_triangle(inner_draw, width, height, TRIANGLE_OUTLINE_WIDTH)
            else:
                _draw_shape(inner_draw, shape, OUTLINE_WIDTH, OUTLINE_WIDTH, inner_w, inner_h, 1)
            mask &= ~np.array(inner, dtype=bool)
    return mask


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, w: int, h: int, fill) -> None:
    if shape == "circle":
        draw.ellipse([x, y, x + w - 1, y + h - 1], fill=fill)
    elif shape == "square":
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=fill)
    elif shape == "triangle":  # apex up, base at the bottom
        draw.polygon([(x + (w - 1) / 2, y), (x + w - 1, y + h - 1), (x, y + h - 1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _draw_inset_triangle(draw: ImageDraw.ImageDraw, w: int, h: int, inset: float) -> None:
    # Shrink the triangle about its incentre so every edge moves in by ``inset`` pixels.
    pts = np.array([((w - 1) / 2, 0.0), (w - 1.0, h - 1.0), (0.0, h - 1.0)])
    sides = np.array([np.linalg.norm(pts[1] - pts[2]), np.linalg.norm(pts[2] - pts[0]), np.linalg.norm(pts[0] - pts[1])])
    incentre = (sides[:, None] * pts).sum(0) / sides.sum()
    area = 0.5 * abs(np.cross(pts[1] - pts[0], pts[2] - pts[0]))
    inradius = 2 * area / sides.sum()
    scale = max(inradius - inset, 0.0) / inradius
    inner = incentre + (pts - incentre) * scale
    draw.polygon([tuple(p) for p in inner], fill=1)


def render_scene(objects: list[SceneObject], size: int = IMAGE_SIZE) -> np.ndarray:
    """(size, size, 3) uint8 image of the objects on the background."""
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in objects:
        mask = shape_mask(obj.shape, obj.size, obj.size, obj.texture)
        region = image[obj.y : obj.y + obj.size, obj.x : obj.x + obj.size]
        region[mask[: region.shape[0], : region.shape[1]]] = PALETTE[obj.colour]
    return image


def layout_scene(spec: PromptSpec, rng: np.random.Generator, size: int = IMAGE_SIZE) -> list[SceneObject]:
    """Sample sizes and non-overlapping positions for the spec's objects (relation respected)."""
    wanted = []
    for phrase in spec.phrases:
        texture = phrase.texture or "solid"
        wanted += [(phrase.colour, phrase.shape, texture)] * phrase.count
    # Hollow shapes need room for a visible hole inside a 2-pixel outline.
    low = np.array([MIN_HOLLOW_SIZE if t == "hollow" else MIN_SIZE for _, _, t in wanted])
    for _ in range(1000):
        sizes = rng.integers(low, MAX_SIZE + 1)
        if len(wanted) >= 3:
            boxes = _grid_boxes(sizes, rng, size)
        else:
            boxes = []
            for s in sizes:
                hi = size - _MARGIN - int(s)
                boxes.append((int(rng.integers(_MARGIN, hi + 1)), int(rng.integers(_MARGIN, hi + 1)), int(s)))
        if _overlap_free(boxes) and (spec.relation is None or _relation_holds(spec.relation, boxes[0], boxes[1])):
            return [SceneObject(c, sh, t, s, x, y) for (c, sh, t), (x, y, s) in zip(wanted, boxes)]
    raise RuntimeError(f"could not lay out {spec.text()!r} in {size}x{size}")


def _grid_boxes(sizes: np.ndarray, rng: np.random.Generator, size: int) -> list[tuple[int, int, int]]:
    # Three or four objects rarely fit by rejection sampling: give each a quadrant.
    half = size // 2
    cells = rng.permutation(4)[: len(sizes)]
    boxes = []
    for cell, s in zip(cells, sizes):
        s = int(min(s, half - 2))
        x0, y0 = (cell % 2) * half, (cell // 2) * half
        boxes.append((x0 + int(rng.integers(1, half - s)), y0 + int(rng.integers(1, half - s)), s))
    return boxes


def _overlap_free(boxes: list[tuple[int, int, int]], gap: int = 1) -> bool:
    for i, (x1, y1, s1) in enumerate(boxes):
        for x2, y2, s2 in boxes[i + 1 :]:
            if x1 < x2 + s2 + gap and x2 < x1 + s1 + gap and y1 < y2 + s2 + gap and y2 < y1 + s1 + gap:
                return False
    return True


def relation_holds(relation: str, centre_a: tuple[float, float], centre_b: tuple[float, float]) -> bool:
    """T2I-CompBench's geometric rule: the axis of the relation dominates the offset."""
    dx, dy = centre_b[0] - centre_a[0], centre_b[1] - centre_a[1]
    if relation == "left of":
        return dx > 0 and abs(dx) > abs(dy)
    if relation == "right of":
        return dx < 0 and abs(dx) > abs(dy)
    if relation == "above":  # image y grows downwards
        return dy > 0 and abs(dy) > abs(dx)
    if relation == "below":
        return dy < 0 and abs(dy) > abs(dx)
    raise ValueError(f"unknown relation {relation!r}")


def _relation_holds(relation: str, a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    centre = lambda box: (box[0] + (box[2] - 1) / 2, box[1] + (box[2] - 1) / 2)  # noqa: E731
    return relation_holds(relation, centre(a), centre(b))


def render_prompt(spec: PromptSpec, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    return render_scene(layout_scene(spec, rng, size), size)
