"""The expert models behind T2I-CompBench++'s detection-based scores, on transformers.

- :class:`Owlv2Detector` — an open-vocabulary detector standing in for the official
  UniDet (a closed-vocabulary detectron2 model that is not on any model hub):
  ``google/owlv2-base-patch16-ensemble``, queried with "a photo of a {noun}" for the
  nouns of the prompt. As transformers' ``post_process_object_detection`` does, each
  predicted box takes the query it scores highest on, with score sigmoid(logit), and is
  kept above ``threshold``. OWLv2 predicts one box per image patch, so boxes of one label
  overlapping by IoU > ``nms_iou`` are suppressed (greedy, most confident first), the
  per-class NMS UniDet's own detectron2 head applies at 0.5. Preprocessing follows
  transformers' ``Owlv2ImageProcessor``: [0, 1] pixels, padded at the bottom and right
  to a square with 0, resized to the model's input size (bilinear; transformers uses
  scipy's anti-aliased zoom, identical up to resampling on the upscaling that generated
  images get), CLIP mean/std.
- :class:`MidasDepth` — ``Intel/dpt-hybrid-midas`` (the official script's
  ``dpt_hybrid-midas-501f0c75.pt``, converted) run as the official script runs it: the
  image resized to 480×480 (bilinear), normalised with mean = std = 0.5, the predicted
  inverse depth min-max normalised to [0, 1], resized to the image (bilinear,
  align_corners=True), stored as an 8-bit image (truncated, as PIL's F→L conversion),
  and resized to the detector frame (:func:`compbench_rules.unidet_frame`) over 255.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from lpo.core.errors import LpoError
from lpo.evals.metrics.compbench_rules import Box, Detection, box_iou, unidet_frame
from lpo.evals.metrics.preprocess import CLIP_MEAN, CLIP_STD, to_pixel_values, to_rgb
from lpo.evals.metrics.weights import from_pretrained, model_from_pretrained

OWLV2_DEFAULT = "google/owlv2-base-patch16-ensemble"
OWLV2_THRESHOLD = 0.1  # transformers' default for OWLv2; UniDet's 0.5 is on another scale
OWLV2_NMS_IOU = 0.5
QUERY_TEMPLATE = "a photo of a {}"
DPT_DEFAULT = "Intel/dpt-hybrid-midas"
DEPTH_INPUT = 480


def nms(detections: Sequence[Detection], iou: float) -> list[Detection]:
    """Greedy per-label non-maximum suppression; keeps the order (most confident first)."""
    ordered = sorted(detections, key=lambda d: -d.score)
    kept: list[Detection] = []
    for d in ordered:
        if all(k.label != d.label or box_iou(k.box, d.box) <= iou for k in kept):
            kept.append(d)
    return kept


class Owlv2Detector:
    """``detect(images, labels_per_image)`` -> detections per image, boxes in image pixels,
    most confident first."""

    def __init__(
        self,
        ref: str,
        *,
        metric: str,
        fix: str,
        device: torch.device,
        dtype: torch.dtype,
        threshold: float = OWLV2_THRESHOLD,
        nms_iou: float = OWLV2_NMS_IOU,
        template: str = QUERY_TEMPLATE,
    ):
        from transformers import AutoTokenizer, Owlv2ForObjectDetection

        self.model = model_from_pretrained(Owlv2ForObjectDetection, ref, metric=metric, what="OWLv2 detector", fix=fix)
        self.model.to(device=device, dtype=dtype).eval()
        self.tokenizer = from_pretrained(AutoTokenizer.from_pretrained, ref, metric=metric, what="OWLv2 tokenizer", fix=fix)
        self.device, self.dtype = device, dtype
        self.threshold, self.nms_iou, self.template = threshold, nms_iou, template
        self.image_size = self.model.config.vision_config.image_size
        self.max_length = self.model.config.text_config.max_position_embeddings  # 16 for OWLv2

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arrays = []
        for image in images:
            pixels = np.asarray(to_rgb(image), dtype=np.float32) / np.float32(255.0)  # (H, W, 3)
            side = max(pixels.shape[:2])
            square = np.zeros((side, side, 3), dtype=np.float32)
            square[: pixels.shape[0], : pixels.shape[1]] = pixels
            resized = [
                np.asarray(Image.fromarray(np.ascontiguousarray(square[..., c])).resize((self.image_size,) * 2, Image.BILINEAR))
                for c in range(3)
            ]
            arrays.append(np.stack(resized, axis=0))  # (3, S, S)
        batch = torch.from_numpy(np.stack(arrays))
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return ((batch - mean) / std).to(device=self.device, dtype=self.dtype)

    def _queries(self, labels_per_image: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token ids (B·Q, L) with each image's queries padded to Q by all-zero rows, which
        OWLv2 masks out (a query whose first token is 0 is padding)."""
        num_queries = max(1, max((len(labels) for labels in labels_per_image), default=1))
        rows, masks = [], []
        for labels in labels_per_image:
            texts = [self.template.format(label) for label in labels]
            if texts:
                tokens = self.tokenizer(
                    texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                rows.append(tokens["input_ids"])
                masks.append(tokens["attention_mask"])
            pad = num_queries - len(texts)
            if pad:
                rows.append(torch.zeros(pad, self.max_length, dtype=torch.long))
                masks.append(torch.zeros(pad, self.max_length, dtype=torch.long))
        return torch.cat(rows).to(self.device), torch.cat(masks).to(self.device), num_queries

    def detect(self, images: Sequence[Image.Image], labels_per_image: Sequence[Sequence[str]]) -> list[list[Detection]]:
        images = list(images)
        if not any(labels_per_image):
            return [[] for _ in images]
        input_ids, attention_mask, num_queries = self._queries(labels_per_image)
        with torch.no_grad():
            out = self.model(input_ids=input_ids, pixel_values=self.pixel_values(images), attention_mask=attention_mask)
        logits = out.logits.float()  # (B, P, Q)
        boxes = out.pred_boxes.float()  # (B, P, 4) cx, cy, w, h relative to the padded square
        results = []
        for b, (image, labels) in enumerate(zip(images, labels_per_image)):
            if not labels:
                results.append([])
                continue
            best = logits[b, :, : len(labels)].max(dim=-1)
            scores = torch.sigmoid(best.values)
            side = float(max(image.size))
            cx, cy, w, h = (boxes[b] * side).unbind(-1)
            corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
            keep = torch.nonzero(scores > self.threshold).flatten().tolist()
            found = [
                Detection(labels[int(best.indices[p])], float(scores[p]), Box(*(float(v) for v in corners[p])))
                for p in keep
            ]
            results.append(nms(found, self.nms_iou))
        return results


def to_unidet_frame(detections: Sequence[Detection], size: tuple[int, int]) -> list[Detection]:
    """Detections of an image of ``size`` = (width, height) with boxes rescaled to the
    official detector's frame (shorter side 479)."""
    width, height = size
    frame_w, frame_h = unidet_frame(width, height)
    sx, sy = frame_w / width, frame_h / height
    return [Detection(d.label, d.score, d.box.scaled(sx, sy)) for d in detections]


class MidasDepth:
    """``depth(images)`` -> per image an (H', W') float array in [0, 1] (larger = nearer) in
    the detector frame of :func:`unidet_frame`."""

    def __init__(self, ref: str, *, metric: str, fix: str, device: torch.device, dtype: torch.dtype, size: int = DEPTH_INPUT):
        from transformers import DPTForDepthEstimation

        self.model = model_from_pretrained(DPTForDepthEstimation, ref, metric=metric, what="DPT depth model", fix=fix)
        self.model.to(device=device, dtype=dtype).eval()
        embeddings = getattr(getattr(self.model, "dpt", None), "embeddings", None)
        if embeddings is not None and hasattr(embeddings, "image_size"):
            # transformers' hybrid DPT resizes its position grid to any input but refuses
            # inputs other than the config's size (384); MiDaS and the official script
            # run it at 480.
            embeddings.image_size = (size, size)
        self.device, self.dtype, self.size = device, dtype, size

    def depth(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        images = list(images)
        if not images:
            return []
        resized = [to_rgb(image).resize((self.size, self.size), Image.BILINEAR) for image in images]
        pixels = to_pixel_values(resized, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            predicted = self.model(pixel_values=pixels).predicted_depth.float()  # (B, h, w)
        maps = []
        for image, inverse_depth in zip(images, predicted):
            low, high = inverse_depth.min(), inverse_depth.max()
            if not torch.isfinite(high - low):
                raise LpoError("the depth model returned non-finite values; check --metric-dtype (use float32)")
            normalised = (inverse_depth - low) / (high - low) if high > low else torch.zeros_like(inverse_depth)
            width, height = image.size
            full = torch.nn.functional.interpolate(
                normalised[None, None], size=(height, width), mode="bilinear", align_corners=True
            )[0, 0]
            stored = np.clip(255.0 * full.cpu().numpy(), 0, 255).astype(np.uint8)  # the official depth PNG
            frame = Image.fromarray(stored).resize(unidet_frame(width, height), Image.BILINEAR)
            maps.append(np.asarray(frame, dtype=np.float32) / 255.0)
        return maps
