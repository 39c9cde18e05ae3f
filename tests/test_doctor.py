"""`lpo doctor`: metrics loaded and run on fixed images, checkpoints resolved and loaded, every
problem reported in its row and the exit status 1 when any check failed."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from lpo.cli import app
from lpo.evals.doctor import DOCTOR_PROMPTS, doctor_images, run_doctor


def test_the_fixed_images_are_the_same_everywhere():
    a, b = doctor_images(), doctor_images()
    assert len(a) == len(DOCTOR_PROMPTS) and all(x.size == (256, 256) for x in a)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


def test_metrics_and_a_lora_checkpoint_are_checked(tmp_path, tiny_world_dir):
    from metric_fixtures import tiny_clip_folder

    from lpo.core.runs import RunFolder
    from lpo.models.components import load_components
    from lpo.trainers.lora import add_lora, save_lora

    clip = tiny_clip_folder(tmp_path / "clip", seed=2)
    components = load_components(tiny_world_dir)
    add_lora(components.unet, rank=4)
    run = RunFolder.create({"method": "lpo", "model": {"base": str(tiny_world_dir)}}, folder=tmp_path / "run",
                           extra={"method": "lpo", "label": "lpo-world"})
    save_lora(components.unet, run.path / "model", "world")

    checks, cards = run_doctor(["pickscore", "clip_diversity", "pixel_diversity", "hpsv2"], [str(run.path)],
                               metric_weights={"pickscore": str(clip), "clip_diversity": str(clip),
                                               "hpsv2": str(tmp_path / "nowhere")},
                               metric_processors={"pickscore": str(clip)})
    by = {c.name: c for c in checks}
    assert by["pickscore"].error is None and by["pickscore"].key == "pickscore@v1+lpo1"
    assert by["pickscore"].comparability == "published" and len(by["pickscore"].scores) == len(DOCTOR_PROMPTS)
    again = run_doctor(["pickscore"], [], metric_weights={"pickscore": str(clip)}, metric_processors={"pickscore": str(clip)})[0]
    assert again[0].scores == by["pickscore"].scores  # the same images, the same numbers
    assert by["clip_diversity"].comparability == "lpo" and len(by["pixel_diversity"].scores) == 2
    assert by["hpsv2"].error and "nowhere" in by["hpsv2"].error and "\n" not in by["hpsv2"].error
    (card,) = cards
    assert card["adapter"].startswith("lora ") and card["LoRA modules adapted"] > 0
    assert card["U-Net parameters"] == sum(p.numel() for p in load_components(tiny_world_dir).unet.parameters()) + sum(
        p.numel() for n, p in components.unet.named_parameters() if "lora_" in n)
    assert torch.isfinite(torch.tensor(by["pickscore"].scores)).all()


def test_the_command_exits_1_when_a_check_fails_and_2_on_a_user_mistake(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["doctor", "--metric", "pixel_diversity", "--checkpoint", "world", "--no-load"])
    assert ok.exit_code == 0, ok.output
    assert "pixel_diversity@1" in ok.output and "content hash" in ok.output
    bad = runner.invoke(app, ["doctor", "--metric", "hpsv2", "--metric-weights", f"hpsv2={tmp_path / 'nowhere'}"])
    assert bad.exit_code == 1 and "nowhere" in bad.output
    nothing = runner.invoke(app, ["doctor"])
    assert nothing.exit_code == 2 and "name something to check" in nothing.output
    misspelt = runner.invoke(app, ["doctor", "--metric", "pickscor"])
    assert misspelt.exit_code == 2 and "unknown metric 'pickscor'" in misspelt.output


def test_a_half_precision_doctor_loads_metrics_and_pipelines_in_it():
    """--dtype reaches the metrics (torch's name) and the pipeline (lpo's) alike."""
    result = CliRunner().invoke(app, ["doctor", "--metric", "pixel_diversity", "--checkpoint", "world", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert "U-Net parameters" in result.output and "error" not in result.output
    checks, cards = run_doctor(["pixel_diversity"], ["world"], dtype="bfloat16")  # torch's name is an alias
    assert checks[0].error is None and "error" not in cards[0] and cards[0]["U-Net parameters"] > 0
