"""lpo.trainers.lora: LoRA on the attention projections, the adapters-off reference, and outputs that
plain diffusers loads back (LoRA folder, U-Net folder, merged pipeline) with identical samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lpo.sampling.generate import build_pipeline
from lpo.trainers.lora import (
    LORA_TARGETS,
    LORA_WEIGHTS_NAME,
    adapters_disabled,
    add_lora,
    has_lora,
    save_lora,
    save_merged_pipeline,
    save_unet,
)
from lpo.models.components import ddim_from_config, load_components

PROMPTS = ["a red circle", "a blue square"]
SEEDS = [11, 12]


def _samples(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(s) for s in SEEDS]
    out = pipe(prompt=PROMPTS, num_inference_steps=4, guidance_scale=5.0, eta=1.0, generator=generators, output_type="np")
    return out.images


def _perturb_lora(unet, seed: int = 0) -> None:
    """A 'trained' adapter: gaussian init leaves B = 0 (an identity adapter), so fill both."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)


def _from_pretrained(kind: str, folder, **kwargs):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    extra = {} if kind == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(folder, **extra, **kwargs)
    pipe.scheduler = ddim_from_config(pipe.scheduler.config)  # the trainers sample with DDIM
    return pipe


@pytest.fixture(params=["sd15", "sdxl"])
def base_dir(request, tiny_sd15_dir, tiny_sdxl_dir):
    return request.param, (tiny_sd15_dir if request.param == "sd15" else tiny_sdxl_dir)


def test_lora_targets_the_attention_projections_and_starts_as_the_base(base_dir):
    kind, folder = base_dir
    components = load_components(folder)
    base = _samples(build_pipeline(components))
    params = add_lora(components.unet, rank=4)
    assert has_lora(components.unet)
    names = [n for n, p in components.unet.named_parameters() if p.requires_grad]
    assert names and len(names) == len(params) and all("lora_" in n for n in names)
    wrapped = {next(t for t in LORA_TARGETS if n.split(".lora_")[0].endswith("." + t)) for n in names}
    assert wrapped == set(LORA_TARGETS)
    config = components.unet.peft_config["default"]
    assert config.r == 4 and config.lora_alpha == 4 and set(config.target_modules) == set(LORA_TARGETS)
    # gaussian init: A random, B zero, so the policy equals the base model at step 0
    assert all(float(p.detach().abs().sum()) == 0 for n, p in components.unet.named_parameters() if "lora_B" in n)
    assert np.array_equal(_samples(build_pipeline(components)), base)


def test_adapters_off_reproduce_the_base_and_leave_trainability_alone(base_dir):
    kind, folder = base_dir
    components = load_components(folder)
    base = _samples(build_pipeline(components))
    add_lora(components.unet, rank=4)
    _perturb_lora(components.unet)
    pipe = build_pipeline(components)
    policy = _samples(pipe)
    assert not np.allclose(policy, base, atol=1e-3)
    with adapters_disabled(components.unet):
        assert np.array_equal(_samples(pipe), base)
    assert np.array_equal(_samples(pipe), policy)  # switched back on
    assert all(p.requires_grad for n, p in components.unet.named_parameters() if "lora_" in n)


def test_saved_outputs_reproduce_the_policy_samples_in_plain_diffusers(base_dir, tmp_path):
    kind, folder = base_dir
    components = load_components(folder)
    add_lora(components.unet, rank=4)
    _perturb_lora(components.unet, seed=1)
    policy = _samples(build_pipeline(components))

    # 1. the diffusers LoRA folder: from_pretrained(base) + load_lora_weights(out)
    lora_dir = save_lora(components.unet, tmp_path / "lora", components.kind)
    assert (lora_dir / LORA_WEIGHTS_NAME).is_file()
    pipe = _from_pretrained(kind, folder)
    base = _samples(pipe)
    pipe.load_lora_weights(lora_dir)
    assert np.allclose(_samples(pipe), policy, atol=1e-5)
    assert not np.allclose(base, policy, atol=1e-3)

    # 2. the U-Net folder (what a full fine-tune writes): swapped into the base pipeline
    from diffusers import UNet2DConditionModel

    unet_dir = save_unet(components.unet, tmp_path / "unet")
    unet = UNet2DConditionModel.from_pretrained(unet_dir)
    assert not has_lora(unet)
    assert np.allclose(_samples(_from_pretrained(kind, folder, unet=unet)), policy, atol=1e-4)

    # 3. the merged pipeline folder: from_pretrained alone
    merged_dir = save_merged_pipeline(components, components.unet, tmp_path / "merged")
    assert np.allclose(_samples(_from_pretrained(kind, merged_dir)), policy, atol=1e-4)
    assert has_lora(components.unet)  # merging worked on a copy


def test_a_second_adapter_is_refused(tiny_sd15_dir):
    from lpo.core.errors import LpoError

    components = load_components(tiny_sd15_dir)
    add_lora(components.unet, rank=2)
    with pytest.raises(LpoError, match="already carries"):
        add_lora(components.unet, rank=2)
