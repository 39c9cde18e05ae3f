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


@runtime_checkable
class Metric(Protocol):
    name: str
    version: str
    higher_is_better: bool

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """One float per image (shape (N,), float32, on the CPU)."""


MetricFactory = Callable[[MetricSpec], Metric]
METRICS: Registry[MetricFactory] = Registry("metric")
