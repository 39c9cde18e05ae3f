"""Weights references, checkpoint reading and the shared preprocessing functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lpo.core.errors import LpoError
from lpo.evals.metrics import METRICS, MetricSpec, weights
from lpo.evals.metrics.preprocess import resize_longest_pad, resize_shorter_center_crop, to_pixel_values

FIX = "pass --metric-weights m=PATH"


def test_every_metric_is_registered_with_a_version():
    names = {"pickscore", "hpsv2", "hpsv21", "image_reward", "laion_aesthetic", "clip_score", "clip_cosine_h14"}
    assert names <= set(METRICS.names())
    versions = {METRICS.get(n).version for n in names}
    assert len(versions) == len(names)  # no two metrics share a version string
    for name in names:
        cls = METRICS.get(name)
        assert cls.name == name and cls.higher_is_better and cls.formula


def test_resolve_file_local_and_hub(tmp_path, monkeypatch):
    (tmp_path / "w.pt").write_bytes(b"x")
    assert weights.resolve_file(str(tmp_path / "w.pt"), "other.pt", metric="m", fix=FIX) == tmp_path / "w.pt"
    assert weights.resolve_file(str(tmp_path), "w.pt", metric="m", fix=FIX) == tmp_path / "w.pt"
    with pytest.raises(LpoError, match=r"m: no weights file at .*missing\.pt; pass --metric-weights"):
        weights.resolve_file(str(tmp_path), "missing.pt", metric="m", fix=FIX)

    calls = []
    monkeypatch.setattr(weights, "hub_download", lambda repo, name: calls.append((repo, name)) or str(tmp_path / "w.pt"))
    assert weights.resolve_file("owner/repo", "file.pt", metric="m", fix=FIX) == tmp_path / "w.pt"
    weights.resolve_file("owner/repo/sub/x.pth", "file.pt", metric="m", fix=FIX)
    assert calls == [("owner/repo", "file.pt"), ("owner/repo", "sub/x.pth")]

    def offline(repo, name):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")

    monkeypatch.setattr(weights, "hub_download", offline)
    with pytest.raises(LpoError, match=r"m: could not download file.pt from hub repo owner/repo \(OSError: We couldn't") as err:
        weights.resolve_file("owner/repo", "file.pt", metric="m", fix=FIX)
    assert "\n" not in str(err.value)
    with pytest.raises(LpoError, match="neither a local path nor a hub id"):
        weights.resolve_file("justaname", "file.pt", metric="m", fix=FIX)
    # What result rows record: the local path, or the hub id and file.
    assert weights.provenance(str(tmp_path), tmp_path / "w.pt", "w.pt") == str(tmp_path / "w.pt")
    assert weights.provenance("owner/repo", tmp_path / "cache", "file.pt") == "owner/repo/file.pt"
    assert weights.provenance("owner/repo/sub/x.pth", tmp_path / "cache", "file.pt") == "owner/repo/sub/x.pth"


def test_load_checkpoint_unwraps_and_rejects(tmp_path):
    tensor = torch.ones(2)
    torch.save({"state_dict": {"module.a": tensor}, "epoch": 1}, tmp_path / "ddp.pt")
    assert list(weights.load_checkpoint(tmp_path / "ddp.pt", metric="m", fix=FIX)) == ["a"]
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(LpoError, match=r"m: could not read .*junk\.pt"):
        weights.load_checkpoint(tmp_path / "junk.pt", metric="m", fix=FIX)
    torch.save([tensor], tmp_path / "list.pt")
    with pytest.raises(LpoError, match="holds no state dict"):
        weights.load_checkpoint(tmp_path / "list.pt", metric="m", fix=FIX)


def test_unknown_dtype_and_batch_size_are_user_errors():
    with pytest.raises(LpoError, match="unknown dtype 'float8'"):
        METRICS.get("pickscore")(MetricSpec(dtype="float8"))
    with pytest.raises(LpoError, match="batch_size must be a positive integer"):
        METRICS.get("hpsv2")(MetricSpec(batch_size=0))


def test_shorter_side_resize_truncates_and_crop_rounds_half_to_even():
    image = Image.fromarray(np.zeros((30, 100, 3), dtype=np.uint8))  # W=100, H=30
    out = resize_shorter_center_crop(image, 16)
    assert out.size == (16, 16)
    # int(16 * 100 / 30) = 53 wide: offset int(round(37 / 2)) = round(18.5) = 18 (half to even)
    column = np.zeros((16, 53, 3), dtype=np.uint8)
    column[:, 18] = 255
    probe = resize_shorter_center_crop(Image.fromarray(column), 16)
    assert np.asarray(probe)[:, 0].min() == 255


def test_longest_side_pad_sizes_and_offsets():
    out = resize_longest_pad(Image.fromarray(np.full((10, 40, 3), 255, dtype=np.uint8)), 16)  # W=40, H=10
    array = np.asarray(out)
    assert out.size == (16, 16)
    rows = np.nonzero(array[:, 8, 0])[0]  # 40×10 -> 16×4 (round(4.0)); pad 6 above, 6 below
    assert rows.min() == 6 and rows.max() == 9
    odd = np.asarray(resize_longest_pad(Image.fromarray(np.full((10, 16, 3), 255, dtype=np.uint8)), 16))
    rows = np.nonzero(odd[:, 8, 0])[0]  # already 16 wide: no resize, pad 6 = 3 above + 3 below
    assert rows.min() == 3 and rows.max() == 12
    same = Image.fromarray(np.full((16, 16, 3), 7, dtype=np.uint8))
    assert np.array_equal(np.asarray(resize_longest_pad(same, 16)), np.asarray(same))


def test_to_pixel_values_is_totensor_then_normalize():
    gray = Image.fromarray(np.full((2, 3), 51, dtype=np.uint8), mode="L")  # converted to RGB
    pixels = to_pixel_values([gray], mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25))
    assert pixels.shape == (1, 3, 2, 3) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[0, :, 0, 0], torch.tensor([(0.2 - 0.1) / 0.5, (0.2 - 0.2) / 0.5, (0.2 - 0.3) / 0.25]))


def test_shorter_side_resize_is_bicubic_and_truncates_the_longer_side():
    """Against PIL directly: a bilinear resize, a rounded longer side or a moved crop all differ."""
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, size=(60, 100, 3), dtype=np.uint8))  # W=100, H=60
    # 16 * 100 / 60 = 26.67: torchvision truncates to 26 (rounding would give 27); crop offset round(10 / 2) = 5
    expected = image.resize((26, 16), Image.BICUBIC).crop((5, 0, 21, 16))
    out = resize_shorter_center_crop(image, 16)
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    bilinear = image.resize((26, 16), Image.BILINEAR).crop((5, 0, 21, 16))
    assert not np.array_equal(np.asarray(out), np.asarray(bilinear))
    tall = image.transpose(Image.Transpose.TRANSPOSE)  # W=60, H=100: the same along the other axis
    expected_tall = tall.resize((16, 26), Image.BICUBIC).crop((0, 5, 16, 21))
    assert np.array_equal(np.asarray(resize_shorter_center_crop(tall, 16)), np.asarray(expected_tall))


class _Fetched(Exception):
    """Raised by the stand-in loaders below: the first reference a metric asks for, nothing fetched."""


# The published checkpoint each metric loads first when no --metric-weights is given:
# a hub id (transformers folder) or (hub repo, official file name).
DEFAULT_WEIGHTS = {
    "pickscore": ("yuvalkirstain/PickScore_v1",),
    "clip_score": ("openai/clip-vit-large-patch14",),
    "clip_cosine_h14": ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K",),
    "laion_aesthetic": ("camenduru/improved-aesthetic-predictor", "sac+logos+ava1-l14-linearMSE.pth"),
    "hpsv2": ("xswu/HPSv2", "HPS_v2_compressed.pt"),
    "hpsv21": ("xswu/HPSv2", "HPS_v2.1_compressed.pt"),
    "image_reward": ("THUDM/ImageReward", "ImageReward.pt"),
    "hpsv3": ("MizzenAI/HPSv3", "HPSv3.safetensors"),
}


@pytest.mark.parametrize("name", sorted(DEFAULT_WEIGHTS))
def test_default_weights_are_the_published_checkpoints(name, monkeypatch):
    """A wrong default (e.g. clip_score on the H/14 CLIP) would score every run with another model."""
    asked = []

    def fetch(*ref):
        asked.append(ref)
        raise _Fetched(ref)

    monkeypatch.setattr(weights, "hub_download", lambda repo, filename: fetch(repo, filename))
    monkeypatch.setattr(weights, "from_pretrained", lambda load, ref, **kwargs: fetch(ref))
    with pytest.raises((_Fetched, LpoError)):
        METRICS.get(name)(MetricSpec())
    assert asked[:1] == [DEFAULT_WEIGHTS[name]]


def test_default_processors_are_the_upstream_ones():
    from lpo.evals.metrics import aesthetic, hps, hpsv3, image_reward, pickscore

    assert pickscore.PICKSCORE_PROCESSOR == "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # not PickScore_v1's own folder
    assert hps.HPS_TOKENIZER == "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    assert aesthetic.AESTHETIC_CLIP == "openai/clip-vit-large-patch14"
    assert image_reward.IMAGE_REWARD_TOKENIZER == "google-bert/bert-base-uncased"
    assert hpsv3.HPSV3_BASE == "Qwen/Qwen2-VL-7B-Instruct"
