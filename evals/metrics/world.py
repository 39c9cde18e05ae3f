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
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from lpo.errors import LpoError
from lpo.evals.metrics.base import METRICS, MetricSpec

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

    def __init__(self, name: str, score_key: str) -> None:
        from lpo.world.grammar import WORLD_VERSION
        from lpo.world.judges import JUDGES_VERSION

        self.name = name
        self.score_key = score_key
        # The judges' version and the world's (a new grammar or renderer is a new metric version too).
        self.version = f"{WORLD_VERSION}.{JUDGES_VERSION}"

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

    return build


for _key in ("alignment", "soft_alignment", "aesthetic", "clip", "utility"):
    METRICS.add(f"world_{_key}", _factory(f"world_{_key}", _key))
