"""T2I-CompBench++'s scoring rules as plain functions over detections and depth maps.

Each function is the rule of one official script (github.com/Karine-Huang/T2I-CompBench),
branch for branch; only the detector that produces the detections is a variant (see
:mod:`lpo.evals.metrics.compbench`).

- :func:`position_score` — ``determine_position`` of ``UniDet_eval/2D_spatial_eval.py``
  and ``3D_spatial_eval.py``. With centres c1, c2 of the boxes of object 1 and 2,
  dx = c2.x − c1.x, dy = c2.y − c1.y and IoU without the +1 pixel convention:

  * "next to" / "on side of" / "near": 1 if |dx| < 150 or |dy| < 150, else
    150 / max(|dx|, |dy|);
  * "on the left of": if dx > 0 and |dx| > |dy|: 1 if IoU < 0.1 else 0.1 / IoU; else 0
    ("on the right of" with dx < 0; "on the top of" with dy > 0 and |dy| > |dx|;
    "on the bottom of" with dy < 0);
  * "in front of": with the mean depth (MiDaS inverse depth, larger = nearer) of each
    box, diff = mean₁ − mean₂: 1 if IoU > 0.5 and diff > 0; IoU / 0.5 if 0 < IoU < 0.5
    and diff > 0; else 0. "behind" / "hidden" the same with diff < 0. The official code
    reads each box's depth as ``depth[x_min:x_max, y_min:y_max]`` (rows indexed by x):
    kept by default (``transposed_depth_window``), as it produced the published numbers;
  * any other relation (including "on top of", which the official vocabulary finds but
    the position rule does not handle): 0.
  Distances are in the official detector's frame: images resized with the shorter side
  479 and the longer at most 480 (:func:`unidet_frame`).
- :func:`spatial_score` — both objects found: 0.25·s₁ + 0.25·s₂ + position / 2 (s = the
  detector's confidence in the detection picked for each); one found: 0.25·s; none: 0.
  The 2D script then sets scores below 0.5 to 0 (the 3D script does not). Which detection
  stands for an object differs between the scripts: 2D takes the first (most confident)
  whose label equals the name (``list.index``); 3D (:func:`locate_3d`) finds a name as a
  substring of the labels and, when both names are found, walks the detections keeping the
  last match of each until both have one.
- :func:`dedup_detections` + :func:`numeracy_score` — ``numeracy_eval.py``: a detection
  is dropped when one kept earlier with the same label covers it (IoU > 0.9 or either
  box's overlap share > 0.9, +1 pixel convention); each of the n objects of the prompt
  gives 0.5/n when detected and another 0.5/n when detected exactly as many times as
  the prompt says.
- :func:`three_in_one` — ``3_in_1_eval/3_in_1.py``: (attribute + spatial) / 2 for the
  prompts in ``complex_val_spatial.txt``, (attribute + action) / 2 for those in
  ``complex_val_action.txt``, else the mean of all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

IOU_THRESHOLD_2D = 0.1
DISTANCE_THRESHOLD = 150.0  # pixels of the official detector's frame (unidet_frame)
IOU_THRESHOLD_3D = 0.5
NEAR_RELATIONS = ("next to", "on side of", "near")
DEPTH_RELATIONS = ("in front of", "behind", "hidden")
UNIDET_SHORT_SIDE, UNIDET_MAX_SIDE = 479, 480  # transforms.Resize(size=479, max_size=480)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: x grows rightwards, y downwards."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    @property
    def center(self) -> tuple[float, float]:
        return (self.x_min + self.x_max) / 2, (self.y_min + self.y_max) / 2

    @property
    def area(self) -> float:
        return (self.x_max - self.x_min) * (self.y_max - self.y_min)

    def scaled(self, sx: float, sy: float) -> "Box":
        return Box(self.x_min * sx, self.y_min * sy, self.x_max * sx, self.y_max * sy)


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: Box


def unidet_frame(width: int, height: int) -> tuple[int, int]:
    """(width, height) of torchvision's ``Resize(size=479, max_size=480)``: the frame the
    official detector's boxes (and so its 150-pixel threshold) live in."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = UNIDET_SHORT_SIDE, int(UNIDET_SHORT_SIDE * long / short)
    if new_long > UNIDET_MAX_SIDE:
        new_short, new_long = int(UNIDET_MAX_SIDE * new_short / new_long), UNIDET_MAX_SIDE
    return (new_short, new_long) if width <= height else (new_long, new_short)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union without the +1 pixel convention (0 for an empty union)."""
    x_overlap = max(0.0, min(a.x_max, b.x_max) - max(a.x_min, b.x_min))
    y_overlap = max(0.0, min(a.y_max, b.y_max) - max(a.y_min, b.y_min))
    intersection = x_overlap * y_overlap
    union = a.area + b.area - intersection
    return intersection / union if union > 0 else 0.0


def _mean_depth(depth: np.ndarray, box: Box, transposed: bool) -> float:
    x0, x1, y0, y1 = int(box.x_min), int(box.x_max), int(box.y_min), int(box.y_max)
    window = depth[x0:x1, y0:y1] if transposed else depth[y0:y1, x0:x1]
    # numpy's mean of an empty window is nan with a warning (torch's, upstream, is nan too):
    # nan compares false, so the rule then scores 0, as upstream.
    return float(window.mean()) if window.size else float("nan")


def position_score(
    relation: str | None,
    box1: Box,
    box2: Box,
    *,
    depth: np.ndarray | None = None,
    iou_threshold: float = IOU_THRESHOLD_2D,
    distance_threshold: float = DISTANCE_THRESHOLD,
    iou_threshold_3d: float = IOU_THRESHOLD_3D,
    transposed_depth_window: bool = True,
) -> float:
    """How well "object 1 RELATION object 2" holds for these boxes, in [0, 1] (see the
    module docstring). ``depth`` (H, W) is needed for the depth relations only."""
    (cx1, cy1), (cx2, cy2) = box1.center, box2.center
    dx, dy = cx2 - cx1, cy2 - cy1
    iou = box_iou(box1, box2)
    if relation in NEAR_RELATIONS:
        if abs(dx) < distance_threshold or abs(dy) < distance_threshold:
            return 1.0
        return distance_threshold / max(abs(dx), abs(dy))
    directional = {
        "on the right of": (dx < 0, abs(dx) > abs(dy)),
        "on the left of": (dx > 0, abs(dx) > abs(dy)),
        "on the bottom of": (dy < 0, abs(dy) > abs(dx)),
        "on the top of": (dy > 0, abs(dy) > abs(dx)),
    }
    if relation in directional:
        side, dominant = directional[relation]
        if not (side and dominant):
            return 0.0
        return 1.0 if iou < iou_threshold else iou_threshold / iou
    if relation in DEPTH_RELATIONS:
        if depth is None:
            raise ValueError(f"relation {relation!r} needs a depth map")
        diff = _mean_depth(depth, box1, transposed_depth_window) - _mean_depth(depth, box2, transposed_depth_window)
        nearer = diff > 0 if relation == "in front of" else diff < 0
        if iou > iou_threshold_3d:
            return 1.0 if nearer else 0.0
        if 0 < iou < iou_threshold_3d:
            return iou / iou_threshold_3d if nearer else 0.0
        return 0.0
    return 0.0


def first_of(detections: Sequence[Detection], label: str) -> Detection | None:
    """The first detection with this label (detections come most confident first)."""
    return next((d for d in detections if d.label == label), None)


def locate_2d(detections: Sequence[Detection], objects: tuple[str, str]) -> tuple[Detection | None, Detection | None]:
    """2D_spatial_eval.py: each name's first detection with exactly that label."""
    return first_of(detections, objects[0]), first_of(detections, objects[1])


def locate_3d(detections: Sequence[Detection], objects: tuple[str, str]) -> tuple[Detection | None, Detection | None]:
    """3D_spatial_eval.py: a name is found when it is a substring of the labels joined by spaces.

    Both found: walk the detections, each name taking every detection whose label contains
    it, and stop once both have one (so the name matched first keeps its last match before
    the other's first). One found: its first match. Where upstream would fail (a name found
    only across two joined labels), the name counts as not found here.
    """
    labels = [d.label for d in detections]
    joined = " ".join(labels)
    name1, name2 = objects
    if name1 in joined and name2 in joined:
        pos1 = pos2 = None
        for i, label in enumerate(labels):
            pos1 = i if name1 in label else pos1
            pos2 = i if name2 in label else pos2
            if pos1 is not None and pos2 is not None:
                break
        return (detections[pos1] if pos1 is not None else None), (detections[pos2] if pos2 is not None else None)
    first = lambda name: next((d for d in detections if name in d.label), None) if name in joined else None  # noqa: E731
    return first(name1), first(name2)


def spatial_score(
    relation: str | None,
    objects: tuple[str, str] | None,
    detections: Sequence[Detection],
    *,
    depth: np.ndarray | None = None,
    zero_below_half: bool = True,
    transposed_depth_window: bool = True,
    locate=locate_2d,
) -> float:
    """The official spatial score of one image (see the module docstring).

    ``detections`` must be sorted by score, highest first, with boxes in the frame of
    :func:`unidet_frame`; ``zero_below_half`` is the 2D script's final rule; ``locate``
    picks each object's detection (:func:`locate_2d` or :func:`locate_3d`).
    """
    found1 = found2 = None
    if objects is not None:
        found1, found2 = locate(detections, objects)
    if found1 is not None and found2 is not None:
        score = 0.25 * found1.score + 0.25 * found2.score
        score += position_score(
            relation, found1.box, found2.box, depth=depth, transposed_depth_window=transposed_depth_window
        ) / 2
    elif found1 is not None:
        score = 0.25 * found1.score
    elif found2 is not None:
        score = 0.25 * found2.score
    else:
        score = 0.0
    if zero_below_half and score < 0.5:
        return 0.0
    return score


def _covers(a: Box, b: Box) -> bool:
    """numeracy_eval.py's ``calculate_iou``: the same object seen twice (+1 pixel areas)."""
    x1, y1 = max(a.x_min, b.x_min), max(a.y_min, b.y_min)
    x2, y2 = min(a.x_max, b.x_max), min(a.y_max, b.y_max)
    intersection = max(0.0, x2 - x1 + 1) * max(0.0, y2 - y1 + 1)
    area_a = (a.x_max - a.x_min + 1) * (a.y_max - a.y_min + 1)
    area_b = (b.x_max - b.x_min + 1) * (b.y_max - b.y_min + 1)
    iou = intersection / (area_a + area_b - intersection)
    return iou > 0.9 or intersection / area_a > 0.9 or intersection / area_b > 0.9


def dedup_detections(detections: Sequence[Detection]) -> list[Detection]:
    """Detections in order, without those a kept detection of the same label covers."""
    kept: list[Detection] = []
    for detection in detections:
        if not any(k.label == detection.label and _covers(detection.box, k.box) for k in kept):
            kept.append(detection)
    return kept


def numeracy_score(targets: Sequence[tuple[str, int]], detections: Sequence[Detection]) -> float:
    """Σ over the prompt's objects of 0.5/n (found) + 0.5/n (found exactly ``count`` times),
    after :func:`dedup_detections`. ``targets`` = [(label, count), ...]; empty: 0."""
    if not targets:
        return 0.0
    labels = [d.label for d in dedup_detections(detections)]
    weight = 1.0 / len(targets)
    score = 0.0
    for label, count in targets:
        if label in labels:
            score += 0.5 * weight
            if labels.count(label) == count:
                score += 0.5 * weight
    return score


COMPLEX_KINDS = ("spatial", "action", "both")


def three_in_one(kind: str, attribute: float, spatial: float, action: float) -> float:
    """The complex category's score of one image from its three partial scores."""
    if kind == "spatial":
        return (spatial + attribute) * 0.5
    if kind == "action":
        return (action + attribute) * 0.5
    if kind == "both":
        return (attribute + spatial + action) / 3
    raise ValueError(f"unknown complex prompt kind {kind!r}; use one of {', '.join(COMPLEX_KINDS)}")
