"""Parity with the upstream libraries the metrics were rebuilt without (opt-in: -m parity).

torchvision, timm and torchmetrics are not dependencies of lpo (PyPI's torchvision does
not run beside the CPU torch build of the development machines). On a machine where they
install (a GPU machine's image, or any machine with a matching torch/torchvision pair)::

    pip install -e ".[test,parity]" && python -m pytest -m parity tests/test_metrics_upstream_parity.py

compares the PIL preprocessing, the BLIP ViT key mapping and the CLIP score against them.
The default run deselects these tests (addopts: not parity); selected, a missing library
is a failure, not a skip, so a green parity run means the comparisons ran.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metric_fixtures import IMAGE, random_image, randomise, tiny_clip_folder, write_image_reward_checkpoint
from lpo.evals.metrics.preprocess import CLIP_MEAN, CLIP_STD, resize_longest_pad, resize_shorter_center_crop, to_pixel_values

pytestmark = pytest.mark.parity


def _upstream(name: str):
    """Import an upstream library the parity tests need; a clear failure when it is absent."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        pytest.fail(f"{name} is not installed: the parity tests need the parity extra "
                    f"(pip install -e '.[test,parity]'); {err}")


SIZES = [(512, 512), (1024, 1024), (768, 512), (512, 768), (225, 224), (227, 224), (224, 227), (300, 97), (97, 300),
         (1000, 333), (333, 1000), (64, 48), (123, 457), (640, 480), (223, 223), (1, 5)]


def test_resize_crop_matches_torchvision():
    transforms = _upstream("torchvision.transforms")
    reference = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        lambda image: image.convert("RGB"),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
    for seed, size in enumerate(SIZES):
        image = random_image(seed, size)
        ours = to_pixel_values([resize_shorter_center_crop(image, 224)])[0]
        torch.testing.assert_close(ours, reference(image), atol=1e-6, rtol=0, msg=f"size {size}")


def test_pad_matches_open_clip_resize_max_size():
    """open_clip's ResizeMaxSize (HPSv2's preprocess_val), stated with torchvision calls."""
    transforms = _upstream("torchvision.transforms")
    F = _upstream("torchvision.transforms.functional")

    def resize_max_size(image, max_size=224):
        width, height = image.size
        scale = max_size / float(max(height, width))
        if scale != 1.0:
            new_size = tuple(round(dim * scale) for dim in (height, width))
            image = F.resize(image, new_size, transforms.InterpolationMode.BICUBIC)
            pad_h, pad_w = max_size - new_size[0], max_size - new_size[1]
            image = F.pad(image, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
        return image

    reference = transforms.Compose(
        [resize_max_size, lambda image: image.convert("RGB"), transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)]
    )
    for seed, size in enumerate(SIZES):
        if max(size) == 224 and size[0] != size[1]:
            continue  # upstream leaves these unpadded (and its ViT then fails); we pad
        image = random_image(seed, size)
        ours = to_pixel_values([resize_longest_pad(image, 224)])[0]
        torch.testing.assert_close(ours, reference(image), atol=1e-6, rtol=0, msg=f"size {size}")


def test_blip_vit_mapping_matches_timm(tmp_path):
    timm = _upstream("timm")
    from lpo.evals.metrics import MetricSpec
    from lpo.evals.metrics.image_reward import ImageReward
    from metric_fixtures import PATCH, VISION_WIDTH

    _, arch, _, state = write_image_reward_checkpoint(tmp_path)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=IMAGE, patch_size=PATCH, embed_dim=VISION_WIDTH, depth=2, num_heads=2, mlp_ratio=48 / VISION_WIDTH,
        qkv_bias=True, num_classes=0, global_pool="token",
    )
    vit = randomise(vit, seed=8, std=0.2).eval()
    state = {k: v for k, v in state.items() if not k.startswith("blip.visual_encoder.")}
    state.update({f"blip.visual_encoder.{k}": v for k, v in vit.state_dict().items()})
    torch.save(state, tmp_path / "ImageReward.pt")
    metric = ImageReward(MetricSpec(weights=str(tmp_path), processor=str(tmp_path / "tokenizer")), architecture=arch)
    pixels = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(metric.model.vision(pixel_values=pixels).last_hidden_state, vit.forward_features(pixels), atol=1e-5, rtol=1e-5)


def test_clip_score_matches_torchmetrics(tmp_path):
    multimodal = _upstream("torchmetrics.functional.multimodal")
    _upstream("torchvision")
    from transformers import CLIPModel, CLIPProcessor

    from lpo.evals.metrics import METRICS, MetricSpec

    class TensorFeatures(torch.nn.Module):
        """transformers 5 returns output objects from get_*_features; torchmetrics 1.9 wants tensors."""

        def __init__(self, model):
            super().__init__()
            self.model, self.config = model, model.config

        def get_image_features(self, *args, **kwargs):
            out = self.model.get_image_features(*args, **kwargs)
            return getattr(out, "pooler_output", out)

        def get_text_features(self, *args, **kwargs):
            out = self.model.get_text_features(*args, **kwargs)
            return getattr(out, "pooler_output", out)

    folder = tiny_clip_folder(tmp_path / "clip", seed=4)
    load = lambda: (TensorFeatures(CLIPModel.from_pretrained(folder)), CLIPProcessor.from_pretrained(folder))  # noqa: E731
    prompts = ["a photo of a red cat", "two small blue birds", "a green tree", "a house on the left"]
    images = [random_image(s) for s in range(4)]
    ours = METRICS.get("clip_score")(MetricSpec(weights=str(folder))).score(images, prompts)
    for image, prompt, value in zip(images, prompts, ours):
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # uint8 (3, H, W), as torchmetrics takes
        expected = multimodal.clip_score(pixels, prompt, model_name_or_path=load)
        torch.testing.assert_close(value, expected.float().cpu().reshape(()), atol=1e-3, rtol=1e-4)
