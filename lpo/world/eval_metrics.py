"""The world's exact judges (:mod:`lpo.world.judges`) as evaluation metrics.

=========================  ================================================================
metric                     judge score (all in [0, 1], higher is better)
=========================  ================================================================
``world_alignment``        T2I-CompBench++-style category score (per-category breakdown
                           comes from the benchmark's categories)
``world_soft_alignment``   attribute-level alignment
``world_aesthetic``        aesthetic proxy
``world_clip``             CLIP-score proxy (bag of attribute words, blind to binding)
``world_utility``          the hidden true preference, 0.6·soft + 0.4·aesthetic (the
                           world's "PickScore")
=========================  ================================================================

The judges read 32×32 world images and world-grammar prompts; anything else is a user
error naming the fix. One image is judged once for all five metrics (a small cache keyed
by the image bytes and the prompt), since every judge score comes from one reading.

``world_diversity`` is a set metric (:mod:`lpo.evals.metrics.diversity`): the mean
pairwise Euclidean distance of the judges' attribute vectors of one prompt's images —
counts of each colour, shape (incl. unknown) and texture read from the image, the number
of objects, the mean object centre (x, y as fractions of the side) and the mean object
size (as a fraction of the largest size the world draws).

Registered into ``lpo.evals.metrics.METRICS`` by :func:`register`, which
:func:`lpo.world.install` hooks onto that registry's loading (lpo.core.plugins).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from lpo.core.errors import LpoError
from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.metrics.diversity import SetMetric

_CACHE_SIZE = 4096
_cache: "OrderedDict[tuple[bytes, str], dict[str, float]]" = OrderedDict()


def _judged(image: Image.Image, prompt: str) -> dict[str, float]:
    from lpo.world.judges import judge
    from lpo.world.render import IMAGE_SIZE

    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise LpoError(
            f"the world judges read {IMAGE_SIZE}×{IMAGE_SIZE} world images, got {array.shape[1]}×{array.shape[0]}; "
            "evaluate a world model (world, or a folder from `lpo world pretrain`) or use real-mode metrics"
        )
    key = (array.tobytes(), prompt)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    scores = judge(array, prompt).as_dict()
    _cache[key] = scores
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return scores


class WorldJudgeMetric:
    """One judge score as a :class:`~lpo.evals.metrics.base.Metric`."""

    higher_is_better = True
    per_prompt = False
    # The judge's name is its formula (SPEC §2); a column's identity includes the formula,
    # so results recorded before the contract was explicit stay in the same columns.
    formula = None
    comparability = "lpo"
    comparability_note = "the embedded world's exact judge"

    def __init__(self, name: str, score_key: str) -> None:
        from lpo.world.grammar import RENDER_WORLD_VERSION
        from lpo.world.judges import JUDGES_VERSION

        self.name = name
        self.score_key = score_key
        self.weights: dict[str, str] = {}  # exact judges: nothing loaded
        # The judges' version and the world's renderer (new prompts are a new benchmark version, not metric).
        self.version = f"{RENDER_WORLD_VERSION}.{JUDGES_VERSION}"

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        values = []
        for image, prompt in zip(images, prompts):
            try:
                values.append(_judged(image, prompt)[self.score_key])
            except LpoError as err:
                if "grammar" in str(err):
                    raise LpoError(f"{err}; the world metrics need world prompts (--benchmark world or world-heldout)") from None
                raise
        return torch.tensor(values, dtype=torch.float32)


def _factory(name: str, score_key: str):
    def build(spec: MetricSpec) -> WorldJudgeMetric:
        if spec.weights is not None:
            raise LpoError(f"metric {name!r} is an exact judge with no weights; drop its weights setting")
        return WorldJudgeMetric(name, score_key)

    build.declares = WorldJudgeMetric  # what the registry reads without building (lpo.evals.metrics.base.declared)

    return build


# --------------------------------------------------------------------------- diversity


def attribute_vector(image: np.ndarray) -> np.ndarray:
    """The judges' reading of a world image as one vector (see the module docstring)."""
    from lpo.world.grammar import COLOURS, SHAPES, TEXTURES
    from lpo.world.judges import read_image
    from lpo.world.render import MAX_SIZE

    reading = read_image(image)
    objects = reading.hard_objects
    side = float(image.shape[1])
    colours = [sum(o.colour == c for o in objects) for c in COLOURS]
    shapes = [sum(o.shape == s for o in objects) for s in (*SHAPES, "unknown")]
    textures = [sum(o.texture == t for o in objects) for t in TEXTURES]
    if objects:
        layout = [np.mean([o.centre[0] for o in objects]) / side, np.mean([o.centre[1] for o in objects]) / side,
                  np.mean([o.size for o in objects]) / MAX_SIZE]
    else:
        layout = [0.0, 0.0, 0.0]
    return np.array([*colours, *shapes, *textures, len(objects), *layout], dtype=np.float64)


class WorldDiversity(SetMetric):
    name = "world_diversity"
    formula = "mean pairwise Euclidean distance of judged attribute vectors (colour/shape/texture counts, count, centre, size)"

    def __init__(self, spec: MetricSpec) -> None:
        from lpo.world.judges import JUDGES_VERSION
        from lpo.world.grammar import RENDER_WORLD_VERSION

        super().__init__(spec)
        self.version = f"{RENDER_WORLD_VERSION}.{JUDGES_VERSION}+div1"

    def vectors(self, images: list[Image.Image]) -> np.ndarray:
        from lpo.world.render import IMAGE_SIZE

        arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images]
        if any(a.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) for a in arrays):
            raise LpoError(
                f"world_diversity reads {IMAGE_SIZE}×{IMAGE_SIZE} world images; use pixel_diversity or clip_diversity for others"
            )
        return np.stack([attribute_vector(a) for a in arrays])


JUDGE_SCORES = ("alignment", "soft_alignment", "aesthetic", "clip", "utility")


def register() -> None:
    """Add the five judge metrics and ``world_diversity`` to the metric registry (idempotent)."""
    for key in JUDGE_SCORES:
        if f"world_{key}" not in METRICS:
            METRICS.add(f"world_{key}", _factory(f"world_{key}", key))
    if WorldDiversity.name not in METRICS:
        METRICS.add(WorldDiversity.name, WorldDiversity)
