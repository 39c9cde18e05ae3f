"""lpo.core.runs: run folders (config.json, run.json, cost.json) and the device-hour meter (SPEC §8)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import pytest

from lpo.core.config import config_to_dict
from lpo.core.errors import LpoError
from lpo.core.runs import STAGES, DeviceMeter, RunFolder, active_meter, read_cost


@dataclass
class _Inner:
    beta: float = 500.0


@dataclass
class _Config:
    lr: float = 1e-4
    steps: int = 3
    inner: _Inner = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.inner is None:
            self.inner = _Inner()


# --------------------------------------------------------------------------- the meter


def test_stages_add_up_and_nested_stages_are_not_double_counted():
    meter = DeviceMeter("cpu")
    start = time.perf_counter()
    with meter.stage("reward_model_training"):
        time.sleep(0.05)
        eval_start = time.perf_counter()
        with meter.stage("evaluation"):  # pauses the training stage
            time.sleep(0.05)
        eval_wall = time.perf_counter() - eval_start
        time.sleep(0.02)
    training_wall = time.perf_counter() - start
    with meter.stage("optimisation"):
        time.sleep(0.03)
    wall = time.perf_counter() - start

    record = meter.as_dict()
    seconds = record["seconds"]
    assert set(seconds) == set(STAGES) - {"rollout"}  # the stages that were opened
    # sleeps may overrun on a busy machine, never underrun; tolerances cover timer calls only
    assert 0.05 <= seconds["evaluation"] <= eval_wall + 1e-3
    assert 0.07 <= seconds["reward_model_training"] <= training_wall - seconds["evaluation"] + 1e-3
    assert seconds["optimisation"] >= 0.03
    assert sum(seconds.values()) == pytest.approx(record["total_seconds"])
    assert sum(seconds.values()) == pytest.approx(wall, abs=5e-3)  # nothing lost or counted twice
    assert record["device_type"] == "cpu" and record["device_count"] == 1
    for stage, value in seconds.items():
        assert record["device_hours"][stage] == pytest.approx(value / 3600)
    assert record["total_device_hours"] == pytest.approx(sum(seconds.values()) / 3600)
    assert record["device_hours_by_type"] == {"cpu": pytest.approx(record["device_hours"])}


def test_device_hours_scale_with_the_device_count_and_unknown_stages_fail():
    meter = DeviceMeter("cpu", device_count=4)
    meter.add("optimisation", 1800.0)
    assert meter.as_dict()["device_hours"] == {"optimisation": pytest.approx(2.0)}
    with pytest.raises(ValueError, match="optimization.*reward_model_training, rollout, optimisation, evaluation"):
        meter.add("optimization", 1.0)  # a typo would split the cost silently
    with pytest.raises(ValueError, match="-1"):
        meter.add("optimisation", -1.0)
    with pytest.raises(ValueError, match="0"):
        DeviceMeter("cpu", device_count=0)


def test_meter_from_accelerator_counts_its_processes():
    from accelerate import Accelerator

    accelerator = Accelerator()
    meter = DeviceMeter(accelerator=accelerator)
    assert meter.device_type == "cpu"
    assert meter.device_count == accelerator.num_processes == 1


def test_included_records_add_per_device_type():
    lrm = DeviceMeter("cpu")
    lrm.add("reward_model_training", 7200.0)
    gpu_record = {"device_type": "NVIDIA A100-SXM4-80GB", "device_count": 4, "seconds": {"reward_model_training": 900.0},
                  "device_hours": {"reward_model_training": 1.0}}
    meter = DeviceMeter("cpu")
    meter.add("optimisation", 3600.0)
    meter.include(lrm.as_dict(), source="runs/lrm-1")
    meter.include(gpu_record, source="runs/lrm-gpu")
    record = meter.as_dict()
    assert record["seconds"] == {"optimisation": 3600.0}  # own measurement only
    assert [r["source"] for r in record["included"]] == ["runs/lrm-1", "runs/lrm-gpu"]
    assert record["device_hours_by_type"] == {
        "cpu": {"optimisation": pytest.approx(1.0), "reward_model_training": pytest.approx(2.0)},
        "NVIDIA A100-SXM4-80GB": {"reward_model_training": pytest.approx(1.0)},
    }
    with pytest.raises(LpoError, match="not an lpo cost record"):
        meter.include({"seconds": {}}, source="x")


def test_restore_continues_the_same_runs_record():
    first = DeviceMeter("cpu")
    first.add("reward_model_training", 10.0)
    second = DeviceMeter("cpu")
    second.restore(first.as_dict())
    second.add("reward_model_training", 5.0)
    assert second.as_dict()["seconds"] == {"reward_model_training": 15.0}
    assert second.as_dict()["included"] == []


def test_the_active_meter_is_the_innermost_open_stages():
    outer, inner = DeviceMeter("cpu"), DeviceMeter("cpu")
    assert active_meter() is None
    with outer.stage("optimisation"):
        assert active_meter() is outer
        with inner.stage("evaluation"):  # e.g. the evaluation harness's own meter
            assert active_meter() is inner
        assert active_meter() is outer
        # a hook that is not handed the meter counts itself as evaluation, pausing optimisation
        with active_meter().stage("evaluation"):
            time.sleep(0.05)
    assert active_meter() is None
    seconds = outer.as_dict()["seconds"]
    assert seconds["evaluation"] >= 0.05 and seconds["optimisation"] < 0.05
    with pytest.raises(RuntimeError):
        with outer.stage("optimisation"):
            raise RuntimeError("boom")
    assert active_meter() is None  # reset on the way out of a failed stage too


def test_a_written_record_is_continued_on_its_own_device_type():
    gpu = {"device_type": "NVIDIA H100 80GB HBM3", "device_count": 4, "seconds": {"optimisation": 900.0},
           "device_hours": {"optimisation": 1.0}, "included": [{"source": "lrm", "device_type": "cpu", "device_count": 1,
                                                                "seconds": {"reward_model_training": 3600.0},
                                                                "device_hours": {"reward_model_training": 1.0}}]}
    meter = DeviceMeter.from_record(gpu)
    meter.add("evaluation", 450.0)
    record = meter.as_dict()
    assert (record["device_type"], record["device_count"]) == ("NVIDIA H100 80GB HBM3", 4)
    assert record["seconds"] == {"optimisation": 900.0, "evaluation": 450.0}
    assert record["device_hours"] == {"optimisation": pytest.approx(1.0), "evaluation": pytest.approx(0.5)}
    assert record["included"] == gpu["included"]
    assert record["device_hours_by_type"]["cpu"] == {"reward_model_training": pytest.approx(1.0)}
    with pytest.raises(LpoError, match="not an lpo cost record"):
        DeviceMeter.from_record({"seconds": {}})


# --------------------------------------------------------------------------- run folders


def test_run_folder_holds_resolved_config_and_metadata(tmp_path):
    config = _Config(lr=3e-4)
    run = RunFolder.create(config, name="lrm-world", root=tmp_path, extra={"preset": "lrm-world"})

    assert run.path.parent == tmp_path
    assert re.fullmatch(r"lrm-world-\d{8}-\d{6}", run.path.name)
    assert json.loads(run.config_path.read_text()) == config_to_dict(config) == {"lr": 3e-4, "steps": 3, "inner": {"beta": 500.0}}
    meta = json.loads(run.run_path.read_text())
    assert meta["name"] == "lrm-world" and meta["preset"] == "lrm-world" and meta["resumes"] == []
    assert isinstance(meta["argv"], list)
    assert re.fullmatch(r"[0-9a-f]{40}", meta["git"]["commit"])  # the tests run inside the lpo checkout
    assert isinstance(meta["git"]["dirty"], bool)
    for package in ("torch", "diffusers", "transformers", "accelerate", "lpo"):
        assert meta["versions"][package] != "not installed"
    assert meta["hardware"]["cpu_count"] >= 1
    assert not list(tmp_path.glob("**/*.tmp"))  # atomic writes leave nothing behind


def test_two_runs_started_in_the_same_second_get_separate_folders(tmp_path):
    a = RunFolder.create({"x": 1}, name="run", root=tmp_path)
    b = RunFolder.create({"x": 2}, name="run", root=tmp_path)
    assert a.path != b.path
    assert a.read_config() == {"x": 1} and b.read_config() == {"x": 2}


def test_a_folder_that_holds_a_run_is_not_overwritten_but_can_be_resumed(tmp_path):
    run = RunFolder.create({"x": 1}, folder=tmp_path / "mine")
    with pytest.raises(LpoError, match="already holds a run"):
        RunFolder.create({"x": 2}, folder=tmp_path / "mine")
    resumed = RunFolder.resume(tmp_path / "mine", {"x": 1, "log_every": 5})
    assert resumed.path == run.path
    assert resumed.read_config() == {"x": 1, "log_every": 5}
    assert len(resumed.read_run()["resumes"]) == 1
    with pytest.raises(LpoError, match="not a run folder"):
        RunFolder.open(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="name"):
        RunFolder.create({"x": 1}, root=tmp_path)
    with pytest.raises(LpoError, match="'a/b'"):
        RunFolder.create({"x": 1}, name="a/b", root=tmp_path)


def test_cost_is_written_and_read_back_from_run_or_model_folder(tmp_path):
    meter = DeviceMeter("cpu")
    meter.add("reward_model_training", 36.0)
    run = RunFolder.create({"x": 1}, name="lrm", root=tmp_path)
    assert run.read_cost() is None
    run.write_cost(meter)
    assert read_cost(run.path) == meter.as_dict()
    model = run.path / "model"
    model.mkdir()
    assert read_cost(model) == meter.as_dict()  # a model saved inside its run folder
    with pytest.raises(LpoError, match="no cost record"):
        read_cost(tmp_path / "nowhere" / "model")


def test_a_record_taken_inside_a_stage_counts_the_open_stage():
    meter = DeviceMeter("cpu")
    with meter.stage("reward_model_training"):
        time.sleep(0.02)
        assert meter.as_dict()["seconds"]["reward_model_training"] >= 0.02  # e.g. cost.json written mid-training
        time.sleep(0.02)
    assert meter.as_dict()["seconds"]["reward_model_training"] >= 0.04


def test_a_field_added_since_a_run_started_counts_at_its_former_value():
    from lpo.core.config import config_to_dict
    from lpo.core.runs import config_changes
    from lpo.trainers.presets import trainer_preset

    config = trainer_preset("lpo-world")
    old = config_to_dict(config)
    del old["sampler"]["inner_steps"]  # a config.json written before the field existed
    assert config_changes(old, config_to_dict(config), added=type(config).ADDED_DEFAULTS) == []
    assert config_changes(old, config_to_dict(config)) == ["sampler.inner_steps: None -> 0"]  # without the table
    changed = config_to_dict(config)
    changed["sampler"]["inner_steps"] = 2
    assert config_changes(old, changed, added=type(config).ADDED_DEFAULTS) == ["sampler.inner_steps: 0 -> 2"]
