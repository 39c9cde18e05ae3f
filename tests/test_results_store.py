"""Results store: immutable, versioned, atomically appended records."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

import lpo.evals.store as store
from lpo.core.errors import LpoError
from lpo.evals.harness import EvalConfig, EvalProtocol, run_eval
from lpo.evals.store import SCHEMA_VERSION, ResultRecord, append_records, load_records, records_path


def make_record(**overrides) -> ResultRecord:
    fields = dict(
        eval_id="e1",
        created="2026-01-01T00:00:00+00:00",
        benchmark="pickapic",
        benchmark_version="1",
        prompt_set_hash="abc123abc123",
        prompt_source="test prompts",
        metric="pickscore",
        metric_version="v1+lpo1",
        higher_is_better=True,
        value=21.0,
        stderr=0.1,
        ci95=(20.804, 21.196),
        n_prompts=500,
        n_images=2000,
        checkpoint={"spec": "sd15", "label": "sd15", "hash": "h" * 16, "kind": "pipeline", "path": None, "hub_id": None},
        method="base",
        protocol={"sampler": "ddim", "steps": 20, "guidance_scale": 7.5, "images_per_prompt": 4, "seed": 42,
                  "resolution": None, "dtype": "fp16", "eta": 0.0, "batch_size": 8, "image_size": [512, 512]},
        protocol_hash="p" * 16,
    )
    fields.update(overrides)
    return ResultRecord(**fields)


def test_records_round_trip_with_content_ids(tmp_path):
    records = [make_record(), make_record(metric="hpsv2", metric_version="v2.0+lpo1", value=26.5)]
    append_records(tmp_path, records)
    loaded = load_records(tmp_path)
    assert loaded == records
    assert len({r.record_id for r in loaded}) == 2
    assert all(r.schema_version == SCHEMA_VERSION for r in loaded)
    assert records_path(tmp_path, "pickapic").name == f"records-v{SCHEMA_VERSION}.jsonl"


def test_appending_keeps_every_old_byte(tmp_path):
    append_records(tmp_path, [make_record()])
    path = records_path(tmp_path, "pickapic")
    before = path.read_bytes()
    append_records(tmp_path, [make_record(value=22.0), make_record(value=23.0)])
    after = path.read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 3


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    append_records(tmp_path, [make_record()])
    path = records_path(tmp_path, "pickapic")
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "atomic_write_text", disk_full)
    with pytest.raises(OSError):
        append_records(tmp_path, [make_record(value=99.0)])
    assert path.read_bytes() == before


def test_edited_records_are_refused(tmp_path):
    append_records(tmp_path, [make_record()])
    path = records_path(tmp_path, "pickapic")
    data = json.loads(path.read_text())
    data["value"] = 25.0  # a "better" number typed in by hand
    path.write_text(json.dumps(data) + "\n")
    with pytest.raises(LpoError, match="does not match its content"):
        load_records(tmp_path)


def test_newer_schema_and_unknown_fields_are_refused(tmp_path):
    folder = tmp_path / "pickapic"
    folder.mkdir()
    (folder / f"records-v{SCHEMA_VERSION + 1}.jsonl").write_text("{}\n")
    with pytest.raises(LpoError, match="newer than this lpo"):
        load_records(tmp_path)
    (folder / f"records-v{SCHEMA_VERSION + 1}.jsonl").unlink()
    data = make_record().as_dict() | {"surprise": 1}
    records_path(tmp_path, "pickapic").write_text(json.dumps(data) + "\n")
    with pytest.raises(LpoError, match="surprise"):
        load_records(tmp_path)
    with pytest.raises(LpoError, match="does not exist"):
        load_records(tmp_path / "missing")


def test_concurrent_appends_lose_nothing(tmp_path):
    def worker(k: int) -> None:
        for i in range(10):
            append_records(tmp_path, [make_record(value=float(100 * k + i))])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    values = sorted(r.value for r in load_records(tmp_path))
    assert values == sorted(float(100 * k + i) for k in range(3) for i in range(10))


def test_single_prompt_has_no_interval(tmp_path):
    out = run_eval(EvalConfig("noise", max_prompts=1, metrics=("world_aesthetic",), protocol=EvalProtocol(images_per_prompt=2),
                              cache_dir=tmp_path / "cache", results_dir=tmp_path / "results"))
    record = load_records(tmp_path / "results")[0]
    assert record == out.records[0]
    assert record.stderr is None and record.ci95 is None and record.n_images == 2


def test_run_folder_checkpoints_carry_run_id_method_and_training_cost(tmp_path, tiny_world_dir):
    from lpo.core.runs import DeviceMeter, RunFolder

    run = RunFolder.create({"trainer": "lpo", "reward": "lrm"}, folder=tmp_path / "runs" / "lpo-world",
                           extra={"method": "lpo", "base_model": "world"})
    meter = DeviceMeter("cpu")
    meter.add("reward_model_training", 1800.0)
    meter.add("optimisation", 3600.0)
    run.write_cost(meter)
    shutil.copytree(tiny_world_dir, run.path / "pipeline")

    config = EvalConfig(str(run.path), max_prompts=2, metrics=("world_utility",),
                        protocol=EvalProtocol(steps=2, images_per_prompt=1),
                        cache_dir=tmp_path / "cache", results_dir=tmp_path / "results")
    record = run_eval(config).records[0]
    assert (record.run_id, record.method, record.base_model, record.optimised_reward) == ("lpo-world", "lpo", "world", "lrm")
    assert record.training_cost["device_hours"] == pytest.approx({"reward_model_training": 0.5, "optimisation": 1.0})
    assert record.checkpoint["path"] == str((run.path / "pipeline").resolve())

    # A run folder without a final model names what it looked for.
    shutil.rmtree(run.path / "pipeline")
    with pytest.raises(LpoError, match="no final model yet"):
        run_eval(config)


def test_checkpoint_hash_follows_content(tmp_path, tiny_world_dir):
    from lpo.evals.checkpoints import folder_hash

    copy = tmp_path / "copy"
    shutil.copytree(tiny_world_dir, copy)
    assert folder_hash(copy) == folder_hash(tiny_world_dir)
    config = json.loads((copy / "unet" / "config.json").read_text())
    (copy / "unet" / "config.json").write_text(json.dumps(config, indent=1))
    assert folder_hash(copy) != folder_hash(tiny_world_dir)
    # the cost record beside a model (seconds differ on every run) is bookkeeping, not content
    shutil.rmtree(copy)
    shutil.copytree(tiny_world_dir, copy)
    (copy / "cost.json").write_text('{"seconds": {"optimisation": 1.5}}')
    (copy / "unet" / "cost.json").write_text('{"seconds": {"optimisation": 2.5}}')
    assert folder_hash(copy) == folder_hash(tiny_world_dir)
