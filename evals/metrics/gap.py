"""Evaluation metrics as MPCF gap scorers (lpo.pairs.gap_scores.GapScorer), for real-mode filtering.

``lpo.pairs.gap_scores`` names its real scorers ``laion-aesthetic``, ``clip-score`` and ``vqascore``;
``GAP_SCORER_METRICS`` says which metric fills each (VQAScore is not built: it needs an
11 B model). The metric's name and version name the MPCF score cache, so a bumped metric
version rescores.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lpo.evals.metrics.base import METRICS, Metric, MetricSpec

GAP_SCORER_METRICS = {
    "laion-aesthetic": "laion_aesthetic",  # G_A in LAION-aesthetic units (aesthetic_scale 1)
    "clip-score": "clip_cosine_h14",  # G_C in cosine units (clip_scale 1), CLIP-ViT-H-14-laion2B as in the paper
}


class MetricGapScorer:
    """A ``GapScorer`` backed by an evaluation metric: uint8 (H, W, 3) arrays in, float64 out."""

    def __init__(self, metric: Metric):
        self.metric = metric
        self.name = metric.name
        self.version = metric.version

    def score(self, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        pil = [Image.fromarray(np.asarray(image, dtype=np.uint8)) for image in images]
        return self.metric.score(pil, list(prompts)).numpy().astype(np.float64)

    def __repr__(self) -> str:
        return f"MetricGapScorer({self.metric!r})"


def gap_scorer(gap_name: str, spec: MetricSpec | None = None) -> MetricGapScorer:
    """The metric behind an MPCF scorer name, built now (weights load here)."""
    metric_name = GAP_SCORER_METRICS.get(gap_name, gap_name)
    return MetricGapScorer(METRICS.get(metric_name)(spec or MetricSpec()))
