"""DeepSpeed ZeRO-2 through `accelerate launch --config_file lpo/trainers/launch/zero2.yaml` on two CPU
processes (DeepSpeed's CPU accelerator, gloo): a short LPO and a short Diffusion-DPO job.

ZeRO-2 partitions Adam's state and the gradients but is the same mathematics as plain data
parallelism, so the trained LoRA weights must equal those of the same two jobs under DDP
(test_trainers_multiprocess's launch) up to float32 summation order, both ranks must hold
identical weights after every optimiser step, and the run must write the files DDP writes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("deepspeed")

import lpo.trainers  # noqa: E402
from test_trainers_multiprocess import SCRIPT  # noqa: E402

LAUNCH = Path(lpo.trainers.__file__).parent / "launch"

# Runs in each process: a 4-step Diffusion-DPO run straight through, the same run stopped on
# every process after its step-2 checkpoint, and that run resumed; then the resumed run's
# starting point, for the test to compare the two final models.
RESUME_SCRIPT = r'''
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
import lpo.world
lpo.world.install()
import lpo.trainers.diffusion_dpo as diffusion_dpo
from lpo.trainers.jobs import run_training

out, world, pairs = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
sets = [f"model.base={world}", f"data.pairs={pairs}", "train.max_steps=4", "train.batch_size=8",
        "optim.gradient_accumulation_steps=2", "optim.warmup_steps=0", "run.save_every=2", "run.log_every=1",
        "policy.mode=lora", "optim.lr=1e-3", "optim.lr_scheduler=linear"]
run_training("diffusion-dpo", "dpo-world", sets, run_dir=out / "straight")

class Stop(Exception):
    pass

original, calls = diffusion_dpo.accumulated_step, []
def stopping(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # step 3 of the second run: checkpoint 2 is on disk
        raise Stop
    return original(*args, **kwargs)
diffusion_dpo.accumulated_step = stopping
try:
    run_training("diffusion-dpo", "dpo-world", sets, run_dir=out / "cut")
except Stop:
    pass
diffusion_dpo.accumulated_step = original
result = run_training("diffusion-dpo", "dpo-world", sets, run_dir=out / "cut", resume=True)
(out / "resumed.json").write_text(json.dumps({"resumed_from": result.resumed_from}))
'''


def _free_port() -> int:
    with socket.socket() as probe:  # another job on the machine may hold accelerate's 29500
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Runs in each process: 4 steps of LRM training (2 micro-batches per step, accelerate's own
# accumulation, which DeepSpeed's engine takes over) with a checkpoint at step 2; then the same
# run stopped on every process in step 3 and resumed.
REWARD_SCRIPT = r'''
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
import lpo.world
lpo.world.install()
import lpo.reward.training as training
from lpo.reward.jobs import train_reward_job

out, world, pairs = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
sets = ["max_steps=4", "batch_size=8", "gradient_accumulation_steps=2", "warmup_steps=1", "save_every=2",
        "eval_every=0", "log_every=1", "lr=1e-3"]
train_reward_job(world, pairs, "lrm-world", sets, run_dir=out / "lrm")

class Stop(Exception):
    pass

original = training.RewardTrainingLoop.run_unit
def stopping(self, step, log_due):
    if step == 2:
        raise Stop
    return original(self, step, log_due)
training.RewardTrainingLoop.run_unit = stopping
try:
    train_reward_job(world, pairs, "lrm-world", sets, run_dir=out / "cut")
except Stop:
    pass
training.RewardTrainingLoop.run_unit = original
train_reward_job(world, pairs, "lrm-world", sets, run_dir=out / "cut", resume=True)
'''

ZERO2 = ["--config_file", str(LAUNCH / "zero2.yaml")]
DDP = ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
DDP_ENV = {"ACCELERATE_USE_CPU": "1"}
ZERO2_ENV = {"DS_ACCELERATOR": "cpu"}


def _launch(launch_args: list[str], env_extra: dict[str, str], out: Path, script_text: str, *args: Path) -> None:
    out.mkdir(parents=True)
    script = out / "job.py"
    script.write_text(script_text)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env_extra}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", *launch_args, "--num_processes", "2",
         "--main_process_port", str(_free_port()), str(script), str(out), *map(str, args)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])


def _ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _trained(folder: Path) -> dict[str, torch.Tensor]:
    """The run's final policy: its LoRA weights, or the whole U-Net of a full fine-tune."""
    from safetensors.torch import load_file

    model = folder / "model"
    lora = model / "pytorch_lora_weights.safetensors"
    return load_file(str(lora if lora.is_file() else model / "diffusion_pytorch_model.safetensors"))


def _assert_same_training(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], lr: float) -> None:
    assert got.keys() == want.keys()
    off = sum(int((~torch.isclose(got[k], want[k], rtol=1e-4, atol=1e-6)).sum()) for k in want)
    assert off <= 1e-3 * sum(v.numel() for v in want.values()), off
    assert max(float((got[k] - want[k]).abs().max()) for k in want) <= 0.05 * lr


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    from lpo.pairs.format import PreferencePair, save_pairs

    rng = np.random.default_rng(0)
    pairs = [PreferencePair(f"p{i}", ("a red circle", "a blue square")[i % 2],
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), (1.0, 0.0)[i % 2], "test")
             for i in range(16)]
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    save_pairs(pairs, path)
    return path


def test_zero2_on_two_cpu_processes_trains_as_ddp_does(tiny_world_dir, pairs_file, tmp_path):
    from test_trainers_resume import lrm_with_cost

    lrm = lrm_with_cost(tiny_world_dir, tmp_path / "lrm")
    args = (tiny_world_dir, lrm, pairs_file)
    _launch(ZERO2, ZERO2_ENV, tmp_path / "zero2", SCRIPT, *args)
    _launch(DDP, DDP_ENV, tmp_path / "ddp", SCRIPT, *args)
    zero, ddp = _ranks(tmp_path / "zero2"), _ranks(tmp_path / "ddp")

    # identical weights on both ranks after every optimiser step, and they moved
    assert zero[0]["hashes"] == zero[1]["hashes"] and len(set(zero[0]["hashes"])) == len(zero[0]["hashes"]) >= 4
    # the same steps, kept pairs and logged losses as DDP
    assert len(zero[0]["hashes"]) == len(ddp[0]["hashes"])
    assert [row["kept"] for row in zero[0]["lpo_history"]] == [row["kept"] for row in ddp[0]["lpo_history"]]
    for ours, theirs in ((zero[0]["lpo_history"], ddp[0]["lpo_history"]), (zero[0]["dpo_history"], ddp[0]["dpo_history"])):
        for row_z, row_d in zip(ours, theirs, strict=True):
            assert row_z["loss"] == pytest.approx(row_d["loss"], rel=1e-4, abs=1e-6)
    # The trained weights (LPO: the whole U-Net, lr 1e-4; Diffusion-DPO: LoRA, lr 1e-3) equal DDP's up
    # to summation order. Adam divides each element's step by its gradient's running size, so an
    # element whose gradient is near zero can take a visibly different step under another order:
    # allowed for at most 0.1% of the elements, and never more than 5% of one step (measured: LPO
    # none, at most 3e-7; Diffusion-DPO 6 of 23,296, at most 1.9e-5).
    for job, lr in (("lpo", 1e-4), ("dpo", 1e-3)):
        _assert_same_training(_trained(tmp_path / "zero2" / job), _trained(tmp_path / "ddp" / job), lr)
    cost = json.loads((tmp_path / "zero2" / "lpo" / "cost.json").read_text())
    assert cost["device_count"] == 2 and cost["device_type"] == "cpu"
    # a LoRA run's DeepSpeed checkpoint leaves the frozen base model out: only the adapters are in it
    state = next((tmp_path / "zero2" / "dpo" / "checkpoints").iterdir()) / "state"
    module = torch.load(state / "pytorch_model" / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    assert module and all("lora" in key for key in module), sorted(module)[:3]
    assert (state / "trainable.safetensors").is_file()


def test_zero2_run_resumes_to_the_uninterrupted_weights(tiny_world_dir, pairs_file, tmp_path):
    out = tmp_path / "runs"
    _launch(ZERO2, ZERO2_ENV, out, RESUME_SCRIPT, tiny_world_dir, pairs_file)
    assert json.loads((out / "resumed.json").read_text())["resumed_from"] == 2
    straight, resumed = _trained(out / "straight"), _trained(out / "cut")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)


def test_zero2_trains_the_lrm_as_ddp_does(tiny_world_dir, pairs_file, tmp_path):
    from safetensors.torch import load_file

    for name, launch, env in (("zero2", ZERO2, ZERO2_ENV), ("ddp", DDP, DDP_ENV)):
        _launch(launch, env, tmp_path / name, REWARD_SCRIPT, tiny_world_dir, pairs_file)
    got, want = (load_file(str(tmp_path / name / "lrm" / "model" / "model.safetensors")) for name in ("zero2", "ddp"))
    _assert_same_training(got, want, 1e-3)
    rows = [[json.loads(line) for line in (tmp_path / name / "lrm" / "metrics.jsonl").read_text().splitlines()]
            for name in ("zero2", "ddp")]
    losses = [[row["loss"] for row in runs if "loss" in row] for runs in rows]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-4)
    # the run stopped in step 3 resumed from its step-2 checkpoint to the straight run's weights; the
    # LRM files keep their 0-dim logit scale although DeepSpeed trained it shaped (1,)
    resumed = load_file(str(tmp_path / "zero2" / "cut" / "model" / "model.safetensors"))
    assert resumed["logit_scale"].dim() == got["logit_scale"].dim() == 0
    for key in got:
        torch.testing.assert_close(resumed[key], got[key], rtol=0, atol=0)
