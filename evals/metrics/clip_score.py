"""CLIP score: two registered variants, each naming its model and formula.

Several incompatible "CLIP scores" are in use, so neither is called just that in a
table:

- ``clip_score``: torchmetrics' definition (Hessel et al., 2021, without their w=2.5):
  100 · max(cos(image, prompt), 0) with ``openai/clip-vit-large-patch14`` (torchmetrics'
  default model) and its transformers processor. Prompts longer than 77 tokens are
  truncated by the tokenizer, end token kept (torchmetrics slices the ids instead,
  dropping the end token; only such long prompts differ).
- ``clip_cosine_h14``: the raw cosine with ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``,
  the CLIP score role of LPO's multi-preference consistent filtering (its thresholds,
  e.g. a tie within 0.03, are in cosine units).
"""

from __future__ import annotations

import torch

from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.metrics.clip_common import TransformersClip
from lpo.evals.metrics.scoring import BatchedMetric
from lpo.evals.metrics.weights import weights_fix

CLIP_L14 = "openai/clip-vit-large-patch14"
CLIP_H14 = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class _ClipCosineMetric(BatchedMetric):
    default_weights: str

    def __init__(self, spec: MetricSpec):
        super().__init__(spec)
        weights = spec.weights or self.default_weights
        processor = spec.processor or weights  # CLIP repositories ship their processor
        fix = weights_fix(self.name, f"the {self.default_weights} folder")
        self.clip = TransformersClip(weights, processor, metric=self.name, fix=fix, device=self.device, dtype=self.dtype)
        self.weights = {"model": weights, "processor": processor}


@METRICS.register("clip_score")
class ClipScore(_ClipCosineMetric):
    name = "clip_score"
    version = "l14-100relucos+lpo1"
    # Hessel et al.'s CLIPScore per image with w = 100, as the torchmetrics number is reported.
    # torchmetrics clamps the mean of a batch instead of each image: the two agree unless some
    # image-prompt cosine is negative (CLIP ViT-L/14 cosines of captioned images sit near 0.2-0.35).
    formula = "100·max(cos(image, prompt), 0) per image, openai/clip-vit-large-patch14"
    comparability = "published"
    default_weights = CLIP_L14

    def score_batch(self, images, prompts) -> torch.Tensor:
        return 100.0 * self.clip.cosine(images, prompts).float().clamp(min=0.0)


@METRICS.register("clip_cosine_h14")
class ClipCosineH14(_ClipCosineMetric):
    name = "clip_cosine_h14"
    version = "h14-laion2b-cos+lpo1"
    formula = "cos(image, prompt), laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    comparability = "lpo"
    comparability_note = "the CLIP role of LPO's pair filter (MPCF), in cosine units; not a published evaluation metric"
    default_weights = CLIP_H14

    def score_batch(self, images, prompts) -> torch.Tensor:
        return self.clip.cosine(images, prompts).float()
