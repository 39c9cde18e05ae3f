"""The efficiency view's accounting (issue 11 item 4) and the report's reward-eval section.

Hand-made records with per-prompt side files whose paired differences are known exactly:
prompt p of a point scores base + Δ + AMP · (±1 alternating over prompts), so its paired
Δ vs base is Δ and its 95% half-width is t_{0.975,63} · AMP · √(64/63) / 8 ≈ 0.2519 · AMP.
Expected numbers are worked out by hand in the comments.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from test_bench_report import cost_record, record

from lpo.bench.efficiency_tables import cost_table, fraction_table, render_efficiency_markdown, reported_table
from lpo.bench.efficiency_view import NO_GAIN, DataCost, efficiency_report, read_data_cost
from lpo.bench.report import render_report
from lpo.core.errors import LpoError
from lpo.evals.store import ResultRecord, append_records, write_per_prompt

REPO = Path(__file__).resolve().parents[1]
N_PROMPTS = 64
BASE = 0.5
HALF_PER_AMP = 0.2519  # t_{0.975, 63} · √(64/63) / √64


def scored(r: ResultRecord, results_dir: Path, delta: float, amp: float) -> ResultRecord:
    """``r`` with a side file: per prompt base + delta + difficulty + amp · (±1)."""
    scores = [[BASE + delta + 0.1 * (p % 5 - 2) + amp * (1 if p % 2 == 0 else -1)] * 2 for p in range(N_PROMPTS)]
    side = {"prompts": [f"prompt {p}" for p in range(N_PROMPTS)], "seeds": [[p, 1000 + p] for p in range(N_PROMPTS)],
            "scores": {r.metric_key: scores}, "per_prompt_metrics": []}
    eval_id = f"{r.eval_id}-{r.checkpoint.get('step')}"
    rel, sha = write_per_prompt(results_dir, r.benchmark, eval_id, side)
    return replace(r, eval_id=eval_id, per_prompt=rel, per_prompt_sha256=sha, record_id="")


def method_records(method: str, reward_s: float, points: list[tuple[float, float]], amp: float, results_dir: Path):
    """Checkpoints at (optimisation seconds, paired Δ vs base); the last one is also the final model."""
    out = []
    for i, (opt, delta) in enumerate(points, 1):
        out.append(scored(record(method, f"{method}@{i}", BASE + delta, step=i, cost=cost_record(reward_s, opt)), results_dir,
                          delta, amp))
    opt, delta = points[-1]
    out.append(scored(record(method, method, BASE + delta, cost=cost_record(reward_s, opt)), results_dir, delta, amp))
    return out


def paired_study(results_dir: Path) -> list[ResultRecord]:
    # LPO: LRM 10 s; Δ 0.01, 0.03, 0.05, 0.04 at 15, 20, 25, 30 s; half-width 0.2519 · 0.04 = 0.0101: best 0.05 clears 0.
    # SPO: pixel model 40 s; Δ 0.005, 0.01 ± 0.0504 (AMP 0.2): the best's interval includes 0.
    # Diffusion-DPO: no reward model; Δ 0.02, 0.04 ± 0.0101 at 100, 200 s.
    return ([scored(record("base", "base", BASE), results_dir, 0.0, 0.0)]
            + method_records("lpo", 10, [(5, 0.01), (10, 0.03), (15, 0.05), (20, 0.04)], 0.04, results_dir)
            + method_records("spo", 40, [(20, 0.005), (40, 0.01)], 0.2, results_dir)
            + method_records("diffusion-dpo", 0, [(100, 0.02), (200, 0.04)], 0.04, results_dir))


# --------------------------------------------------------------------------- quality vs device-seconds, paired


def test_the_curve_plots_the_paired_delta_and_says_when_it_cannot(tmp_path):
    records = paired_study(tmp_path)
    report = efficiency_report(records, results_dir=tmp_path)
    assert report["curve_y"]["kind"] == "delta" and "paired Δ vs the base model" in report["curve_y"]["note"]
    lpo3 = next(p for p in report["methods"]["lpo"]["curve"] if p["label"] == "lpo@3")
    assert math.isclose(lpo3["delta"], 0.05, abs_tol=1e-9)
    assert math.isclose(lpo3["delta_half"], HALF_PER_AMP * 0.04, rel_tol=1e-3)
    # one checkpoint without its side file: the curve falls back to the values and names the point
    records = [replace(r, per_prompt=None, per_prompt_sha256=None, record_id="") if r.checkpoint["label"] == "spo@1" else r
               for r in records]
    report = efficiency_report(records, results_dir=tmp_path)
    assert report["curve_y"]["kind"] == "value"
    assert "1 of 11 points could not be paired (spo@1" in report["curve_y"]["note"]
    assert any("no paired Δ for spo@1" in n for n in report["notes"])
    # no results folder: nothing pairs
    assert "no point could be paired" in efficiency_report(records)["curve_y"]["note"]


# --------------------------------------------------------------------------- fraction of the own best gain


def test_compute_to_reach_a_fraction_of_each_methods_own_best_gain(tmp_path):
    report = efficiency_report(paired_study(tmp_path), results_dir=tmp_path, amortise_runs=10)
    lpo = report["fraction_of_best"]["lpo"]
    assert lpo["detectable"] and lpo["best"]["label"] == "lpo@3" and lpo["best"]["device_seconds"] == 25
    half, ninety = lpo["reach"]
    # 50% of 0.05 = 0.025: first Δ ≥ 0.025 is lpo@2 (0.03) at 10 + 10 = 20 s; amortised 10/10 + 10 = 11 s
    assert half["fraction"] == 0.5 and half["label"] == "lpo@2" and half["device_seconds"] == 20
    assert math.isclose(half["amortised_seconds"], 11)
    # 90%: 0.045 -> lpo@3 (0.05) at 25 s; amortised 1 + 15 = 16 s
    assert ninety["label"] == "lpo@3" and ninety["device_seconds"] == 25 and math.isclose(ninety["amortised_seconds"], 16)
    # SPO's best (0.01 ± 0.05) does not clear 0: no fraction of it is reported
    spo = report["fraction_of_best"]["spo"]
    assert not spo["detectable"] and spo["reach"] == [] and spo["reason"] == NO_GAIN
    # Diffusion-DPO: best 0.04 at 200 s; 50% = 0.02 at 100 s; no reward model, so amortising changes nothing
    dpo = report["fraction_of_best"]["diffusion-dpo"]
    assert [(r["device_seconds"], r["amortised_seconds"]) for r in dpo["reach"]] == [(100, 100), (200, 200)]
    header, rows = fraction_table(report)
    assert header[2] == "to 50% of it: device-s (reward model / 10 runs)"
    by_method = {row[0]: row for row in rows}
    assert by_method["lpo"][2] == "20 device-s (11 device-s) at lpo@2, Δ +0.030 ± 0.010"
    assert by_method["spo"][2:] == [NO_GAIN, NO_GAIN] and by_method["spo"][1].startswith("+0.010 ± 0.050 at spo@2")
    # other fractions on request
    report = efficiency_report(paired_study(tmp_path / "again"), results_dir=tmp_path / "again", fractions=(0.2,))
    assert [r["label"] for r in report["fraction_of_best"]["lpo"]["reach"]] == ["lpo@1"]  # 0.01 ≥ 0.2 · 0.05


def test_without_paired_deltas_there_is_no_fraction_to_reach(tmp_path):
    report = efficiency_report(paired_study(tmp_path))  # no results folder: no side files read
    for f in report["fraction_of_best"].values():
        assert not f["detectable"] and f["best"] is None and f["reason"].startswith("no paired Δ vs base")


# --------------------------------------------------------------------------- reward model in full and amortised, data


def study_bench(folder: Path, stages: bool = True) -> Path:
    """A bench folder with the pairs and MPCF stage markers `lpo bench` writes."""
    (folder / "stages").mkdir(parents=True)
    if stages:
        (folder / "stages" / "pairs.json").write_text(json.dumps({
            "output": {"train": {"pairs": 600, "seconds": 40.0}, "val": {"pairs": 172, "seconds": 10.0}},
            "timing": {"seconds": 55.0}}))
        (folder / "stages" / "mpcf.json").write_text(json.dumps({"output": {"kept": 300}, "timing": {"seconds": 5.0}}))
    return folder


def test_pair_data_cost_from_the_bench_stages(tmp_path):
    cost, notes = read_data_cost(study_bench(tmp_path / "b"))
    # the pairs stage less its val split (55 − 10, loading included), plus MPCF 5
    assert (cost.pairs_seconds, cost.mpcf_seconds, cost.val_pairs_seconds, cost.seconds) == (45.0, 5.0, 10.0, 50.0)
    assert notes == [] and cost.source == "stages/pairs.json, stages/mpcf.json"
    # only bench.json's timings (an older bench): the whole pairs stage is booked, and said so
    older = study_bench(tmp_path / "older", stages=False)
    (older / "bench.json").write_text(json.dumps({"stages": {"pairs": {"seconds": 12.5}}}))
    cost, notes = read_data_cost(older)
    assert cost.seconds == 12.5 and cost.val_pairs_seconds is None
    assert any("does not split train and val" in n for n in notes) and any("no mpcf stage timing" in n for n in notes)
    # nothing: unknown, not zero
    cost, notes = read_data_cost(study_bench(tmp_path / "none", stages=False))
    assert cost is None and "the pair data's cost is unknown" in notes[0]


def test_committed_quick_bench_books_its_pair_data():
    bench = REPO / "results" / "bench-quick-world1"
    stages = {name: json.loads((bench / "stages" / f"{name}.json").read_text()) for name in ("pairs", "mpcf")}
    cost, notes = read_data_cost(bench)
    assert notes == []
    expected = stages["pairs"]["timing"]["seconds"] - stages["pairs"]["output"]["val"]["seconds"] + stages["mpcf"]["timing"]["seconds"]
    assert math.isclose(cost.seconds, expected)


def test_cost_table_counts_the_reward_model_in_full_and_amortised_and_the_pair_data(tmp_path):
    data = DataCost(pairs_seconds=45.0, mpcf_seconds=5.0, val_pairs_seconds=10.0, source="stages")
    report = efficiency_report(paired_study(tmp_path), results_dir=tmp_path, data_cost=data, amortise_runs=5)
    lpo = report["costs"]["lpo"]
    # LPO's final: LRM 10 + optimisation 20 = 30; + data 50 = 80; over 5 runs 20 + 10/5 = 22, + 50/5 = 32
    assert (lpo["one_run"], lpo["one_run_with_data"], lpo["amortised"], lpo["amortised_with_data"]) == (30, 80, 22, 32)
    dpo = report["costs"]["diffusion-dpo"]
    assert (dpo["one_run"], dpo["amortised"], dpo["amortised_with_data"]) == (200, 200, 210)
    header, rows = cost_table(report)
    assert header[3] == "pair data (shared)" and header[6] == "per run over 5 runs: opt + RM/5"
    assert ["lpo", "10.0", "20.0", "50.0", "10.0 + 20.0 = 30.0 (cpu)", "80.0", "22.0", "32.0"] in rows
    # LPO / Diffusion-DPO in every total column: 30/200, 80/250, 22/200, 32/210
    ratio_row = next(r for r in rows if r[0] == "LPO / Diffusion-DPO")
    assert ratio_row[4:] == ["0.15 (1/6.67)", "0.32 (1/3.12)", "0.11 (1/9.09)", "0.152 (1/6.56)"]
    assert report["data_cost"]["seconds"] == 50.0
    with pytest.raises(LpoError, match="amortise_runs must be a whole number of runs >= 1, got 0"):
        efficiency_report(paired_study(tmp_path / "x"), amortise_runs=0)


def test_reported_cost_amortised_over_runs():
    report = efficiency_report([record("base", "base", 0.5)], amortise_runs=10)
    rows = {(r["base_model"], r["method"]): r for r in report["reported_a100_hours"]}
    assert math.isclose(rows[("sdxl", "lpo")]["amortised_a100_hours"], 40 + 52 / 10)  # 92 h holds 52 h of LRM training
    ratios = report["reported_total_cost_ratios"]["sdxl"]
    assert math.isclose(ratios["diffusion-dpo amortised"], 45.2 / 2560) and math.isclose(ratios["spo amortised"], 45.2 / 129.6)
    header, rows = reported_table(report)
    assert header[4] == "SDXL per run over 10 runs: opt + RM/10"
    assert rows[0] == ["LPO", "15 + 8 = 23", "9.5", "52 + 40 = 92", "45.2"]


def test_verdicts_answer_with_the_reward_model_amortised_and_with_the_data():
    # DPO's best 0.58 needs 300 s; LPO's LRM costs 100 s and LPO reaches 0.58 after 10 s of optimisation:
    # in full 110 / 300 = 0.367 > 1/10; amortised over 10 runs (10 + 100/10) / 300 = 0.0667 ≤ 1/10
    records = ([record("base", "base", 0.50)]
               + [record("diffusion-dpo", "diffusion-dpo", 0.58, cost=cost_record(0, 300))]
               + [record("lpo", "lpo", 0.585, cost=cost_record(100, 10))])
    report = efficiency_report(records, data_cost=DataCost(40.0, 10.0, None, "stages"))
    dpo = next(v for v in report["verdicts"] if v["claim"]["reference"] == "diffusion-dpo")
    assert dpo["answer"] == "no" and math.isclose(dpo["ratio"], 110 / 300)
    assert dpo["answer_amortised"] == "yes" and math.isclose(dpo["ratio_amortised"], 20 / 300)
    assert dpo["amortise_runs"] == 10 and math.isclose(dpo["total_cost_ratio_amortised"], 20 / 300)
    assert math.isclose(dpo["ratio_with_data"], (110 + 50) / (300 + 50))
    assert "With the reward models amortised over 10 runs (optimisation + reward model / 10): 20 device-s vs 300 device-s" in dpo["text"]
    assert "With the shared pair data (50 device-s) added to both sides" in dpo["text"]
    text = render_efficiency_markdown(report)
    assert "strict: **no**; within noise: **no**; reward models amortised over 10 runs: **yes**" in text
    spo = next(v for v in report["verdicts"] if v["claim"]["reference"] == "spo")
    assert spo["answer_amortised"] == "cannot answer"


# --------------------------------------------------------------------------- the report


def test_report_shows_the_fraction_and_cost_tables_with_the_chosen_runs(tmp_path):
    bench = study_bench(tmp_path / "bench")
    append_records(bench / "results", paired_study(bench / "results"))
    summary = render_report(bench, amortise_runs=4)["markdown"].read_text()
    assert "### Compute to reach a fraction of each method's own best gain" in summary
    assert "| lpo | +0.050 ± 0.010 at lpo@3 (25 device-s) | 20 device-s (12.5 device-s) at lpo@2" in summary
    assert "| per run over 4 runs: opt + RM/4 |" in summary
    assert "| lpo | 10.0 | 20.0 | 50.0 | 10.0 + 20.0 = 30.0 (cpu) | 80.0 | 22.5 | 35.0 |" in summary
    assert "y: paired Δ vs the base model with its 95% interval" in summary
    assert "the val pairs' 10.0 s are evaluation data, not booked" in summary
    efficiency = json.loads((bench / "report" / "efficiency.json").read_text())
    assert efficiency["amortise_runs"] == 4 and efficiency["data_cost"]["seconds"] == 50.0


# --------------------------------------------------------------------------- reward-eval section


def _accuracy(values: dict[str, tuple[float, float]], n: int) -> dict[str, dict[str, list]]:
    return {name: {"951": [high_t, n], "1": [low_t, n]} for name, (high_t, low_t) in values.items()}


def test_reward_eval_section_shows_both_targets_their_bands_and_the_label_agreement(tmp_path):
    bench = tmp_path / "bench"
    (bench / "reward-eval").mkdir(parents=True)
    (bench / "reward-eval" / "accuracy_by_timestep.json").write_text(json.dumps({
        "model": "world", "pairs": "pairs/val.parquet", "noise": "independent", "seed": 0,
        "accuracy": _accuracy({"LRM (latent)": (0.55, 0.63), "ceiling": (0.5, 0.66)}, 300),
        "accuracy_true_order": _accuracy({"LRM (latent)": (0.6, 0.72), "ceiling": (0.5, 0.9)}, 280),
        "bands": {
            "accuracy": {"LRM (latent)": {"t<=251": [0.63, 0.055], "all": [0.59, 0.056]},
                         "ceiling": {"t<=251": [0.66, 0.054], "all": [0.58, 0.056]}},
            "accuracy_true_order": {"LRM (latent)": {"t<=251": [0.72, 0.053], "all": [0.66, 0.055]},
                                    "ceiling": {"t<=251": [0.9, 0.035], "all": [0.7, 0.054]}},
        },
        "label_agreement": [0.81, 270],
    }))
    summary = render_report(bench)["markdown"].read_text()
    section = summary.split("## Step reward models")[1].split("## LRM-guided")[0]
    labels, truth = section.split("Against the annotator labels (n = 300")[1].split("Against the true-utility order (n = 280")
    assert "| 951 | 0.550 | 0.500 |" in labels and "| mean t≤251 | 0.630 ± 0.055 | 0.660 ± 0.054 |" in labels
    assert "| mean all t | 0.590 ± 0.056 | 0.580 ± 0.056 |" in labels
    assert "| 1 | 0.720 | 0.900 |" in truth and "| mean t≤251 | 0.720 ± 0.053 | 0.900 ± 0.035 |" in truth
    assert "| mean all t | 0.660 ± 0.055 | 0.700 ± 0.054 |" in truth
    assert "the annotators' labels agree with the true-utility order on 0.810 of 270 pairs decisive under both" in section
    assert "predates" not in section
    assert (bench / "report" / "accuracy_by_timestep.png").is_file()  # drawn from the JSON (no PNG beside it)


def test_reward_eval_section_still_renders_older_json(tmp_path):
    bench = tmp_path / "bench"
    shutil.copytree(REPO / "results" / "bench-quick-world1" / "reward-eval", bench / "reward-eval")
    path = bench / "reward-eval" / "accuracy_by_timestep.json"
    data = json.loads(path.read_text())
    for key in ("bands", "accuracy_true_order", "label_agreement"):  # as `lpo lrm eval` wrote it before they existed
        data.pop(key, None)
    path.write_text(json.dumps(data))
    summary = render_report(bench)["markdown"].read_text()
    section = summary.split("## Step reward models")[1].split("## LRM-guided")[0]
    assert "Against the annotator labels" in section and "true-utility order" not in section
    assert "| mean t≤251 |" in section and "| mean all t |" in section
    assert "band rows computed here from the table (annotator labels): the JSON predates them" in section
    assert "agree with the true-utility order" not in section
