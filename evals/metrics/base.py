"""What every evaluation metric is: a named, versioned scorer of (image, prompt) pairs.

A metric is built by a factory registered in ``METRICS`` from a :class:`MetricSpec`
(weights id or local path, device, dtype) and scores a batch of PIL images with their
prompts into one float per image. The version string goes into every result record:
two values with different versions never share a leaderboard column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
from PIL import Image

from lpo.core.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    """How to build a metric: ``weights`` is a hub id or a local folder/file (None: the
    metric's official default); ``processor`` is the hub id or local folder its
    tokenizer / image processor come from (None: the official one; for the LAION
    aesthetic predictor, the CLIP image tower too); ``device``/``dtype`` as torch
    understands them."""

    weights: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 16
    processor: str | None = None  # last, so that positional construction keeps working


# Whether a metric's numbers stand beside published ones (declared by every lpo metric,
# read by the leaderboard and the report to mark columns):
PUBLISHED = "published"  # the authors' formula, preprocessing and weights: comparable with published tables
VARIANT = "variant"  # the published metric with a documented substitution: consistent across checkpoints, not comparable
OWN = "lpo"  # a measure of lpo's own (the world's judges, diversity, the LRM): nothing published to compare with
COMPARABILITY = (PUBLISHED, VARIANT, OWN)

# What the harness reads from every built metric (checked when one is built).
METRIC_ATTRIBUTES = ("name", "version", "higher_is_better", "formula", "per_prompt", "weights")


@runtime_checkable
class Metric(Protocol):
    """The contract of a built metric; :data:`METRIC_ATTRIBUTES` are checked by the harness.

    name: the registry name.  version: part of every result key; bump it on any change of
    formula, preprocessing or default weights.  formula: what a value is, shown in tables
    (None only where the name says it: a column's identity includes it, so it must not
    change without a version bump).  per_prompt: True for a measure of the images of one
    prompt together (diversity): it implements ``score_sets``, one value per prompt, and
    ``score`` refuses.  weights: the references actually loaded ({role: hub id or path};
    empty when the metric has none), recorded with every result.
    """

    name: str
    version: str
    higher_is_better: bool
    formula: str | None
    per_prompt: bool
    weights: dict[str, str]

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """One float per image (shape (N,), float32, on the CPU)."""


@runtime_checkable
class SetScoringMetric(Metric, Protocol):
    """A ``per_prompt`` metric: one value for the images of each prompt together."""

    def score_sets(self, sets: Sequence[Sequence[Image.Image]], prompts: Sequence[str]) -> list[float]:
        """One float per prompt."""


MetricFactory = Callable[[MetricSpec], Metric]
METRICS: Registry[MetricFactory] = Registry("metric")

