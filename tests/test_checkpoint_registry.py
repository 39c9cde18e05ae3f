"""Checkpoint registry: named released checkpoints, user entries, U-Net / LoRA / VAE substitution."""

from __future__ import annotations

import os
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lpo.evals.checkpoints as checkpoints_module
from lpo.cli import app
from lpo.core.errors import LpoError
from lpo.evals.checkpoint_registry import BUILTIN, load_registry, plan
from lpo.evals.checkpoints import folder_hash, resolve_checkpoint
from lpo.evals.harness import EvalConfig, EvalProtocol, run_eval

runner = CliRunner()


def _write(path: Path, entries) -> Path:
    path.write_text(json.dumps({"checkpoints": entries}))
    return path


@pytest.fixture(scope="module")
def parts(tiny_world_dir, tmp_path_factory):
    """A perturbed U-Net (in a `unet/` subfolder, like the hub repos) and a LoRA for the tiny world model."""
    from lpo.trainers.lora import add_lora, save_lora
    from lpo.models.components import load_components

    root = tmp_path_factory.mktemp("parts")
    components = load_components(tiny_world_dir)
    generator = torch.Generator().manual_seed(1)
    unet = components.unet
    with torch.no_grad():
        for param in unet.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    unet.save_pretrained(root / "released" / "unet")
    lora_components = load_components(tiny_world_dir)
    add_lora(lora_components.unet, rank=4)
    with torch.no_grad():
        for name, param in lora_components.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    save_lora(lora_components.unet, root / "lora", "world")
    return root


def test_builtin_entries_name_their_sources_without_downloading():
    entries = load_registry()
    assert {"sd15", "sdxl", "dpo-sd15", "dpo-sdxl", "spo-sd15", "spo-sdxl", "lpo-sd15", "lpo-sdxl"} <= set(entries)
    p = plan(entries["dpo-sd15"], entries)
    assert (p.pipeline, p.unet, p.unet_subfolder, p.vae) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "mhdang/dpo-sd1.5-text2image-v1", "unet", None)
    p = plan(entries["lpo-sdxl"], entries)
    assert (p.pipeline, p.unet, p.unet_subfolder, p.vae) == (
        "stabilityai/stable-diffusion-xl-base-1.0", "casiatao/LPO", "lpo_sdxl_merge/unet", "madebyollin/sdxl-vae-fp16-fix")
    p = plan(entries["spo-sdxl"], entries)
    assert (p.pipeline, p.unet, p.vae) == ("SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", None, "madebyollin/sdxl-vae-fp16-fix")
    # the official evaluation script's CFG: 7.5 for SD1.5 and its Diffusion-DPO, 5 for the rest
    assert {e.name: e.cfg for e in BUILTIN} == {"sd15": 7.5, "sdxl": 5.0, "dpo-sd15": 7.5, "dpo-sdxl": 5.0,
                                               "spo-sd15": 5.0, "spo-sdxl": 5.0, "lpo-sd15": 5.0, "lpo-sdxl": 5.0}
    assert all(e.source and e.published_as for e in BUILTIN)


def test_a_hub_entry_resolves_to_its_parts(monkeypatch):
    """Hashing a hub entry asks the hub for commits; stubbed here, the Checkpoint is checked."""
    monkeypatch.setattr(checkpoints_module, "_hub_hash", lambda ref: (f"h-{ref}"[:16], "commit"))
    ckpt = resolve_checkpoint("lpo-sd15")
    assert (ckpt.base, ckpt.adapter_kind, ckpt.adapter_path, ckpt.adapter_subfolder) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5", "unet", "casiatao/LPO", "lpo_sd15_merge/unet")
    assert ckpt.guidance_scale == 5.0 and ckpt.method == "lpo" and ckpt.published_as == "SD1.5 LPO"
    assert [s["signal"] for s in ckpt.trained_with] == ["lrm", "pickapic-v1-labels", "mpcf-laion-aesthetic", "mpcf-clip-h14", "mpcf-vqascore"]
    sdxl = resolve_checkpoint("sdxl")
    assert (sdxl.hub_id, sdxl.vae, sdxl.base) == ("stabilityai/stable-diffusion-xl-base-1.0", "madebyollin/sdxl-vae-fp16-fix", None)
    assert resolve_checkpoint("lpo-sdxl").content_hash != resolve_checkpoint("dpo-sdxl").content_hash


def test_user_entries_swap_the_unet_or_load_a_lora(tmp_path, tiny_world_dir, parts, monkeypatch):
    monkeypatch.setenv("LPO_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    _write(tmp_path / "home" / "checkpoints.json", [
        {"name": "tiny-base", "replaces": "pipeline", "weights": str(tiny_world_dir), "base_model": "world", "cfg": 3.0},
        {"name": "tiny-released", "replaces": "unet", "weights": str(parts / "released"), "subfolder": "unet",
         "base": "tiny-base", "method": "diffusion-dpo", "base_model": "world", "cfg": 7.5, "trained_with": ["world-annotators"]},
        {"name": "tiny-lora", "replaces": "lora", "weights": str(parts / "lora"), "base": "tiny-base", "method": "lpo"},
    ])
    base = resolve_checkpoint("tiny-base")
    assert base.content_hash == folder_hash(tiny_world_dir)  # same images as the folder itself
    released = resolve_checkpoint("tiny-released")
    pipe = released.load_pipeline("cpu", "fp32")
    from diffusers import UNet2DConditionModel

    expected = UNet2DConditionModel.from_pretrained(parts / "released", subfolder="unet").state_dict()
    got = pipe.unet.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    lora = resolve_checkpoint("tiny-lora")
    assert lora.adapter_kind == "lora" and lora.guidance_scale is None
    lora_pipe = lora.load_pipeline("cpu", "fp32")
    assert any("lora" in name for name, _ in lora_pipe.unet.named_parameters())

    # The registry's CFG is the default; the record says where it came from. A LoRA on the
    # tiny base shares the image cache with the same LoRA as a run's policy (same hash).
    def config(spec, **kw):
        return EvalConfig(checkpoint=spec, max_prompts=3, metrics=("world_clip",), cache_dir=tmp_path / "cache",
                          results_dir=tmp_path / "results", protocol=EvalProtocol(steps=2, images_per_prompt=1, **kw))

    out = run_eval(config("tiny-released"))
    record = out.records[0]
    assert record.protocol["guidance_scale"] == 7.5 and record.protocol["guidance_scale_from"] == "checkpoint"
    assert record.checkpoint["registry"]["name"] == "tiny-released" and record.method == "diffusion-dpo"
    assert record.training_signals[0]["signal"] == "world-annotators"
    assert run_eval(config("tiny-released", guidance_scale=2.0)).records[0].protocol["guidance_scale_from"] == "user"
    base_out = run_eval(config("tiny-base", guidance_scale=7.5))
    assert base_out.images_generated == 3 and base_out.records[0].training_signals == []  # a base model: none
    from PIL import Image  # the swapped U-Net changes the images

    a = np.asarray(Image.open(next(out.image_folder.rglob("0000.png"))), dtype=int)
    b = np.asarray(Image.open(base_out.image_folder / next(out.image_folder.rglob("0000.png")).parent.name / "0000.png"), dtype=int)
    assert np.abs(a - b).max() > 0

    from lpo.core.runs import RunFolder

    run = RunFolder.create({"method": "lpo", "model": {"base": str(tiny_world_dir)}}, folder=tmp_path / "run")
    import shutil

    shutil.copytree(parts / "lora", run.path / "model")
    first = run_eval(config("tiny-lora", guidance_scale=5.0))
    assert first.records[0].training_signals is None  # an lpo entry that declares no signals: unknown
    again = run_eval(config(str(run.path), guidance_scale=5.0))
    assert first.checkpoint.content_hash == again.checkpoint.content_hash and again.images_generated == 0


def test_a_vae_override_is_loaded_and_hashed(tmp_path, tiny_world_dir, monkeypatch):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_world_dir, subfolder="vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.5)
    vae.save_pretrained(tmp_path / "vae")
    registry = _write(tmp_path / "r.json", [
        {"name": "plain", "replaces": "pipeline", "weights": str(tiny_world_dir)},
        {"name": "with-vae", "replaces": "pipeline", "weights": str(tiny_world_dir), "vae": "./vae"},
    ])
    plain, with_vae = resolve_checkpoint("plain", registry=registry), resolve_checkpoint("with-vae", registry=registry)
    assert with_vae.vae == str((tmp_path / "vae").resolve()) and plain.content_hash != with_vae.content_hash
    pipe = with_vae.load_pipeline("cpu", "fp32")
    assert torch.equal(pipe.vae.decoder.conv_out.bias, vae.decoder.conv_out.bias)


def test_bad_registry_input_is_one_line(tmp_path, tiny_world_dir, tiny_sd15_dir, parts):
    def error(entries, spec="x"):
        path = _write(tmp_path / "bad.json", entries)
        with pytest.raises(LpoError) as info:
            resolve_checkpoint(spec, registry=path)
        assert "\n" not in str(info.value)
        return str(info.value)

    with pytest.raises(LpoError, match="unknown checkpoint 'dpo-sd1.5'.*known: .*dpo-sd15.*lpo list checkpoints"):
        resolve_checkpoint("dpo-sd1.5")
    assert "lacks 'weights'" in error([{"name": "x", "replaces": "unet", "base": "sd15"}])
    assert "unknown field 'cfg_scale'" in error([{"name": "x", "replaces": "pipeline", "weights": "a/b", "cfg_scale": 5}])
    assert "replaces must be one of" in error([{"name": "x", "replaces": "vae", "weights": "a/b"}])
    assert "needs a base" in error([{"name": "x", "replaces": "lora", "weights": "a/b"}])
    assert "cfg must be a number" in error([{"name": "x", "replaces": "pipeline", "weights": "a/b", "cfg": "high"}])
    assert "unknown signal 'pickscore-v9'" in error([{"name": "x", "replaces": "pipeline", "weights": "a/b", "trained_with": ["pickscore-v9"]}])
    assert "no '/'" in error([{"name": "a/b", "replaces": "pipeline", "weights": "a/b"}])
    assert "listed twice" in error([{"name": "x", "replaces": "pipeline", "weights": "a/b"}] * 2)
    assert "is no known checkpoint" in error([{"name": "x", "replaces": "unet", "weights": "a/b", "base": "sd-15"}])
    assert "loop" in error([{"name": "x", "replaces": "unet", "weights": "a/b", "base": "y"},
                            {"name": "y", "replaces": "unet", "weights": "a/b", "base": "x"}])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(LpoError, match="not valid JSON"):
        resolve_checkpoint("x", registry=tmp_path / "broken.json")
    # A LoRA entry whose base does not match: declared families, then the LoRA's own shapes.
    assert "is a lora for sdxl but its base 'sd15' is sd15" in error(
        [{"name": "x", "replaces": "lora", "weights": str(parts / "lora"), "base": "sd15", "base_model": "sdxl"}])
    message = error([{"name": "sd15-tiny", "replaces": "pipeline", "weights": str(tiny_sd15_dir)},
                     {"name": "x", "replaces": "lora", "weights": str(parts / "lora"), "base": "sd15-tiny"}])
    assert "does not fit its base" in message and "set base to the pipeline the LoRA was trained on" in message


def test_cli_lists_and_resolves_names(tmp_path, tiny_world_dir):
    registry = _write(tmp_path / "r.json", [{"name": "tiny", "replaces": "pipeline", "weights": str(tiny_world_dir), "cfg": 4.0}])
    listed = runner.invoke(app, ["list", "checkpoints", "--registry", str(registry)], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    assert "dpo-sd15" in listed.output and "lpo_sd15_merge/unet" in listed.output and "tiny" in listed.output
    result = runner.invoke(app, ["eval", "--checkpoint", "tiny", "--registry", str(registry), "--max-prompts", "2",
                                 "--steps", "2", "--metric", "world_clip", "--images-per-prompt", "1",
                                 "--cache-dir", str(tmp_path / "c"), "--results-dir", str(tmp_path / "r"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "CFG 4" in result.output
    bad = runner.invoke(app, ["eval", "--checkpoint", "nope", "--max-prompts", "2"])
    assert bad.exit_code == 2 and "unknown checkpoint 'nope'" in bad.output and bad.output.strip().count("\n") == 0
    help_text = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "250"}).output
    for name in ("t2i-compbench", "geneval", "world-heldout", "partiprompts", "prompts-file"):
        assert name in help_text


def test_the_registry_table_is_readable_at_80_columns():
    from rich.console import Console

    from lpo.evals.checkpoint_registry import load_registry, registry_table

    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    console.print(registry_table(load_registry(None), width=console.width))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    # names, methods and hub ids are whole on one line, not folded into slivers
    for word in ("dpo-sd15", "diffusion-dpo", "mhdang/dpo-sd1.5-text2image-v1", "stable-diffusion-v1-5/stable-diffusion-v1-5"):
        assert word in text, word
