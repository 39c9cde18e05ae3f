"""SD3-style flow pipelines: loading, prompt encoding and sampling match diffusers' StableDiffusion3Pipeline."""

from __future__ import annotations

import pytest
import torch

from lpo.core.errors import LpoError
from lpo.models.flow_components import (
    encode_flow_prompts, flow_guided_conditioning, is_flow_pipeline, load_flow_components,
)
from lpo.sampling.flow import sample_flow
from tiny_flow_models import T5_LENGTH, tiny_sd3_pipeline

PROMPTS = ["a red circle", "two blue squares above a green tree"]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3")
    return {"t5": tiny_sd3_pipeline(root / "with-t5"), "no-t5": tiny_sd3_pipeline(root / "no-t5", with_t5=False, seed=1)}


def _reference(folder):
    from diffusers import StableDiffusion3Pipeline

    without_t5 = not (folder / "text_encoder_3").is_dir()
    extra = {"text_encoder_3": None, "tokenizer_3": None} if without_t5 else {}
    return StableDiffusion3Pipeline.from_pretrained(folder, **extra).to("cpu")


@pytest.mark.parametrize("variant", ["t5", "no-t5"])
def test_loads_and_encodes_as_the_sd3_pipeline(pipelines, variant):
    folder = pipelines[variant]
    assert is_flow_pipeline(folder)
    c = load_flow_components(folder)
    assert c.kind == "sd3" and c.default_resolution == 16 and c.scheduler.config.shift == 3.0
    assert (c.text_encoder_3 is None) == (variant == "no-t5")
    pipe = _reference(folder)
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPTS, PROMPTS, PROMPTS, do_classifier_free_guidance=True, max_sequence_length=T5_LENGTH)
        cond, uncond = flow_guided_conditioning(c, PROMPTS, 5.0, max_sequence_length=T5_LENGTH)
    assert cond.prompt_embeds.shape == (2, c.tokenizer.model_max_length + T5_LENGTH, 32)
    torch.testing.assert_close(cond.prompt_embeds, embeds)
    torch.testing.assert_close(cond.pooled, pooled)
    torch.testing.assert_close(uncond.prompt_embeds, negative)  # SD3 encodes "" (no zeroed branch)
    torch.testing.assert_close(uncond.pooled, negative_pooled)
    assert flow_guided_conditioning(c, PROMPTS, 1.0, max_sequence_length=T5_LENGTH)[1] is None


def test_ode_sampling_is_the_pipelines_and_the_sde_has_log_probs(pipelines):
    folder = pipelines["t5"]
    c = load_flow_components(folder)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    pipe = _reference(folder)
    with torch.no_grad():
        expected = pipe(PROMPTS, latents=latents.clone(), num_inference_steps=4, guidance_scale=5.0,
                        output_type="latent", max_sequence_length=T5_LENGTH).images
        cond, uncond = flow_guided_conditioning(c, PROMPTS, 5.0, max_sequence_length=T5_LENGTH)
    ode = sample_flow(c, cond, latents, uncond=uncond, guidance_scale=5.0, num_inference_steps=4)
    torch.testing.assert_close(ode.final_latents, expected, rtol=1e-4, atol=1e-4)
    assert ode.latents.shape == (2, 5, 4, 8, 8) and bool(ode.log_probs.isnan().all())

    sde = sample_flow(c, cond, latents, uncond=uncond, guidance_scale=5.0, num_inference_steps=4, noise_level=0.7,
                      generator=torch.Generator().manual_seed(0))
    assert sde.log_probs.shape == (2, 4) and bool(torch.isfinite(sde.log_probs).all())
    assert not torch.allclose(sde.final_latents, ode.final_latents)
    again = sample_flow(c, cond, latents, uncond=uncond, guidance_scale=5.0, num_inference_steps=4, noise_level=0.7,
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.final_latents, sde.final_latents)  # seeded


def test_unconditional_call_matches_the_pipeline_without_guidance(pipelines):
    folder = pipelines["no-t5"]
    c = load_flow_components(folder)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = _reference(folder)(PROMPTS[:1], latents=latents.clone(), num_inference_steps=3, guidance_scale=1.0,
                                       output_type="latent", max_sequence_length=T5_LENGTH).images
        cond = encode_flow_prompts(c, PROMPTS[:1], max_sequence_length=T5_LENGTH)
    torch.testing.assert_close(sample_flow(c, cond, latents, num_inference_steps=3).final_latents, expected,
                               rtol=1e-4, atol=1e-4)


def test_loader_errors_are_one_line(pipelines, tmp_path):
    import shutil

    from lpo.models.components import load_components

    with pytest.raises(LpoError, match="load_flow_components"):
        load_components(pipelines["t5"])  # the U-Net loader points to the flow one
    broken = tmp_path / "broken"
    shutil.copytree(pipelines["t5"], broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(LpoError, match="transformer is missing"):
        load_flow_components(broken)
    import json

    config = json.loads((pipelines["t5"] / "transformer" / "config.json").read_text())
    mismatched = tmp_path / "mismatched"
    shutil.copytree(pipelines["t5"], mismatched)
    config["pooled_projection_dim"] = 40
    (mismatched / "transformer" / "config.json").write_text(json.dumps(config))
    (mismatched / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    from diffusers import SD3Transformer2DModel

    SD3Transformer2DModel.from_config(config).save_pretrained(mismatched / "transformer")
    with pytest.raises(LpoError, match="pooled embeddings of width 40"):
        load_flow_components(mismatched)


def test_lpo_sample_on_a_flow_pipeline_matches_diffusers(pipelines, tmp_path):
    """`lpo sample` (run_sample) draws SD3 images through StableDiffusion3Pipeline over the loaded parts."""
    import numpy as np

    from lpo.sampling.generate import generate_images, image_seed, load_pipeline, run_sample

    folder = pipelines["t5"]
    pipe, components = load_pipeline(str(folder), device="cpu")
    assert components.kind == "sd3"
    ours = generate_images(pipe, PROMPTS, [1, 2], num_inference_steps=3, guidance_scale=5.0)
    reference = _reference(folder)
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    expected = reference(PROMPTS, num_inference_steps=3, guidance_scale=5.0, generator=generators, output_type="np").images
    np.testing.assert_array_equal(ours, (np.clip(expected, 0, 1) * 255).round().astype(np.uint8))
    grid = run_sample(str(folder), PROMPTS, None, 2, 1, 5.0, 3, 0, tmp_path / "grid.png", device="cpu")
    assert grid.is_file() and image_seed(0, PROMPTS[0], 0) != image_seed(0, PROMPTS[1], 0)


def test_lpo_eval_loads_a_flow_pipeline_with_its_own_sampler(pipelines):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from lpo.evals.checkpoints import resolve_checkpoint

    checkpoint = resolve_checkpoint(str(pipelines["t5"]))
    pipe = checkpoint.load_pipeline("cpu", "fp32")
    assert checkpoint.sampler == "flow-euler" and isinstance(pipe, StableDiffusion3Pipeline)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.lpo_max_sequence_length == 256
