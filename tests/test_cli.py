"""The CLI through Typer's runner: help, dry runs, the world commands, one-line errors."""

import json
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from lpo.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_commands_and_is_fast():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("world", "sample", "version"):
        assert name in result.output
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "import lpo.cli, sys; assert 'torch' not in sys.modules"], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert time.perf_counter() - start < 10


def test_world_prompts_lists_a_split():
    result = invoke("world", "prompts", "--split", "test_heldout")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) >= 6 and all("\t" in line for line in lines)


def test_pretrain_dry_run_prints_resolved_config():
    result = invoke("world", "pretrain", "--preset", "tiny", "--set", "unet_steps=9", "--dry-run")
    assert result.exit_code == 0
    payload = json.loads(result.output)
    assert payload["config"]["unet_steps"] == 9 and payload["config"]["preset"] == "tiny"


@pytest.mark.parametrize(
    "args, message",
    [
        (("world", "pretrain", "--preset", "huge"), "unknown world pretrain preset 'huge'"),
        (("world", "pretrain", "--set", "nope=1", "--dry-run"), "unknown config key 'nope'"),
        (("world", "eval", "/no/such/folder"), "/no/such/folder does not exist"),
        (("world", "eval", "ground-truth", "--split", "dev"), "unknown prompt split 'dev'"),
        (("world", "eval", "world:full"), "lpo world pretrain --preset full"),
        (("sample", "world", "--prompts-file", "/no/prompts.txt"), "prompt file /no/prompts.txt does not exist"),
        (("sample", "/no/such/folder"), "/no/such/folder does not exist"),
        (("sample", "world", "--cfg", "-1"), "guidance scale must be a finite number >= 0, got -1.0"),
        (("sample", "no-such-registry-name"), "no-such-registry-name"),
        (("bench", "--seeds", "0", "--out", "/no/such/bench"), "seeds must be >= 1, got 0"),
    ],
)
def test_user_errors_are_one_line(args, message):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert message in text
    assert "Traceback" not in result.output


def test_world_eval_references_json():
    gt = invoke("world", "eval", "ground-truth", "--max-prompts", "12", "--images-per-prompt", "2", "--json")
    noise = invoke("world", "eval", "noise", "--max-prompts", "12", "--images-per-prompt", "2", "--json")
    assert gt.exit_code == 0 and noise.exit_code == 0
    gt, noise = json.loads(gt.output), json.loads(noise.output)
    assert set(gt["categories"]) == {"colour", "shape", "texture", "spatial", "numeracy", "complex"}
    assert gt["overall"]["alignment"] == 1.0 and noise["overall"]["alignment"] == 0.0
    assert gt["prompt_set_hash"] == noise["prompt_set_hash"]


def test_world_eval_and_sample_on_a_pretrained_folder(tiny_world_dir, tmp_path):
    out_json = tmp_path / "eval.json"
    result = invoke("world", "eval", tiny_world_dir, "--max-prompts", "6", "--images-per-prompt", "1", "--steps", "2", "--output", out_json, "--references")
    assert result.exit_code == 0, result.output
    assert "complex" in result.output and "side by side" in result.output
    payload = json.loads(out_json.read_text())
    assert payload["protocol"]["num_inference_steps"] == 2
    assert set(payload["references"]) == {"ground-truth", "shuffled", "noise"}
    assert payload["references"]["ground-truth"]["overall"]["alignment"] == 1.0

    grid = tmp_path / "grid.png"
    result = invoke("sample", tiny_world_dir, "--prompt", "a red circle", "--prompt", "two blue squares", "--steps", "2", "--out", grid)
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(grid).size[0] > 128


def test_world_alias_resolves_to_the_cache(tiny_world_dir, monkeypatch, tmp_path):
    import shutil

    from lpo.world.pretrain import pretrain_preset, world_model_dir

    monkeypatch.setenv("LPO_HOME", str(tmp_path))
    shutil.copytree(tiny_world_dir, world_model_dir(pretrain_preset("tiny")))
    result = invoke("world", "eval", "world:tiny", "--max-prompts", "6", "--images-per-prompt", "1", "--steps", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["source"] == "world:tiny"


@pytest.mark.parametrize("fixture", ["tiny_sd15_dir", "tiny_sdxl_dir"])
def test_sample_runs_on_real_mode_pipeline_folders(fixture, request, tmp_path):
    """The real-mode path (SD1.5- and SDXL-shaped folders) through the same command."""
    folder = request.getfixturevalue(fixture)
    grid = tmp_path / "grid.png"
    result = invoke("sample", folder, "--prompt", "a red cat", "--images-per-prompt", "2", "--steps", "2", "--cfg", "7.5", "--out", grid)
    assert result.exit_code == 0, result.output
    assert grid.exists()
    # Real-mode models have no default prompts: a clear error, not a crash.
    result = invoke("sample", folder, "--steps", "2", "--out", tmp_path / "x.png")
    assert result.exit_code == 2 and "--prompt" in result.output


def test_pairs_command_writes_a_labelled_parquet(tiny_world_dir, tmp_path):
    out = tmp_path / "pairs.parquet"
    result = invoke("pairs", "--model", tiny_world_dir, "--out", out, "--num-prompts", "2", "--pairs-per-prompt", "2", "--steps", "2")
    assert result.exit_code == 0, result.output
    from lpo.pairs.format import load_pairs

    loaded = load_pairs(out)
    assert len(loaded.pairs) == 4 and {p.label_0 for p in loaded.pairs} <= {0.0, 0.5, 1.0}


def test_pairs_command_rejects_a_non_world_model(tiny_sd15_dir, tmp_path):
    result = invoke("pairs", "--model", tiny_sd15_dir, "--out", tmp_path / "p.parquet", "--num-prompts", "1")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_mpcf_command_filters_and_reports(tmp_path):
    import numpy as np

    from lpo.pairs.format import PreferencePair, load_pairs, save_pairs
    from lpo.world.grammar import make_splits
    from lpo.world.render import render_prompt

    rng = np.random.default_rng(0)
    specs = make_splits().train[:6]
    pairs = []
    for i, spec in enumerate(specs):
        good = render_prompt(spec, rng)
        other = render_prompt(specs[(i + 1) % len(specs)], rng)
        # Half the labels agree with the judges, half contradict them.
        pairs.append(PreferencePair(f"p{i}", spec.text(), good, other, 1.0 if i % 2 == 0 else 0.0, "test"))
    src = tmp_path / "pairs.parquet"
    save_pairs(pairs, src)
    out = tmp_path / "kept.parquet"
    result = invoke("mpcf", src, "--out", out, "--strategy", "1")
    assert result.exit_code == 0, result.output
    kept = load_pairs(out).pairs
    assert sorted(p.pair_id for p in kept) == ["p0", "p2", "p4"]
    bad = invoke("mpcf", src, "--out", out, "--preset", "paper")  # real-mode scorers, no weights here
    assert bad.exit_code == 2 and "--metric-weights" in bad.output and "Traceback" not in bad.output


def test_a_prompt_longer_than_the_text_encoder_reads_is_reported(tiny_world_dir, tmp_path):
    long_prompt = "a red circle " * 800  # ~10,000 characters; the tiny world's encoder reads 24 tokens
    result = invoke("sample", tiny_world_dir, "--prompt", long_prompt, "--prompt", "a blue square", "--steps", "1",
                    "--out", tmp_path / "grid.png")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: 1 prompt is longer than the text encoder's 24 tokens and will be cut" in text


def test_truncated_prompts_counts_tokens_with_the_encoders_tokenizer(tiny_world_dir):
    from transformers import CLIPTokenizer

    from lpo.models.prompts import truncated_prompts

    tokenizer = CLIPTokenizer.from_pretrained(tiny_world_dir, subfolder="tokenizer")
    short, long = "a red circle", "a red circle " * 20
    (cut,) = truncated_prompts(tokenizer, [short, long, long])
    assert cut[0] == long and cut[1] == len(tokenizer(long, truncation=False)["input_ids"]) > tokenizer.model_max_length
