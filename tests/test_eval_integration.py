"""Benchmark-driven protocol details: images per prompt, GenEval's overall, published numbers beside measured ones."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from lpo.evals.benchmarks import BENCHMARKS, PromptSet
from lpo.evals.harness import EvalConfig, EvalProtocol, resolve_protocol, run_eval
from lpo.evals.summaries import aggregation_of, summarise
from lpo.evals.leaderboard import render_leaderboard
from lpo.evals.reported import REPORTED, reported_rows
from test_results_store import make_record


@dataclass(frozen=True)
class _CategoryBenchmark:
    """A GenEval-like benchmark on world prompts: unbalanced categories, its own image count."""

    source: str | None = None
    name: str = "test-category-mean"
    version: str = "1"
    description: str = "test"
    default_metrics: tuple[str, ...] = ("world_soft_alignment",)
    default_images_per_prompt: int = 3
    overall: str = "category_mean"
    diversity_metric: str = "world_diversity"

    def prompt_set(self, max_prompts=None) -> PromptSet:
        from lpo.world.benchmark import WorldEvalProtocol, world_prompts

        specs = world_prompts(WorldEvalProtocol(max_prompts=6))
        return PromptSet(tuple(s.text() for s in specs), "test", ("a", "a", "a", "a", "b", "b"))

    def reference_source(self, name, prompts):
        return None


@pytest.fixture(autouse=True)
def _test_benchmark(monkeypatch):
    """A test-only benchmark, registered for this module's tests alone."""
    monkeypatch.setitem(BENCHMARKS._items, "test-category-mean", lambda source: _CategoryBenchmark(source))


def test_images_per_prompt_and_cfg_come_from_benchmark_then_default():
    compbench, geneval, world = (BENCHMARKS.get(n)(None) for n in ("t2i-compbench", "geneval", "world"))
    assert resolve_protocol(EvalProtocol(), compbench)[0].images_per_prompt == 10
    protocol, sources = resolve_protocol(EvalProtocol(), geneval)
    assert (protocol.images_per_prompt, protocol.guidance_scale) == (4, 5.0)
    assert sources == {"images_per_prompt": "benchmark", "guidance_scale": "default"}
    assert resolve_protocol(EvalProtocol(), world)[1]["images_per_prompt"] == "default"
    assert resolve_protocol(EvalProtocol(images_per_prompt=2), compbench)[0].images_per_prompt == 2
    assert (aggregation_of(geneval), aggregation_of(compbench), aggregation_of(world)) == ("category_mean", "prompt_mean", "prompt_mean")


def test_category_mean_overall_is_recorded_and_recomputes(tmp_path, tiny_world_dir):
    out = run_eval(EvalConfig(checkpoint=str(tiny_world_dir), benchmark="test-category-mean", protocol=EvalProtocol(steps=2),
                              cache_dir=tmp_path / "cache", results_dir=tmp_path / "results"))
    by = {r.metric: r for r in out.records}
    record = by["world_soft_alignment"]
    assert record.protocol["images_per_prompt"] == 3 and record.protocol["images_per_prompt_from"] == "benchmark"
    assert record.aggregation == "category_mean" and record.n_images == 18
    grid = np.array(json.loads((tmp_path / "results" / record.per_prompt).read_text())["scores"][record.metric_key])
    per_prompt = grid.mean(axis=1)
    a, b = per_prompt[:4], per_prompt[4:]
    assert record.value == pytest.approx((a.mean() + b.mean()) / 2)  # not the mean of the six prompts
    se = [x.std(ddof=1) / math.sqrt(len(x)) for x in (a, b)]
    assert record.stderr == pytest.approx(math.sqrt(se[0] ** 2 + se[1] ** 2) / 2)
    assert [e["category"] for e in record.breakdown] == ["a", "b"]
    # the diversity measure was added (3 images per prompt) and counts every image
    assert by["world_diversity"].n_images == 18 and by["world_diversity"].breakdown[1]["n_images"] == 6
    md = render_leaderboard(out.records, "md")
    assert "overall = unweighted mean of the category values" in md


def test_summarise_matches_the_geneval_overall():
    from lpo.evals.metrics.geneval_rules import overall_score

    grid = [[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1], [0, 1, 0, 0], [1, 0, 0, 0]]
    categories = ["single_object", "single_object", "counting", "colors", "colors"]
    summary, breakdown = summarise(grid, categories, "category_mean")
    tasks = {"single_object": (0.75 + 0.25) / 2, "counting": 1.0, "colors": (0.25 + 0.25) / 2}
    assert summary["value"] == pytest.approx(overall_score(tasks)) == pytest.approx(np.mean(list(tasks.values())))
    assert summary["stderr"] is None  # counting has one prompt: no interval for the overall either
    assert summarise(grid, categories)[0]["value"] == pytest.approx(np.mean([np.mean(r) for r in grid]))


def _ckpt(name: str, published_as: str | None = None) -> dict:
    ckpt = {"spec": name, "label": name, "hash": (name * 16)[:16], "kind": "pipeline", "path": None, "hub_id": None}
    if published_as:
        ckpt["registry"] = {"name": name, "published_as": published_as}
    return ckpt


def _cells(md: str, header_start: str, row_start: str) -> dict[str, str]:
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith(header_start))
    row = next(line for line in lines[lines.index(header):] if line.startswith(row_start))
    names = [c.strip() for c in header.strip("|").split(" | ")]
    values = [c.strip() for c in row.strip("|").split(" | ")]
    return dict(zip(names, values))


def test_published_numbers_sit_beside_their_measured_columns():
    compbench = [{"category": c, "value": 0.5, "stderr": 0.01, "ci95": (0.48, 0.52), "n_prompts": 2, "n_images": 20}
                 for c in ("color", "spatial", "3d_spatial", "non_spatial")]
    records = [
        make_record(checkpoint=_ckpt("lpo-sd15", "SD1.5 LPO"), method="lpo", value=21.5),
        make_record(checkpoint=_ckpt("mine"), method="lpo", value=21.0),  # no published counterpart
        make_record(checkpoint=_ckpt("lpo-sd15", "SD1.5 LPO"), benchmark="t2i-compbench", metric="t2i_compbench",
                    metric_version="1", value=0.5, breakdown=compbench),
        make_record(checkpoint=_ckpt("dpo-sd15", "SD1.5 Diffusion-DPO"), benchmark="geneval", metric="geneval",
                    metric_version="1", value=0.41, aggregation="category_mean"),
    ]
    md = render_leaderboard(records, "md", reported=["pickapic", "t2i-compbench", "geneval"])
    # pickapic: the published column directly follows the measured one, filled for the matched row only
    header = next(line for line in md.splitlines() if "pickscore@v1+lpo1" in line and line.startswith("| checkpoint"))
    names = [c.strip() for c in header.strip("|").split(" | ")]
    assert names[names.index("pickscore@v1+lpo1 ↑") + 1] == "pickscore published"
    assert _cells(md, header, "| lpo-sd15 |")["pickscore published"] == "21.69"
    assert _cells(md, header, "| mine |")["pickscore published"] == "—"
    # T2I-CompBench++: the official category stems, each published value beside its category
    row = _cells(md, "| checkpoint | color |", "| lpo-sd15 |")
    published = dict(zip(("color", "shape", "texture", "spatial", "3d_spatial", "numeracy", "non_spatial", "complex"),
                         (0.5042, 0.4522, 0.5259, 0.1928, 0.3562, 0.4845, 0.3110, 0.3308)))
    for category in ("color", "spatial", "3d_spatial", "non_spatial"):
        assert row[category] == "0.5" and float(row[f"{category} published"]) == published[category]
    # GenEval: the paper's percent as lpo's fraction, on the geneval benchmark (not pickapic)
    assert _cells(md, "| checkpoint | method |", "| dpo-sd15 |")["geneval published"] == "0.4379"
    assert all("geneval" not in r.values for r in reported_rows("pickapic"))
    reported = md.split("### t2i-compbench: t2i_compbench by category, reported", 1)[1]
    assert "| model (reported) | method | base model | color | shape | texture | spatial | 3d_spatial |" in reported
    assert "colour" not in md and "spatial-2d" not in md
    # every published T2I-CompBench++ category is a category the benchmark produces
    from lpo.evals.metrics.compbench import CATEGORIES

    assert all(set(r.categories["t2i_compbench"]) == set(CATEGORIES) for r in REPORTED if r.benchmark == "t2i-compbench")
    rows = list(csv.DictReader(io.StringIO(render_leaderboard(records, "csv", reported=["t2i-compbench"]))))
    sd15 = next(r for r in rows if r["source"] == "reported" and r["checkpoint"] == "SD1.5" and r["category"] == "3d_spatial")
    assert float(sd15["value"]) == 0.2967 and sd15["metric"] == "t2i_compbench"
