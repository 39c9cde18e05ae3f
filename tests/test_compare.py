"""Win-rates (paired per image, ties ½, CI over prompts) and `lpo compare` on the harness and cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from lpo.cli import app
from lpo.core.errors import LpoError
from lpo.evals.compare import CompareConfig, render_markdown, run_compare
from lpo.evals.paired import paired_difference_records
from lpo.evals.store import load_records
from lpo.evals.protocol import EvalProtocol
from lpo.evals.winrate import paired_from_records, paired_win_rate

runner = CliRunner()


def test_win_rate_counts_pairs_and_ties_by_hand():
    a = [[3.0, 1.0, 2.0], [0.0, 0.0, 5.0]]
    b = [[1.0, 1.0, 4.0], [1.0, 0.0, 4.0]]
    w = paired_win_rate(a, b)
    # prompt 1: win, tie, loss -> 0.5; prompt 2: loss, tie, win -> 0.5
    assert (w.wins, w.ties, w.losses, w.n_pairs, w.n_prompts) == (2, 2, 2, 6, 2)
    assert w.value == pytest.approx(0.5) and w.stderr == pytest.approx(0.0)
    lower = paired_win_rate(a, b, higher_is_better=False)
    assert lower.value == pytest.approx(0.5) and (lower.wins, lower.losses) == (2, 2)
    c = [[2.0, 2.0], [1.0, 0.0], [5.0, 5.0]]
    d = [[1.0, 1.9], [1.0, 1.0], [1.0, 9.0]]
    per_prompt = np.array([1.0, 0.25, 0.5])
    w = paired_win_rate(c, d, tie_tolerance=0.0)
    assert w.value == pytest.approx(per_prompt.mean())
    assert w.stderr == pytest.approx(per_prompt.std(ddof=1) / math.sqrt(3))
    # Student t over prompts: t_{0.975, 2} = 4.3027 (a printed table's value), not 1.96
    assert w.ci95 == pytest.approx((w.value - 4.3027 * w.stderr, w.value + 4.3027 * w.stderr), abs=1e-4)
    assert paired_win_rate(c, d, tie_tolerance=0.2).ties == 2  # |2 − 1.9| now a tie too
    with pytest.raises(ValueError):
        paired_win_rate([[1.0]], [[1.0], [2.0]])


def _config(tmp_path, checkpoints, cfg=None, **kwargs) -> CompareConfig:
    return CompareConfig(
        checkpoints=tuple(checkpoints), max_prompts=4, protocol=EvalProtocol(images_per_prompt=2, steps=2, guidance_scale=cfg),
        device="cpu", cache_dir=tmp_path / "cache", results_dir=tmp_path / "results", **kwargs,
    )


def test_compare_pairs_images_reuses_the_cache_and_says_the_cfg(tmp_path, tiny_world_dir):
    registry = tmp_path / "r.json"
    registry.write_text(json.dumps([{"name": "tiny", "replaces": "pipeline", "weights": str(tiny_world_dir), "cfg": 3.0}]))
    config = _config(tmp_path, ["tiny", "noise"], reference="ground-truth", registry=registry,
                     metrics=("world_utility", "world_alignment", "world_diversity"))
    result = run_compare(config)
    by = result.outputs["world"]
    assert list(by) == ["ground-truth", "tiny", "noise"]  # the reference joins as a row
    assert by["tiny"].protocol.guidance_scale == 3.0 and by["noise"].protocol.guidance_scale == 5.0
    assert result.win_metrics["world"] == [r.metric_key for r in by["tiny"].records if r.metric == "world_utility"]
    key = result.win_metrics["world"][0]
    # independent recomputation from the stored per-image scores
    records = {(r.checkpoint["label"], r.metric): r for r in load_records(tmp_path / "results")}
    side = {name: json.loads((tmp_path / "results" / records[(name, "world_utility")].per_prompt).read_text())
            for name in ("tiny", "ground-truth")}
    assert side["tiny"]["seeds"] == side["ground-truth"]["seeds"]  # same prompts, same seeds
    a, b = np.array(side["tiny"]["scores"][key]), np.array(side["ground-truth"]["scores"][key])
    outcomes = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0)).mean(axis=1)
    win = result.win_rates["world"]["tiny"][key]
    assert win.value == pytest.approx(outcomes.mean()) and win.n_pairs == 8
    assert win == paired_from_records(tmp_path / "results", records[("tiny", "world_utility")],
                                      records[("ground-truth", "world_utility")])
    # the paired difference: per prompt the mean over its images, minus the reference's; the same from the records
    diff = result.differences["world"]["tiny"][key]
    assert diff.per_prompt == pytest.approx(tuple(a.mean(axis=1) - b.mean(axis=1)))
    assert diff.n_prompts == 4 and diff.b == "ground-truth"
    from_records = paired_difference_records(tmp_path / "results", records[("tiny", "world_utility")],
                                             records[("ground-truth", "world_utility")])
    assert from_records.mean == pytest.approx(diff.mean) and from_records.half_width == pytest.approx(diff.half_width)
    md = render_markdown(result)
    assert "Δ world_utility vs ground-truth (paired, 95% t)" in md and f"{diff.format()} ({diff.word})" in md
    assert "95% Student t over prompts" in md
    assert "CFG: each checkpoint's own (ground-truth 5 (default), tiny 3 (checkpoint), noise 5 (default))" in md
    assert "win-rate vs ground-truth (world_utility)" in md and "| ground-truth | reference |" in md
    assert "world_diversity" in md

    again = run_compare(config)  # nothing is generated twice
    assert again.images_generated == 0
    common = run_compare(_config(tmp_path, ["tiny", str(tiny_world_dir)], cfg=3.0, registry=registry,
                                 metrics=("world_utility",)))
    # the folder and its registry name are the same weights: one set of images
    assert common.images_generated == 0 and "one common value, 3" in render_markdown(common)
    tied = common.win_rates["world"][str(tiny_world_dir)][common.win_metrics["world"][0]]
    assert tied.value == 0.5 and tied.ties == tied.n_pairs


def test_compare_refuses_bad_input_before_any_work(tmp_path):
    with pytest.raises(LpoError, match="listed twice"):
        _config(tmp_path, ["noise", "noise"])
    with pytest.raises(LpoError, match="unknown checkpoint 'dpo-sd1.5'"):
        run_compare(_config(tmp_path, ["noise", "dpo-sd1.5"]))
    with pytest.raises(LpoError, match="not among --metric"):
        run_compare(_config(tmp_path, ["noise", "shuffled"], metrics=("world_clip",), win_metrics=("world_utility",)))
    assert not (tmp_path / "results").exists()


def test_compare_cli_writes_the_table(tmp_path):
    out = tmp_path / "cmp.md"
    result = runner.invoke(app, ["compare", "noise", "shuffled", "--max-prompts", "3", "--images-per-prompt", "2",
                                 "--metric", "world_utility", "--device", "cpu", "--cache-dir", str(tmp_path / "c"),
                                 "--results-dir", str(tmp_path / "r"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["reference"] == "noise" and data["benchmarks"]["world"]["n_prompts"] == 3
    assert "win-rate vs noise" in out.read_text()
    bad = runner.invoke(app, ["compare", "noise", "--cfg", "high"])
    assert bad.exit_code == 2 and "neither 'own' nor a number" in bad.output


def test_two_runs_of_one_method_get_distinct_row_labels():
    from types import SimpleNamespace

    from lpo.evals.compare import distinct_labels

    ckpts = {
        "world": SimpleNamespace(label="world", run_id=None),
        "runs/a": SimpleNamespace(label="lpo", run_id="a"),
        "runs/b": SimpleNamespace(label="lpo", run_id="b"),
        "runs/b/checkpoints/step-000004": SimpleNamespace(label="lpo@4", run_id="b"),
        "x/same": SimpleNamespace(label="spo", run_id="r"),
        "y/same": SimpleNamespace(label="spo", run_id="r"),
    }
    labels = distinct_labels(ckpts, {})
    assert labels == {"runs/a": "lpo (a)", "runs/b": "lpo (b)", "x/same": "spo (x/same)", "y/same": "spo (y/same)"}
    # a label the user gave is kept, and one given label can settle a clash
    assert distinct_labels(ckpts, {"runs/a": "mine"}) == {"x/same": "spo (x/same)", "y/same": "spo (y/same)"}
