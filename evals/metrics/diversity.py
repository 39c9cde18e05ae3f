"""Diversity across seeds: how different the images of one prompt are from each other.

A preference-optimised model that collapses onto one "safe" image per prompt can score
higher on its reward while losing variety; the harness reports one of these beside the
quality metrics (``lpo.evals.harness.default_metrics``). Each is a *set* metric: it scores
the N images of a prompt together (``per_prompt = True``, :meth:`score_sets`), one value
per prompt = the mean over the N·(N−1)/2 pairs of a distance; the record then averages
prompts like any metric (prompt as the unit, 95% interval over prompts). Higher = more
diverse. Only images with the same prompt and protocol are compared, so two checkpoints'
values are comparable on identical prompts and seeds.

=====================  ==============================================================
metric                 distance between two images of a prompt
=====================  ==============================================================
``world_diversity``    Euclidean distance of the judges' attribute vectors (world
                       images; registered by the world, lpo.world.eval_metrics)
``pixel_diversity``    RMS difference of the RGB pixels in [0, 1], after a box
                       downsample to at most 64 px (any images; no model)
``clip_diversity``     1 − cosine of CLIP image embeddings
                       (``openai/clip-vit-large-patch14`` by default; real images)
=====================  ==============================================================
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from lpo.core.errors import LpoError
from lpo.evals.metrics.base import METRICS, MetricSpec

CLIP_L14 = "openai/clip-vit-large-patch14"
PIXEL_SIDE = 64


def mean_pairwise(vectors: np.ndarray, distance) -> float:
    """Mean of ``distance(a, b)`` over the unordered pairs of rows of ``vectors``."""
    if len(vectors) < 2:
        raise LpoError("a diversity measure needs at least 2 images per prompt; use --images-per-prompt 2 or more")
    return float(np.mean([distance(vectors[i], vectors[j]) for i, j in combinations(range(len(vectors)), 2)]))


def euclidean(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


class SetMetric:
    """A metric of the N images of one prompt together: one value per prompt, the mean
    pairwise ``distance`` of ``vectors`` (Euclidean unless a subclass says otherwise)."""

    per_prompt = True
    higher_is_better = True
    comparability = "lpo"
    comparability_note: str | None = "a diversity measure of lpo's own"
    name: str
    version: str
    formula: str

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.weights: dict[str, str] = {}

    def vectors(self, images: list[Image.Image]) -> np.ndarray:
        raise NotImplementedError

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return euclidean(a, b)

    def score_sets(self, sets: Sequence[Sequence[Image.Image]], prompts: Sequence[str]) -> list[float]:
        if len(sets) != len(prompts):
            raise ValueError(f"{len(sets)} image sets but {len(prompts)} prompts")
        return [mean_pairwise(self.vectors(list(images)), self.distance) for images in sets]

    def score(self, images, prompts):
        raise LpoError(f"{self.name} compares the images of a prompt with each other; it has no per-image score")


# --------------------------------------------------------------------------- any images


def downsampled(image: Image.Image, side: int = PIXEL_SIDE) -> np.ndarray:
    """RGB in [0, 1], box-downsampled so the longer side is at most ``side``."""
    image = image.convert("RGB")
    scale = max(image.size) / side
    if scale > 1:
        image = image.resize((max(1, round(image.width / scale)), max(1, round(image.height / scale))), Image.BOX)
    return np.asarray(image, dtype=np.float64).reshape(-1) / 255.0


@METRICS.register("pixel_diversity")
class PixelDiversity(SetMetric):
    name = "pixel_diversity"
    version = "1"
    formula = f"mean pairwise RMS difference of RGB pixels in [0, 1] (box downsample to <= {PIXEL_SIDE} px)"

    def vectors(self, images: list[Image.Image]) -> np.ndarray:
        arrays = [downsampled(image) for image in images]
        if len({a.shape for a in arrays}) != 1:
            raise LpoError("pixel_diversity needs images of one size per prompt")
        return np.stack(arrays)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sqrt(np.mean((a - b) ** 2)))


@METRICS.register("clip_diversity")
class ClipDiversity(SetMetric):
    name = "clip_diversity"
    version = "l14-1mcos+lpo1"
    formula = "mean pairwise 1 − cos of CLIP image embeddings (openai/clip-vit-large-patch14)"

    def __init__(self, spec: MetricSpec) -> None:
        from lpo.evals.metrics.clip_common import TransformersClip
        from lpo.evals.metrics.weights import torch_dtype, weights_fix

        super().__init__(spec)
        weights = spec.weights or CLIP_L14
        processor = spec.processor or weights
        self.device, self.dtype = torch.device(spec.device), torch_dtype(spec.dtype, self.name)
        self.clip = TransformersClip(
            weights, processor, metric=self.name, fix=weights_fix(self.name, f"the {CLIP_L14} folder"),
            device=self.device, dtype=self.dtype,
        )
        self.weights = {"model": weights, "processor": processor}
        if weights != CLIP_L14:
            self.formula = f"mean pairwise 1 − cos of CLIP image embeddings ({weights})"

    def vectors(self, images: list[Image.Image]) -> np.ndarray:
        from lpo.evals.metrics.clip_common import image_embeds

        with torch.no_grad():
            embeds = image_embeds(self.clip.model, self.clip.pixel_values(images))
        return embeds.float().cpu().numpy()

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(1.0 - np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
