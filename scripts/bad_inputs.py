"""Run the CLI on bad inputs and tabulate what a user sees: exit code, the message, what is left on disk.

    python scripts/bad_inputs.py [--out results/failure-semantics/bad-inputs.md]

Every case runs `lpo ...` in a fresh empty folder (its working directory, with LPO_HOME
inside it), on a tiny world pipeline and tiny reward models built here first. "Left on
disk" lists what the command created in that folder (the fixtures live elsewhere), so a
half-written run, record or .tmp folder shows up. A user mistake should exit 2 with one
line naming the problem and the fix, and leave nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    what: str
    args: list[str]
    setup: Callable[[Path], None] | None = None
    expect: int = 2
    notes: list[str] = field(default_factory=list)


def build_fixtures(folder: Path) -> dict[str, Path]:
    """A tiny world pipeline, an untrained LRM and an all-NaN one, pairs, prompts, a NaN U-Net pipeline,
    a finished one-round LPO run."""
    sys.path.insert(0, str(ROOT / "tests"))
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import lpo.world

    lpo.world.install()
    from lpo.pairs.format import PreferencePair, save_pairs
    from lpo.trainers.jobs import run_training
    from lpo.world.pretrain import pretrain_preset, pretrain_world
    from tiny_models import save_random_lrm

    fx: dict[str, Path] = {}
    fx["world"] = pretrain_world(pretrain_preset("tiny"), folder / "world").folder
    fx["lrm"] = save_random_lrm(fx["world"], folder / "lrm")
    fx["nan_lrm"] = save_random_lrm(fx["world"], folder / "nan-lrm", poison=True)
    rng = np.random.default_rng(0)
    pairs = [PreferencePair(f"p{i}", ("a red circle", "a blue square")[i % 2],
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), float(i % 2), "test") for i in range(8)]
    fx["pairs"] = folder / "pairs.parquet"
    save_pairs(pairs, fx["pairs"])
    fx["prompts"] = folder / "prompts.txt"
    fx["prompts"].write_text("a red circle\na blue square\n")
    fx["empty_prompts"] = folder / "empty.txt"
    fx["empty_prompts"].write_text("\n\n")
    fx["not_parquet"] = folder / "pairs.txt"
    fx["not_parquet"].write_text("this is not a parquet file\n")
    fx["empty_dir"] = folder / "empty-dir"
    fx["empty_dir"].mkdir()
    nan_world = folder / "nan-world"
    shutil.copytree(fx["world"], nan_world)
    from safetensors.torch import load_file, save_file

    for path in (nan_world / "unet").glob("*.safetensors"):
        save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(path)).items()}, str(path))
    fx["nan_world"] = nan_world
    fx["finished_run"] = folder / "finished-run"
    run_training("lpo", "lpo-world", [*lpo_args(fx), f"train.prompts={fx['prompts']}"], run_dir=fx["finished_run"])
    return fx


def lpo_args(fx: dict[str, Path]) -> list[str]:
    return [f"model.base={fx['world']}", f"reward.path={fx['lrm']}", "train.max_rounds=1", "sampler.sample_batch_size=4",
            "train.train_batch_size=4", "sampler.threshold_min=0.0", "sampler.threshold_max=0.0", "sampler.min_timestep=801"]


def sets(*values: str) -> list[str]:
    return [part for value in values for part in ("--set", value)]


def cases(fx: dict[str, Path]) -> list[Case]:
    lpo = ["train", "--method", "lpo", "--preset", "lpo-world", "--no-eval"]
    ok = sets(*lpo_args(fx))
    dpo = ["train", "--method", "diffusion-dpo", "--preset", "dpo-world", "--no-eval", *sets(f"model.base={fx['world']}")]
    world = str(fx["world"])

    def changed_run(cwd: Path) -> None:  # a run folder with its config and no checkpoint
        from lpo.core.runs import RunFolder
        from lpo.trainers.jobs import resolve_config

        config = resolve_config("lpo", "lpo-world", [*lpo_args(fx), f"train.prompts={fx['prompts']}"])
        RunFolder.create(config, folder=cwd / "run")

    return [
        Case("unknown trainer", ["train", "--method", "ppo", "--preset", "lpo-world"]),
        Case("unknown preset", ["train", "--method", "lpo", "--preset", "lpo-sd99"]),
        Case("unknown config key", [*lpo, *ok, "--set", "nope=1"]),
        Case("value of the wrong type", [*lpo, *ok, "--set", "optim.lr=abc"]),
        Case("negative learning rate", [*lpo, *ok, "--set", "optim.lr=-1"]),
        Case("LPO without a step reward", [*lpo, *sets(f"model.base={world}")]),
        Case("step reward folder missing", [*lpo, *ok, "--set", "reward.path=/no/such/lrm"]),
        Case("step reward folder is not an LRM", [*lpo, *ok, "--set", f"reward.path={fx['empty_dir']}",
                                                  "--set", "train.prompts=world:train", "--run-dir", "run"]),
        Case("all-NaN LRM as the step reward", [*lpo, *ok, "--set", f"reward.path={fx['nan_lrm']}",
                                               "--set", "train.prompts=world:train", "--run-dir", "run"]),
        Case("prompts file missing", [*lpo, *ok, "--set", "train.prompts=/no/prompts.txt", "--run-dir", "run"]),
        Case("prompts file empty", [*lpo, *ok, "--set", f"train.prompts={fx['empty_prompts']}", "--run-dir", "run"]),
        Case("Diffusion-DPO without pairs", dpo),
        Case("pairs file missing", [*dpo, "--set", "data.pairs=/no/pairs.parquet"]),
        Case("pairs file is not parquet", [*dpo, "--set", f"data.pairs={fx['not_parquet']}", "--run-dir", "run"]),
        Case("--resume without --run-dir", [*lpo, *ok, "--set", "train.prompts=world:train", "--resume"]),
        Case("--resume on a folder that is no run", [*lpo, *ok, "--set", "train.prompts=world:train", "--resume",
                                                    "--run-dir", str(fx["empty_dir"])]),
        Case("--resume on a finished run", [*lpo, *ok, "--set", f"train.prompts={fx['prompts']}", "--resume",
                                           "--run-dir", str(fx["finished_run"])]),
        Case("--resume with a changed config (no checkpoint yet)",
             [*lpo, *ok, "--set", f"train.prompts={fx['prompts']}", "--set", "optim.lr=0.5", "--resume", "--run-dir", "run"],
             setup=changed_run, notes=["the run folder was made by the case's setup"]),
        Case("a new run in a folder that holds one", [*lpo, *ok, "--set", f"train.prompts={fx['prompts']}",
                                                      "--run-dir", str(fx["finished_run"])]),
        Case("diverging run (lr 1e6)", [*lpo, *ok, "--set", "train.prompts=world:train", "--set", "optim.lr=1e6",
                                        "--set", "train.max_rounds=3", "--run-dir", "run"]),
        Case("a run that keeps no pairs", [*lpo, *ok, "--set", "train.prompts=world:train",
                                           "--set", "sampler.threshold_min=0.99", "--set", "sampler.threshold_max=0.99",
                                           "--run-dir", "run"]),
        Case("eval: unknown benchmark", ["eval", world, "--benchmark", "geneval-typo"]),
        Case("eval: unknown metric", ["eval", world, "--metric", "nope"]),
        Case("eval: checkpoint missing", ["eval", "/no/such/model"]),
        Case("eval: folder that is no pipeline", ["eval", str(fx["empty_dir"])]),
        Case("eval: negative CFG", ["eval", world, "--cfg", "-1"]),
        Case("eval: a U-Net with NaN weights", ["eval", str(fx["nan_world"]), "--max-prompts", "2", "--steps", "2",
                                                "--images-per-prompt", "1"]),
        Case("eval: weights for a metric not evaluated", ["eval", world, "--metric-weights", "pickscore=/tmp"]),
        Case("eval: results folder under a file", ["eval", world, "--max-prompts", "2", "--steps", "2",
                                                   "--images-per-prompt", "1", "--results-dir", f"{fx['prompts']}/results"]),
        Case("sample: negative CFG", ["sample", world, "--cfg", "-1"]),
        Case("sample: model folder missing", ["sample", "/no/such/folder"]),
        Case("sample: unknown registry name", ["sample", "no-such-checkpoint"]),
        Case("sample: prompts file missing", ["sample", world, "--prompts-file", "/no/prompts.txt"]),
        Case("lrm train: pairs file missing", ["lrm", "train", "/no/pairs.parquet", "--model", world]),
        Case("lrm train: unknown preset", ["lrm", "train", str(fx["pairs"]), "--model", world, "--preset", "lrm-sd99"]),
        Case("lrm eval: nothing to evaluate", ["lrm", "eval", str(fx["pairs"]), "--model", "/no/such/model"]),
        Case("bench: zero training seeds", ["bench", "--seeds", "0", "--out", "bench"]),
        Case("bench: unknown config key", ["bench", "--set", "nope=1", "--out", "bench"]),
        Case("compare: unknown checkpoint", ["compare", world, "no-such-checkpoint"]),
        Case("leaderboard: no results folder", ["leaderboard", "--results-dir", "/no/results"]),
        Case("world pretrain: unknown preset", ["world", "pretrain", "--preset", "huge"]),
        Case("data pickapic: unknown version", ["data", "pickapic", "--version", "v3", "--out", "pairs.parquet"]),
        Case("data pickapic: v2 without a source", ["data", "pickapic", "--version", "v2", "--out", "pairs.parquet"]),
        Case("data pickapic: output not .parquet", ["data", "pickapic", "--source", "/no/mirror", "--out", "pairs.txt"]),
        Case("doctor: nothing named", ["doctor"]),
        Case("doctor: unknown metric", ["doctor", "--metric", "pickscor"]),
    ]


def _message(output: str) -> str:
    """The line a user reads: the last non-empty, de-boxed line that is not a progress bar."""
    lines = []
    for raw in output.splitlines():
        line = re.sub(r"[│╭╮╰╯─━┃]+", " ", raw).strip()
        if line and "━" not in raw and not line.startswith(("Loading weights", "Writing model")):
            lines.append(line)
    errors = [line for line in lines if line.lower().startswith(("error", "lpo:")) or "Error" in line[:30]]
    return (errors or lines or ["(nothing)"])[-1]


def _left(cwd: Path) -> list[str]:
    """What is in ``cwd`` (LPO_HOME aside): files, and folders with what they hold."""
    home = cwd / "lpo-home"
    out = []
    for path in sorted(cwd.iterdir()):
        if path == home:
            continue
        if path.is_dir():
            inside = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
            shown = ", ".join(inside[:6]) + (f", … {len(inside) - 6} more" if len(inside) > 6 else "")
            out.append(f"{path.name}/ ({shown or 'empty'})")
        else:
            out.append(path.name)
    return out


def run_case(case: Case, number: int, root: Path) -> dict:
    cwd = root / f"case-{number:02d}"
    cwd.mkdir()
    if case.setup is not None:
        case.setup(cwd)
    before = set(_left(cwd))
    env = {**os.environ, "LPO_HOME": str(cwd / "lpo-home"), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lpo.cli", *case.args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    left = [p for p in _left(cwd) if p not in before]
    if case.setup is not None:
        left += [f"{p} (setup's)" for p in sorted(before)]
    output = done.stdout + "\n" + done.stderr
    return {"what": case.what, "command": "lpo " + " ".join(_short(a, root) for a in case.args), "exit": done.returncode,
            "expected": case.expect, "message": _message(output), "traceback": "Traceback" in output,
            "left": left, "seconds": round(time.perf_counter() - started, 1), "notes": case.notes}


def _short(arg: str, root: Path) -> str:
    arg = arg.replace(str(root / "fixtures"), "FX")
    return arg if len(arg) <= 60 else arg[:57] + "..."


def render(rows: list[dict]) -> str:
    good = sum(1 for r in rows if r["exit"] == r["expected"] and not r["traceback"])
    out = [f"# Bad inputs: {len(rows)} kinds, {good} exit as expected with one line and no traceback", "",
           "Produced by `python scripts/bad_inputs.py` (each case in an empty folder; FX = the fixtures: a tiny world "
           "pipeline, untrained and all-NaN LRMs, 8 pairs, a finished one-round LPO run). Commands are abridged: the "
           "LPO cases also pass the tiny world, the LRM and a one-round sampler via --set.", "",
           "| # | bad input | exit | message (last line shown) | left on disk |", "|---|---|---|---|---|"]
    for number, r in enumerate(rows, 1):
        mark = "" if r["exit"] == r["expected"] and not r["traceback"] else " ⚠"
        message = r["message"].replace("|", "\\|")
        message = message if len(message) <= 220 else message[:217] + "..."
        left = (", ".join(r["left"]) or "nothing") + "".join(f" ({note})" for note in r["notes"])
        out.append(f"| {number} | {r['what']} | {r['exit']}{mark} | {message} | {left} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "failure-semantics" / "bad-inputs.md")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lpo-bad-inputs-"))
    try:
        fx = build_fixtures(root / "fixtures")
        rows = []
        for number, case in enumerate(cases(fx), 1):
            rows.append(run_case(case, number, root))
            r = rows[-1]
            print(f"{number:2d} exit {r['exit']} {r['seconds']:5.1f}s  {r['what']}: {r['message'][:120]}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(render(rows))
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
