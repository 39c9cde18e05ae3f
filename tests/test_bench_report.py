"""The bench's efficiency view and static report, on synthetic bench folders.

The records are built directly (ResultRecord) with cost records from the real DeviceMeter,
so the cost format is the one the trainers write. Expected numbers are worked out by hand
in the comments, not read back from the code under test.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpo.bench.efficiency import (
    CLAIMS,
    MethodCurve,
    collect_curves,
    first_reaching,
    seconds_to_reach,
    training_seconds,
)
from lpo.bench.efficiency_tables import render_efficiency_markdown
from lpo.bench.efficiency_view import efficiency_report
from lpo.bench.report import render_report
from lpo.evals.store import ResultRecord, append_records, write_per_prompt
from lpo.core.runs import DeviceMeter

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = {"sampler": "ddim", "steps": 20, "guidance_scale": 5.0, "images_per_prompt": 2, "seed": 42,
            "resolution": None, "dtype": "fp32", "eta": 0.0, "batch_size": 32, "image_size": [32, 32]}


# --------------------------------------------------------------------------- builders


def cost_record(reward_s: float, optimisation_s: float, device_count: int = 1, evaluation_s: float = 7.0) -> dict:
    """A trainer's cost record: its own optimisation (+ evaluation) with a reward model's training included."""
    meter = DeviceMeter("cpu", device_count)
    meter.add("optimisation", optimisation_s)
    meter.add("evaluation", evaluation_s)
    if reward_s:
        reward = DeviceMeter("cpu")
        reward.add("reward_model_training", reward_s)
        reward.add("evaluation", 3.0)
        meter.include(reward.as_dict(), source="rewards/lrm/model")
    return meter.as_dict()


def record(method: str, label: str, value: float, half: float | None = 0.01, *, step=None, cost=None,
           benchmark="world", metric="world_utility", prompt_set="ps1", created="2026-01-01T00:00:00+00:00",
           run_id=None, higher=True, ckpt_hash=None) -> ResultRecord:
    checkpoint = {"spec": label, "label": label, "hash": ckpt_hash or f"{label:_<16}"[:16], "kind": "pipeline", "path": None,
                  "hub_id": None}
    if step is not None:
        checkpoint["step"] = step
    return ResultRecord(
        eval_id=f"e-{label}-{metric}", created=created, benchmark=benchmark, benchmark_version="1",
        prompt_set_hash=prompt_set, prompt_source="world test split", metric=metric, metric_version="w1",
        higher_is_better=higher, value=value, stderr=None if half is None else half / 1.96,
        ci95=None if half is None else (value - half, value + half), n_prompts=64, n_images=128,
        checkpoint=checkpoint, method=method, protocol=PROTOCOL, protocol_hash="p" * 16, base_model="world",
        run_id=run_id or (None if method == "base" else f"{method}-run"), training_cost=cost,
    )


def curve_records(method: str, reward_s: float, points: list[tuple[float, float]], **kw) -> list[ResultRecord]:
    """Intermediate checkpoints at the given (optimisation seconds, value); the last one is also the final model."""
    out = []
    for i, (opt, value) in enumerate(points, 1):
        out.append(record(method, f"{method}@{i}", value, step=i, cost=cost_record(reward_s, opt), **kw))
    opt, value = points[-1]
    out.append(record(method, method, value, cost=cost_record(reward_s, opt), **kw))
    return out


def standard_records() -> list[ResultRecord]:
    # base 0.50; DPO (no reward model) best 0.58 at 300 s; SPO (pixel model 40 s) best 0.57 at 40+60 = 100 s;
    # LPO (LRM 10 s) reaches 0.585 at 10+15 = 25 s, 0.575 at 10+10 = 20 s.
    return (
        [record("base", "base", 0.50)]
        + curve_records("diffusion-dpo", 0, [(100, 0.52), (200, 0.55), (300, 0.58), (400, 0.57)])
        + curve_records("spo", 40, [(20, 0.53), (40, 0.56), (60, 0.57), (80, 0.565)])
        + curve_records("lpo", 10, [(5, 0.56), (10, 0.575), (15, 0.585), (20, 0.59)])
    )


# --------------------------------------------------------------------------- efficiency math


def test_training_seconds_counts_the_reward_model_and_device_count_but_not_evaluation():
    cost = cost_record(reward_s=10.0, optimisation_s=20.0, device_count=2, evaluation_s=99.0)
    counted = training_seconds(cost)
    assert counted.reward_model == 10.0  # the LRM trained on 1 device
    assert counted.optimisation == 40.0  # 20 s wall × 2 devices
    assert counted.total == 50.0
    assert counted.device_types == ("cpu",)
    # the reward model's own includes are flattened by DeviceMeter.include and counted once
    earlier = DeviceMeter("cpu")
    earlier.add("reward_model_training", 5.0)
    reward = DeviceMeter("cpu")
    reward.add("reward_model_training", 10.0)
    reward.include(earlier.as_dict(), source="earlier part of this run")
    meter = DeviceMeter("cpu")
    meter.add("optimisation", 1.0)
    meter.include(reward.as_dict(), source="lrm")
    assert training_seconds(meter.as_dict()).reward_model == 15.0


def test_curves_are_ordered_by_device_seconds_with_the_reward_model_offset():
    data = collect_curves(standard_records())
    assert list(data.curves) == ["lpo", "spo", "diffusion-dpo"]
    lpo = data.curves["lpo"]
    assert [p.device_seconds for p in lpo.points] == [15, 20, 25, 30, 30]  # LRM 10 s + optimisation
    assert [p.step for p in lpo.points] == [1, 2, 3, 4, None]  # the final model after the last step-N at equal cost
    assert lpo.reward_model_seconds == 10 and data.curves["diffusion-dpo"].reward_model_seconds == 0
    assert data.curves["spo"].points[0].device_seconds == 60
    assert data.base is not None and data.base.value == 0.50
    assert data.notes == []


def test_reach_and_never_reach():
    data = collect_curves(standard_records())
    lpo, dpo = data.curves["lpo"], data.curves["diffusion-dpo"]
    assert seconds_to_reach(lpo, 0.58) == 25  # 0.585 is the first value >= 0.58
    assert seconds_to_reach(lpo, 0.60) is None
    assert seconds_to_reach(dpo, 0.58) == 300
    # within noise: 0.58 − √(0.01² + 0.01²) = 0.5659 → 0.575 at 20 s
    assert seconds_to_reach(lpo, 0.58, target_half=0.01, within_noise=True) == 20
    # lower is better: reaching means at most the target
    curve = MethodCurve("x", "x", None, [p for p in lpo.points])
    assert first_reaching(curve, 0.57, higher_is_better=False).device_seconds == 15


def test_verdicts_with_the_numbers():
    report = efficiency_report(standard_records())
    by_ref = {v["claim"]["reference"]: v for v in report["verdicts"]}
    dpo = by_ref["diffusion-dpo"]
    assert dpo["target"] == 0.58 and dpo["reference_seconds_to_best"] == 300
    assert dpo["challenger_seconds_to_reach"] == 25
    assert math.isclose(dpo["ratio"], 25 / 300)
    assert dpo["answer"] == "yes"  # 0.083 <= 0.1
    assert math.isclose(dpo["ratio_within_noise"], 20 / 300) and dpo["answer_within_noise"] == "yes"
    assert math.isclose(dpo["total_cost_ratio"], 30 / 400)
    assert "LPO reached Diffusion-DPO's best world_utility" in dpo["text"]
    spo = by_ref["spo"]
    assert spo["target"] == 0.57 and spo["reference_seconds_to_best"] == 100
    assert spo["challenger_seconds_to_reach"] == 20 and math.isclose(spo["ratio"], 0.2)
    assert spo["answer"] == "yes"  # 0.2 <= 1/3.5 = 0.286
    # every method's seconds to reach every method's best
    # DPO never reaches LPO's 0.59, but its 0.58 at 300 s is within noise (0.59 − 0.0141 = 0.5759)
    assert report["targets"]["lpo"]["seconds"]["diffusion-dpo"] == {"strict": None, "within_noise": 300}
    assert report["targets"]["diffusion-dpo"]["seconds"]["spo"]["strict"] is None
    assert report["targets"]["diffusion-dpo"]["seconds"]["spo"]["within_noise"] == 100  # 0.57 >= 0.58 − 0.0141
    json.dumps(report)  # JSON-able


def test_never_reached_and_within_noise_only_are_said_plainly():
    # LPO's best 0.575 ± 0.01 never reaches DPO's 0.58 strictly, but does within noise (band 0.0141)
    records = (
        [record("base", "base", 0.50)]
        + curve_records("diffusion-dpo", 0, [(100, 0.55), (300, 0.58)])
        + curve_records("lpo", 10, [(5, 0.56), (10, 0.575)])
    )
    (dpo,) = [v for v in efficiency_report(records)["verdicts"] if v["claim"]["reference"] == "diffusion-dpo"]
    assert dpo["answer"] == "no (never reached)" and dpo["challenger_seconds_to_reach"] is None
    assert dpo["answer_within_noise"] == "yes" and dpo["challenger_seconds_to_reach_within_noise"] == 20
    assert dpo["text"].startswith(
        "LPO never reached Diffusion-DPO's best world_utility (0.58 ± 0.01; Diffusion-DPO needed 300 device-s to reach it"
    )
    assert "its best was 0.575 ± 0.01" in dpo["text"]
    # far below, with tight intervals: not even within noise
    records = [record("base", "base", 0.50)] + curve_records("diffusion-dpo", 0, [(300, 0.58)], half=0.002) + curve_records(
        "lpo", 10, [(5, 0.55)], half=0.002
    )
    (dpo,) = [v for v in efficiency_report(records)["verdicts"] if v["claim"]["reference"] == "diffusion-dpo"]
    assert dpo["answer"] == dpo["answer_within_noise"] == "no (never reached)"
    assert "Not even within noise" in dpo["text"]
    # no SPO run at all: the claim cannot be answered, and says why
    (spo,) = [v for v in efficiency_report(records)["verdicts"] if v["claim"]["reference"] == "spo"]
    assert spo["answer"] == "cannot answer" and "no spo checkpoints" in spo["text"]


def test_reaching_too_late_is_a_no():
    # LPO reaches DPO's best only after 10 + 50 = 60 s of DPO's 300 s: 0.2 > 0.1
    records = curve_records("diffusion-dpo", 0, [(300, 0.58)]) + curve_records("lpo", 10, [(20, 0.57), (50, 0.59)])
    (dpo,) = [v for v in efficiency_report(records)["verdicts"] if v["claim"]["reference"] == "diffusion-dpo"]
    assert dpo["challenger_seconds_to_reach"] == 60 and math.isclose(dpo["ratio"], 0.2)
    assert dpo["answer"] == "no" and "> 1/10" in dpo["text"]
    assert [c.ratio for c in CLAIMS] == [0.1, 1 / 3.5]


def test_records_that_do_not_compare_are_left_out_with_a_note():
    records = standard_records() + [
        record("lpo", "lpo@9", 0.99, step=9, cost=cost_record(10, 1), prompt_set="other"),  # another prompt set
        record("lpo", "lpo@8", 0.99, step=8),  # no cost record
        # a re-evaluation of DPO's best checkpoint: the latest record counts
        record("diffusion-dpo", "diffusion-dpo@3", 0.575, step=3, cost=cost_record(0, 300), created="2026-02-01T00:00:00+00:00"),
    ]
    data = collect_curves(records)
    assert max(p.value for p in data.curves["lpo"].points) == 0.59
    assert any("prompt set other" in n for n in data.notes)
    assert any("lpo@8 has no training cost" in n for n in data.notes)
    assert [p.value for p in data.curves["diffusion-dpo"].points if p.label == "diffusion-dpo@3"] == [0.575]


def test_reported_a100_hours_beside_the_measured_seconds():
    report = efficiency_report(standard_records())
    text = render_efficiency_markdown(report)
    assert "15 + 8 = 23" in text and "0 + 240 = 240" in text and "52 + 40 = 92" in text  # SPEC §7
    assert "reported" in text
    assert "10.0 + 20.0 = 30.0 (cpu)" in text  # LPO's final: LRM + optimisation device-seconds
    # the published total-cost ratios: 23 / 240 and 23 / 80
    assert math.isclose(report["reported_total_cost_ratios"]["sd15"]["diffusion-dpo"], 23 / 240)
    assert math.isclose(report["reported_total_cost_ratios"]["sd15"]["spo"], 23 / 80)
    assert "Does LPO reach Diffusion-DPO's best world_utility with at most 1/10" in text


# --------------------------------------------------------------------------- the report


def _png(seed: int, size=(260, 140)) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _guided_json(model: str, gain: float) -> dict:
    def row(utility, calls, lrm):
        return {"utility": utility, "utility_se": 0.01, "alignment": 0.4, "alignment_se": 0.02, "soft_alignment": 0.5,
                "soft_alignment_se": 0.01, "aesthetic": 0.6, "aesthetic_se": 0.01, "unet_calls_per_image": calls,
                "unet_passes_per_image": 2 * calls, "lrm_calls_per_image": lrm, "seconds": 1.0}

    return {
        "world_version": "1", "model": model, "lrm": "rewards/lrm/model", "n_prompts": 8, "n_images": 16,
        "protocol": {"split": "test", "num_prompts": 8, "seeds_per_prompt": 2, "num_candidates": 4, "num_inference_steps": 20,
                     "eta": 1.0, "guidance_scale": 5.0},
        "methods": {"plain": row(0.5, 20, 0), "guided-best": row(0.5 + gain, 20, 80), "guided-random": row(0.5, 20, 80),
                    "best-of-k-lrm": row(0.5 + gain / 2, 80, 4)},
        "differences": {
            "guided-best - plain": {"utility": {"mean": gain, "se": 0.004, "n_prompts": 8}},
            "guided-random - plain": {"utility": {"mean": 0.0, "se": 0.004, "n_prompts": 8}},
            "best-of-k-lrm - plain": {"utility": {"mean": gain / 2, "se": 0.004, "n_prompts": 8}},
            "guided-best - best-of-k-lrm": {"utility": {"mean": gain / 2, "se": 0.003, "n_prompts": 8}},
        },
    }


# Per-prompt scores of the side files: 64 prompts × 2 images; prompt p scores value + difficulty_p + AMPLITUDE · (±1
# alternating over prompts). Difficulty cancels in every paired difference; the alternation is each method's own noise.
N_PROMPTS = 64
AMPLITUDE = {"base": 0.0, "lpo": 0.01, "spo": -0.01, "diffusion-dpo": 0.03}


def with_side_files(records: list[ResultRecord], results_dir: Path) -> list[ResultRecord]:
    """The records with per-prompt side files (same prompts and seeds for all), as the harness writes them."""
    out = []
    for r in records:
        amp = AMPLITUDE.get(r.method, 0.0)
        scores = [[r.value + 0.1 * (p % 5 - 2) + amp * (1 if p % 2 == 0 else -1)] * 2 for p in range(N_PROMPTS)]
        side = {"prompts": [f"prompt {p}" for p in range(N_PROMPTS)], "seeds": [[p, 1000 + p] for p in range(N_PROMPTS)],
                "scores": {r.metric_key: scores}, "per_prompt_metrics": []}
        eval_id = f"{r.eval_id}-{r.checkpoint.get('step')}-{r.run_id}-{r.benchmark}"
        rel, sha = write_per_prompt(results_dir, r.benchmark, eval_id, side)
        out.append(replace(r, eval_id=eval_id, per_prompt=rel, per_prompt_sha256=sha, record_id=""))
    return out


def make_bench(folder: Path, *, full: bool = True, extra: list[ResultRecord] = ()) -> Path:
    """A synthetic bench folder in the layout `lpo bench` writes."""
    records = standard_records()
    finals = [r for r in records if "step" not in r.checkpoint]
    records += [record(r.method, r.checkpoint["label"], r.value - 0.05, cost=r.training_cost, benchmark="world-heldout")
                for r in finals]
    records += [record(r.method, r.checkpoint["label"], 0.4, cost=r.training_cost, metric="world_alignment") for r in finals]
    append_records(folder / "results", with_side_files(records + list(extra), folder / "results"))
    if not full:
        return folder
    (folder / "bench.json").write_text(json.dumps({
        "config": {"preset": "quick", "model": "world", "methods": ["lpo", "spo", "diffusion-dpo"]},
        "stages": {"pairs": {"seconds": 12.5}, "train-lpo": {"seconds": 40.0}, "evaluate": {"seconds": 30.0, "skipped": True}},
        "meta": {"git": {"commit": "abc"}},
    }))
    (folder / "reward-eval").mkdir()
    (folder / "reward-eval" / "accuracy_by_timestep.json").write_text(json.dumps({
        "model": "world", "pairs": "pairs/val.parquet", "noise": "independent", "seed": 0,
        "accuracy": {"LRM (latent)": {"981": [0.61, 120], "1": [0.8, 120]}, "SPO pixel model on x̂0": {"981": [0.52, 120], "1": [0.79, 120]}},
    }))
    (folder / "reward-eval" / "accuracy_by_timestep.png").write_bytes(_png(1))
    (folder / "guided").mkdir()
    for model, gain in (("base", 0.03), ("lpo", 0.01)):
        (folder / "guided" / f"{model}.json").write_text(json.dumps(_guided_json(model, gain), sort_keys=True))  # as atomic_write_json
    (folder / "samples").mkdir()
    for i, model in enumerate(("lpo", "base", "spo", "diffusion-dpo")):
        (folder / "samples" / f"{model}.png").write_bytes(_png(10 + i))
    ablation = folder / "ablations" / "mpcf"
    ablation.mkdir(parents=True)
    (ablation / "ablation.json").write_text(json.dumps({
        "name": "mpcf", "description": "LPO with and without MPCF filtering",
        "variants": [{"label": "no-mpcf", "overrides": ["mpcf_strategy=none"]}, {"label": "mpcf-2", "overrides": []}],
    }))
    append_records(ablation / "results", [record("lpo", "no-mpcf", 0.56, cost=cost_record(10, 20)),
                                          record("lpo", "mpcf-2", 0.59, cost=cost_record(10, 20))])
    return folder


def test_report_html_and_markdown(tmp_path):
    bench = make_bench(tmp_path / "bench")
    paths = render_report(bench)
    page = paths["html"].read_text().replace("<wbr>", "")  # break opportunities in long cells
    summary = paths["markdown"].read_text()
    assert paths["html"] == bench / "report" / "index.html" and paths["markdown"] == bench / "report" / "summary.md"
    # leaderboard tables (evals.leaderboard's rendering): final models on both benchmarks, no step-N rows
    assert "world@1 · prompt set ps1" in page and "world-heldout@1" in page
    assert "world_utility@w1 ↑" in page and "world_alignment@w1 ↑" in page
    leaderboard_md = summary.split("## Leaderboard")[1].split("## Efficiency")[0]
    assert "| lpo (run lpo-run) |" in leaderboard_md and "lpo@2" not in leaderboard_md
    # the efficiency section, with the intermediate checkpoints
    assert "| lpo | lpo@2 | 2 | 10.0 | 10.0 | 20.0 | 11.0 | 0.575 ± 0.01 |" in summary
    assert "![quality against training device-seconds](quality_vs_cost.png)" in summary
    assert (bench / "report" / "quality_vs_cost.png").is_file()
    # verdict lines
    assert "- **Does LPO reach Diffusion-DPO's best world_utility with at most 1/10 of its device-seconds?** strict: **yes**" in summary
    assert "- **Does LPO reach SPO's best world_utility with at most 1/3.5 of its device-seconds?** strict: **yes**" in summary
    assert "<b>Does LPO reach Diffusion-DPO&#x27;s best world_utility" in page and "LPO reached Diffusion-DPO" in page
    # guided rows: Δ vs plain with SE and the U-Net cost
    assert "| base | LRM-guided (best of K per step) | 0.530 ± 0.010 | +0.030 ± 0.004 | 0.400 ± 0.020 | 20 | 1× | 80 |" in summary
    assert "| lpo | best of K final images (LRM) | 0.505 ± 0.010 | +0.005 ± 0.004 | 0.400 ± 0.020 | 80 | 4× | 4 |" in summary
    assert "guided-best − best-of-K final: +0.015 ± 0.003" in summary
    guided = summary.split("## LRM-guided sampling")[1]
    assert guided.index("| base | plain sampling") < guided.index("| base | LRM-guided") < guided.index(
        "| base | random pick") < guided.index("| base | best of K final") < guided.index("| lpo | plain sampling")
    # accuracy table, samples in model order, ablation, config and stage timings
    assert "| 981 | 0.610 | 0.520 |" in summary
    assert summary.index("**base**") < summary.index("**lpo**") < summary.index("**spo**") < summary.index("**diffusion-dpo**")
    assert "Ablation: mpcf" in summary and "| no-mpcf | mpcf_strategy=none |" in summary and "no-mpcf (run lpo-run)" in summary
    assert "| pairs | 12.5 |  |" in summary and "| evaluate | 30.0 | skipped=True |" in summary
    assert '"preset": "quick"' in summary
    # one self-contained file: every image embedded, none linked
    srcs = [part.split("'", 1)[0] for part in page.split("src='")[1:]]
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(srcs) >= 1 + 1 + 4 + 2  # efficiency plot, accuracy plot, 4 sample grids, leaderboard score plots
    assert "skipped:" not in page
    # the answer first: the headline of paired differences, then the power section, then the detail
    assert summary.index("## The answer: paired differences") < summary.index("## Minimum detectable") < summary.index(
        "## Verdicts") < summary.index("## Leaderboard")
    # by hand (see AMPLITUDE): LPO − base per prompt 0.09 ± 0.01 alternating -> SD 0.01·√(64/63), half 1.9983·SD/8
    assert "| LPO − base | +0.090 ± 0.003 | 1 | — (1 seed) | better (1 seed, spread unknown) |" in summary
    # DPO − base: 0.07 ± 0.03 alternating -> half 0.0076; SPO − DPO: −0.005 ± 0.04 alternating -> half 0.0101
    assert "| DPO − base | +0.070 ± 0.008 | 1 | — (1 seed) | better (1 seed, spread unknown) |" in summary
    assert "| SPO − DPO | -0.005 ± 0.010 | 1 vs 1 | — (1 seed) | no detectable difference |" in summary
    assert "### On world-heldout" in summary
    assert "| LPO | 64 × 2 | 0.010 | 0.000 | ±0.003 | — |" in summary  # minimum detectable Δ
    assert "| quick: ±0.02 |" in summary and "| full: ±0.01 |" in summary
    # the leaderboard's paired Δ column and the efficiency curve's (lpo@2: 0.575 − 0.5)
    assert "| +0.090 ± 0.003 (better) |" in summary
    assert "| lpo | lpo@2 | 2 | 10.0 | 10.0 | 20.0 | 11.0 | 0.575 ± 0.01 | +0.075 ± 0.003 |" in summary
    paired = json.loads(paths["paired"].read_text())
    assert [r["comparison"] for r in paired["benchmarks"][0]["rows"]] == [
        "LPO − base", "SPO − base", "DPO − base", "LPO − SPO", "LPO − DPO", "SPO − DPO"]
    assert any("minimum detectable Δ, LPO vs base: ±0.003" in line for line in paired["console"])
    efficiency = json.loads(paths["efficiency"].read_text())
    assert efficiency["verdicts"][0]["answer"] == "yes"


def test_training_seeds_pool_per_prompt_and_need_the_seed_spread_too(tmp_path):
    # seeds 1 and 2 of LPO (0.60, 0.58) and SPO (0.585, 0.545) beside seed 0 (0.59, 0.565); base 0.50
    extra = [record(m, f"{m}-seed-{i}", v, cost=cost_record(10, 20), run_id=f"seed-{i}")
             for m, values in (("lpo", (0.60, 0.58)), ("spo", (0.585, 0.545))) for i, v in enumerate(values, 1)]
    paths = render_report(make_bench(tmp_path / "bench", extra=extra))
    summary = paths["markdown"].read_text()
    # LPO − base: seeds 0.09, 0.10, 0.08 -> mean 0.090, SD 0.010, 95% over seeds 4.303 · 0.01 / √3 = 0.025: significant
    assert "| LPO − base | +0.090 ± 0.003 | 3 | +0.090 ± 0.010 (0.025) | better |" in summary
    # LPO − SPO: pooled per prompt 0.025 ± 0.02 alternating -> ± 0.005, clear; seeds 0.025, SD √(0.01² + 0.02²) = 0.022,
    # Welch df 2.9 -> t_2 = 4.303, half 4.303 · √(0.01²/3 + 0.02²/3) = 0.056: the seed spread does not allow it
    assert "| LPO − SPO | +0.025 ± 0.005 | 3 vs 3 | +0.025 ± 0.022 (0.056) | no detectable difference |" in summary
    # DPO trained one seed: against it nothing is significant
    assert "| LPO − DPO | +0.020 ± 0.005 | 3 vs 1 | — (1 seed) | better (1 seed, spread unknown) |" in summary
    # the minimum detectable Δ of the pooled comparison (per prompt 0.09 ± 0.01 alternating in each
    # seed: pooled SD 0.01·√(64/63), half 1.9983·SD/8 = 0.003), and the widest single seed's beside it
    assert "| LPO (3 seeds, pooled) | 64 × 2 | 0.010 | 0.000 | ±0.003 | ±0.003 |" in summary
    # the leaderboard shows every seed's final model; the efficiency view keeps seed 0's curves
    leaderboard_md = summary.split("## Leaderboard")[1].split("## Efficiency")[0]
    assert "| lpo-seed-1 | lpo |" in leaderboard_md and "| +0.100 ± 0.003 (better) |" in leaderboard_md
    assert sorted(json.loads(paths["efficiency"].read_text())["methods"]) == ["diffusion-dpo", "lpo", "spo"]  # no "(seed-1)" series


def test_missing_pieces_are_skipped_with_a_note(tmp_path):
    bench = make_bench(tmp_path / "bench", full=False)  # results only
    paths = render_report(bench)
    summary = paths["markdown"].read_text()
    for piece in ("reward-eval/accuracy_by_timestep.json", "no guided-sampling results", "no sample grids",
                  "no ablations", "bench.json"):
        assert piece in summary
    assert "strict: **yes**" in summary
    # an empty bench folder renders too, and says it has nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    summary = render_report(empty)["markdown"].read_text()
    assert "skipped: no result records" in summary and "Cannot answer" in summary


def test_screenshot_in_headless_chromium(tmp_path):
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    bench = make_bench(tmp_path / "bench")
    page = render_report(bench)["html"]
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "screenshot_report.sh"), str(page), str(shot), "1280,2400"],
        capture_output=True, text=True, timeout=150,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    # not blank: text, tables and the embedded plots give many colours and dark pixels
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    assert (pixels.mean(axis=2) < 100).mean() > 0.005


# Marks the tables whose right edge passes the page body's (clipped or scrolled at this window width).
FIT_PROBE = (
    "<script>var o=[];var right=document.body.getBoundingClientRect().right;"
    "document.querySelectorAll('table').forEach(function(t,i){if(t.getBoundingClientRect().right>right+1)o.push(i)});"
    "document.body.setAttribute('data-overflow',o.join(','))</script>"
)


def test_committed_quick_bench_report_fits_1280px_in_headless_chromium(tmp_path):
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    bench = tmp_path / "bench-quick-world1"  # the committed bench, its report rendered afresh (the committed one is untouched)
    shutil.copytree(REPO / "results" / "bench-quick-world1", bench, ignore=shutil.ignore_patterns("report"))
    page = render_report(bench)["html"]
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body></html>", FIT_PROBE + "</body></html>"))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,2000",
         "--virtual-time-budget=3000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=150,
    )
    overflow = re.search(r'data-overflow="([^"]*)"', result.stdout)
    assert overflow is not None, result.stderr[-2000:]
    assert overflow.group(1) == "", f"tables wider than the 1280 px page: {overflow.group(1)}"
    html_text = page.read_text()
    assert html_text.index("The answer: paired differences") < html_text.index("Leaderboard (final models)")


def test_final_models_also_scored_on_the_curve_protocol_raise_no_note():
    """The committed quick bench: every final model has a curve record (48 × 2) beside its
    final one (128 × 4); only a model without a final-protocol record is noted."""
    from pathlib import Path

    from lpo.bench.headline import final_records
    from lpo.evals.store import load_records

    records = load_records(Path(__file__).resolve().parents[1] / "results" / "bench-quick-test128" / "results")
    base, finals, notes = final_records(records, "world", "world_utility")
    assert base.n_prompts == 128 and set(finals) == {"lpo", "spo", "diffusion-dpo"} and notes == []
    without = [r for r in records if not (r.method == "lpo" and r.n_prompts == 128)]
    _, finals, notes = final_records(without, "world", "world_utility")
    assert "lpo" not in finals
    assert len(notes) == 1 and "only at 48 prompts × 2 images" in notes[0]
