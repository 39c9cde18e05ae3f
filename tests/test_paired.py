"""Paired differences on identical prompts and seeds, training-seed verdicts and the power helper.

Expected numbers are worked out by hand (or read from a printed t table) in the comments,
not read back from the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lpo.core.errors import LpoError
from lpo.evals.paired import (
    INTERVAL_METHOD,
    minimum_detectable_difference,
    paired_difference,
    paired_difference_records,
    primary_metric,
    required_eval_size,
    seeded_difference,
    t_critical,
)
from lpo.evals.store import ResultRecord, load_records, write_per_prompt

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = {"sampler": "ddim", "steps": 20, "guidance_scale": 5.0, "images_per_prompt": 2, "seed": 42,
            "resolution": None, "dtype": "fp32", "eta": 0.0, "batch_size": 32, "image_size": [32, 32]}


def test_t_critical_matches_a_printed_table():
    table = {1: 12.706, 2: 4.303, 5: 2.571, 10: 2.228, 30: 2.042, 120: 1.980}
    for df, t in table.items():
        assert t_critical(df) == pytest.approx(t, abs=5e-4)
    assert t_critical(100_000) == pytest.approx(1.960, abs=5e-4)
    with pytest.raises(ValueError):
        t_critical(0)


def test_paired_difference_by_hand():
    a = [[1.0, 3.0], [2.0, 2.0], [0.0, 1.0], [4.0, 4.0]]
    b = [[0.0, 2.0], [2.0, 1.0], [1.0, 1.0], [2.0, 3.0]]
    # per-image differences (1, 1), (0, 1), (−1, 0), (2, 1) -> per prompt 1, 0.5, −0.5, 1.5
    d = paired_difference(a, b, a="lpo", b="base", metric="u@1")
    assert d.per_prompt == (1.0, 0.5, -0.5, 1.5)
    assert d.mean == pytest.approx(0.625)
    sd = math.sqrt(((0.375) ** 2 + (0.125) ** 2 + (1.125) ** 2 + (0.875) ** 2) / 3)
    assert d.sd == pytest.approx(sd)
    assert d.half_width == pytest.approx(3.182 * sd / 2, abs=1e-3)  # t_{0.975, 3} = 3.182
    # within-prompt SD: each pair's variance (ddof 1) 0, 0.5, 0.5, 0.5 -> mean 0.375
    assert d.within_sd == pytest.approx(math.sqrt(0.375))
    assert (d.n_prompts, d.images_per_prompt) == (4, 2)
    assert d.word == "no detectable difference"  # 0.625 − 1.37 < 0
    assert d.method == INTERVAL_METHOD and "Student t over prompts" in d.method
    assert d.format() == f"+0.625 ± {d.half_width:.3f}"
    clear = paired_difference([[1.0], [1.1], [0.9]], [[0.0], [0.0], [0.0]])
    assert clear.word == "better" and clear.within_sd is None
    assert paired_difference([[1.0], [1.1], [0.9]], [[0.0], [0.0], [0.0]], higher_is_better=False).word == "worse"
    assert paired_difference([[0.0], [0.0], [0.0]], [[1.0], [1.1], [0.9]]).word == "worse"
    with pytest.raises(ValueError):
        paired_difference([[1.0]], [[1.0], [2.0]])


_COUNTER = iter(range(10**6))


def _record(tmp: Path, label: str, grid, *, seeds=None, prompts=None, prompt_set="ps1", protocol=None,
            benchmark_version="1", metric_version="1", method=None) -> ResultRecord:
    prompts = prompts or [f"prompt {i}" for i in range(len(grid))]
    seeds = seeds or [[1000 * i + k for k in range(len(row))] for i, row in enumerate(grid)]
    key = f"world_utility@{metric_version}"
    eval_id = f"e-{label}-{next(_COUNTER)}"
    side = {"prompts": prompts, "seeds": seeds, "scores": {key: grid}, "per_prompt_metrics": []}
    rel, sha = write_per_prompt(tmp, "world", eval_id, side)
    values = [float(np.mean(row)) for row in grid]
    return ResultRecord(
        eval_id=eval_id, created="2026-01-01T00:00:00+00:00", benchmark="world", benchmark_version=benchmark_version,
        prompt_set_hash=prompt_set, prompt_source="test", metric="world_utility", metric_version=metric_version,
        higher_is_better=True, value=float(np.mean(values)), stderr=None, ci95=None, n_prompts=len(grid),
        n_images=sum(len(r) for r in grid), checkpoint={"label": label, "hash": f"{label:_<16}"[:16], "spec": label},
        method=method or label, protocol=protocol or PROTOCOL, protocol_hash="p" * 16, per_prompt=rel, per_prompt_sha256=sha,
    )


def test_paired_from_records_and_every_refusal(tmp_path):
    a_grid = [[0.6, 0.7], [0.5, 0.5], [0.9, 0.8]]
    b_grid = [[0.5, 0.6], [0.5, 0.4], [0.7, 0.8]]
    a, base = _record(tmp_path, "lpo", a_grid), _record(tmp_path, "base", b_grid)
    d = paired_difference_records(tmp_path, a, base)
    assert d.per_prompt == pytest.approx((0.1, 0.05, 0.1))
    assert (d.a, d.b, d.metric) == ("lpo", "base", "world_utility@1")
    mismatches = {
        "prompt set ps1 vs ps2": _record(tmp_path, "x", b_grid, prompt_set="ps2"),
        "protocol seed 42 vs 7": _record(tmp_path, "x", b_grid, protocol={**PROTOCOL, "seed": 7}),
        "images per prompt 2 vs 4": _record(tmp_path, "x", b_grid, protocol={**PROTOCOL, "images_per_prompt": 4}),
        "benchmark world@1 vs world@2": _record(tmp_path, "x", b_grid, benchmark_version="2"),
        "metric world_utility@1 vs world_utility@2": _record(tmp_path, "x", b_grid, metric_version="2"),
        "prompt 1 ('prompt 1') has other image seeds": _record(tmp_path, "x", b_grid, seeds=[[0, 1], [5, 6], [2000, 2001]]),
        "other prompts": _record(tmp_path, "x", b_grid, prompts=["p", "q", "r"]),
    }
    for message, other in mismatches.items():
        with pytest.raises(LpoError) as err:
            paired_difference_records(tmp_path, a, other)
        assert message in str(err.value) and "cannot pair lpo with x" in str(err.value)
        assert "\n" not in str(err.value)  # one line


def test_committed_quick_bench_lpo_minus_base():
    # the numbers: LPO +0.037 ± 0.036 (normal), Diffusion-DPO +0.026 ± 0.027, SPO +0.009 ± 0.033
    results = REPO / "results" / "bench-quick-world1" / "results"
    records = [r for r in load_records(results, ["world"]) if r.metric == "world_utility" and "step" not in r.checkpoint]
    by = {r.method: r for r in records}
    for method, (mean, half) in {"lpo": (0.037, 0.036), "diffusion-dpo": (0.026, 0.027), "spo": (0.009, 0.033)}.items():
        d = paired_difference_records(results, by[method], by["base"])
        side_a = json.loads((results / by[method].per_prompt).read_text())["scores"]["world_utility@1.1"]
        side_b = json.loads((results / by["base"].per_prompt).read_text())["scores"]["world_utility@1.1"]
        per_prompt = np.mean(side_a, axis=1) - np.mean(side_b, axis=1)
        assert d.mean == pytest.approx(per_prompt.mean()) and d.mean == pytest.approx(mean, abs=5e-4)
        normal = 1.96 * per_prompt.std(ddof=1) / 8
        assert normal == pytest.approx(half, abs=1e-3)
        assert d.half_width == pytest.approx(normal * 1.9983 / 1.96, rel=1e-3)  # t_{0.975, 63} = 1.9983
        assert d.n_prompts == 64 and d.images_per_prompt == 2


def test_seeded_verdict_needs_both_the_paired_interval_and_the_seed_spread():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, size=(3, 40))

    def seeds(means):
        return [paired_difference([[m + e] for e in row], [[0.0]] * 40, a="lpo", b="base") for m, row in zip(means, noise)]

    # three seeds all near +0.10: both intervals clear 0
    steady = seeded_difference(seeds([0.10, 0.11, 0.09]))
    pooled = np.mean([[0.10 + e for e in noise[0]], [0.11 + e for e in noise[1]], [0.09 + e for e in noise[2]]], axis=0)
    assert steady.pooled.per_prompt == pytest.approx(tuple(pooled))  # averaged over seeds first
    assert steady.pooled.mean == pytest.approx(pooled.mean())
    means = [d.mean for d in seeds([0.10, 0.11, 0.09])]
    assert steady.seed_mean == pytest.approx(np.mean(means)) and steady.seed_sd == pytest.approx(np.std(means, ddof=1))
    assert steady.seed_half_width == pytest.approx(4.303 * np.std(means, ddof=1) / math.sqrt(3), rel=1e-3)
    assert steady.word == "better" and steady.significant and steady.seeds == (3, 1)
    # seeds disagree (+0.20, +0.01, +0.09): the pooled paired interval clears 0, the seed spread does not
    shaky = seeded_difference(seeds([0.20, 0.01, 0.09]))
    assert shaky.pooled.word == "better"
    assert shaky.seed_mean - shaky.seed_half_width < 0
    assert shaky.word == "no detectable difference" and not shaky.significant
    # one seed: the spread is unknown, so not significant
    single = seeded_difference(seeds([0.10]))
    assert single.word == "better (1 seed, spread unknown)" and not single.significant and single.seed_sd is None


def test_method_against_method_over_seeds_is_welch():
    def seeds(label, means):
        return [paired_difference([[m + 0.01 * (i % 3)] for i in range(30)], [[0.0]] * 30, a=label, b="base") for m in means]

    lpo, spo = seeds("lpo", [0.10, 0.12, 0.11]), seeds("spo", [0.02, 0.03, 0.01])
    d = seeded_difference(lpo, against=spo)
    # per prompt: pooled LPO Δ − pooled SPO Δ = 0.11 − 0.02 = 0.09 for every prompt
    assert d.pooled.mean == pytest.approx(0.09) and d.pooled.b == "spo" and d.pooled.a == "lpo (3 seeds)"
    assert d.seed_mean == pytest.approx(0.09)
    # Welch with equal SDs (0.01) and 3 + 3 seeds: se = √(2 · 0.01² / 3), df = 4, t = 2.776
    assert d.seed_half_width == pytest.approx(2.776 * math.sqrt(2 * 0.01**2 / 3), rel=1e-3)
    assert d.word == "better" and d.seeds == (3, 3) and d.against_seed_means == pytest.approx((0.03, 0.04, 0.02))  # + the prompts' mean offset 0.01


def test_power_helper_and_minimum_detectable_difference():
    # 64 prompts at SD 0.15: t_{0.975, 63} · 0.15 / 8 = 1.9983 · 0.01875
    assert minimum_detectable_difference(0.15, 64) == pytest.approx(0.03747, abs=1e-5)
    sizes = required_eval_size(0.15, 0.02, measured_images_per_prompt=2)
    by_m = {s.images_per_prompt: s for s in sizes}
    # image noise dominant: SD at m images = 0.15 · √(2/m); about (1.97 · SD / 0.02)² prompts
    assert by_m[2].per_prompt_sd == pytest.approx(0.15) and by_m[8].per_prompt_sd == pytest.approx(0.075)
    for s in sizes:  # the fewest prompts that reach the target
        assert s.half_width <= 0.02 < minimum_detectable_difference(s.per_prompt_sd, s.prompts - 1)
    assert 215 <= by_m[2].prompts <= 222 and 54 <= by_m[8].prompts <= 58
    assert [s.images for s in sizes] == sorted(s.images for s in sizes)
    # with a measured within-prompt SD, more images stop helping once the prompt part dominates
    mixed = {s.images_per_prompt: s for s in required_eval_size(0.15, 0.02, within_sd=0.15)}
    prompt_sd = math.sqrt(0.15**2 - 0.15**2 / 2)
    assert mixed[8].per_prompt_sd == pytest.approx(math.sqrt(prompt_sd**2 + 0.15**2 / 8))
    assert mixed[8].prompts > by_m[8].prompts and mixed[2].prompts == by_m[2].prompts
    with pytest.raises(LpoError):
        required_eval_size(0.15, 0.0)


def test_primary_metric():
    assert primary_metric(["world_alignment@1", "world_utility@1"]) == "world_utility@1"
    assert primary_metric(["hpsv21@1", "pickscore@2", "world_utility@1"]) == "pickscore@2"
    assert primary_metric(["hpsv21@1"]) == "hpsv21@1" and primary_metric([]) is None
