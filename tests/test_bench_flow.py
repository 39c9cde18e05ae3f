"""`lpo bench` on the flow-matching world: pairs made by the U-Net world, an MMDiT LRM, the
*-world-flow trainers; a bench lending its pairs to another; the flow preset's values."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace

import pytest

from lpo.bench.config import BenchConfig, bench_preset
from lpo.bench.runner import run_bench, trainer_preset
from lpo.bench.shared_pairs import check_same_pairs, copy_pair_stages
from lpo.core.errors import LpoError
from test_bench import _micro


def _micro_flow(flow_model: str, pair_model: str) -> BenchConfig:
    return replace(_micro(flow_model), preset="micro-flow", pair_model=pair_model, lrm_preset="lrm-world-flow",
                   lrm_overrides=(*_micro(flow_model).lrm_overrides, "mmdit_blocks=1"), guided_prompts=0)


@pytest.fixture(scope="module")
def flow_bench(tiny_world_dir, tiny_flow_world_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-flow")
    bench = run_bench(folder, _micro_flow(str(tiny_flow_world_dir), str(tiny_world_dir)))
    return folder, bench


def test_the_flow_bench_trains_every_method_on_the_flow_world_from_the_unet_worlds_pairs(flow_bench, tiny_world_dir,
                                                                                        tiny_flow_world_dir):
    folder, _ = flow_bench
    sidecar = json.loads((folder / "pairs" / "train.parquet.json").read_text())
    assert sidecar["provenance"]["model"] == str(tiny_world_dir)  # the U-Net world made the images
    lrm = json.loads((folder / "rewards" / "lrm" / "model" / "mmdit_lrm_config.json").read_text())
    assert lrm["format"] == "lpo-mmdit-lrm" and lrm["config"]["num_blocks"] == 1
    for method, preset in (("lpo", "lpo-world-flow"), ("spo", "spo-world-flow"), ("diffusion-dpo", "dpo-world-flow")):
        output = json.loads((folder / "stages" / f"train-{method}.json").read_text())["output"]
        assert output["preset"] == preset and f"model.base={tiny_flow_world_dir}" in output["overrides"]
    # the accuracy table has the ceiling row: the true utility of the flow world's one-step x̂0
    accuracy = json.loads((folder / "reward-eval" / "accuracy_by_timestep.json").read_text())
    assert "true utility on x̂0 (ceiling)" in accuracy["accuracy"]
    from lpo.evals.store import load_records

    records = [r for r in load_records(folder / "results") if r.metric == "world_utility"]
    labels = {(r.benchmark, r.checkpoint["label"]) for r in records}
    for name in ("base", "lpo", "spo", "diffusion-dpo"):
        assert ("world", name) in labels and ("world-heldout", name) in labels
    # what each final model learned from: LPO the MMDiT LRM, SPO the pixel model
    final = {r.checkpoint["label"]: {s["signal"] for s in r.training_signals} for r in records
             if r.method != "base" and "step" not in r.checkpoint}
    assert "lrm" in final["lpo"] and "pixel-step-model" not in final["lpo"]
    assert "pixel-step-model" in final["spo"]
    assert (folder / "report" / "index.html").is_file()


def test_a_bench_copies_anothers_pairs_and_books_their_cost(flow_bench, tiny_world_dir, tiny_flow_world_dir, tmp_path):
    source, _ = flow_bench
    config = _micro_flow(str(tiny_flow_world_dir), str(tiny_world_dir))
    target = tmp_path / "lent"
    assert copy_pair_stages(source, target, replace(config, pairs_from=str(source))) == ["pairs", "mpcf"]
    for name in ("train.parquet", "reward-mpcf.parquet", "train-mpcf.parquet", "val.parquet", "val.parquet.json"):
        assert (target / "pairs" / name).read_bytes() == (source / "pairs" / name).read_bytes()
        assert os.path.samefile(target / "pairs" / name, source / "pairs" / name)  # hard links on one file system
    marker = json.loads((target / "stages" / "pairs.json").read_text())
    original = json.loads((source / "stages" / "pairs.json").read_text())
    assert marker["timing"] == original["timing"] and marker["copied_from"]["folder"] == str(source.resolve())
    assert str(source.resolve()) not in json.dumps(marker["output"])  # its paths point into the new bench
    assert copy_pair_stages(source, target, config) == []  # done: nothing copied twice
    with pytest.raises(LpoError, match="was made with seed=0, this bench has 1"):
        copy_pair_stages(source, tmp_path / "other", replace(config, seed=1))
    with pytest.raises(LpoError, match="its pairs are images of"):
        copy_pair_stages(source, tmp_path / "other", replace(config, pair_model=""))
    with pytest.raises(LpoError, match="is not a bench folder"):
        copy_pair_stages(tmp_path, tmp_path / "other", config)
    (source / "stages" / "mpcf.json").rename(source / "stages" / "mpcf.json.away")
    try:
        with pytest.raises(LpoError, match="has not finished its mpcf stage"):
            copy_pair_stages(source, tmp_path / "other", config)
    finally:
        (source / "stages" / "mpcf.json.away").rename(source / "stages" / "mpcf.json")


def test_the_flow_preset_can_take_the_full_presets_pairs():
    flow, full = bench_preset("flow"), bench_preset("full")
    assert (flow.model, flow.images_model, flow.lrm_preset, flow.guided_prompts) == ("world-flow", "world", "lrm-world-flow", 0)
    check_same_pairs(json.loads(json.dumps(asdict(full))), flow, "full")  # no error: a full bench can lend its pairs
    check_same_pairs(json.loads(json.dumps(asdict(bench_preset("quick")))), flow, "quick")  # the same pair values
    other = replace(bench_preset("quick"), val_pairs_per_prompt=4)
    with pytest.raises(LpoError, match="was made with val_pairs_per_prompt=4"):
        check_same_pairs(json.loads(json.dumps(asdict(other))), flow, "quick")


def test_the_trainer_presets_follow_the_base_model(tiny_world_dir, tiny_flow_world_dir):
    assert trainer_preset("lpo", "world") == "lpo-world"
    assert trainer_preset("diffusion-dpo", str(tiny_world_dir)) == "dpo-world"
    assert trainer_preset("spo", "world-flow") == "spo-world-flow"  # the shipped flow world
    assert trainer_preset("diffusion-dpo", str(tiny_flow_world_dir)) == "dpo-world-flow"


def test_config_errors_of_a_flow_bench(tiny_flow_world_dir, tmp_path):
    with pytest.raises(LpoError, match="reward_kit and pairs_from both supply the pairs"):
        BenchConfig(reward_kit="quick", pairs_from=str(tmp_path))
    with pytest.raises(LpoError, match="is a flow model: set guided_prompts=0"):
        run_bench(tmp_path / "b", replace(_micro(str(tiny_flow_world_dir)), guided_prompts=2))
    assert not (tmp_path / "b").exists()


def test_a_bench_saved_before_a_field_existed_continues(tiny_world_dir, tmp_path):
    """bench.json of an older lpo lacks pair_model and pairs_from: it ran with their defaults."""
    from lpo.bench.runner import _check_same_bench

    config = _micro(str(tiny_world_dir))
    saved = json.loads(json.dumps(asdict(config)))
    del saved["pair_model"], saved["pairs_from"]
    (tmp_path / "bench.json").write_text(json.dumps({"config": saved}))
    _check_same_bench(tmp_path, config)  # no error
    with pytest.raises(LpoError, match="another config"):
        _check_same_bench(tmp_path, replace(config, pair_model="world"))
