"""Exact, deterministic judges of the world, on decoded RGB images.

Reading an image:
  1. foreground = pixels far from the background colour;
  2. each foreground pixel takes its nearest palette colour if close enough, else it is
     "dirty" (a colour mix the world never draws);
  3. connected components (8-neighbour) per colour are objects; tiny ones are stray blobs;
  4. per object: colour, shape (best IoU of its hole-filled mask against the renderer's
     own templates in the same box), texture (hollow when the filled mask has a hole),
     size (box side) and centroid.

Scores for an image and its prompt (all in [0, 1]):
  alignment       T2I-CompBench++-style category score: "BLIP-VQA" (product over noun
                  phrases of an exact match) for colour/shape/texture, "detector"
                  (both objects + geometric rule) for spatial, "counting" (exact count
                  per phrase) for numeracy, mean of the applicable ones for complex;
  soft_alignment  fraction of prompt attributes satisfied under a one-to-one matching,
                  with relation credit and a penalty for extra objects;
  aesthetic       clean background, pure colours, well-formed shapes, sensible sizes;
  clip            the "CLIP score" proxy: cosine of prompt and image bags of attribute
                  words (blind to binding, like CLIP);
  utility         the hidden true preference (the world's "PickScore"):
                  0.6·soft_alignment + 0.4·aesthetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from lpo.world.grammar import COLOURS, SHAPES, TEXTURES, PromptSpec, parse_prompt
from lpo.world.render import BACKGROUND, MAX_SIZE, MIN_SIZE, PALETTE, relation_holds, shape_mask

FOREGROUND_DISTANCE = 70.0  # RGB distance from the background that counts as foreground
PALETTE_DISTANCE = 95.0  # a foreground pixel within this of a palette colour takes that colour
PURE_DISTANCE = 45.0  # "pure" colour for the aesthetic score
MIN_OBJECT_AREA = 12  # smaller components are stray blobs
HOLLOW_HOLE_FRACTION = 0.12
MIN_SHAPE_IOU = 0.55
DIRTY_SCALE = 48.0  # dirty pixels at which background cleanliness reaches 0
UTILITY_ALIGNMENT_WEIGHT = 0.6

_PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32)  # (6, 3)


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    shape: str  # one of SHAPES or "unknown"
    texture: str
    size: int
    centre: tuple[float, float]  # (x, y) of the bounding box
    area: int
    purity: float  # fraction of pixels within PURE_DISTANCE of the palette colour
    shape_iou: float  # IoU with the best-matching template


@dataclass(frozen=True)
class ImageReading:
    objects: tuple[DetectedObject, ...]
    stray_pixels: int
    dirty_pixels: int


@dataclass(frozen=True)
class JudgeScores:
    alignment: float
    soft_alignment: float
    aesthetic: float
    clip: float
    utility: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


SCORE_NAMES = ("alignment", "soft_alignment", "aesthetic", "clip", "utility")


# ------------------------------------------------------------------ reading images


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask as (N, 2) arrays of (row, col)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    out = []
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        stack, pixels = [(r0, c0)], []
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
        out.append(np.array(pixels))
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Mask plus the background pixels not reachable from the border (4-neighbour)."""
    padded = np.pad(~mask, 1, constant_values=True)
    outside = np.zeros_like(padded)
    stack = [(0, 0)]
    outside[0, 0] = True
    h, w = padded.shape
    while stack:
        r, c = stack.pop()
        for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= rr < h and 0 <= cc < w and padded[rr, cc] and not outside[rr, cc]:
                outside[rr, cc] = True
                stack.append((rr, cc))
    return ~outside[1:-1, 1:-1]


def _classify_shape(filled: np.ndarray) -> tuple[str, float]:
    h, w = filled.shape
    best, best_iou = "unknown", 0.0
    for shape in SHAPES:
        template = shape_mask(shape, w, h)
        iou = float((template & filled).sum() / max((template | filled).sum(), 1))
        if iou > best_iou:
            best, best_iou = shape, iou
    return (best if best_iou >= MIN_SHAPE_IOU else "unknown"), best_iou


def read_image(image: np.ndarray) -> ImageReading:
    """Segment a (H, W, 3) uint8 image into objects (see the module docstring)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    pixels = image.astype(np.float32)
    foreground = np.linalg.norm(pixels - np.array(BACKGROUND, np.float32), axis=-1) > FOREGROUND_DISTANCE
    palette_dist = np.linalg.norm(pixels[:, :, None, :] - _PALETTE_ARRAY, axis=-1)  # (H, W, 6)
    nearest = palette_dist.argmin(-1)
    nearest_dist = palette_dist.min(-1)
    coloured = foreground & (nearest_dist < PALETTE_DISTANCE)
    dirty = int((foreground & ~coloured).sum())
    stray = 0
    objects = []
    for ci, colour in enumerate(COLOURS):
        for comp in _components(coloured & (nearest == ci)):
            if len(comp) < MIN_OBJECT_AREA:
                stray += len(comp)
                continue
            r0, c0 = comp.min(0)
            r1, c1 = comp.max(0)
            box = np.zeros((r1 - r0 + 1, c1 - c0 + 1), dtype=bool)
            box[comp[:, 0] - r0, comp[:, 1] - c0] = True
            filled = _fill_holes(box)
            hole_fraction = 1.0 - box.sum() / filled.sum()
            shape, iou = _classify_shape(filled)
            objects.append(
                DetectedObject(
                    colour=colour,
                    shape=shape,
                    texture="hollow" if hole_fraction >= HOLLOW_HOLE_FRACTION else "solid",
                    size=int(max(box.shape)),
                    # Box centre, as a detector reports it (a triangle's mass sits low).
                    centre=(float(c0 + c1) / 2, float(r0 + r1) / 2),
                    area=len(comp),
                    purity=float((nearest_dist[comp[:, 0], comp[:, 1]] < PURE_DISTANCE).mean()),
                    shape_iou=iou,
                )
            )
    objects.sort(key=lambda o: (-o.area, o.centre))
    return ImageReading(tuple(objects), stray, dirty)


# ------------------------------------------------------------------------ scoring


def _slots(spec: PromptSpec) -> list[tuple[int, str, str, str | None]]:
    """One slot per object the prompt asks for: (phrase index, colour, shape, texture)."""
    return [(i, p.colour, p.shape, p.texture) for i, p in enumerate(spec.phrases) for _ in range(p.count)]


def _match_fraction(slot, obj: DetectedObject) -> float:
    _, colour, shape, texture = slot
    hits = [obj.colour == colour, obj.shape == shape]
    if texture is not None:
        hits.append(obj.texture == texture)
    return sum(hits) / len(hits)


def _assign(slots, objects) -> list[int | None]:
    """Greedy one-to-one slot -> object assignment by descending match fraction."""
    scores = sorted(
        ((_match_fraction(s, o), -si, -oi) for si, s in enumerate(slots) for oi, o in enumerate(objects)),
        reverse=True,
    )
    assignment: list[int | None] = [None] * len(slots)
    used = set()
    for score, neg_si, neg_oi in scores:
        si, oi = -neg_si, -neg_oi
        if score > 0 and assignment[si] is None and oi not in used:
            assignment[si] = oi
            used.add(oi)
    return assignment


def _counting_score(spec: PromptSpec, objects) -> float:
    score = 1.0
    for p in spec.phrases:
        n = sum(o.colour == p.colour and o.shape == p.shape and (p.texture is None or o.texture == p.texture) for o in objects)
        score *= float(n == p.count)
    return score


def _attribute_bag(colours, shapes, textures) -> np.ndarray:
    vocab = {w: i for i, w in enumerate((*COLOURS, *SHAPES, *TEXTURES))}
    bag = np.zeros(len(vocab))
    for w in (*colours, *shapes, *textures):
        if w in vocab:
            bag[vocab[w]] += 1
    return bag


def judge(image: np.ndarray, prompt: PromptSpec | str) -> JudgeScores:
    """All scores of one image for one prompt."""
    spec = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    reading = read_image(image)
    objects = reading.objects
    slots = _slots(spec)
    assignment = _assign(slots, objects)
    slot_match = [0.0 if oi is None else _match_fraction(s, objects[oi]) for s, oi in zip(slots, assignment)]

    # Binding: every slot of every phrase matched exactly.
    binding = float(all(m == 1.0 for m in slot_match))
    relation_ok = 0.0
    if spec.relation is not None and assignment[0] is not None and assignment[1] is not None:
        relation_ok = float(relation_holds(spec.relation, objects[assignment[0]].centre, objects[assignment[1]].centre))
    if spec.category in ("colour", "shape", "texture"):
        alignment = binding
    elif spec.category == "spatial":
        alignment = binding * relation_ok
    elif spec.category == "numeracy":
        alignment = _counting_score(spec, objects)
    else:  # complex: mean of the applicable CompBench scores
        parts = [binding]
        if spec.relation is not None:
            parts.append(binding * relation_ok)
        if any(p.count > 1 for p in spec.phrases):
            parts.append(_counting_score(spec, objects))
        alignment = float(np.mean(parts))

    soft = float(np.mean(slot_match))
    if spec.relation is not None:
        soft = 0.5 * soft + 0.5 * relation_ok
    extra = max(0, len(objects) - len(slots))
    soft *= len(slots) / (len(slots) + extra)

    clean = max(0.0, 1.0 - (reading.dirty_pixels + reading.stray_pixels) / DIRTY_SCALE)
    if objects:
        purity = float(np.mean([o.purity for o in objects]))
        form = float(np.mean([o.shape_iou for o in objects]))
        size_ok = float(np.mean([MIN_SIZE - 2 <= o.size <= MAX_SIZE + 3 for o in objects]))
    else:
        purity = form = size_ok = 0.0
    aesthetic = (clean + purity + form + size_ok) / 4

    mentions_texture = any(p.texture is not None for p in spec.phrases)
    prompt_bag = _attribute_bag(
        [p.colour for p in spec.phrases for _ in range(p.count)],
        [p.shape for p in spec.phrases for _ in range(p.count)],
        # An unstated texture is drawn solid; count it so that ground truth scores 1.
        [p.texture or "solid" for p in spec.phrases for _ in range(p.count)] if mentions_texture else [],
    )
    image_bag = _attribute_bag(
        [o.colour for o in objects], [o.shape for o in objects], [o.texture for o in objects] if mentions_texture else []
    )
    norm = np.linalg.norm(prompt_bag) * np.linalg.norm(image_bag)
    clip = float(prompt_bag @ image_bag / norm) if norm > 0 else 0.0

    utility = UTILITY_ALIGNMENT_WEIGHT * soft + (1 - UTILITY_ALIGNMENT_WEIGHT) * aesthetic
    return JudgeScores(alignment=alignment, soft_alignment=soft, aesthetic=aesthetic, clip=clip, utility=utility)
