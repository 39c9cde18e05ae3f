"""Reward-hacking diagnostics: training signals and marks, diversity across seeds, the LRM's own score."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lpo.evals.leaderboard import render_leaderboard
from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.signals import mark, run_signals
from lpo.world.render import MAX_SIZE, SceneObject, render_scene
from test_results_store import make_record


def _scene(*objects) -> Image.Image:
    return Image.fromarray(render_scene([SceneObject(*o) for o in objects]))


def test_world_diversity_is_the_mean_distance_of_judged_attributes():
    import lpo.evals.metrics.diversity  # noqa: F401

    a = _scene(("red", "square", "solid", 10, 2, 2))
    b = _scene(("red", "square", "solid", 10, 14, 2))  # the same object 12 px to the right
    c = _scene(("red", "square", "solid", 10, 2, 2), ("blue", "circle", "solid", 12, 16, 16))
    metric = METRICS.get("world_diversity")(MetricSpec())
    d_ab = 12 / 32
    # c adds a blue, a circle, a solid and an object; the mean centre moves 7.5 px both ways, the mean size 1 px
    d_ac = math.sqrt(4 + 2 * (7.5 / 32) ** 2 + (1 / MAX_SIZE) ** 2)
    d_bc = math.sqrt(4 + (4.5 / 32) ** 2 + (7.5 / 32) ** 2 + (1 / MAX_SIZE) ** 2)  # b centre (18.5, 6.5), c (14, 14)
    values = metric.score_sets([[a, b], [a, a, a], [a, b, c]], ["a red square"] * 3)
    assert values == pytest.approx([d_ab, 0.0, (d_ab + d_ac + d_bc) / 3])


def test_pixel_and_clip_diversity_against_direct_formulas(tmp_path):
    import lpo.evals.metrics.diversity  # noqa: F401
    from metric_fixtures import random_image, tiny_clip_folder

    images = [random_image(i, (80, 40)) for i in range(3)]
    pixel = METRICS.get("pixel_diversity")(MetricSpec()).score_sets([images], ["x"])[0]
    arrays = [np.asarray(im.resize((64, 32), Image.BOX), dtype=np.float64) / 255 for im in images]
    expected = np.mean([np.sqrt(np.mean((arrays[i] - arrays[j]) ** 2)) for i, j in combinations(range(3), 2)])
    assert pixel == pytest.approx(expected)

    from transformers import CLIPImageProcessor, CLIPModel

    folder = tiny_clip_folder(tmp_path / "clip", seed=3)
    clip = METRICS.get("clip_diversity")(MetricSpec(weights=str(folder)))
    value = clip.score_sets([images], ["x"])[0]
    model = CLIPModel.from_pretrained(folder).eval()
    with torch.no_grad():
        pixels = CLIPImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
        embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    embeds = torch.nn.functional.normalize(embeds, dim=-1)
    expected = np.mean([1 - float(embeds[i] @ embeds[j]) for i, j in combinations(range(3), 2)])
    assert value == pytest.approx(expected, abs=1e-5)
    with pytest.raises(Exception, match="at least 2 images"):
        clip.score_sets([[images[0]]], ["x"])


def _lpo_chain(root: Path, filtered: bool = True) -> Path:
    """pairs (world annotators) -> lpo mpcf output -> LRM run -> LPO run, as the commands write them."""
    raw = root / "pairs.parquet"
    (root / "pairs.parquet.json").write_text(json.dumps({"provenance": {"config": {"annotators": {"seed": 0}}}}))
    pairs = raw
    if filtered:
        pairs = root / "kept.parquet"
        scorers = {"aesthetic": "world-aesthetic@1-world1", "clip": "world-clip@1-world1", "vqa": "world-vqa@1-world1"}
        (root / "kept.parquet.json").write_text(json.dumps({"provenance": {"mpcf": {"scorers": scorers}, "input": str(raw)}}))
    lrm_run = root / "lrm"
    (lrm_run / "model").mkdir(parents=True)
    (lrm_run / "model" / "lrm_config.json").write_text("{}")
    (lrm_run / "run.json").write_text(json.dumps({"pairs": str(pairs), "reward_model": "lrm"}))
    run = root / "lpo"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"method": "lpo", "reward": {"path": str(lrm_run / "model")}}))
    return run


def test_signals_follow_the_run_files_and_mark_each_metric(tmp_path):
    from lpo.evals.metrics.lrm_score import lrm_metric_version

    signals = run_signals(_lpo_chain(tmp_path))
    assert [s["signal"] for s in signals] == ["lrm", "world-aesthetic", "world-clip", "world-vqa", "world-annotators"]
    lrm_version = lrm_metric_version(tmp_path / "lrm" / "model")
    marks = {m: mark(m, v, signals) for m, v in [("lrm_score", lrm_version), ("world_aesthetic", "1.1"), ("world_clip", "1.1"),
                                                  ("world_soft_alignment", "1.1"), ("world_utility", "1.1"),
                                                  ("world_alignment", "1.1"), ("world_diversity", "1.1+div1")]}
    assert marks == {"lrm_score": "optimised", "world_aesthetic": "optimised", "world_clip": "optimised",
                     "world_soft_alignment": "optimised", "world_utility": "related", "world_alignment": "held out",
                     "world_diversity": "held out"}
    assert mark("lrm_score", "1+00000000", signals) == "held out"  # another LRM's score is not this run's signal
    assert mark("world_alignment", "1.1", None) is None

    (tmp_path / "u").mkdir()
    unfiltered = run_signals(_lpo_chain(tmp_path / "u", filtered=False))
    assert [s["signal"] for s in unfiltered] == ["lrm", "world-annotators"]
    assert mark("world_aesthetic", "1.1", unfiltered) == "held out"
    dpo = tmp_path / "dpo"
    dpo.mkdir()
    (dpo / "config.json").write_text(json.dumps({"method": "diffusion-dpo", "data": {"pairs": "yuvalkirstain/pickapic_v2"}}))
    assert [s["signal"] for s in run_signals(dpo)] == ["preference-labels"]


def test_leaderboard_marks_cells_of_trained_rows():
    signals = [{"signal": "world-aesthetic", "role": "filter", "optimises": ["world_aesthetic"], "related": []},
               {"signal": "world-annotators", "role": "labels", "optimises": [], "related": ["world_utility"]}]
    ckpt = {"spec": "run", "label": "run", "hash": "r" * 16, "kind": "pipeline", "path": None, "hub_id": None}
    base = {**ckpt, "label": "base", "hash": "b" * 16}
    records = [make_record(benchmark="world", metric=m, metric_version="1.1", value=0.5, checkpoint=c, training_signals=s, method=meth)
               for m in ("world_aesthetic", "world_utility", "world_alignment")
               for c, s, meth in ((ckpt, signals, "lpo"), (base, [], "base"))]
    md = render_leaderboard(records, "md")
    row = next(line for line in md.splitlines() if line.startswith("| run |"))
    assert "filter world-aesthetic; labels world-annotators" in row
    assert "0.5 ± 0.2 (optimised) | 0.5 ± 0.2 (related) | 0.5 ± 0.2 (held out)" in row
    base_row = next(line for line in md.splitlines() if line.startswith("| base |"))
    assert "| none |" in base_row and "(held out)" not in base_row  # nothing to mark on an untrained row
    assert "(optimised) the run's reward or pair filter is this metric's scorer" in md


def test_lrm_score_is_the_lrm_on_the_vae_posterior_mean(tmp_path, tiny_world_dir):
    import lpo.evals.metrics.lrm_score  # noqa: F401
    from lpo.reward.lrm import LatentRewardModel
    from lpo.reward.lrm_io import save_lrm
    from lpo.models.components import load_components

    components = load_components(tiny_world_dir)
    lrm = LatentRewardModel.from_components(components).eval()
    save_lrm(lrm, tmp_path / "lrm")
    images = [_scene(("red", "square", "solid", 10, 2, 2)), _scene(("blue", "circle", "hollow", 12, 10, 12))]
    prompts = ["a red square", "a blue hollow circle"]
    metric = METRICS.get("lrm_score")(MetricSpec(weights=str(tmp_path / "lrm")))
    got = metric.score(images, prompts)
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) for im in images]) / 127.5 - 1
    with torch.no_grad():
        latents = components.vae.encode(x).latent_dist.mean * components.vae.config.scaling_factor
        expected = lrm(latents, 1, prompts)
    assert torch.allclose(got, expected.float(), atol=1e-5)
    assert metric.version.startswith("1+") and metric.weights["lrm"] == str((tmp_path / "lrm").resolve())
    with pytest.raises(Exception, match="--metric-weights lrm_score=LRM_FOLDER"):
        METRICS.get("lrm_score")(MetricSpec())
