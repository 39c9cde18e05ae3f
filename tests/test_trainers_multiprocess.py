"""Two CPU processes of accelerate (MULTI_CPU, gloo): a short LPO and a short Diffusion-DPO job.
Every rank must hold identical weights after every optimiser step (the gradients were
averaged), and LPO's kept pairs must be gathered from both ranks.

The processes are started by `accelerate launch --multi_gpu --num_processes 2` itself, with
ACCELERATE_USE_CPU=1. Why not `--cpu`: accelerate 1.15 sends `--cpu` to its simple launcher,
which starts several processes only through MPI (`--mpirun_hostfile`), so `--cpu
--num_processes 2` runs ONE process. `--multi_gpu` goes through torchrun; without
ACCELERATE_USE_CPU=1 each of its processes then finds no GPU and believes it is alone (lpo
refuses that, see harness._check_world_size); with it they form one gloo group."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np

# Runs in each process: records, per rank, a hash of the policy's trainable weights after every
# optimiser step and what gather_kept saw, then runs the two jobs through lpo.trainers.jobs.
SCRIPT = r'''
import hashlib, json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
import lpo.world
lpo.world.install()  # a program of its own plugs the world in, as the lpo command does
import lpo.trainers.step_dpo as step_dpo
import lpo.trainers.diffusion_dpo as diffusion_dpo
from lpo.trainers.jobs import run_training

out, world, lrm, pairs = sys.argv[1:5]
rank = int(os.environ["RANK"])
record = {"hashes": [], "gathers": []}

def digest(model):
    module = getattr(model, "module", model)
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        if p.requires_grad:
            h.update(name.encode()); h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()

for mod in (step_dpo, diffusion_dpo):
    original = mod.accumulated_step
    def wrapped(accelerator, model, *args, _original=original, **kwargs):
        logs = _original(accelerator, model, *args, **kwargs)
        record["hashes"].append(digest(model))
        return logs
    mod.accumulated_step = wrapped

original_gather = step_dpo.gather_kept
def gather(accelerator, kept):
    everything = original_gather(accelerator, kept)
    record["gathers"].append({"local": len(kept), "local_prompts": kept.prompts, "total": len(everything),
                              "prompts": everything.prompts,
                              "digest": hashlib.sha256(everything.latents_w.numpy().tobytes()).hexdigest()})
    return everything
step_dpo.gather_kept = gather

common = ["sampler.threshold_min=0.0", "sampler.threshold_max=0.0", "sampler.min_timestep=851",
          "sampler.sample_batch_size=3", "train.train_batch_size=4", "train.max_rounds=2", "run.save_every=1"]
lpo_result = run_training("lpo", "lpo-world", [f"model.base={world}", f"reward.path={lrm}", *common],
                          run_dir=Path(out) / "lpo")
record["lpo_steps"] = lpo_result.optimizer_steps
record["lpo_history"] = lpo_result.history
dpo_result = run_training("diffusion-dpo", "dpo-world", [
    f"model.base={world}", f"data.pairs={pairs}", "train.max_steps=3", "train.batch_size=8",
    "optim.gradient_accumulation_steps=2", "optim.warmup_steps=0", "run.save_every=2", "run.log_every=1", "policy.mode=lora",
    "optim.lr=1e-3"], run_dir=Path(out) / "dpo")
record["dpo_history"] = dpo_result.history
with open(f"{out}/rank{rank}.json", "w") as fh:
    json.dump(record, fh)
'''


def test_two_cpu_processes_keep_identical_weights_and_gather_kept_pairs(tiny_world_dir, tmp_path):
    from lpo.pairs.format import PreferencePair, save_pairs
    from test_trainers_resume import lrm_with_cost

    lrm = lrm_with_cost(tiny_world_dir, tmp_path / "lrm")
    rng = np.random.default_rng(0)
    pairs = [PreferencePair(f"p{i}", ("a red circle", "a blue square")[i % 2],
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), (1.0, 0.0)[i % 2], "test")
             for i in range(16)]
    save_pairs(pairs, tmp_path / "pairs.parquet")
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "1"}
    with socket.socket() as probe:  # a free rendezvous port: another job on the machine may hold accelerate's 29500
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), str(script),
         str(tmp_path), str(tiny_world_dir), str(lrm), str(tmp_path / "pairs.parquet")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # identical weights on both ranks after every optimiser step, and they moved
    assert ranks[0]["hashes"] == ranks[1]["hashes"] and len(ranks[0]["hashes"]) >= 4
    assert len(set(ranks[0]["hashes"])) == len(ranks[0]["hashes"])
    # LPO: each rank rolled out its own prompts; the gathered set is both ranks' kept pairs, the same on both
    for g0, g1 in zip(ranks[0]["gathers"], ranks[1]["gathers"]):
        assert g0["local"] == g1["local"] == 3 * 3  # 3 prompts × 3 trained steps (951, 901, 851), all kept
        assert g0["total"] == g1["total"] == g0["local"] + g1["local"]
        assert g0["digest"] == g1["digest"] and g0["prompts"] == g1["prompts"] == g0["local_prompts"] + g1["local_prompts"]
        assert g0["local_prompts"] != g1["local_prompts"]
    history = ranks[0]["lpo_history"]
    assert [row["kept"] for row in history] == [18, 18]

    def same(rows):  # every logged number is reduced over both ranks; only the wall time is per rank
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert same(history) == same(ranks[1]["lpo_history"]) and same(ranks[0]["dpo_history"]) == same(ranks[1]["dpo_history"])
    # 18 kept → 9 per rank → micro-batches of 4: 3 optimiser steps per round
    assert ranks[0]["lpo_steps"] == 6
    assert [row["step"] for row in ranks[0]["dpo_history"]] == [1, 2, 3]
    # the run folders were written once, by the main process, and hold the cost of 2 CPU processes
    cost = json.loads((tmp_path / "lpo" / "cost.json").read_text())
    assert cost["device_count"] == 2 and cost["device_type"] == "cpu"
    assert (tmp_path / "dpo" / "model" / "pytorch_lora_weights.safetensors").is_file()
