"""GenEval (Ghosh et al., 2023; github.com/djghosh13/geneval) on transformers.

score of one image = 1 if it satisfies its prompt's metadata, else 0 (the rules:
:mod:`.geneval_rules`). A task's score is the mean over its images and GenEval's overall
score the mean of the six task scores (the benchmark's per-category breakdown).

Models (what differs from the official ``evaluate_images.py`` is in the version string):

- Detector: Mask2Former with a Swin-S backbone trained on COCO instance segmentation.
  Upstream runs mmdetection's ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``; here
  ``facebook/mask2former-swin-small-coco-instance`` (the same architecture, trained by
  the Mask2Former authors in detectron2; mmdetection's weights are not on the hub), run
  through mmdetection's inference: the image resized to fit 1333×800 keeping its aspect
  ratio (mmcv's ``imrescale``: OpenCV ``INTER_LINEAR`` on the 8-bit image, no antialiasing,
  which matters when SDXL's 1024 px go down to 800; OpenCV is the ``geneval`` extra), ImageNet mean/std on 0–255 pixels, padded to a multiple of 32; the
  mask logits upsampled to the padded size, cropped and upsampled to the image
  (bilinear); the 100 best (query, class) pairs by class probability, each scored
  class probability × mean mask probability inside its mask, its box the mask's
  extent. Class i is GenEval's ``object_names.txt`` line i (COCO order).
- Colour: CLIP ViT-L/14 (``openai/clip-vit-large-patch14``, the OpenAI weights upstream
  loads through open_clip) as a zero-shot classifier over GenEval's ten colours with
  the three official templates ("a photo of a {c} {object}", "a photo of a
  {c}-colored {object}", "a photo of a {c} object"; text embeddings normalised, averaged,
  normalised). Each object is shown on a #999 grey background through its mask, cropped
  to its box, and preprocessed as OpenAI CLIP does.

The metadata of a prompt comes from the benchmark's ``evaluation_metadata.jsonl`` (the
GenEval benchmark records it) or, for a prompt in GenEval's grammar not loaded that way,
from :func:`.geneval_rules.parse_prompt`.

Weights: ``--metric-weights geneval=REF``, REF a Mask2Former folder or hub id, or a folder
with ``detector/`` and/or ``clip/`` subfolders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

import lpo.evals.metrics.geneval_rules as rules
from lpo.core.errors import LpoError
from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.metrics.clip_common import image_embeds, load_clip_tokenizer, normalise, text_embeds, tokenize
from lpo.evals.metrics.model_roles import no_processor, role_refs
from lpo.evals.metrics.preprocess import resize_shorter_center_crop, to_pixel_values, to_rgb
from lpo.evals.metrics.prompt_info import lookup
from lpo.evals.metrics.scoring import BatchedMetric
from lpo.evals.metrics.weights import from_pretrained, model_from_pretrained, weights_fix

MASK2FORMER_DEFAULT = "facebook/mask2former-swin-small-coco-instance"
CLIP_L14 = "openai/clip-vit-large-patch14"
DEFAULT_WEIGHTS = {"detector": MASK2FORMER_DEFAULT, "clip": CLIP_L14}
NAMESPACE = "geneval"  # prompt_info namespace the benchmark fills
TEST_SCALE = (1333, 800)  # mmdetection's test img_scale: (longer, shorter) bounds
SIZE_DIVISOR = 32
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
MAX_PER_IMAGE = 100
BACKGROUND = "#999"
COLOR_TEMPLATES = ("a photo of a {c} {o}", "a photo of a {c}-colored {o}", "a photo of a {c} object")


def mmdet_resize_shape(width: int, height: int, scale: tuple[int, int] = TEST_SCALE) -> tuple[int, int]:
    """(width, height) of mmcv's keep-ratio rescale into ``scale`` (longer, shorter bounds)."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) float [x1, y1, x2 + 1, y2 + 1] of each mask's extent
    (mmdetection's ``mask2bbox``; an empty mask gives zeros)."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    x_any, y_any = masks.any(dim=1), masks.any(dim=2)
    for i in range(masks.shape[0]):
        xs, ys = torch.where(x_any[i])[0], torch.where(y_any[i])[0]
        if len(xs) and len(ys):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def instance_postprocess(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, max_per_image: int = MAX_PER_IMAGE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmdetection's Mask2Former instance results of one image.

    ``class_logits`` (Q, C+1) with the no-object class last; ``mask_logits`` (Q, H, W) at
    the image's size. Returns labels (K,), scores (K,), boxes (K, 4), masks (K, H, W) bool
    for the K = min(max_per_image, Q·C) best (query, class) pairs.
    """
    num_classes = class_logits.shape[1] - 1
    scores = torch.softmax(class_logits.float(), dim=-1)[:, :-1]
    top_scores, top_index = scores.flatten().topk(min(max_per_image, scores.numel()), sorted=False)
    labels = top_index % num_classes
    queries = top_index // num_classes
    chosen = mask_logits[queries].float()
    binary = chosen > 0
    mask_scores = (chosen.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return labels, top_scores * mask_scores, mask_boxes(binary.cpu()), binary


class Mask2FormerInstances(torch.nn.Module):
    """Mask2Former's instance branch: ``Mask2FormerModel`` plus its class head.

    Built from the parts of ``Mask2FormerForUniversalSegmentation`` because that class
    constructs its training loss, whose Hungarian matcher needs scipy, even for inference.
    """

    def __init__(self, model, class_predictor: torch.nn.Linear):
        super().__init__()
        self.model, self.class_predictor = model, class_predictor

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> class logits (B, Q, C+1), mask logits (B, Q, H/4, W/4)."""
        # The per-layer decoder states the class head reads come only with the hidden states.
        out = self.model(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        class_logits = self.class_predictor(out.transformer_decoder_intermediate_states[-1].transpose(0, 1))
        masks = out.masks_queries_logits
        return class_logits, (masks[-1] if isinstance(masks, (tuple, list)) else masks)


def _checkpoint_tensors(ref: str, names: Sequence[str], *, metric: str, fix: str) -> dict[str, torch.Tensor]:
    """The named tensors of a transformers checkpoint (local folder or hub id)."""
    from transformers.utils import cached_file

    local = Path(ref).expanduser()
    candidates = ("model.safetensors", "pytorch_model.bin")
    for filename in candidates:
        try:
            path = cached_file(str(local) if local.is_dir() else ref, filename, _raise_exceptions_for_missing_entries=False)
        except Exception as err:  # network or repo errors: one message below
            from lpo.core.io import one_line

            raise LpoError(f"{metric}: could not fetch {filename} of {ref!r} ({one_line(err)}); {fix}") from err
        if not path:
            continue
        if filename.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as fh:
                keys = set(fh.keys())
                found = {n: fh.get_tensor(n) for n in names if n in keys}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            found = {n: state[n] for n in names if n in state}
        missing = [n for n in names if n not in found]
        if missing:
            raise LpoError(f"{metric}: {path} lacks {missing[0]} (not a Mask2FormerForUniversalSegmentation checkpoint); {fix}")
        return found
    raise LpoError(f"{metric}: no {' or '.join(candidates)} in {ref!r}; {fix}")


def load_mask2former(ref: str, *, metric: str, fix: str) -> Mask2FormerInstances:
    from transformers import Mask2FormerConfig, Mask2FormerModel

    config = from_pretrained(Mask2FormerConfig.from_pretrained, ref, metric=metric, what="Mask2Former config", fix=fix)
    if config.num_labels != len(rules.CLASSNAMES):
        raise LpoError(
            f"{metric}: the Mask2Former at {ref!r} has {config.num_labels} classes, not COCO's 80; "
            f"{weights_fix(metric, 'a COCO instance-segmentation Mask2Former (' + MASK2FORMER_DEFAULT + ')')}"
        )
    names = [config.id2label.get(i, "") for i in (0, len(rules.CLASSNAMES) - 1)]
    if not all(n.startswith("LABEL_") for n in names) and names != ["person", "toothbrush"]:
        raise LpoError(f"{metric}: the Mask2Former at {ref!r} labels its classes {names[0]!r}..{names[1]!r}, not COCO's; {fix}")
    base = model_from_pretrained(Mask2FormerModel, ref, metric=metric, what="Mask2Former model", fix=fix, config=config)
    head = torch.nn.Linear(config.hidden_dim, config.num_labels + 1)
    tensors = _checkpoint_tensors(ref, ["class_predictor.weight", "class_predictor.bias"], metric=metric, fix=fix)
    if tensors["class_predictor.weight"].shape != head.weight.shape:
        raise LpoError(f"{metric}: class_predictor.weight of {ref!r} has shape {tuple(tensors['class_predictor.weight'].shape)}; {fix}")
    head.load_state_dict({"weight": tensors["class_predictor.weight"], "bias": tensors["class_predictor.bias"]})
    return Mask2FormerInstances(base, head).eval()


def mmcv_bilinear_resize(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8: ``image`` resized to ``size`` (width, height) as mmcv does, cv2.INTER_LINEAR."""
    try:
        import cv2
    except ImportError:
        raise LpoError("geneval: resizing as mmdetection does needs OpenCV; pip install 'lpo[geneval]' "
                       "(opencv-python-headless)") from None
    return cv2.resize(np.ascontiguousarray(np.asarray(to_rgb(image))), size, interpolation=cv2.INTER_LINEAR)


class GenevalDetector:
    """``detect(image)`` -> {GenEval class name: [GenevalObject, ...]} (all candidates)."""

    def __init__(self, ref: str, *, metric: str, fix: str, device: torch.device, dtype: torch.dtype, scale: tuple[int, int] = TEST_SCALE):
        self.model = load_mask2former(ref, metric=metric, fix=fix).to(device=device, dtype=dtype)
        self.device, self.dtype, self.scale = device, dtype, scale

    def pixel_values(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """(1, 3, H', W') padded input and the resized (width, height) inside it."""
        resized_size = mmdet_resize_shape(*image.size, self.scale)
        array = mmcv_bilinear_resize(image, resized_size).astype(np.float32)
        array = (array - np.array(PIXEL_MEAN, dtype=np.float32)) / np.array(PIXEL_STD, dtype=np.float32)
        width, height = resized_size
        padded_h = -(-height // SIZE_DIVISOR) * SIZE_DIVISOR
        padded_w = -(-width // SIZE_DIVISOR) * SIZE_DIVISOR
        canvas = np.zeros((padded_h, padded_w, 3), dtype=np.float32)
        canvas[:height, :width] = array
        pixels = torch.from_numpy(canvas).permute(2, 0, 1)[None]
        return pixels.to(device=self.device, dtype=self.dtype), resized_size

    def detect(self, image: Image.Image) -> dict[str, list[rules.GenevalObject]]:
        pixels, (width, height) = self.pixel_values(image)
        with torch.no_grad():
            class_logits, mask_logits = self.model(pixels)
        masks = torch.nn.functional.interpolate(mask_logits.float(), size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        masks = masks[:, :, :height, :width]
        masks = torch.nn.functional.interpolate(masks, size=(image.height, image.width), mode="bilinear", align_corners=False)
        labels, scores, boxes, binary = instance_postprocess(class_logits[0], masks[0])
        binary = binary.cpu().numpy()
        found: dict[str, list[rules.GenevalObject]] = {}
        for k in range(len(labels)):
            name = rules.CLASSNAMES[int(labels[k])]
            found.setdefault(name, []).append(
                rules.GenevalObject(tuple(float(v) for v in boxes[k]), float(scores[k]), binary[k])
            )
        return found


class ColorClassifier:
    """CLIP zero-shot colour of each object (GenEval's ``color_classification``)."""

    def __init__(self, ref: str, *, metric: str, fix: str, device: torch.device, dtype: torch.dtype):
        from transformers import CLIPModel

        self.model = model_from_pretrained(CLIPModel, ref, metric=metric, what="CLIP model", fix=fix)
        self.model.to(device=device, dtype=dtype).eval()
        self.tokenizer = load_clip_tokenizer(ref, metric=metric, fix=fix)
        self.device, self.dtype = device, dtype
        self._classifiers: dict[str, torch.Tensor] = {}

    def classifier(self, classname: str) -> torch.Tensor:
        """(D, 10): per colour, the normalised mean of its normalised template embeddings."""
        if classname not in self._classifiers:
            columns = []
            max_length = self.model.config.text_config.max_position_embeddings
            for color in rules.COLORS:
                texts = [t.format(c=color, o=classname) for t in COLOR_TEMPLATES]
                ids, mask = tokenize(self.tokenizer, texts, max_length, padding=True, device=self.device)
                with torch.no_grad():
                    columns.append(normalise(text_embeds(self.model, ids, mask).float().mean(dim=0)))
            self._classifiers[classname] = torch.stack(columns, dim=1)
        return self._classifiers[classname]

    def crops(self, image: Image.Image, objects: Sequence[rules.GenevalObject]) -> list[Image.Image]:
        """Each object on the grey background through its mask, cropped to its box."""
        image = to_rgb(image)
        blank = Image.new("RGB", image.size, color=BACKGROUND)
        out = []
        for obj in objects:
            shown = image
            if obj.mask is not None:
                if obj.mask.shape != (image.height, image.width):
                    raise ValueError(f"mask of shape {obj.mask.shape} for an image of size {image.size}")
                shown = Image.composite(image, blank, Image.fromarray(obj.mask.astype(bool)))
            out.append(shown.crop(obj.box[:4]))
        return out

    def colors(self, image: Image.Image, classname: str, objects: Sequence[rules.GenevalObject]) -> list[str]:
        size = self.model.config.vision_config.image_size
        pixels = to_pixel_values([resize_shorter_center_crop(crop, size) for crop in self.crops(image, objects)])
        with torch.no_grad():
            features = image_embeds(self.model, pixels.to(device=self.device, dtype=self.dtype)).float()
        logits = 100.0 * features @ self.classifier(classname)
        return [rules.COLORS[int(i)] for i in logits.argmax(dim=1)]


def prompt_metadata(prompt: str, metric: str) -> dict:
    metadata = lookup(NAMESPACE, prompt) or rules.parse_prompt(prompt)
    if metadata is None:
        raise LpoError(
            f"{metric}: prompt {prompt[:60]!r} has no GenEval metadata (not loaded from evaluation_metadata.jsonl "
            "and not in GenEval's prompt grammar); evaluate with --benchmark geneval"
        )
    return metadata


@METRICS.register("geneval")
class GenEval(BatchedMetric):
    name = "geneval"
    version = "m2f-swin-s-coco-hf+cv2-linear+clip-l14-color+rules1+lpo1"
    formula = "1 if the image satisfies the prompt's GenEval metadata (Mask2Former Swin-S + CLIP ViT-L/14 colours), else 0"
    comparability = "variant"
    comparability_note = "detectron2's Mask2Former from the hub in place of mmdetection's checkpoint"

    def __init__(self, spec: MetricSpec):
        super().__init__(spec)
        no_processor(spec.processor, self.name)
        refs = role_refs(spec.weights, DEFAULT_WEIGHTS, "detector")
        fix = weights_fix(self.name, f"{MASK2FORMER_DEFAULT} (or a folder with detector/ and clip/ subfolders)")
        kwargs = dict(metric=self.name, fix=fix, device=self.device, dtype=self.dtype)
        self.detector = GenevalDetector(refs["detector"], **kwargs)
        self.colour = ColorClassifier(refs["clip"], **kwargs)
        self.weights = dict(refs)

    def correct(self, image: Image.Image, metadata: dict) -> tuple[bool, str]:
        candidates = self.detector.detect(image)
        objects = rules.select_objects(candidates, counting=metadata["tag"] == "counting")
        return rules.evaluate(objects, metadata, lambda classname, found: self.colour.colors(image, classname, found))

    def score_batch(self, images, prompts) -> torch.Tensor:
        values = [float(self.correct(image, prompt_metadata(prompt, self.name))[0]) for image, prompt in zip(images, prompts)]
        return torch.tensor(values, dtype=torch.float32)
