"""HPSv2 and HPSv2.1 (Wu et al., 2023): open_clip ViT-H-14 fine-tuned on human preferences.

score = 100 · cos(image embedding, prompt embedding)

The official files ``HPS_v2_compressed.pt`` and ``HPS_v2.1_compressed.pt`` in
``xswu/HPSv2`` are open_clip state dicts (under ``state_dict``); they are converted to a
transformers ``CLIPModel`` (lpo.evals.metrics.open_clip_convert) and loaded strictly.
The two releases are two metrics with their own names and versions, never one column.

``score`` returns 100·cos, the unit of published tables (HPSv2 ≈ 26–29 for SD models,
LPO paper Table 2); the upstream ``hpsv2.score`` returns the bare cosine (0.26–0.29).

Preprocessing is HPSv2's ``preprocess_val`` (open_clip ``image_transform`` with
``resize_longest_max=True``): longer side to 224 bicubic, black padding to a square, no
centre crop, CLIP mean/std. Text is open_clip's ``tokenize`` (context 77, end token kept
on truncation, padding after it): here transformers' CLIPTokenizer with the same BPE
vocabulary, after the same HTML unescaping and whitespace cleaning; open_clip also runs
``ftfy.fix_text``, which only changes mis-encoded text (mojibake) and is not applied.
Upstream runs the model under CUDA autocast (fp16); here it runs in ``MetricSpec.dtype``.
"""

from __future__ import annotations

import html
import re

import torch

from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.metrics.clip_common import image_embeds, load_clip_tokenizer, text_embeds, tokenize
from lpo.evals.metrics.open_clip_convert import VIT_H_14, OpenClipArchitecture, open_clip_to_transformers
from lpo.evals.metrics.preprocess import CLIP_MEAN, CLIP_STD, resize_longest_pad, to_pixel_values
from lpo.evals.metrics.scoring import BatchedMetric
from lpo.evals.metrics.weights import load_checkpoint, load_into, provenance, resolve_file, weights_fix

HPS_REPO = "xswu/HPSv2"
HPS_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # open_clip's ViT-H-14 BPE vocabulary


def open_clip_clean(text: str) -> str:
    """open_clip's ``basic_clean`` + ``whitespace_clean`` (without ftfy)."""
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


@METRICS.register("hpsv2")
class HPSv2(BatchedMetric):
    name = "hpsv2"
    version = "v2.0+lpo1"
    filename = "HPS_v2_compressed.pt"
    formula = "100·cos(image, prompt), HPS v2.0 (open_clip ViT-H-14), pad-to-square 224"
    comparability = "published"

    def __init__(self, spec: MetricSpec, *, architecture: OpenClipArchitecture = VIT_H_14):
        super().__init__(spec)
        from accelerate import init_empty_weights
        from transformers import CLIPModel

        weights = spec.weights or HPS_REPO
        processor = spec.processor or HPS_TOKENIZER
        fix = weights_fix(self.name, f"{self.filename} from {HPS_REPO}")
        path = resolve_file(weights, self.filename, metric=self.name, fix=fix)
        state = load_checkpoint(path, metric=self.name, fix=fix)
        state = open_clip_to_transformers(state, metric=self.name, source=str(path), fix=fix)
        self.tokenizer = load_clip_tokenizer(processor, metric=self.name, fix=fix)
        config = architecture.clip_config(
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        with init_empty_weights():  # parameters on meta; the checkpoint supplies them all
            model = CLIPModel(config)
        load_into(model, state, metric=self.name, source=str(path), layout="an open_clip ViT-H-14 state dict", fix=fix)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.architecture = architecture
        self.weights = {"model": provenance(weights, path, self.filename), "processor": processor}

    def pixel_values(self, images) -> torch.Tensor:
        size = self.architecture.image_size
        pixels = to_pixel_values([resize_longest_pad(image, size) for image in images], CLIP_MEAN, CLIP_STD)
        return pixels.to(device=self.device, dtype=self.dtype)

    def score_batch(self, images, prompts) -> torch.Tensor:
        image = image_embeds(self.model, self.pixel_values(images))
        texts = [open_clip_clean(prompt) for prompt in prompts]
        input_ids, attention_mask = tokenize(
            self.tokenizer, texts, self.architecture.context_length, padding="max_length", device=self.device
        )
        text = text_embeds(self.model, input_ids, attention_mask)
        return 100.0 * (image * text).sum(dim=-1).float()


@METRICS.register("hpsv21")
class HPSv21(HPSv2):
    name = "hpsv21"
    version = "v2.1+lpo1"
    filename = "HPS_v2.1_compressed.pt"
    formula = "100·cos(image, prompt), HPS v2.1 (open_clip ViT-H-14), pad-to-square 224"
