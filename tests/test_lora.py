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


def test_applying_a_lora_reports_its_modules_and_refuses_one_that_fits_nothing(tiny_sd15_dir, tmp_path):
    """diffusers can load a LoRA whose keys name no module of the base without an error (SPO
    issue 25: a LoRA applied to a custom SDXL base changed nothing); lpo counts what it adapted."""
    from safetensors.torch import load_file, save_file

    from lpo.core.errors import LpoError
    from lpo.trainers.lora import adapted_modules, check_lora_applied, lora_file_modules

    components = load_components(tiny_sd15_dir)
    add_lora(components.unet, rank=4)
    lora_dir = save_lora(components.unet, tmp_path / "lora", components.kind)
    named = lora_file_modules(lora_dir)
    assert named == adapted_modules(components.unet) and len(named) > 0  # every attention projection

    pipe = _from_pretrained("sd15", tiny_sd15_dir)
    pipe.load_lora_weights(lora_dir)
    assert check_lora_applied(pipe.unet, lora_dir, "base", "fix") == len(named)

    # the same file with one module renamed to a path the base lacks: a partial fit is refused
    state = load_file(str(lora_dir / LORA_WEIGHTS_NAME))
    first = sorted(named)[0]
    renamed = {k.replace(first + ".", "nowhere.", 1) if first + "." in k else k: v for k, v in state.items()}
    (tmp_path / "partial").mkdir()
    save_file(renamed, str(tmp_path / "partial" / LORA_WEIGHTS_NAME))
    with pytest.raises(LpoError, match=rf"adapted {len(named) - 1} of the {len(named)} U-Net modules it names \(nowhere is not in base\); fix"):
        check_lora_applied(pipe.unet, tmp_path / "partial", "base", "fix")
    # a U-Net that nothing was applied to
    bare = _from_pretrained("sd15", tiny_sd15_dir)
    with pytest.raises(LpoError, match="adapted no module of base's U-Net; fix"):
        check_lora_applied(bare.unet, lora_dir, "base", "fix")
