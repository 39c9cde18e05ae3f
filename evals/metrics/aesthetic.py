"""LAION aesthetic predictor v2 (``sac+logos+ava1-l14-linearMSE``).

score = MLP(e / ‖e‖),  e = CLIP ViT-L/14 image embedding (``openai/clip-vit-large-patch14``)

The head is improved-aesthetic-predictor's MLP 768→1024→128→64→16→1 (linear layers with
Dropouts between and no activations: the upstream ReLUs are commented out), loaded
strictly from the official ``.pth`` (keys ``layers.{0,2,4,6,7}.*``). Typical values are
5–6.5 for SD outputs (the prompt is not used).

Preprocessing is OpenAI CLIP's ``preprocess`` that the predictor was trained and is run
with: shorter side to 224 bicubic, centre crop with torchvision's rounding, CLIP
mean/std. (LPO's evaluation script used transformers' CLIP processor instead, whose crop
offset is floored: identical on square images such as SD outputs, at most one pixel of
offset apart on others.)
"""

from __future__ import annotations

import torch
from torch import nn

from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.metrics.clip_common import normalise
from lpo.evals.metrics.preprocess import resize_shorter_center_crop, to_pixel_values
from lpo.evals.metrics.scoring import BatchedMetric
from lpo.evals.metrics.weights import (
    from_pretrained,
    load_checkpoint,
    load_into,
    model_from_pretrained,
    provenance,
    resolve_file,
    weights_fix,
)

# A hub mirror of the file published in github.com/christophschuhmann/improved-aesthetic-predictor.
AESTHETIC_REPO = "camenduru/improved-aesthetic-predictor"
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"


def aesthetic_head(in_features: int = 768) -> nn.Module:
    """The predictor's MLP with its upstream parameter names (``layers.N``)."""
    head = nn.Module()
    head.layers = nn.Sequential(
        nn.Linear(in_features, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )
    return head


@METRICS.register("laion_aesthetic")
class LaionAesthetic(BatchedMetric):
    name = "laion_aesthetic"
    version = "v2-l14-linearMSE+lpo1"
    formula = "MLP(normalised CLIP ViT-L/14 image embedding), sac+logos+ava1-l14-linearMSE"
    comparability = "published"

    def __init__(self, spec: MetricSpec):
        super().__init__(spec)
        from transformers import CLIPConfig, CLIPVisionModelWithProjection

        weights = spec.weights or AESTHETIC_REPO
        clip = spec.processor or AESTHETIC_CLIP
        fix = weights_fix(self.name, f"{AESTHETIC_FILE} (github.com/christophschuhmann/improved-aesthetic-predictor)")
        path = resolve_file(weights, AESTHETIC_FILE, metric=self.name, fix=fix)
        state = load_checkpoint(path, metric=self.name, fix=fix)
        # Only the image tower of the full CLIP checkpoint; its projection width is the
        # top-level projection_dim (a vision_config need not repeat it).
        clip_config = from_pretrained(CLIPConfig.from_pretrained, clip, metric=self.name, what="CLIP config", fix=fix)
        vision_config = clip_config.vision_config
        vision_config.projection_dim = clip_config.projection_dim
        self.clip = model_from_pretrained(
            CLIPVisionModelWithProjection,
            clip,
            metric=self.name,
            what="CLIP image tower",
            fix=fix,
            config=vision_config,
        )
        self.clip.to(device=self.device, dtype=self.dtype).eval()
        self.head = aesthetic_head(self.clip.config.projection_dim)
        layout = "the aesthetic MLP (layers.{0,2,4,6,7})"
        load_into(self.head, state, metric=self.name, source=str(path), layout=layout, fix=fix)
        self.head.to(self.device).eval()  # float32, as upstream feeds it float32 embeddings
        self.image_size = self.clip.config.image_size
        self.weights = {"model": provenance(weights, path, AESTHETIC_FILE), "clip": clip}

    def pixel_values(self, images) -> torch.Tensor:
        pixels = to_pixel_values([resize_shorter_center_crop(image, self.image_size) for image in images])
        return pixels.to(device=self.device, dtype=self.dtype)

    def score_batch(self, images, prompts) -> torch.Tensor:
        embeds = self.clip(pixel_values=self.pixel_values(images)).image_embeds
        return self.head.layers(normalise(embeds.float())).squeeze(-1)
