"""Run-folder lifecycle (issue 13, item 5).

- a run whose setup fails (missing prompts, a broken reward) leaves no half-run behind, so the
  same command works once the input is fixed;
- ``--resume`` refuses a finished run (it would retrain its last rounds and overwrite its
  model), and a checkpoint-less run whose config.json differs;
- a resume on another CPU thread count than the run's says the weights will differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lpo.core.errors import LpoError
from lpo.core.runs import RunFolder, config_changes, resume_mismatches
from lpo.trainers.jobs import run_training

from tiny_models import save_random_lrm

ONE_ROUND = ["train.max_rounds=1", "sampler.sample_batch_size=4", "train.train_batch_size=4",
             "sampler.threshold_min=0.0", "sampler.threshold_max=0.0", "sampler.min_timestep=801"]


@pytest.fixture(scope="module")
def world_lrm(tiny_world_dir, tmp_path_factory) -> Path:
    return save_random_lrm(tiny_world_dir, tmp_path_factory.mktemp("rewards") / "lrm")


def _lpo(base: Path, lrm: Path, *extra: str) -> list[str]:
    return [f"model.base={base}", f"reward.path={lrm}", *ONE_ROUND, *extra]


def test_a_failed_start_leaves_nothing_and_the_fixed_command_runs(tiny_world_dir, world_lrm, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(LpoError, match="does not exist"):
        run_training("lpo", "lpo-world", _lpo(tiny_world_dir, world_lrm, f"train.prompts={tmp_path / 'missing.txt'}"),
                     run_dir=run_dir)
    assert not run_dir.exists()  # no config.json / run.json left to say "already holds a run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    result = run_training("lpo", "lpo-world", _lpo(tiny_world_dir, world_lrm, f"train.prompts={prompts}"),
                          run_dir=run_dir)
    assert result.steps == 1 and RunFolder(run_dir).finished
    # `lpo sample` takes the run folder as `lpo eval` does: its policy on its base model
    from typer.testing import CliRunner

    from lpo.cli import app

    grid = tmp_path / "grid.png"
    out = CliRunner().invoke(app, ["sample", str(run_dir), "--num-prompts", "2", "--steps", "2", "--out", str(grid)])
    assert out.exit_code == 0, out.output
    assert grid.is_file()


def test_a_failed_start_in_an_existing_folder_keeps_the_users_files(tiny_world_dir, world_lrm, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    broken = tmp_path / "broken-lrm"
    broken.mkdir()  # exists (check_parts passes) but holds no LRM
    with pytest.raises(LpoError, match="not a complete LRM folder"):
        run_training("lpo", "lpo-world", _lpo(tiny_world_dir, broken, "train.prompts=world:train"), run_dir=run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt"]


def test_resume_refuses_a_finished_run_and_leaves_its_model(tiny_world_dir, world_lrm, tmp_path):
    run_dir = tmp_path / "run"
    args = _lpo(tiny_world_dir, world_lrm, "train.prompts=world:train")
    run_training("lpo", "lpo-world", args, run_dir=run_dir)
    model = run_dir / "model"
    before = {p.name: p.stat().st_mtime_ns for p in model.iterdir()}
    run_json = (run_dir / "run.json").read_text()
    with pytest.raises(LpoError, match=r"is finished .*nothing to resume") as err:
        run_training("lpo", "lpo-world", args, run_dir=run_dir, resume=True)
    assert "\n" not in str(err.value)
    assert {p.name: p.stat().st_mtime_ns for p in model.iterdir()} == before
    assert (run_dir / "run.json").read_text() == run_json  # no resume recorded


def test_resume_without_checkpoints_refuses_a_changed_config(tmp_path):
    run = RunFolder.create({"optim": {"lr": 1e-4}, "run": {"log_every": 1}}, folder=tmp_path / "run")
    with pytest.raises(LpoError, match=r"optim.lr: 0.0001 -> 0.001.*no checkpoint"):
        RunFolder.resume(run.path, {"optim": {"lr": 1e-3}, "run": {"log_every": 1}}, resume_free=frozenset())
    # bookkeeping fields may change; without resume_free nothing is compared (the caller compares)
    RunFolder.resume(run.path, {"optim": {"lr": 1e-4}, "run": {"log_every": 5}}, resume_free=frozenset({"run.log_every"}))
    assert len(RunFolder.open(run.path).read_run()["resumes"]) == 1


def test_config_changes_flattens_nested_keys_and_ignores_the_given_ones():
    old = {"a": {"b": 1, "c": 2}, "d": 3}
    assert config_changes(old, {"a": {"b": 1, "c": 5}, "d": 4}, frozenset({"d"})) == ["a.c: 2 -> 5"]
    assert config_changes(old, {"a": {"b": 1}, "d": 3}) == ["a.c: 2 -> None"]


def test_resume_on_another_thread_count_is_reported(tmp_path):
    run = RunFolder.create({"x": 1}, folder=tmp_path / "run")
    threads = torch.get_num_threads()
    assert resume_mismatches(run, "cpu") == []
    meta = json.loads(run.run_path.read_text())
    meta["hardware"]["torch_threads"] = threads + 3
    run.run_path.write_text(json.dumps(meta))
    (message,) = resume_mismatches(run, "cpu")
    assert f"runs {threads} CPU threads where the run ran {threads + 3}" in message
    assert f"OMP_NUM_THREADS={threads + 3}" in message
    # the newest segment counts: a resume recorded with this thread count clears it
    RunFolder.resume(run.path, {"x": 1})
    assert resume_mismatches(run, "cpu") == []


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_identical_lora_runs_write_identical_files_all_readable_by_others(tiny_world_dir, world_lrm, tmp_path):
    """Weights are shared between people and machines: the same run gives the same bytes
    (a LoRA's tensors in one order), and every file is rw-r--r-- like the rest of the folder."""
    args = _lpo(tiny_world_dir, world_lrm, "train.prompts=world:train", "policy.mode=lora", "policy.lora_rank=2",
                "run.save_every=1")
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        run_training("lpo", "lpo-world", args, run_dir=run_dir)
    weights = [_files(r / "model") for r in runs]
    assert weights[0].keys() == weights[1].keys() and any(k.endswith(".safetensors") for k in weights[0])
    for name, path in weights[0].items():
        if name.endswith(".safetensors"):
            assert path.read_bytes() == weights[1][name].read_bytes(), name
    modes = {name: oct(path.stat().st_mode & 0o777) for name, path in _files(runs[0]).items()}
    assert [name for name, mode in modes.items() if mode != oct(0o644)] == []


LORA_METADATA_SCRIPT = """
import json, sys
import torch
from diffusers import UNet2DConditionModel
from lpo.trainers.lora import add_lora, lora_metadata
torch.manual_seed(0)
unet = UNet2DConditionModel.from_pretrained(sys.argv[1], subfolder="unet")
add_lora(unet, rank=2)
print(json.dumps(lora_metadata(unet)))
"""


def test_lora_metadata_does_not_depend_on_the_hash_seed(tiny_world_dir):
    """peft keeps target modules in a set; two processes with other hash seeds must still
    write the same LoRA file (its metadata is part of the safetensors header)."""
    import os
    import subprocess
    import sys

    outputs = []
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-c", LORA_METADATA_SCRIPT, str(tiny_world_dir)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout.strip().splitlines()[-1])
    assert outputs[0] == outputs[1] == outputs[2]
    assert json.loads(outputs[0])["target_modules"] == sorted(json.loads(outputs[0])["target_modules"])


def test_a_round_that_keeps_nothing_prints_no_library_warning(tiny_world_dir, world_lrm, tmp_path):
    """The schedule counts rounds, so a round without an update steps it before any optimiser
    step: intended, and torch's warning about it must not reach the user."""
    import warnings

    args = _lpo(tiny_world_dir, world_lrm, "train.prompts=world:train", "sampler.threshold_min=0.99",
                "sampler.threshold_max=0.99")  # no gap of an untrained LRM's scores is that wide
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(LpoError, match="optimiser step"):
            run_training("lpo", "lpo-world", args, run_dir=tmp_path / "run")
    assert [str(w.message) for w in caught if "lr_scheduler" in str(w.message)] == []


def test_a_new_run_that_diverges_before_its_first_checkpoint_leaves_nothing(tiny_world_dir, world_lrm, tmp_path):
    """Nothing in it could be resumed, so the fixed command (a lower lr) runs in the same folder."""
    run_dir = tmp_path / "run"
    args = _lpo(tiny_world_dir, world_lrm, "train.prompts=world:train", "train.max_rounds=3")
    with pytest.raises(LpoError, match="diverged"):
        run_training("lpo", "lpo-world", [*args, "optim.lr=1e6"], run_dir=run_dir)
    assert not run_dir.exists()
    assert run_training("lpo", "lpo-world", args, run_dir=run_dir).steps == 3


def test_safetensors_headers_are_rewritten_in_one_key_order(tmp_path):
    """safetensors writes __metadata__ from a hash map (its order changes between saves): the
    LoRA saver sorts the header in place, keeping its length, so the tensors still load."""
    from safetensors.torch import load_file, save_file

    from lpo.trainers.lora import canonical_safetensors_header

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4)}
    for name, metadata in (("x", {"format": "pt", "lora_adapter_metadata": "{}"}),
                           ("y", {"lora_adapter_metadata": "{}", "format": "pt"})):
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata=metadata)
        canonical_safetensors_header(tmp_path / f"{name}.safetensors")
    x, y = (tmp_path / "x.safetensors").read_bytes(), (tmp_path / "y.safetensors").read_bytes()
    assert x == y
    loaded = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
