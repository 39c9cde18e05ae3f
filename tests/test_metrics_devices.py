"""Every metric in half precision (and on CUDA when there is one) agrees with float32 on
the CPU: inputs follow the model to its device and dtype, heads that upstream runs in
float32 stay there, and the scores come back as float32 CPU tensors."""

from __future__ import annotations

import pytest
import torch

from metric_fixtures import random_image, tiny_clip_folder, write_aesthetic_head, write_hps_checkpoints, write_image_reward_checkpoint
from lpo.evals.metrics import METRICS, MetricSpec
from lpo.evals.metrics.hps import HPSv2
from lpo.evals.metrics.image_reward import ImageReward

PROMPTS = ["a photo of a red cat", "two small blue birds above a green tree", "a house"]
SETTINGS = [("cpu", "bfloat16")]
if torch.cuda.is_available():
    SETTINGS += [("cuda", "float16"), ("cuda", "bfloat16"), ("cuda", "float32")]


@pytest.fixture(scope="module")
def builders(tmp_path_factory):
    root = tmp_path_factory.mktemp("devices")
    clip = tiny_clip_folder(root / "clip", seed=2, logit_scale=2.0)
    write_aesthetic_head(root / "aesthetic")
    _, hps_arch, _ = write_hps_checkpoints(root / "hps")
    _, ir_arch, _, _ = write_image_reward_checkpoint(root / "ir")
    return {
        "pickscore": lambda **kw: METRICS.get("pickscore")(MetricSpec(weights=str(clip), processor=str(clip), **kw)),
        "clip_cosine_h14": lambda **kw: METRICS.get("clip_cosine_h14")(MetricSpec(weights=str(clip), **kw)),
        "laion_aesthetic": lambda **kw: METRICS.get("laion_aesthetic")(
            MetricSpec(weights=str(root / "aesthetic"), processor=str(clip), **kw)
        ),
        "hpsv2": lambda **kw: HPSv2(
            MetricSpec(weights=str(root / "hps"), processor=str(root / "hps" / "tokenizer"), **kw), architecture=hps_arch
        ),
        "image_reward": lambda **kw: ImageReward(
            MetricSpec(weights=str(root / "ir"), processor=str(root / "ir" / "tokenizer"), **kw), architecture=ir_arch
        ),
    }


@pytest.mark.parametrize("device,dtype", SETTINGS)
@pytest.mark.parametrize("name", ["pickscore", "clip_cosine_h14", "laion_aesthetic", "hpsv2", "image_reward"])
def test_half_precision_and_device_agree_with_float32(builders, name, device, dtype):
    imgs = [random_image(s, (40, 32)) for s in range(3)]
    reference = builders[name]().score(imgs, PROMPTS)
    scores = builders[name](device=device, dtype=dtype, batch_size=2).score(imgs, PROMPTS)
    assert scores.device.type == "cpu" and scores.dtype == torch.float32 and scores.shape == (3,)
    spread = float(reference.abs().max()) + 1.0
    tolerance = 1e-4 if dtype == "float32" else 0.05  # bf16/fp16 round to 8/11 significant bits
    assert torch.allclose(scores, reference, atol=tolerance * spread, rtol=0), (name, scores, reference)
