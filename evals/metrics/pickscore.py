"""PickScore (Kirstain et al., 2023): a CLIP-H/14 fine-tuned on Pick-a-Pic preferences.

score = exp(logit_scale) · cos(image embedding, prompt embedding)

with the model ``yuvalkirstain/PickScore_v1`` and the processor (tokenizer and image
preprocessing) of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, exactly as the PickScore
reference code and the LPO evaluation script call them: transformers' CLIP image
processor (shorter side to 224 bicubic, centre crop with a floored offset, CLIP
mean/std) and the tokenizer truncating at 77 tokens. Typical values for SD outputs are
about 20–23 (exp(logit_scale) ≈ 100 times a cosine near 0.2).
"""

from __future__ import annotations

import torch

from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.metrics.clip_common import TransformersClip
from lpo.evals.metrics.scoring import BatchedMetric
from lpo.evals.metrics.weights import weights_fix

PICKSCORE_WEIGHTS = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@METRICS.register("pickscore")
class PickScore(BatchedMetric):
    name = "pickscore"
    version = "v1+lpo1"
    formula = "exp(logit_scale)·cos(image, prompt), PickScore_v1 (CLIP-H/14)"
    comparability = "published"

    def __init__(self, spec: MetricSpec):
        super().__init__(spec)
        weights = spec.weights or PICKSCORE_WEIGHTS
        processor = spec.processor or PICKSCORE_PROCESSOR
        fix = weights_fix(self.name, f"{PICKSCORE_WEIGHTS} (and --metric-processor for {PICKSCORE_PROCESSOR})")
        self.clip = TransformersClip(weights, processor, metric=self.name, fix=fix, device=self.device, dtype=self.dtype)
        self.weights = {"model": weights, "processor": processor}

    def score_batch(self, images, prompts) -> torch.Tensor:
        logit_scale = self.clip.model.logit_scale.float().exp()
        return logit_scale * self.clip.cosine(images, prompts).float()
