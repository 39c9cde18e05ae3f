"""Real-mode cost probe for a GPU machine: step-reward cost and LPO update cost at SD1.5/SDXL size.

Random weights at the published architectures' sizes (nothing downloaded). Usage:
    python scripts/device_probe.py OUT_DIR [--quick]
Writes OUT_DIR/device_probe.json and prints the tables. On the CPU use --quick (world only).
"""

from __future__ import annotations

import gc
import json
import sys
import time
import traceback
from pathlib import Path

import torch


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "device_probe_out")
    quick = "--quick" in sys.argv
    out.mkdir(parents=True, exist_ok=True)
    from lpo.world import install

    install()  # the `world` model alias (the reward-cost run loads the world model)
    from lpo.perf.jobs import _build, print_reward_cost
    from lpo.perf.reward_cost import measure_reward_cost
    from lpo.perf.train_step import measure_train_step
    from lpo.perf.architectures import random_components

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    half = torch.float16 if device.type == "cuda" else torch.float32
    report: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "reward_cost": [], "train_step": [], "errors": []}

    def save() -> None:
        (out / "device_probe.json").write_text(json.dumps(report, indent=2))

    reward_runs = [("world", torch.float32, 1, 4)]
    if not quick:
        reward_runs += [("sd15", half, 1, 4), ("sd15", half, 4, 4), ("sdxl", half, 1, 4)]
    for arch, dtype, prompts, k in reward_runs:
        start = time.time()
        try:
            components, lrm, pixel = _build(arch, device, dtype)
            result = measure_reward_cost(components, lrm, pixel, ["a red circle left of a blue square"] * prompts,
                                         candidates=k, repeats=10, warmup=3)
            print_reward_cost([result])
            entry = result.to_dict()
            entry["build_and_measure_s"] = time.time() - start
            report["reward_cost"].append(entry)
            del components, lrm, pixel
        except Exception as err:  # keep probing the rest; the report says what failed
            traceback.print_exc()
            report["errors"].append(f"reward_cost {arch}: {err!r}")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()

    train_runs = [] if quick else [("sd15", 10, 4), ("sd15", 5, 4), ("sdxl", 4, 64)]
    for arch, batch, rank in train_runs:
        try:
            components = random_components(arch, device=device, dtype=half)
            result = measure_train_step(components, batch=batch, lora_rank=rank, repeats=5, warmup=2)
            print(json.dumps(result.to_dict()))
            report["train_step"].append(result.to_dict())
            del components
        except Exception as err:
            traceback.print_exc()
            report["errors"].append(f"train_step {arch} b{batch}: {err!r}")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()


if __name__ == "__main__":
    main()
