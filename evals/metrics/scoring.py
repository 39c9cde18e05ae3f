"""The scoring loop every model-based metric shares: batches, no_grad, one float per image."""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from lpo.core.errors import LpoError
from lpo.evals.metrics.base import MetricSpec
from lpo.evals.metrics.weights import torch_dtype


class BatchedMetric:
    """Base of the real metrics: subclasses set ``name``, ``version`` and ``formula`` and
    implement ``score_batch`` (at most ``batch_size`` images, no gradients).

    ``weights`` records the references actually loaded, for result rows.
    """

    name: str
    version: str
    formula: str
    higher_is_better: bool = True
    per_prompt = False
    # lpo.evals.metrics.base.COMPARABILITY; None: not declared (a metric from outside lpo)
    comparability: str | None = None
    comparability_note: str | None = None  # what differs from the published metric, for a variant

    def __init__(self, spec: MetricSpec):
        if not isinstance(spec.batch_size, int) or spec.batch_size < 1:
            raise LpoError(f"{self.name}: batch_size must be a positive integer, got {spec.batch_size!r}")
        self.batch_size = spec.batch_size
        self.device = torch.device(spec.device)
        self.dtype = torch_dtype(spec.dtype, self.name)
        self.weights: dict[str, str] = {}

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        """One float per image, shape (N,), float32 on the CPU."""
        images, prompts = list(images), list(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"{self.name}: {len(images)} images but {len(prompts)} prompts")
        if any(not isinstance(image, Image.Image) for image in images):
            raise TypeError(f"{self.name}: images must be PIL images")
        scores = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                stop = start + self.batch_size
                batch = self.score_batch(images[start:stop], prompts[start:stop])
                scores.append(batch.detach().to(device="cpu", dtype=torch.float32).reshape(-1))
        return torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float32)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}@{self.version}: {self.formula})"
