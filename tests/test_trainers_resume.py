"""`lpo train --resume` after a real SIGKILL: the resumed run ends with the weights of an
uninterrupted run (same seed, CPU), and checkpoints are only ever complete or absent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch


def lrm_with_cost(base: Path, out: Path) -> Path:
    """An (untrained) LRM folder with a cost record, as `lpo lrm train` leaves one."""
    from lpo.core.io import atomic_write_json
    from lpo.reward.lrm import LatentRewardModel, LRMConfig
    from lpo.reward.lrm_io import save_lrm
    from lpo.models.components import load_components
    from lpo.core.runs import DeviceMeter

    torch.manual_seed(0)
    save_lrm(LatentRewardModel.from_components(load_components(base), LRMConfig(vfe_scale=1.0)), out)
    meter = DeviceMeter()
    meter.add("reward_model_training", 5.0)
    atomic_write_json(out / "cost.json", meter.as_dict())
    return out


def _command(world: Path, lrm: Path, run_dir: Path, *extra: str) -> list[str]:
    sets = [
        f"model.base={world}", f"reward.path={lrm}", "train.max_rounds=8", "sampler.sample_batch_size=4",
        "train.train_batch_size=8", "sampler.threshold_min=0.0", "sampler.threshold_max=0.0", "sampler.min_timestep=801",
        "optim.lr_scheduler=linear", "optim.warmup_steps=2", "run.save_every=2", "run.keep_checkpoints=2",
    ]
    args = [sys.executable, "-m", "lpo.cli", "train", "--method", "lpo", "--preset", "lpo-world", "--run-dir", str(run_dir),
            "--no-eval"]  # `lpo train` evaluates every checkpoint by default (into ./results)
    for item in sets:
        args += ["--set", item]
    return args + list(extra)


def _env() -> dict[str, str]:
    # One thread in every process: float results depend on the thread count.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_a_killed_run_resumes_to_the_uninterrupted_weights(tiny_world_dir, tmp_path):
    lrm = lrm_with_cost(tiny_world_dir, tmp_path / "lrm")

    # 1. the reference: one uninterrupted run (in this process: one torch thread, as the subprocesses)
    from lpo.trainers.jobs import run_training

    sets = [a for a in _command(tiny_world_dir, lrm, tmp_path / "straight") if "=" in a and not a.startswith("-")]
    run_training("lpo", "lpo-world", sets, run_dir=tmp_path / "straight")

    # 2. the same run, SIGKILLed once its first checkpoint is complete
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_command(tiny_world_dir, lrm, run_dir), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    marker = run_dir / "checkpoints" / "step-000002" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    assert not (run_dir / "model").exists() and not (run_dir / "result.json").exists()
    completed = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith("."))
    assert completed and all((run_dir / "checkpoints" / name / "trainer_state.json").is_file() for name in completed)

    # 3. resume: it continues from the newest complete checkpoint and ends where the straight run ended
    resumed = subprocess.run(_command(tiny_world_dir, lrm, run_dir, "--resume"), env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(tmp_path / "straight" / "model"), _weights(run_dir / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    result = json.loads((run_dir / "result.json").read_text())
    print("resumed from", result["resumed_from"])
    assert result["resumed_from"] in (2, 4, 6) and result["steps"] == 8
    assert [row["round"] for row in result["history"]] == list(range(1, 9))
    assert len(json.loads((run_dir / "run.json").read_text())["resumes"]) == 1
    straight_rows = json.loads((tmp_path / "straight" / "result.json").read_text())["history"]
    assert [r["loss"] for r in result["history"]] == [r["loss"] for r in straight_rows]
    assert not any(p.name.startswith(".") for p in (run_dir / "checkpoints").iterdir())  # no half-written leftovers

    # 4. a resume with other settings is refused before anything is touched (in-process: same code path)
    import pytest

    from lpo.core.errors import LpoError
    from lpo.trainers.jobs import run_training

    with pytest.raises(LpoError, match="is finished"):  # a finished run is not resumed at all
        run_training("lpo", "lpo-world", [*sets, "loss.beta=5"], run_dir=run_dir, resume=True)
    (run_dir / "result.json").unlink()  # as if killed after its last checkpoint, before finishing
    before = (run_dir / "config.json").read_text(), (run_dir / "run.json").read_text()
    with pytest.raises(LpoError, match="loss.beta: 50.0 -> 5.0"):
        run_training("lpo", "lpo-world", [*sets, "loss.beta=5"], run_dir=run_dir, resume=True)
    assert ((run_dir / "config.json").read_text(), (run_dir / "run.json").read_text()) == before
