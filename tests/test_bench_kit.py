"""Reward kits: the shipped quick kit, export / install round trips, and a bench run from a kit."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lpo.bench.config import BenchConfig, bench_preset
from lpo.bench.kit import KIT_FIELD_DEFAULTS, KIT_FILE, SHIPPED_KITS, export_kit, install_kit, kit_fields, read_kit, resolve_kit
from lpo.core.errors import LpoError
from lpo.world.grammar import WORLD_VERSION


def test_the_shipped_quick_kit_is_whole_and_built_with_the_quick_presets_values(tmp_path):
    folder = resolve_kit("quick")
    assert folder == SHIPPED_KITS / "quick"
    kit = read_kit(folder)
    assert {**KIT_FIELD_DEFAULTS, **kit["fields"]} == kit_fields(bench_preset("quick"))  # built before pair_model
    # built by the full preset, whose kit values (validation set included) are the quick preset's
    assert kit["command"].startswith("lpo bench --preset full") and "--build-kit" in kit["command"]
    assert kit_fields(bench_preset("full")) == kit_fields(bench_preset("quick"))
    assert kit["world_version"] == WORLD_VERSION
    # every stage's measured seconds travel with it (booked as the bench's own)
    assert set(kit["stage_seconds"]) == {"pairs", "mpcf", "reward-lrm", "reward-pixel", "reward-eval"}
    assert all(s > 0 for s in kit["stage_seconds"].values())
    installed, read = install_kit(folder, tmp_path, bench_preset("quick"), WORLD_VERSION)  # checks every file's SHA-256
    assert installed == kit["stages"] and read == kit
    marker = json.loads((tmp_path / "stages" / "reward-lrm.json").read_text())
    assert marker["output"]["model"] == str(tmp_path.resolve() / "rewards" / "lrm" / "model")
    assert (tmp_path / "rewards" / "lrm" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "rewards" / "lrm" / "model" / "cost.json").is_file()  # the LRM's cost, booked to LPO
    accuracy = json.loads((tmp_path / "reward-eval" / "accuracy_by_timestep.json").read_text())
    assert accuracy  # the accuracy table the report shows
    assert not (tmp_path / "pairs" / "train.parquet").exists()  # only the filtered pairs ship
    # the reward models' own 9,000-odd pairs stay out too: the kit ships the policies' part
    assert not (tmp_path / "pairs" / "reward-mpcf.parquet").exists()
    assert kit["fields"]["reward_train_prompts"] > kit["fields"]["train_prompts"]


def _fake_bench(folder):
    """A bench folder whose kit stages are done, with small stand-in files."""
    for rel in ("pairs/train-mpcf.parquet", "pairs/train-mpcf.parquet.json", "pairs/val.parquet",
                "pairs/val.parquet.json", "rewards/lrm/model/model.safetensors", "rewards/lrm/cost.json",
                "rewards/pixel/model/model.safetensors", "reward-eval/accuracy_by_timestep.json"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(rel)
    (folder / "rewards" / "lrm" / "checkpoints" / "step-000002").mkdir(parents=True)
    (folder / "rewards" / "lrm" / "checkpoints" / "step-000002" / "x").write_text("state")
    (folder / "stages").mkdir()
    for stage in ("pairs", "mpcf", "reward-lrm", "reward-pixel", "reward-eval"):
        output = {"model": str(folder.resolve() / "rewards" / "lrm" / "model"), "other": "/elsewhere/x"}
        (folder / "stages" / f"{stage}.json").write_text(json.dumps({"output": output, "timing": {"seconds": 2.5}}))


def test_export_then_install_round_trips_and_refuses_another_config_or_a_damaged_file(tmp_path):
    config = BenchConfig(train_prompts=8, val_prompts=4)
    built = tmp_path / "built"
    _fake_bench(built)
    kit = export_kit(built, config, tmp_path / "kit", "lpo bench --build-kit kit", "2")
    data = json.loads((kit / KIT_FILE).read_text())
    assert "rewards/lrm/checkpoints/step-000002/x" not in data["files"]  # resumable state stays behind
    assert data["stage_seconds"]["reward-lrm"] == 2.5
    assert resolve_kit(str(kit)) == kit

    bench = tmp_path / "bench"
    assert install_kit(kit, bench, config, "2")[0] == ["pairs", "mpcf", "reward-lrm", "reward-pixel", "reward-eval"]
    marker = json.loads((bench / "stages" / "mpcf.json").read_text())
    assert marker["output"]["model"] == str(bench.resolve() / "rewards" / "lrm" / "model")  # moved to this bench
    assert marker["output"]["other"] == "/elsewhere/x" and marker["timing"]["seconds"] == 2.5
    assert marker["kit"]["command"] == "lpo bench --build-kit kit"
    assert install_kit(kit, bench, config, "2")[0] == []  # done stages are left alone

    with pytest.raises(LpoError, match=r"built with train_prompts=8, this bench has 9; use --set reward_kit=none"):
        install_kit(kit, tmp_path / "other", replace(config, train_prompts=9), "2")
    with pytest.raises(LpoError, match=r"was built in world 2, this lpo's world is 3; rebuild it with `lpo bench --build-kit`"):
        install_kit(kit, tmp_path / "other", config, "3")
    unversioned = json.loads((kit / KIT_FILE).read_text())
    unversioned.pop("world_version")
    (kit / KIT_FILE).write_text(json.dumps(unversioned))  # a kit from before the field: world 1's
    with pytest.raises(LpoError, match="built in world 1, this lpo's world is 2"):
        install_kit(kit, tmp_path / "other", config, "2")
    assert not (tmp_path / "other" / "stages").exists()
    (kit / KIT_FILE).write_text(json.dumps({**unversioned, "world_version": "2"}))
    (kit / "rewards" / "lrm" / "cost.json").write_text("tampered")
    with pytest.raises(LpoError, match="missing or damaged"):
        install_kit(kit, tmp_path / "third", config, "2")
    assert not (tmp_path / "third" / "stages").exists()  # nothing marked done from a damaged kit


def test_kit_names_and_unfinished_benches_give_one_line_errors(tmp_path):
    with pytest.raises(LpoError, match="neither a shipped kit .*quick.* nor a folder"):
        resolve_kit("nope")
    assert resolve_kit("none") is None
    with pytest.raises(LpoError, match="has not finished pairs"):
        export_kit(tmp_path, BenchConfig(), tmp_path / "kit", "x", "2")


def test_curve_protocol_values_are_checked():
    with pytest.raises(LpoError, match="must not exceed the final evaluation's"):
        BenchConfig(eval_prompts=8, curve_prompts=16)
    with pytest.raises(LpoError, match="curve_images_per_prompt must be >= 0"):
        BenchConfig(curve_images_per_prompt=-1)
    quick = bench_preset("quick")
    assert quick.reward_kit == "quick" and quick.separate_curve and quick.curve_protocol() == (48, 2)
    assert bench_preset("full").reward_kit == "none"  # the full preset trains everything


def test_an_ablation_that_changes_the_kits_values_builds_its_own():
    from lpo.bench.ablations import ablation
    from lpo.bench.config import variant_config

    quick = bench_preset("quick")
    mpcf = ablation("mpcf")
    assert variant_config(quick, mpcf, {"mpcf_strategy": "none"}).reward_kit == "none"
    assert variant_config(quick, ablation("beta"), {"lpo_overrides": ("loss.beta=5",)}).reward_kit == "quick"


def test_the_eval_plan_scores_the_curve_on_a_subset_of_the_final_images(tmp_path):
    from lpo.bench.runner import Bench, eval_plan

    config = replace(bench_preset("quick"), methods=("lpo",))
    plan = {key: (benchmark, prompts, images) for key, _, _, benchmark, prompts, images in eval_plan(Bench(tmp_path, config))}
    assert plan == {
        "eval-world-base": ("world", 320, 2), "eval-world-curve-base": ("world", 48, 2),
        "eval-world-heldout-base": ("world-heldout", 320, 1),
        "eval-world-lpo": ("world", 320, 2), "eval-world-curve-lpo": ("world", 48, 2),
        "eval-world-heldout-lpo": ("world-heldout", 320, 1),
    }


def test_the_kits_reward_models_load_on_the_world_model_found_under_another_path(tmp_path):
    """A fresh clone puts the shipped world model elsewhere: the kit's reward models recognise
    it by the content of its U-Net, and still refuse a U-Net with other weights."""
    import shutil

    from lpo.reward.lrm_io import load_lrm
    from lpo.models.components import load_components
    from lpo.reward.pixel_io import load_pixel_reward
    from lpo.world.pretrain import resolve_world_alias

    moved = tmp_path / "elsewhere" / "quick"
    shutil.copytree(resolve_world_alias("world"), moved)
    kit = resolve_kit("quick")
    components = load_components(str(moved), device="cpu")
    unet = components.unet.config
    latents = torch.randn(2, unet.in_channels, unet.sample_size, unet.sample_size)
    for model in (load_lrm(kit / "rewards" / "lrm" / "model", components),
                  load_pixel_reward(kit / "rewards" / "pixel" / "model", components)):
        with torch.no_grad():
            scores = model.eval()(latents, 251, ["a red circle", "two blue squares"])
        assert scores.shape == (2,) and torch.isfinite(scores).all()  # it loads and scores on the moved base
    weights = next((moved / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # other weights, same path
    with pytest.raises(LpoError, match="was trained for base model"):
        load_lrm(kit / "rewards" / "lrm" / "model", load_components(str(moved), device="cpu"))


def test_a_kit_says_where_its_stages_ran_not_where_it_was_exported(tmp_path):
    config = BenchConfig(train_prompts=8, val_prompts=4)
    built = tmp_path / "built"
    _fake_bench(built)
    # bench.json as a later rerun of the finished bench leaves it: another commit and machine
    (built / "bench.json").write_text(json.dumps({"meta": {"git": {"commit": "b" * 40}, "hardware": {"cpu": "later"}}}))
    kit = export_kit(built, config, tmp_path / "kit-old", "x", "2")
    assert json.loads((kit / KIT_FILE).read_text())["git"]["commit"] == "b" * 40  # a bench without stage records
    pairs = json.loads((built / "stages" / "pairs.json").read_text())
    pairs["ran"] = {"git": {"commit": "a" * 40, "dirty": False}, "hardware": {"cpu": "first"}}
    (built / "stages" / "pairs.json").write_text(json.dumps(pairs))
    data = json.loads((export_kit(built, config, tmp_path / "kit", "x", "2") / KIT_FILE).read_text())
    assert data["git"] == {"commit": "a" * 40, "dirty": False} and data["hardware"] == {"cpu": "first"}
