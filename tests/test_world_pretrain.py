"""World pretraining writes a standard, loadable, reproducible pipeline folder."""

import json

import pytest

import torch
from safetensors.torch import load_file

from lpo.models.components import load_components
from lpo.world.pretrain import WORLD_MARKER, pretrain_preset, pretrain_world


def test_tiny_world_pipeline_loads_like_sd15(tiny_world_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_world_dir)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32
    components = load_components(tiny_world_dir)
    assert components.kind == "world"
    assert components.vae.config.scaling_factor > 0
    marker = json.loads((tiny_world_dir / WORLD_MARKER).read_text())
    assert marker["config"]["preset"] == "tiny" and marker["fingerprint"] == pretrain_preset("tiny").fingerprint()
    images = pipe(["a red circle", "two blue squares"], num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 32, 32, 3)


def test_pretraining_is_deterministic(tmp_path, tiny_world_dir):
    again = pretrain_world(pretrain_preset("tiny"), tmp_path / "again").folder
    for sub, name in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        a, b = load_file(tiny_world_dir / sub / name), load_file(again / sub / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), sub


def test_failed_pretraining_leaves_no_folder(tmp_path, monkeypatch):
    import lpo.world.pretrain as pretrain

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "train_unet", boom)
    target = tmp_path / "world"
    try:
        pretrain_world(pretrain_preset("tiny"), target)
    except KeyboardInterrupt:
        pass
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir()]  # no temporary leftovers either


@pytest.mark.slow
def test_quick_preset_reproduces_the_shipped_world_model(tmp_path):
    """~5 minutes: `lpo world pretrain` must rebuild the checkpoint that ships in the repo."""
    from pathlib import Path

    import lpo.world.pretrain as pretrain

    shipped = Path(pretrain.__file__).parent / "assets" / "quick"
    if not (shipped / WORLD_MARKER).exists():
        pytest.skip("no shipped world model")
    rebuilt = pretrain_world(pretrain_preset("quick"), tmp_path / "quick").folder
    for sub, name in (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        a, b = load_file(shipped / sub / name), load_file(rebuilt / sub / name)
        assert set(a) == set(b), sub  # the same tensors, not just the shipped ones found in the rebuild
        # Same machine kind, same thread count: bitwise; elsewhere float reductions may differ slightly.
        assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a), sub


def test_shipped_quick_model_is_imperfect_but_recognisable():
    """The committed world model: clearly above chance, clearly below ground truth."""
    from pathlib import Path

    from lpo.world.benchmark import PipelineSource, WorldEvalProtocol, evaluate_source
    from lpo.sampling.generate import load_pipeline
    from lpo.world.pretrain import resolve_world_alias

    folder = resolve_world_alias("world")  # LPO_HOME is empty in tests: the shipped copy
    assert folder == Path(pretrain_world.__code__.co_filename).parent / "assets" / "quick"
    pipe, components = load_pipeline("world", device="cpu")
    assert components.kind == "world"
    protocol = WorldEvalProtocol(max_prompts=24, images_per_prompt=2)
    result = evaluate_source(PipelineSource(pipe, protocol), protocol)
    assert 0.1 < result.overall["alignment"] < 0.7, result.overall
    assert 0.4 < result.overall["soft_alignment"] < 0.9, result.overall


def test_wide_preset_changes_only_the_unet_width():
    """The world study's feature lever: same data stream, VAE and text encoder as quick,
    so an LRM built from it sees the very same latents."""
    from dataclasses import asdict

    from lpo.world.pretrain import PRETRAIN_PRESETS

    quick, wide = asdict(PRETRAIN_PRESETS["quick"]), asdict(PRETRAIN_PRESETS["wide"])
    assert wide["model"].pop("unet_channels") == (64, 128) and quick["model"].pop("unet_channels") == (32, 64)
    assert {k: v for k, v in wide.items() if k != "preset"} == {k: v for k, v in quick.items() if k != "preset"}
