"""HPSv2 / HPSv2.1: open_clip checkpoints converted to transformers, scored against an
open_clip-structured reference written in tests/metric_fixtures.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metric_fixtures import IMAGE, normalise_pixels, random_image, tiny_open_clip_architecture, write_hps_checkpoints
from lpo.core.errors import LpoError
from lpo.evals.metrics import METRICS, MetricSpec
from lpo.evals.metrics.hps import HPSv2, HPSv21

PROMPTS = ["a photo of a red cat", "a blue square above a green circle", "two small  birds &amp; a tree"]


@pytest.fixture(scope="module")
def hps_setup(tmp_path_factory):
    """A folder holding both official file names (different weights) and a tokenizer."""
    root = tmp_path_factory.mktemp("hps")
    tokenizer, arch, refs = write_hps_checkpoints(root)
    return root, tokenizer, arch, refs


def build(cls, root: Path, arch, **spec):
    return cls(MetricSpec(weights=str(root), processor=str(root / "tokenizer"), **spec), architecture=arch)


def pad_to_square(image: Image.Image, size: int) -> Image.Image:
    """Independent statement of HPSv2's preprocess: fit the longer side, centre on black."""
    w, h = image.size
    scale = size / max(w, h)
    fitted = image.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - fitted.size[1]) // 2, (size - fitted.size[0]) // 2
    canvas[top : top + fitted.size[1], left : left + fitted.size[0]] = np.asarray(fitted.convert("RGB"))
    return Image.fromarray(canvas)


def reference_scores(ref, tokenizer, imgs, prompts) -> torch.Tensor:
    ids = tokenizer(
        [" ".join(p.replace("&amp;", "&").split()) for p in prompts],
        padding="max_length", truncation=True, max_length=ref.arch.context_length, return_tensors="pt",
    )["input_ids"]
    pixels = torch.stack([normalise_pixels(pad_to_square(image, IMAGE)) for image in imgs])
    with torch.no_grad():
        return 100 * (ref.encode_image(pixels) * ref.encode_text(ids, tokenizer.eos_token_id)).sum(-1)


def test_hps_matches_open_clip_reference_for_each_release(hps_setup):
    root, tokenizer, arch, refs = hps_setup
    imgs = [random_image(0), random_image(1, (48, 20)), random_image(2, (20, 64))]  # square, wide, tall
    v20 = build(HPSv2, root, arch, batch_size=2).score(imgs, PROMPTS)
    v21 = build(HPSv21, root, arch).score(imgs, PROMPTS)
    torch.testing.assert_close(v20, reference_scores(refs["HPS_v2_compressed.pt"], tokenizer, imgs, PROMPTS), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(v21, reference_scores(refs["HPS_v2.1_compressed.pt"], tokenizer, imgs, PROMPTS), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(v20, v21)  # each release reads its own file
    assert torch.all(v20.abs() <= 100)


def test_hps_releases_are_separate_metrics():
    assert METRICS.get("hpsv2") is HPSv2 and METRICS.get("hpsv21") is HPSv21
    assert (HPSv2.name, HPSv2.filename) == ("hpsv2", "HPS_v2_compressed.pt")
    assert (HPSv21.name, HPSv21.filename) == ("hpsv21", "HPS_v2.1_compressed.pt")
    assert HPSv2.version != HPSv21.version


def test_hps_pads_instead_of_cropping(hps_setup):
    root, _, arch, _ = hps_setup
    metric = build(HPSv2, root, arch)
    stripes = np.zeros((16, 48, 3), dtype=np.uint8)  # wide: red | green | blue thirds
    stripes[:, :16, 0] = stripes[:, 16:32, 1] = stripes[:, 32:, 2] = 255
    pixels = metric.pixel_values([Image.fromarray(stripes)])[0]  # (3, 32, 32)
    black = torch.from_numpy(-np.array([0.48145466, 0.4578275, 0.40821073]) / np.array([0.26862954, 0.26130258, 0.27577711])).float()
    # 48×16 -> 32×11 (round(10.67)), padded 10 rows above and 11 below.
    torch.testing.assert_close(pixels[:, :10, :], black.view(3, 1, 1).expand(3, 10, IMAGE))
    torch.testing.assert_close(pixels[:, -11:, :], black.view(3, 1, 1).expand(3, 11, IMAGE))
    middle = pixels[:, 15]
    assert middle[0, 0] > 1.5 and middle[2, -1] > 1.5  # red and blue edges kept: nothing cropped
    # A centre crop of the same image would have kept only green.


def test_hps_key_errors_fail_loudly(hps_setup, tmp_path):
    root, _, arch, refs = hps_setup
    (tmp_path / "tokenizer").symlink_to(root / "tokenizer")
    state = refs["HPS_v2_compressed.pt"].state_dict()

    extra = dict(state, **{"visual.extra_head.weight": torch.zeros(2)})
    torch.save({"state_dict": extra}, tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(LpoError, match=r"hpsv2: .* holds 'visual.extra_head.weight'.*--metric-weights hpsv2=PATH"):
        build(HPSv2, tmp_path, arch)

    missing = {k: v for k, v in state.items() if k != "ln_final.bias"}
    torch.save({"state_dict": missing}, tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(LpoError, match=r"1 missing \(e\.g\. text_model\.final_layer_norm\.bias\)"):
        build(HPSv2, tmp_path, arch)

    torch.save({"state_dict": state}, tmp_path / "HPS_v2_compressed.pt")
    wider = tiny_open_clip_architecture(arch.vocab_size + 1)  # a different architecture
    with pytest.raises(LpoError, match=r"token_embedding.weight has shape"):
        build(HPSv2, tmp_path, wider)

    with pytest.raises(LpoError, match=r"hpsv21: no weights file at .*HPS_v2\.1_compressed\.pt"):
        build(HPSv21, tmp_path, arch)


def test_ddp_prefixed_checkpoint_loads(hps_setup, tmp_path):
    root, tokenizer, arch, refs = hps_setup
    (tmp_path / "tokenizer").symlink_to(root / "tokenizer")
    ref = refs["HPS_v2_compressed.pt"]
    torch.save({"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "HPS_v2_compressed.pt")
    imgs = [random_image(5)]
    torch.testing.assert_close(
        build(HPSv2, tmp_path, arch).score(imgs, PROMPTS[:1]), reference_scores(ref, tokenizer, imgs, PROMPTS[:1]), atol=1e-4, rtol=1e-4
    )
