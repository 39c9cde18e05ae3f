"""GenEval's rules (github.com/djghosh13/geneval) as plain functions over detections.

- Prompts (``prompts/create_prompts.py``): six templates over the 80 COCO class names of
  ``object_names.txt`` and ten colours. :func:`parse_prompt` reads a prompt back into the
  metadata the official ``evaluation_metadata.jsonl`` stores for it (the parse is
  checked by regenerating the prompt), so any GenEval-grammar prompt can be scored.
- Detections kept (``evaluate_images.py``): per class, most confident first, score above
  0.3 (0.9 for counting prompts), at most 16, optionally de-duplicated by IoU
  (``max_overlap``, off by default: 1.0).
- :func:`evaluate` — the image is correct when every ``include`` clause holds (at least
  ``count`` objects of the class among the most confident ones; with a colour, at least
  ``count`` of those ``count`` classified as that colour; with a position, each of them
  in that relation to every object of the target clause) and no ``exclude`` clause
  does (fewer than ``count`` objects).
- :func:`relative_position` — A's position relative to B: the centre offset, shrunk
  per axis by 0.1 × (A's + B's extent) (clipped at 0), divided by the offset's length;
  "left of"/"right of" when the x component is beyond ∓0.5, "above"/"below" likewise
  for y (y grows downwards).
- Task score = fraction of correct images of the task; overall = mean of the six task
  scores (``summary_scores.py``; :func:`overall_score`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

# object_names.txt: the 80 COCO classes in COCO's contiguous order (a detector's class i).
CLASSNAMES = tuple(
    "person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,fire hydrant,stop sign,"
    "parking meter,bench,bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe,backpack,umbrella,"
    "handbag,tie,suitcase,frisbee,skis,snowboard,sports ball,kite,baseball bat,baseball glove,skateboard,"
    "surfboard,tennis racket,bottle,wine glass,cup,fork,knife,spoon,bowl,banana,apple,sandwich,orange,"
    "broccoli,carrot,hot dog,pizza,donut,cake,chair,couch,potted plant,bed,dining table,toilet,tv,laptop,"
    "computer mouse,tv remote,computer keyboard,cell phone,microwave,oven,toaster,sink,refrigerator,book,"
    "clock,vase,scissors,teddy bear,hair drier,toothbrush".split(",")
)
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
POSITIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
MAX_OVERLAP = 1.0  # no de-duplication
POSITION_THRESHOLD = 0.1


# ------------------------------------------------------------------------------ prompts


def with_article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def make_plural(name: str) -> str:
    return f"{name}es" if name[-1] == "s" else f"{name}s"


def prompt_of(metadata: Mapping[str, Any]) -> str:
    """The prompt create_prompts.py writes for this metadata."""
    tag, include = metadata["tag"], metadata["include"]
    if tag == "single_object":
        return f"a photo of {with_article(include[0]['class'])}"
    if tag == "two_object":
        return f"a photo of {with_article(include[0]['class'])} and {with_article(include[1]['class'])}"
    if tag == "counting":
        return f"a photo of {NUMBERS[include[0]['count']]} {make_plural(include[0]['class'])}"
    if tag == "colors":
        return f"a photo of {with_article(include[0]['color'])} {include[0]['class']}"
    if tag == "position":
        target, subject = include
        return f"a photo of {with_article(subject['class'])} {subject['position'][0]} {with_article(target['class'])}"
    if tag == "color_attr":
        a, b = include
        return f"a photo of {with_article(a['color'])} {a['class']} and {with_article(b['color'])} {b['class']}"
    raise ValueError(f"unknown GenEval tag {tag!r}")


def _alternation(names: Sequence[str]) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


_CLS = f"(?:{_alternation(CLASSNAMES)})"
_COL = f"(?:{_alternation(COLORS)})"
_ART = "(?:a|an)"
_TEMPLATES = {
    "single_object": re.compile(rf"a photo of {_ART} (?P<a>{_CLS})"),
    "two_object": re.compile(rf"a photo of {_ART} (?P<a>{_CLS}) and {_ART} (?P<b>{_CLS})"),
    "counting": re.compile(rf"a photo of (?P<n>{'|'.join(NUMBERS)}) (?P<a>.+)"),
    "colors": re.compile(rf"a photo of {_ART} (?P<ca>{_COL}) (?P<a>{_CLS})"),
    "position": re.compile(rf"a photo of {_ART} (?P<a>{_CLS}) (?P<p>{'|'.join(POSITIONS)}) {_ART} (?P<b>{_CLS})"),
    "color_attr": re.compile(rf"a photo of {_ART} (?P<ca>{_COL}) (?P<a>{_CLS}) and {_ART} (?P<cb>{_COL}) (?P<b>{_CLS})"),
}
_SINGULAR = {make_plural(c): c for c in CLASSNAMES}


def _metadata(tag: str, m: re.Match) -> dict[str, Any] | None:
    g = m.groupdict()
    if tag == "single_object":
        include = [{"class": g["a"], "count": 1}]
    elif tag == "two_object":
        include = [{"class": g["a"], "count": 1}, {"class": g["b"], "count": 1}]
    elif tag == "counting":
        cls, n = _SINGULAR.get(g["a"]), NUMBERS.index(g["n"])
        if cls is None:
            return None
        return {"tag": tag, "include": [{"class": cls, "count": n}], "exclude": [{"class": cls, "count": n + 1}]}
    elif tag == "colors":
        include = [{"class": g["a"], "count": 1, "color": g["ca"]}]
    elif tag == "position":
        include = [{"class": g["b"], "count": 1}, {"class": g["a"], "count": 1, "position": [g["p"], 0]}]
    else:
        include = [{"class": g["a"], "count": 1, "color": g["ca"]}, {"class": g["b"], "count": 1, "color": g["cb"]}]
    return {"tag": tag, "include": include}


def parse_prompt(prompt: str) -> dict[str, Any] | None:
    """The GenEval metadata of a prompt in GenEval's grammar (with ``prompt``), or None
    when no template, or more than one, reproduces it exactly."""
    found = []
    for tag, pattern in _TEMPLATES.items():
        m = pattern.fullmatch(prompt)
        if m:
            metadata = _metadata(tag, m)
            if metadata is not None and prompt_of(metadata) == prompt:
                found.append(metadata)
    if len(found) != 1:
        return None
    return {**found[0], "prompt": prompt}


# ----------------------------------------------------------------------- detections


@dataclass(frozen=True)
class GenevalObject:
    """One detected instance: box (x1, y1, x2, y2) in pixels, confidence, optional mask
    (H, W) bool."""

    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None


def compute_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU with the +1 pixel convention of evaluate_images.py."""

    def area(box):
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0.0


def select_objects(
    candidates: Mapping[str, Sequence[GenevalObject]],
    *,
    counting: bool,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
    max_overlap: float = MAX_OVERLAP,
) -> dict[str, list[GenevalObject]]:
    """Per class, the kept detections, most confident first; classes with none are left out."""
    cutoff = counting_threshold if counting else threshold
    kept: dict[str, list[GenevalObject]] = {}
    for classname, objects in candidates.items():
        order = sorted((o for o in objects if o.score > cutoff), key=lambda o: -o.score)[:max_objects]
        chosen: list[GenevalObject] = []
        while order:
            best = order.pop(0)
            chosen.append(best)
            order = [o for o in order if max_overlap == 1 or compute_iou(best.box, o.box) < max_overlap]
        if chosen:
            kept[classname] = chosen
    return kept


def relative_position(a: GenevalObject, b: GenevalObject, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """The relations that hold for A relative to B (see the module docstring)."""
    boxes = np.array([a.box, b.box], dtype=np.float64).reshape(2, 2, 2)  # (object, corner, xy)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


ColorClassifier = Callable[[str, Sequence[GenevalObject]], list[str]]


def evaluate(
    objects: Mapping[str, Sequence[GenevalObject]], metadata: Mapping[str, Any], classify_colors: ColorClassifier
) -> tuple[bool, str]:
    """(correct, reason) of one image; ``classify_colors(classname, objects)`` names the
    colour of each object."""
    correct = True
    reasons: list[str] = []
    matched_groups: list[list[GenevalObject] | None] = []
    for req in metadata.get("include", []):
        classname, count = req["class"], req["count"]
        matched = True
        found = list(objects.get(classname, []))[:count]
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {classname}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = classify_colors(classname, found)
                if colors.count(req["color"]) < count:
                    correct = matched = False
                    reasons.append(f"expected {req['color']} {classname}>={count}, found {colors.count(req['color'])}")
            if "position" in req and matched:
                expected, target = req["position"]
                if matched_groups[target] is None:
                    correct = matched = False
                    reasons.append(f"no target for {classname} to be {expected}")
                else:
                    for obj in found:
                        for target_obj in matched_groups[target]:
                            if expected not in relative_position(obj, target_obj):
                                correct = matched = False
                                reasons.append(f"expected {classname} {expected} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        classname = req["class"]
        if len(objects.get(classname, [])) >= req["count"]:
            correct = False
            reasons.append(f"expected {classname}<{req['count']}, found {len(objects[classname])}")
    return correct, "\n".join(reasons)


def overall_score(task_scores: Mapping[str, float]) -> float:
    """GenEval's overall score: the unweighted mean of the task scores."""
    if not task_scores:
        raise ValueError("no task scores")
    return float(np.mean(list(task_scores.values())))
