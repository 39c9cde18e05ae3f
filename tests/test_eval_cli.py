"""`lpo eval` and `lpo leaderboard` through Typer's runner, including the real-mode smoke path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from lpo.cli import app
from lpo.evals.store import load_records

runner = CliRunner()


def _eval(tmp_path: Path, *args: str):
    return runner.invoke(
        app,
        ["eval", *args, "--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "results"), "--device", "cpu"],
    )


def test_eval_and_leaderboard_on_a_world_model(tmp_path, tiny_world_dir):
    result = _eval(tmp_path, str(tiny_world_dir), "--max-prompts", "6", "--images-per-prompt", "2", "--steps", "3",
                   "--label", "tiny-world")
    assert result.exit_code == 0, result.output
    assert "world_alignment@1.2" in result.output and "generated 12 images" in result.output
    records = load_records(tmp_path / "results")
    assert len(records) == 6 and {r.benchmark for r in records} == {"world"}  # 5 judges + world_diversity
    assert records[0].checkpoint["label"] == "tiny-world" and records[0].protocol["steps"] == 3

    again = _eval(tmp_path, "ground-truth", "--max-prompts", "6", "--images-per-prompt", "2", "--metric", "world_alignment")
    assert again.exit_code == 0, again.output

    board = runner.invoke(app, ["leaderboard", "--results-dir", str(tmp_path / "results")])
    assert board.exit_code == 0, board.output
    assert "| tiny-world | base |" in board.output and "| ground-truth | reference |" in board.output
    assert "### world_alignment@1.2 by category" in board.output

    csv_out = runner.invoke(app, ["leaderboard", "--results-dir", str(tmp_path / "results"), "--format", "csv"])
    assert csv_out.exit_code == 0 and csv_out.output.startswith("source,benchmark,")
    html = runner.invoke(app, ["leaderboard", "--results-dir", str(tmp_path / "results"), "--format", "html"])
    assert html.exit_code == 0, html.output
    page = (tmp_path / "results" / "leaderboard.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # scores plot + two sample strips


def test_dry_run_prints_the_resolved_config(tmp_path):
    result = _eval(tmp_path, "world", "--dry-run", "--cfg", "7.5", "--metric-weights", "world_clip=x")
    assert result.exit_code == 0, result.output
    config = json.loads(result.output)
    assert config["protocol"]["guidance_scale"] == 7.5 and config["metric_weights"] == {"world_clip": "x"}
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["world", "--metric", "nope"], "unknown metric 'nope'"),
        (["world", "--benchmark", "nope"], "unknown benchmark 'nope'"),
        (["{tmp}"], "is not a diffusers pipeline"),
        (["world", "--benchmark", "prompts-file", "--prompts", "{tmp}/missing.txt"], "does not exist"),
        (["world", "--metric-weights", "pickscore"], "is not NAME=REF"),
        (["world", "--images-per-prompt", "0"], "images_per_prompt must be >= 1"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message):
    result = _eval(tmp_path, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2
    assert message in result.output and result.output.strip().count("\n") == 0


def test_a_metric_model_that_fails_to_load_names_the_fix(tmp_path, tiny_sd15_dir):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat\n")
    empty = tmp_path / "not-a-clip"
    empty.mkdir()
    result = _eval(tmp_path, str(tiny_sd15_dir), "--benchmark", "prompts-file", "--prompts", str(prompts),
                   "--steps", "2", "--images-per-prompt", "1", "--metric", "clip_score",
                   "--metric-weights", f"clip_score={empty}")
    assert result.exit_code == 2, result.output
    assert "clip_score" in result.output and "--metric-weights" in result.output
    assert not (tmp_path / "results").exists()


def test_real_mode_smoke_tiny_sd15_with_tiny_metric_models(tmp_path, tiny_sd15_dir):
    """The GPU path with every id swapped for a tiny local stand-in: a random SD1.5-style
    pipeline, random CLIPs behind the real pickscore and clip_score code, Pick-a-Pic-style
    captions in a parquet file. A GPU user passes hub ids instead."""
    from metric_fixtures import tiny_clip_folder

    clip = tiny_clip_folder(tmp_path / "clip", seed=1)
    captions = ["a red cat on a blue car", "two green birds", "a yellow house left of a tree", "a red cat on a blue car"]
    parquet = tmp_path / "validation_unique.parquet"
    pq.write_table(pa.table({"caption": captions, "best_image_uid": [str(i) for i in range(4)]}), parquet)

    args = [
        str(tiny_sd15_dir), "--benchmark", "pickapic", "--prompts", str(parquet),
        "--metric", "pickscore", "--metric", "clip_score",
        "--metric-weights", f"pickscore={clip}", "--metric-processor", f"pickscore={clip}",
        "--metric-weights", f"clip_score={clip}",
        "--images-per-prompt", "2", "--steps", "2", "--cfg", "7.5", "--metric-batch-size", "3",
    ]
    result = _eval(tmp_path, *args)
    assert result.exit_code == 0, result.output
    records = load_records(tmp_path / "results")
    assert [r.metric for r in records] == ["pickscore", "clip_score"]
    for record in records:
        assert record.benchmark == "pickapic" and record.n_prompts == 3 and record.n_images == 6  # repeat kept once
        assert math.isfinite(record.value) and record.stderr is not None
        assert record.protocol["image_size"] == [16, 16] and record.protocol["guidance_scale"] == 7.5
        assert str(clip) in record.metric_weights and record.metric_formula
        assert record.checkpoint["path"] == str(Path(tiny_sd15_dir).resolve())
    # pickscore = exp(logit_scale) · cos and clip_score = 100 · max(cos, 0) on the same tiny CLIP
    side = json.loads((tmp_path / "results" / records[0].per_prompt).read_text())
    pick, clip_scores = side["scores"][records[0].metric_key], side["scores"][records[1].metric_key]
    for row_p, row_c in zip(pick, clip_scores):
        for p, c in zip(row_p, row_c):
            assert c == pytest.approx(100 * max(p / math.exp(3.0), 0.0), rel=1e-4, abs=1e-4)

    board = runner.invoke(app, ["leaderboard", "--results-dir", str(tmp_path / "results"), "--reported"])
    assert board.exit_code == 0, board.output
    assert "pickscore@v1+lpo1" in board.output and "| SD1.5 LPO | lpo | sd15 | 21.69 |" in board.output
