"""PickScore and the two CLIP scores on tiny CLIPs saved like hub repositories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metric_fixtures import IMAGE, normalise_pixels, random_image, tiny_clip_folder
from lpo.core.errors import LpoError
from lpo.evals.metrics import METRICS, MetricSpec

PROMPTS = ["a photo of a red cat", "a blue square on the left of a green circle", "two small birds", "a house"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return tiny_clip_folder(tmp_path_factory.mktemp("clip"), seed=1, logit_scale=3.0)


@pytest.fixture(scope="module")
def flipped_clip_dir(tmp_path_factory) -> Path:
    return tiny_clip_folder(tmp_path_factory.mktemp("clip-flipped"), seed=1, logit_scale=3.0, flip_image_projection=True)


def images(n: int = len(PROMPTS)):
    return [random_image(seed) for seed in range(n)]


def reference_logits(folder: Path, imgs, prompts) -> torch.Tensor:
    """CLIPModel.forward's logits_per_image diagonal: exp(logit_scale)·cos, computed by
    transformers' own forward on pixels normalised here (square images: no resize/crop)."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(folder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    tokens = tokenizer(prompts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    pixels = torch.stack([normalise_pixels(image) for image in imgs])
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    return out.logits_per_image.diagonal()


def test_pickscore_is_logit_scale_times_cosine(clip_dir):
    metric = METRICS.get("pickscore")(MetricSpec(weights=str(clip_dir), processor=str(clip_dir), batch_size=3))
    scores = metric.score(images(), PROMPTS)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    expected = reference_logits(clip_dir, images(), PROMPTS)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    # The logit scale is the model's (exp(3) ≈ 20.1), not 1 and not CLIP's 100.
    cosine = METRICS.get("clip_cosine_h14")(MetricSpec(weights=str(clip_dir))).score(images(), PROMPTS)
    torch.testing.assert_close(scores, cosine * torch.exp(torch.tensor(3.0)), atol=1e-5, rtol=1e-5)
    assert metric.name == "pickscore" and metric.version and metric.higher_is_better


def test_scores_do_not_depend_on_batching(clip_dir):
    spec = dict(weights=str(clip_dir), processor=str(clip_dir))
    one = METRICS.get("pickscore")(MetricSpec(batch_size=1, **spec)).score(images(), PROMPTS)
    four = METRICS.get("pickscore")(MetricSpec(batch_size=4, **spec)).score(images(), PROMPTS)
    torch.testing.assert_close(one, four, atol=1e-5, rtol=1e-5)
    assert METRICS.get("pickscore")(MetricSpec(**spec)).score([], []).shape == (0,)


def test_clip_score_is_100_relu_cosine(clip_dir, flipped_clip_dir):
    score = METRICS.get("clip_score")(MetricSpec(weights=str(clip_dir))).score(images(), PROMPTS)
    flipped = METRICS.get("clip_score")(MetricSpec(weights=str(flipped_clip_dir))).score(images(), PROMPTS)
    cosine = reference_logits(clip_dir, images(), PROMPTS) / torch.exp(torch.tensor(3.0))
    # Negating the image projection negates every cosine: per pair exactly one of the two
    # scores is clamped to 0 and their difference is 100·cos.
    assert torch.all((score == 0) | (flipped == 0))
    torch.testing.assert_close(score - flipped, 100 * cosine, atol=1e-4, rtol=1e-5)
    assert torch.all(score >= 0) and torch.all(flipped >= 0)


def test_pickscore_uses_transformers_processor_crop(clip_dir):
    """PickScore keeps the transformers processor of its reference code: floored crop offset."""
    import numpy as np
    from PIL import Image

    metric = METRICS.get("pickscore")(MetricSpec(weights=str(clip_dir), processor=str(clip_dir)))
    wide = np.zeros((IMAGE, IMAGE + 3, 3), dtype=np.uint8)  # needs no resize; 3 columns to crop
    wide[:, 1] = 255  # first kept column under floor(3/2) = 1; torchvision's round(1.5) = 2 would drop it
    pixels = metric.clip.pixel_values([Image.fromarray(wide)])
    assert pixels.shape == (1, 3, IMAGE, IMAGE)
    assert torch.all(pixels[0, :, :, 0] > 1.5)  # white column, normalised
    assert torch.all(pixels[0, :, :, 1] < -1.0)  # black


def test_load_errors_are_one_line_and_name_the_fix(tmp_path, clip_dir):
    with pytest.raises(LpoError, match=r"pickscore: no CLIP model folder at .*--metric-weights pickscore=PATH"):
        METRICS.get("pickscore")(MetricSpec(weights=str(tmp_path / "missing"), processor=str(clip_dir)))
    # A checkpoint lacking a tensor must not be silently completed with random weights.
    from safetensors.torch import load_file, save_file
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(clip_dir, broken)
    state = load_file(broken / "model.safetensors")
    del state["text_projection.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LpoError, match="lacks 1 tensors.*text_projection.weight") as err:
        METRICS.get("clip_score")(MetricSpec(weights=str(broken)))
    assert "\n" not in str(err.value)
