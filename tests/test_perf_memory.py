"""lpo perf memory: the live-byte counter, the CUDA autocast emulation, and estimates that scale as they must."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from lpo.perf.memory import FP32_UNDER_CUDA_AUTOCAST, LiveBytes, estimate_training_memory
from lpo.trainers.jobs import resolve_config


def test_live_bytes_counts_storages_once_and_releases_them():
    with FakeTensorMode(), LiveBytes() as live:
        a = torch.empty(1000, dtype=torch.float32)
        assert live.live == 4000
        view = a[:10]  # a view shares the storage: no new bytes
        b = torch.empty(500, dtype=torch.float16)
        assert live.live == 5000 and live.peak == 5000
        del a
        assert live.live == 5000  # the view keeps the storage alive
        del view
        assert live.live == 1000
        del b
        assert live.live == 0 and live.peak == 5000


def test_fp32_list_is_cudas_autocast_policy():
    # CUDA's autocast kernels are registered in every build; fake CUDA tensors reach them
    import torch.nn.functional as F

    ops = {
        "group_norm": lambda x: F.group_norm(x, 4), "layer_norm": lambda x: F.layer_norm(x, (8,)),
        "interpolate": lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest"),
        "softmax": lambda x: F.softmax(x, -1), "log_softmax": lambda x: F.log_softmax(x, -1),
    }
    assert set(ops) == set(FP32_UNDER_CUDA_AUTOCAST)
    low_precision = {"conv2d": lambda x: F.conv2d(x, torch.empty(4, 8, 3, 3, device="cuda")), "silu": F.silu,
                     "linear": lambda x: F.linear(x, torch.empty(3, 8, device="cuda"))}
    with FakeTensorMode():
        x = torch.empty(2, 8, 8, 8, dtype=torch.float16, device="cuda")
        previous = torch.is_autocast_enabled("cuda")
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", torch.float16)
        torch.autocast_increment_nesting()
        try:
            for name, op in ops.items():
                assert op(x).dtype == torch.float32, name
            for name, op in low_precision.items():
                assert op(x).dtype == torch.float16, name
        finally:
            torch.autocast_decrement_nesting()
            torch.set_autocast_enabled("cuda", previous)


def _sd15_fp16_weight_mib() -> float:
    # counted independently: the same configs built on the meta device
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lpo.perf.architectures import CLIP_L_TEXT, CLIP_VOCAB_SIZE, SD_VAE, SD15_UNET

    with torch.device("meta"):
        modules = [UNet2DConditionModel(**SD15_UNET), AutoencoderKL(**SD_VAE),
                   CLIPTextModel(CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, **CLIP_L_TEXT))]
    params = sum(p.numel() for m in modules for p in m.parameters())
    buffers = sum(b.numel() * b.element_size() for m in modules for b in m.buffers())
    return (params * 2 + buffers) / 2**20


@pytest.fixture(scope="module")
def lpo_sd15_estimates():
    def estimate(*overrides):
        return estimate_training_memory(resolve_config("lpo", "lpo-sd15", list(overrides)), "sd15", reward_dtype="fp16")

    return {
        "b2": estimate("train.train_batch_size=2"),
        "b4": estimate("train.train_batch_size=4"),
        "b4-ckpt": estimate("train.train_batch_size=4", "policy.gradient_checkpointing=true"),
    }


def test_resident_weights_are_the_models_bytes(lpo_sd15_estimates):
    e = lpo_sd15_estimates["b2"]
    base = e.resident_mib["base model (U-Net, VAE, text encoders)"]
    assert base == pytest.approx(_sd15_fp16_weight_mib(), rel=0.02)
    # LoRA rank 4 on SD1.5's attention: 797,184 fp32 weights (the H100 probe's count), AdamW two states each
    assert e.trainable_parameters == 797_184
    # + one fp32 step counter per trainable tensor
    states = 2 * 797_184 * 4 + 4 * 256
    assert e.resident_mib["optimiser states"] == pytest.approx(states / 2**20, rel=1e-6)


def test_update_scales_with_batch_and_checkpointing_cuts_it(lpo_sd15_estimates):
    b2, b4, ckpt = (lpo_sd15_estimates[k].transient_mib["update"] for k in ("b2", "b4", "b4-ckpt"))
    assert 1.7 < b4 / b2 < 2.3  # activations grow with the batch
    assert ckpt < b4 / 3  # checkpointing keeps block inputs only
    assert lpo_sd15_estimates["b4"].peak_mib > lpo_sd15_estimates["b2"].peak_mib


def test_cli_refuses_world_and_unknown_presets():
    from typer.testing import CliRunner

    from lpo.cli import app

    for preset, message in (("lpo-world", "trains the world model"), ("lpo-sd99", "unknown trainer preset")):
        result = CliRunner().invoke(app, ["perf", "memory", "--preset", preset])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output
