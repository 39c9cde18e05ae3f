"""LAION aesthetic predictor on a tiny CLIP, and the metrics as MPCF gap scorers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from metric_fixtures import IMAGE, normalise_pixels, random_image, tiny_clip_folder, write_aesthetic_head
from lpo.core.errors import LpoError
from lpo.evals.metrics import METRICS, MetricSpec
from lpo.evals.metrics.gap import GAP_SCORER_METRICS, MetricGapScorer, gap_scorer


@pytest.fixture(scope="module")
def aesthetic_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("aesthetic")
    clip = tiny_clip_folder(root / "clip", seed=5)
    return root, clip, write_aesthetic_head(root)


def build(root, clip, **spec):
    return METRICS.get("laion_aesthetic")(MetricSpec(weights=str(root), processor=str(clip), **spec))


def test_aesthetic_is_mlp_of_normalised_image_embedding(aesthetic_setup):
    from transformers import CLIPModel

    root, clip, state = aesthetic_setup
    imgs = [random_image(s) for s in range(3)]
    scores = build(root, clip, batch_size=2).score(imgs, ["a cat", "a dog", "a tree"])
    model = CLIPModel.from_pretrained(clip).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.zeros(3, 2, dtype=torch.long), pixel_values=torch.stack([normalise_pixels(i) for i in imgs])
        )
        x = out.image_embeds  # transformers' forward normalises image_embeds itself
        for index in (0, 2, 4, 6, 7):
            x = x @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    torch.testing.assert_close(scores, x.squeeze(-1), atol=1e-4, rtol=1e-4)
    # The prompt plays no part.
    torch.testing.assert_close(build(root, clip).score(imgs, ["", "", ""]), scores, atol=1e-5, rtol=1e-5)


def test_aesthetic_crop_follows_openai_clip(aesthetic_setup):
    root, clip, _ = aesthetic_setup
    metric = build(root, clip)
    wide = np.zeros((IMAGE, IMAGE + 3, 3), dtype=np.uint8)
    wide[:, 1] = 255  # torchvision's offset round(1.5) = 2 drops this column
    pixels = metric.pixel_values([Image.fromarray(wide)])[0]
    assert pixels.shape == (3, IMAGE, IMAGE) and torch.all(pixels < 0)  # all black


def test_aesthetic_head_keys_are_checked(aesthetic_setup, tmp_path):
    root, clip, state = aesthetic_setup
    torch.save({k.replace("layers.7", "layers.8"): v for k, v in state.items()}, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(LpoError, match=r"laion_aesthetic: .*2 missing \(e\.g\. layers\.7\.bias\), 2 unexpected"):
        build(tmp_path, clip)
    torch.save({"layers.0.weight": "not a tensor"}, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(LpoError, match="not a state dict"):
        build(tmp_path, clip)


def test_metric_as_mpcf_gap_scorer(aesthetic_setup):
    from lpo.pairs.gap_scores import GapScorer

    root, clip, _ = aesthetic_setup
    metric = build(root, clip)
    scorer = MetricGapScorer(metric)
    assert isinstance(scorer, GapScorer)
    assert (scorer.name, scorer.version) == (metric.name, metric.version)
    arrays = [np.asarray(random_image(s)) for s in range(2)]
    out = scorer.score(arrays, ["a", "b"])
    assert out.dtype == np.float64 and out.shape == (2,)
    np.testing.assert_allclose(out, metric.score([Image.fromarray(a) for a in arrays], ["a", "b"]).numpy(), rtol=1e-6)
    assert GAP_SCORER_METRICS == {"laion-aesthetic": "laion_aesthetic", "clip-score": "clip_cosine_h14"}
    built = gap_scorer("laion-aesthetic", MetricSpec(weights=str(root), processor=str(clip)))
    assert built.name == "laion_aesthetic"
