"""Leaderboard: tables as views of the records; versions never share a column."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from lpo.core.errors import LpoError
from lpo.evals.leaderboard import Column, build_tables, leaderboard, render_leaderboard
from lpo.evals.reported import REPORTED
from lpo.evals.store import append_records, load_records, write_per_prompt
from test_results_store import make_record


def _ckpt(name: str) -> dict:
    return {"spec": name, "label": name, "hash": (name * 16)[:16], "kind": "pipeline", "path": None, "hub_id": None}


def test_two_metric_versions_are_two_columns():
    records = [
        make_record(checkpoint=_ckpt("base"), metric_version="v1+lpo1", value=20.5),
        make_record(checkpoint=_ckpt("base"), metric_version="v1+lpo2", value=20.9),
    ]
    (table,) = build_tables(records)
    assert list(table.columns) == ["pickscore@v1+lpo1", "pickscore@v1+lpo2"]
    (row,) = table.rows.values()
    assert row.cells["pickscore@v1+lpo1"].value == 20.5 and row.cells["pickscore@v1+lpo2"].value == 20.9
    header = next(line for line in render_leaderboard(records, "md").splitlines() if line.startswith("| checkpoint"))
    assert "pickscore@v1+lpo1 ↑" in header and "pickscore@v1+lpo2 ↑" in header


def test_a_record_of_another_version_is_refused_in_a_column():
    records = [make_record(metric_version="v1+lpo1")]
    (table,) = build_tables(records)
    (row,) = table.rows.values()
    with pytest.raises(LpoError, match="never mixed in one column"):
        table.put(row, table.columns["pickscore@v1+lpo1"], make_record(metric_version="v1+lpo2"))
    with pytest.raises(LpoError, match="higher is better"):
        table.add(make_record(metric_version="v1+lpo1", higher_is_better=False))


def test_rows_columns_and_tables():
    records = [
        make_record(checkpoint=_ckpt("base"), value=20.5, ci95=(20.3, 20.7)),
        make_record(checkpoint=_ckpt("lpo"), method="lpo", value=21.5, ci95=None, stderr=None,
                    training_cost={"device_hours_by_type": {"NVIDIA A100": {"reward_model_training": 15.0, "optimisation": 8.0, "evaluation": 1.0}}}),
        make_record(checkpoint=_ckpt("lpo"), method="lpo", metric="hpsv2", metric_version="v2.0+lpo1", value=27.6),
        # another prompt set: a table of its own
        make_record(checkpoint=_ckpt("base"), prompt_set_hash="ffffffffffff", n_prompts=10, value=19.0),
        # a re-evaluation: the latest record is shown
        make_record(checkpoint=_ckpt("base"), value=20.6, ci95=(20.4, 20.8), created="2026-02-01T00:00:00+00:00"),
    ]
    tables = build_tables(records)
    assert [t.n_prompts for t in tables] == [500, 10]
    md = render_leaderboard(records, "md")
    assert "| base | base | — |" in md and "20.6 ± 0.2" in md and "20.5 ±" not in md
    assert "| 21.5 | 27.6 ± 0.2 |" in md  # no interval when the record has none
    assert "23 h NVIDIA A100" in md  # training cost excludes evaluation
    assert md.count("## pickapic@1") == 2


def test_a_column_every_row_agrees_on_is_said_once_above_the_table():
    protocol = {"sampler": "ddim", "steps": 20, "guidance_scale": 7.5, "images_per_prompt": 4, "seed": 42}
    same = [make_record(checkpoint=_ckpt("base"), base_model="sd15", protocol=protocol),
            make_record(checkpoint=_ckpt("lpo"), method="lpo", base_model="sd15", protocol=protocol)]
    md = render_leaderboard(same, "md")
    assert "every row: base model sd15; protocol DDIM 20 · CFG 7.5 · 4 img/prompt · seed 42 · native · None" in md
    header = next(line for line in md.splitlines() if line.startswith("| checkpoint"))
    assert header.startswith("| checkpoint | method | training cost | trained on | pickscore@v1+lpo1 ↑ |")
    assert "|---|---|---|---|---:|" in md  # the metric column is still the first right-aligned one
    other = same + [make_record(checkpoint=_ckpt("dpo"), method="dpo", base_model="sd15", protocol={**protocol, "seed": 7})]
    md = render_leaderboard(other, "md")
    assert "| checkpoint | method | protocol | training cost |" in md and "every row: base model sd15" in md


def test_csv_is_long_with_versions_and_reported_rows():
    records = [make_record(breakdown=[{"category": "anime", "value": 21.0, "stderr": 0.2, "ci95": (20.6, 21.4), "n_prompts": 250, "n_images": 1000}])]
    rows = list(csv.DictReader(io.StringIO(render_leaderboard(records, "csv", reported=["pickapic"]))))
    measured = [r for r in rows if r["source"] == "measured"]
    assert [(r["metric"], r["metric_version"], r["category"]) for r in measured] == [
        ("pickscore", "v1+lpo1", ""), ("pickscore", "v1+lpo1", "anime")
    ]
    assert float(measured[0]["value"]) == 21.0 and float(measured[0]["ci95_low"]) == 20.804
    reported = [r for r in rows if r["source"] == "reported"]
    published = [r for r in REPORTED if r.benchmark == "pickapic"]
    assert len(reported) == sum(len(r.values) for r in published)
    sd15_lpo = next(r for r in reported if r["checkpoint"] == "SD1.5 LPO" and r["metric"] == "pickscore")
    assert float(sd15_lpo["value"]) == 21.69 and sd15_lpo["metric_version"] == "reported"


def test_reported_rows_are_a_table_of_their_own():
    md = render_leaderboard([make_record()], "md", reported=["pickapic"])
    measured, published = md.split("### pickapic: reported", 1)
    assert "SD1.5 LPO" not in measured and "| SD1.5 LPO | lpo | sd15 | 21.69 |" in published
    assert "15 + 8 = 23" in published and "arXiv 2502.01051" in published


def test_html_embeds_plots(tmp_path):
    records = [
        make_record(checkpoint=_ckpt("base")),
        make_record(checkpoint=_ckpt("lpo"), method="lpo", value=21.6,
                    training_cost={"device_hours_by_type": {"cpu": {"optimisation": 0.2}}}),
    ]
    html = render_leaderboard(records, "html", reported=["pickapic"])
    assert html.count("data:image/png;base64,") == 2  # scores + quality-vs-cost
    assert "reported" in html and "<table>" in html


def test_leaderboard_reads_the_results_folder(tmp_path):
    append_records(tmp_path, [make_record()])
    out = tmp_path / "board.md"
    text = leaderboard(tmp_path, ["pickapic"], "md", reported=True, out=out)
    assert out.read_text() == text and "reported" in text and "t2i-compbench" not in text
    with pytest.raises(LpoError, match="no result records"):
        leaderboard(tmp_path, ["world"])
    with pytest.raises(LpoError, match="unknown benchmark"):
        leaderboard(tmp_path, ["nope"])
    with pytest.raises(LpoError, match="format"):
        leaderboard(tmp_path, None, "pdf")


def test_column_header_marks_direction():
    assert Column("x", "1", False).header == "x@1 ↓"


# --------------------------------------------------------------------------- Δ vs base (paired)

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "results" / "bench-quick-world1" / "results"


def test_delta_vs_base_is_paired_on_the_committed_quick_bench():
    text = leaderboard(QUICK, ["world"], "md")
    assert "Δ world_utility@1.1 vs base (paired, 95% t)" in text
    # independent recomputation from the side files: per prompt mean over images, LPO − base, t_{0.975, 63} = 1.9983
    records = {(r.method, r.checkpoint.get("step")): r for r in load_records(QUICK, ["world"]) if r.metric == "world_utility"}
    grids = {m: np.array(json.loads((QUICK / records[(m, None)].per_prompt).read_text())["scores"]["world_utility@1.1"])
             for m in ("lpo", "base")}
    per_prompt = grids["lpo"].mean(axis=1) - grids["base"].mean(axis=1)
    half = 1.9983 * per_prompt.std(ddof=1) / 8
    lpo_row = next(line for line in text.splitlines() if line.startswith("| lpo | lpo, optimised"))
    assert lpo_row.endswith(f"| {per_prompt.mean():+.3f} ± {half:.3f} (better) |")
    assert "+0.037 ± 0.037 (better)" in lpo_row  # the LPO − base, Student t instead of 1.96
    assert "| base | base |" in text and text.count("(no detectable difference) |") >= 3
    assert "paired per prompt (images averaged first), 95% Student t over prompts" in text
    rows = list(csv.DictReader(io.StringIO(leaderboard(QUICK, ["world"], "csv"))))
    lpo = next(r for r in rows if r["checkpoint"] == "lpo" and r["metric"] == "world_utility" and not r["category"])
    assert float(lpo["delta_vs_base"]) == pytest.approx(per_prompt.mean())
    assert float(lpo["delta_ci95_high"]) - float(lpo["delta_ci95_low"]) == pytest.approx(2 * half, rel=1e-3)
    assert all(r["delta_vs_base"] == "" for r in rows if r["metric"] != "world_utility" or r["category"])


def test_delta_refused_on_another_protocol_is_a_footnote(tmp_path):
    def side(label, seeds, scores):
        rel, sha = write_per_prompt(tmp_path, "pickapic", f"e-{label}", {
            "prompts": ["a", "b"], "seeds": seeds, "scores": {"pickscore@v1+lpo1": scores}, "per_prompt_metrics": []})
        return {"per_prompt": rel, "per_prompt_sha256": sha, "eval_id": f"e-{label}"}

    protocol = {"sampler": "ddim", "steps": 20, "guidance_scale": 7.5, "images_per_prompt": 1, "seed": 42}
    records = [
        make_record(checkpoint=_ckpt("base"), protocol=protocol, **side("base", [[1], [2]], [[20.0], [21.0]])),
        make_record(checkpoint=_ckpt("lpo"), method="lpo", protocol=protocol, **side("lpo", [[1], [2]], [[21.0], [21.5]])),
        make_record(checkpoint=_ckpt("spo"), method="spo", protocol=protocol, **side("spo", [[1], [9]], [[21.0], [21.5]])),
    ]
    append_records(tmp_path, records)
    text = leaderboard(tmp_path, ["pickapic"], "md")
    # LPO − base per prompt: 1.0, 0.5 -> +0.750 ± 12.706 · 0.3536 / √2 = ± 3.177
    assert "| +0.750 ± 3.177 (no detectable difference) |" in text
    assert "Δ not computed for spo: cannot pair spo with base: prompt 1 ('b') has other image seeds" in text
    assert text.splitlines()[[i for i, line in enumerate(text.splitlines()) if line.startswith("| spo")][0]].endswith("| — |")


def test_variant_columns_are_marked_and_never_read_as_the_published_metric():
    """GenEval here swaps the detector (a declared variant): its column says so, a footnote says
    what differs, and the published column beside it says it is another scorer's."""
    from lpo.evals.metrics import load_metrics
    from lpo.evals.metrics.geneval import GenEval

    load_metrics()
    ckpt = {**_ckpt("sd15"), "registry": {"published_as": "SD1.5"}}
    geneval = make_record(benchmark="geneval", metric="geneval", metric_version=GenEval.version, value=0.42,
                          ci95=(0.4, 0.44), checkpoint=ckpt)
    pick = make_record(checkpoint=ckpt)
    md = render_leaderboard([geneval, pick], "md", reported=["geneval", "pickapic"])
    geneval_part = md.split("## geneval", 1)[1].split("## pickapic", 1)[0]
    assert f"geneval@{GenEval.version} ↑ (variant)" in geneval_part
    assert f"geneval@{GenEval.version} (variant): detectron2's Mask2Former" in geneval_part
    assert "not comparable with published numbers" in geneval_part
    assert "geneval published (other scorer: not comparable)" in geneval_part
    pick_part = md.split("## pickapic", 1)[1]
    assert "(variant)" not in pick_part.split("### pickapic: reported")[0]
    assert "comparable with published numbers: pickscore@v1+lpo1" in pick_part
