"""ImageReward: a synthetic ImageReward.pt (BLIP ViT + BERT + MLP names) loaded through the
converter and scored against a reference computed here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from metric_fixtures import IMAGE, normalise_pixels, random_image, write_image_reward_checkpoint
from lpo.core.errors import LpoError
from lpo.evals.metrics import METRICS, MetricSpec
from lpo.evals.metrics.image_reward import REWARD_MEAN, REWARD_STD, ImageReward

WORDS = "a red cat on the left of two small blue birds above green tree".split()
PROMPTS = ["a red cat", "two small blue birds above a green tree", "a house"]


@pytest.fixture(scope="module")
def ir_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("image-reward")
    tokenizer, arch, parts, state = write_image_reward_checkpoint(root)
    return root, tokenizer, arch, parts, state


def build(root, arch, **spec):
    return ImageReward(MetricSpec(weights=str(root), processor=str(root / "tokenizer"), **spec), architecture=arch)


def reference_rewards(parts, tokenizer, imgs, prompts) -> torch.Tensor:
    vit, text, head = parts
    tokens = tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    pixels = torch.stack([normalise_pixels(image) for image in imgs])  # square IMAGE×IMAGE: no resize, no crop
    with torch.no_grad():
        image_tokens = vit(pixels)
        cls = text(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long),
        ).last_hidden_state[:, 0]
        x = cls
        for linear in head:  # no activations between the layers, as upstream
            x = x @ linear.weight.T + linear.bias
    return (x.squeeze(-1) - REWARD_MEAN) / REWARD_STD


def test_image_reward_matches_reference(ir_setup):
    root, tokenizer, arch, parts, _ = ir_setup
    imgs = [random_image(s) for s in range(3)]
    rewards = build(root, arch, batch_size=2).score(imgs, PROMPTS)
    torch.testing.assert_close(rewards, reference_rewards(parts, tokenizer, imgs, PROMPTS), atol=1e-4, rtol=1e-4)
    assert METRICS.get("image_reward") is ImageReward


def test_prompt_is_truncated_to_35_tokens(ir_setup):
    root, _, arch, _, _ = ir_setup
    metric = build(root, arch)
    rng = np.random.default_rng(0)
    long = [str(w) for w in rng.choice(WORDS, size=60)]
    changed_tail = long[:40] + ["house"] * 20  # differs only after token 40
    changed_head = ["house"] + long[1:]
    ids, mask = metric.tokens([" ".join(long)])
    assert ids.shape == (1, 35) and int(mask.sum()) == 35
    assert ids[0, 0] == metric.tokenizer.cls_token_id and ids[0, -1] == metric.tokenizer.sep_token_id
    image = [random_image(7)]
    base = metric.score(image, [" ".join(long)])
    torch.testing.assert_close(metric.score(image, [" ".join(changed_tail)]), base)
    assert not torch.allclose(metric.score(image, [" ".join(changed_head)]), base)
    short_ids, short_mask = metric.tokens(["a cat"])
    assert short_ids.shape == (1, 35) and int(short_mask.sum()) == 4  # [CLS] a cat [SEP], then padding


def test_image_reward_resizes_then_centre_crops_like_torchvision(ir_setup):
    root, _, arch, _, _ = ir_setup
    metric = build(root, arch)
    wide = np.zeros((IMAGE, IMAGE + 3, 3), dtype=np.uint8)  # needs no resize; 3 columns to crop
    wide[:, 1] = 255  # dropped by torchvision's offset round(1.5) = 2 (transformers' floor would keep it)
    wide[:, 2] = 128
    pixels = metric.pixel_values([Image.fromarray(wide)])[0]
    assert pixels.shape == (3, IMAGE, IMAGE)
    gray = (128 / 255 - 0.48145466) / 0.26862954
    torch.testing.assert_close(pixels[0, :, 0], torch.full((IMAGE,), gray))
    stripes = np.zeros((16, 48, 3), dtype=np.uint8)  # red | green | blue: the crop keeps green only
    stripes[:, :16, 0] = stripes[:, 16:32, 1] = stripes[:, 32:, 2] = 255
    pixels = metric.pixel_values([Image.fromarray(stripes)])[0]  # 48×16 -> 96×32 -> centre 32×32
    inner = pixels[:, :, 2:-2]  # bicubic blurs the two columns next to each colour edge
    assert torch.all(inner[1] > 1.5) and torch.all(inner[0] < -1.0) and torch.all(inner[2] < -1.0)


def test_image_reward_key_errors_fail_loudly(ir_setup, tmp_path):
    root, _, arch, _, state = ir_setup
    (tmp_path / "tokenizer").symlink_to(root / "tokenizer")
    torch.save(dict(state, **{"blip.itm_head.weight": torch.zeros(2, 24)}), tmp_path / "ImageReward.pt")
    with pytest.raises(LpoError, match=r"image_reward: .* holds 'blip.itm_head.weight'"):
        build(tmp_path, arch)
    torch.save({k: v for k, v in state.items() if k != "mlp.layers.7.bias"}, tmp_path / "ImageReward.pt")
    with pytest.raises(LpoError, match=r"1 missing \(e\.g\. mlp\.layers\.7\.bias\)"):
        build(tmp_path, arch)
    torch.save({k: v for k, v in state.items() if not k.startswith("blip.visual_encoder.blocks.1.")}, tmp_path / "ImageReward.pt")
    with pytest.raises(LpoError, match=r"missing \(e\.g\. vision\.encoder\.layers\.1\."):
        build(tmp_path, arch)


def test_normalisation_constants_are_image_rewards():
    # ImageReward.py's self.mean / self.std; the reference above imports them, so they are pinned here
    assert (REWARD_MEAN, REWARD_STD) == (0.16717362830052426, 1.0333394966054072)
