"""`lpo bench`: the whole study on the embedded world, stage by stage, resumable.

base model → preference pairs (train / val) → MPCF → LRM and SPO's pixel step model →
held-out accuracy by timestep → LPO, SPO and Diffusion-DPO (same training prompts) →
evaluation of the base model and of every run's intermediate and final checkpoints →
LRM-guided sampling rows → sample grids → report.

Training seeds (``seeds`` = N): each method trains N times, seed ``i`` with
``run.seed = seed + i`` (:meth:`BenchConfig.training_seed`), seed 0 in ``runs/METHOD`` (the
layout before seeds, so existing benches continue) and seed ``i`` in
``runs/METHOD/seed-i``; the reward models train once. Every seed's final model is
evaluated under the same protocol; intermediate checkpoints, guided rows and sample
grids are seed 0's. Raising ``seeds`` on a finished bench trains only the new seeds.

Each stage writes ``stages/<name>.json`` when it is done; a rerun skips finished stages,
resumes an interrupted training run from its last checkpoint, and reuses cached eval
images, so an interrupted bench continues where it stopped. Result records go to the
bench's own ``results/`` (the evals store), which the report and ``lpo leaderboard
--results-dir BENCH/results`` read.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from lpo.bench.config import BenchConfig
from lpo.core.errors import LpoError
from lpo.core.io import atomic_write_json, git_state, hardware, run_metadata

TRAINER_PRESETS = {"lpo": "lpo-world", "spo": "spo-world", "diffusion-dpo": "dpo-world"}
FLOW_TRAINER_PRESETS = {"lpo": "lpo-world-flow", "spo": "spo-world-flow", "diffusion-dpo": "dpo-world-flow"}
STAGES_DIR = "stages"
SAMPLE_GRID_SIZE = 8  # prompts per sample grid (image 0 of each, from the eval cache)
SEED_RUN = re.compile(r"^seed-\d+$")  # runs/METHOD/seed-i: training seed i of METHOD


class Bench:
    """A bench folder: its config, its finished stages and the paths every stage shares."""

    def __init__(
        self, folder: Path, config: BenchConfig, console: Any = None, *,
        results_dir: Path | None = None, label_suffix: str = "", evaluate_base: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.config = config
        self.console = console
        self.timings: dict[str, dict[str, Any]] = {}
        self._results_dir = results_dir
        self.label_suffix = label_suffix  # an ablation variant's " [label]"
        self.evaluate_base = evaluate_base

    # ----------------------------------------------------------------- paths

    @property
    def train_pairs(self) -> Path:
        return self.folder / "pairs" / "train.parquet"

    @property
    def val_pairs(self) -> Path:
        return self.folder / "pairs" / "val.parquet"

    @property
    def filtered_pairs(self) -> Path:
        """The MPCF-kept pairs the policies train on."""
        return self.folder / "pairs" / "train-mpcf.parquet"

    @property
    def reward_pairs(self) -> Path:
        """The MPCF-kept pairs the reward models train on: the whole pool's, when it is larger
        than the policies' part (``reward_train_prompts``), else the policies' own."""
        if self.config.separate_reward_pairs:
            return self.folder / "pairs" / "reward-mpcf.parquet"
        return self.filtered_pairs

    def reward_run(self, name: str) -> Path:
        return self.folder / "rewards" / name

    def reward_model(self, name: str) -> Path:
        return self.reward_run(name) / "model"

    def policy_run(self, method: str, seed: int = 0) -> Path:
        """Training seed 0 in runs/METHOD, seed i in runs/METHOD/seed-i."""
        run = self.folder / "runs" / method
        return run if seed == 0 else run / f"seed-{seed}"

    @property
    def results_dir(self) -> Path:
        return self._results_dir or self.folder / "results"

    @property
    def image_cache(self) -> Path:
        return self.folder / "eval-images"

    # ----------------------------------------------------------------- bookkeeping

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, highlight=False)

    def _marker(self, name: str) -> Path:
        return self.folder / STAGES_DIR / f"{name}.json"

    def done(self, name: str) -> dict[str, Any] | None:
        marker = self._marker(name)
        return json.loads(marker.read_text()) if marker.is_file() else None

    def stage(self, name: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        """Run ``fn`` unless the stage finished before; record its wall time."""
        previous = self.done(name)
        if previous is not None:
            self.say(f"[dim]{name}: done earlier, skipped[/]")
            self.timings[name] = {**previous.get("timing", {}), "skipped": True}
            return previous
        self.say(f"[bold]{name}[/]")
        start = time.perf_counter()
        output = fn() or {}
        # where the stage ran: a later rerun that skips it rewrites bench.json's meta, not this
        payload = {"output": output, "timing": {"seconds": round(time.perf_counter() - start, 2)},
                   "ran": {"git": git_state(), "hardware": hardware()}}
        atomic_write_json(self._marker(name), payload)
        self.timings[name] = payload["timing"]
        self.write_summary()
        return payload

    def write_summary(self) -> None:
        atomic_write_json(
            self.folder / "bench.json",
            {"config": asdict(self.config), "stages": self.timings, "meta": run_metadata()},
        )


# --------------------------------------------------------------------------- stages


def _pairs(bench: Bench) -> dict[str, Any]:
    from lpo.world.pairs import run_pairs, source_mix

    c = bench.config
    sources = source_mix(c.pair_sources)
    train = run_pairs(c.images_model, bench.train_pairs, c.pool_prompts, c.pairs_per_prompt, c.seed, bench.console,
                      device=c.device, sources=sources)
    val = run_pairs(c.images_model, bench.val_pairs, c.val_prompts, c.val_pairs_per_prompt, c.seed + 1, bench.console,
                    device=c.device, prompt_split="val", sources=sources)
    return {"train": _jsonable(train), "val": _jsonable(val)}


def _mpcf(bench: Bench) -> dict[str, Any]:
    from dataclasses import replace

    from lpo.pairs.mpcf import filter_pairs_file, mpcf_preset
    from lpo.pairs.format import load_pairs, save_pairs

    if not bench.train_pairs.is_file():  # a reward kit ships the filtered pairs only
        raise LpoError(f"{bench.train_pairs} is missing: the unfiltered training pairs are not part of a reward kit; "
                       "run the bench with --set reward_kit=none to make them (the mpcf ablation needs them)")
    config = replace(mpcf_preset("world"), strategy=bench.config.mpcf_strategy)
    loaded = load_pairs(str(bench.train_pairs))
    result = filter_pairs_file(loaded.pairs, config, bench.reward_pairs, str(bench.train_pairs),
                               cache_dir=bench.folder / "pairs" / ".mpcf-scores")
    if bench.console is not None:
        bench.console.print(result.report.as_table())
    summary = {"kept": len(result.pairs), "of": len(loaded.pairs), "report": result.report.as_dict()}
    if bench.config.separate_reward_pairs:
        policy = policy_part(loaded.pairs, result.pairs, bench.config.train_prompts)
        save_pairs(policy, bench.filtered_pairs, provenance={
            "mpcf": result.report.as_dict(), "input": str(bench.train_pairs),
            "part": f"the kept pairs of the pool's first {bench.config.train_prompts} prompts (the policies' data)"})
        summary["policy"] = {"kept": len(policy), "prompts": bench.config.train_prompts}
        bench.say(f"policies train on {len(policy)} of the kept pairs (the first {bench.config.train_prompts} prompts); "
                  f"the reward models on all {len(result.pairs)}")
    return summary


def policy_part(pool: list, kept: list, prompts: int) -> list:
    """The pairs of ``kept`` whose prompt is one of the first ``prompts`` prompts of ``pool``
    (in pool order, which is the order the prompts were drawn in)."""
    wanted = set(list(dict.fromkeys(pair.prompt for pair in pool))[:prompts])
    return [pair for pair in kept if pair.prompt in wanted]


def _train_reward(bench: Bench, name: str, preset: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    from lpo.reward.jobs import train_reward_job

    run_dir = bench.reward_run(name)
    done = _finished_result(run_dir)  # killed after the run finished, before the stage was marked
    if done is not None:
        return {"model": done["model_folder"], "steps": done["steps"], "cost": done["cost"]}
    resume = _prepare_run_dir(run_dir)
    result = train_reward_job(bench.config.model, str(bench.reward_pairs), preset,
                              [*overrides, f"seed={bench.config.seed}"], run_dir=run_dir, resume=resume,
                              console=bench.console)
    return {"model": str(result.model_folder), "steps": result.steps, "cost": result.cost}


def _reward_eval(bench: Bench) -> dict[str, Any]:
    from lpo.reward.jobs import eval_reward_job, render_accuracy_table

    result = eval_reward_job(bench.config.model, str(bench.val_pairs), bench.folder / "reward-eval",
                             lrm_dir=bench.reward_model("lrm"),
                             pixel_dir=bench.reward_model("pixel") if "spo" in bench.config.methods else None,
                             seed=bench.config.seed, console=bench.console)
    if bench.console is not None:
        render_accuracy_table(result, bench.console)
    return {"accuracy_by_timestep": str(bench.folder / "reward-eval" / "accuracy_by_timestep.json")}


def _train_policy(bench: Bench, method: str, seed: int = 0) -> dict[str, Any]:
    from lpo.trainers.jobs import resolve_config, run_training

    c = bench.config
    preset = trainer_preset(method, c.model)
    overrides = [f"model.base={c.model}", f"run.seed={c.training_seed(seed)}", *c.trainer_overrides(method)]
    if method == "diffusion-dpo":
        overrides.append(f"data.pairs={bench.filtered_pairs}")
    else:
        reward = bench.reward_model("lrm" if method == "lpo" else "pixel")
        overrides += [f"reward.path={reward}", f"train.prompts={bench.filtered_pairs}"]
    length = _run_length(resolve_config(method, preset, overrides), method, bench.filtered_pairs)
    # checkpoints_per_run evenly spaced checkpoints before the final model (none at its step), all kept
    save_every = max(1, math.ceil(length / (c.checkpoints_per_run + 1)))
    overrides += [f"run.save_every={save_every}", f"run.keep_checkpoints={max(1, length // save_every)}",
                  "run.trackers=none"]
    run_dir = bench.policy_run(method, seed)
    done = _finished_result(run_dir)  # killed after the run finished, before the stage was marked
    if done is None:
        resume = _prepare_run_dir(run_dir)
        done = run_training(method, preset, overrides, run_dir=run_dir, resume=resume, console=bench.console).as_dict()
    return {"run": str(run_dir), "model": done["model_folder"], "steps": done["steps"],
            "optimizer_steps": done["optimizer_steps"], "final_loss": done["final_loss"], "cost": done["cost"],
            "preset": preset, "overrides": overrides}


def trainer_preset(method: str, model: str) -> str:
    """The world preset ``method`` trains ``model`` with: the flow world's for a flow-matching model."""
    return (FLOW_TRAINER_PRESETS if _is_flow_model(model) else TRAINER_PRESETS)[method]


def _is_flow_model(model: str) -> bool:
    """Whether ``model`` (an alias or a pipeline folder) is a flow-matching pipeline."""
    from lpo.models.families import is_model_alias, resolve_model_alias
    from lpo.models.flow_components import is_flow_pipeline

    return is_flow_pipeline(resolve_model_alias(model) if is_model_alias(model) else model)


def _run_length(config: Any, method: str, prompts_path: Path) -> int:
    """Rounds (LPO/SPO) or optimiser steps (Diffusion-DPO) the run will take."""
    if method == "diffusion-dpo":
        return int(config.train.max_steps)
    from lpo.trainers.jobs import load_prompts

    prompts = len(load_prompts(str(prompts_path)))
    rounds = max(1, math.ceil(config.train.epochs * prompts / config.sampler.sample_batch_size))
    return rounds if config.train.max_rounds is None else min(rounds, int(config.train.max_rounds))


def _finished_result(run_dir: Path) -> dict[str, Any] | None:
    """The result.json of a finished run in ``run_dir``, else None."""
    from lpo.core.runs import RESULT_NAME, RunFolder

    if not (run_dir / "run.json").is_file() or not RunFolder(run_dir).finished:
        return None
    return json.loads((run_dir / RESULT_NAME).read_text())


def _prepare_run_dir(run_dir: Path) -> bool:
    """True when an interrupted run can resume; a run folder with no checkpoint starts over
    (its other training seeds' run folders, ``seed-i``, are kept)."""
    if not run_dir.exists():
        return False
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir()):
        return True
    for child in run_dir.iterdir():
        if child.is_dir() and SEED_RUN.match(child.name):
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    return False


def eval_targets(bench: Bench, seeds: bool = True) -> list[tuple[str, str, bool]]:
    """(name, checkpoint spec, final) for the base model, every seed-0 run's checkpoints and final
    model, and (with ``seeds``) the final model of every other training seed, named METHOD-seed-i."""
    from lpo.core.runs import RunFolder, list_checkpoints

    targets = [("base", bench.config.model, True)] if bench.evaluate_base else []
    for method in bench.config.methods:
        run = bench.policy_run(method)
        if (run / "run.json").is_file():
            targets += [(f"{method}@{step}", str(path), False) for step, path in list_checkpoints(RunFolder.open(run))]
        targets.append((method, str(run), True))
        if seeds:
            targets += [(f"{method}-seed-{i}", str(bench.policy_run(method, i)), True) for i in range(1, bench.config.seeds)]
    return targets


def eval_plan(bench: Bench) -> list[tuple[str, str, str, str, int, int]]:
    """(stage key, name, checkpoint spec, benchmark, prompts, images per prompt) of every evaluation.

    Final models: ``world`` at the final protocol and ``world-heldout``. Intermediate
    checkpoints: ``world`` at the curve protocol; when that is smaller than the final one
    (``BenchConfig.separate_curve``), the base model and seed 0's final models are also
    evaluated at it (``eval-world-curve-NAME``), from images the final evaluation already
    made, so that every point of the curve is paired with the base model on the same images.
    """
    c = bench.config
    curve_prompts, curve_images = c.curve_protocol()
    plan = []
    for name, spec, final in eval_targets(bench):
        if not final:
            plan.append((f"eval-world-{name}", name, spec, "world", curve_prompts, curve_images))
            continue
        plan.append((f"eval-world-{name}", name, spec, "world", c.eval_prompts, c.eval_images_per_prompt))
        if c.separate_curve and "-seed-" not in name:
            plan.append((f"eval-world-curve-{name}", name, spec, "world", curve_prompts, curve_images))
        if c.eval_heldout:
            plan.append((f"eval-world-heldout-{name}", name, spec, "world-heldout", c.eval_prompts,
                         c.heldout_images_per_prompt or c.eval_images_per_prompt))
    return plan


def _evaluate(bench: Bench) -> dict[str, Any]:
    from lpo.evals.harness import EvalConfig, EvalProtocol, run_eval

    c = bench.config
    done: dict[str, Any] = {}
    for key, name, spec, benchmark, prompts, images in eval_plan(bench):
        if bench.done(key) is None:
            def run_one(spec=spec, benchmark=benchmark, name=name, prompts=prompts, images=images):
                label = name if name == "base" else name + bench.label_suffix
                # batch 128: ~12% faster per image than 32 on 2 cores; images do not depend on it
                protocol = EvalProtocol(guidance_scale=5.0, images_per_prompt=images, batch_size=128)
                output = run_eval(EvalConfig(
                    checkpoint=spec, benchmark=benchmark, max_prompts=prompts, protocol=protocol,
                    device=c.device, label=label, cache_dir=bench.image_cache, results_dir=bench.results_dir,
                ))
                utility = next((r for r in output.records if r.metric == "world_utility"), None)
                return {"eval_id": output.eval_id, "images": str(output.image_folder),
                        "prompts": list(output.prompt_set.prompts[:SAMPLE_GRID_SIZE]),
                        "utility": None if utility is None else utility.value,
                        "generate_s": output.generate_s}
            bench.stage(key, run_one)
        done[key] = bench.done(key)["output"]
    return {"evaluations": done}


def _guided(bench: Bench) -> dict[str, Any]:
    from lpo.world.guided_eval import GuidedEvalProtocol, guided_eval_job, render_guided_eval

    c = bench.config
    protocol = GuidedEvalProtocol(num_prompts=c.guided_prompts, seeds_per_prompt=c.guided_seeds,
                                  num_candidates=c.guided_candidates,
                                  methods=("plain", "guided-best", "guided-random", "best-of-k-lrm"))
    models: list[tuple[str, Path | None]] = [("base", None)]
    for method in c.methods:
        unet = bench.policy_run(method) / "model"
        if (unet / "config.json").is_file():  # full fine-tunes (the world presets); a LoRA run is skipped
            models.append((method, unet))
    out: dict[str, Any] = {}
    for label, unet in models:
        path = bench.folder / "guided" / f"{label}.json"
        if not path.is_file():
            result = guided_eval_job(c.model, bench.reward_model("lrm"), protocol, path, device=c.device,
                                     console=bench.console, unet=unet)
            if bench.console is not None:
                render_guided_eval(result, bench.console)
        out[label] = str(path)
    return out


def _samples(bench: Bench) -> dict[str, Any]:
    """One grid per final model from its cached eval images: same prompts, same seeds, nothing regenerated."""
    import numpy as np
    from PIL import Image

    from lpo.evals.benchmarks.base import prompt_hash
    from lpo.core.grid import save_grid

    written = {}
    for name, _, final in eval_targets(bench, seeds=False):
        marker = bench.done(f"eval-world-{name}")
        if not final or marker is None:
            continue
        folder, prompts = Path(marker["output"]["images"]), marker["output"]["prompts"]
        images = np.stack([np.asarray(Image.open(folder / prompt_hash(p) / "0000.png").convert("RGB")) for p in prompts])
        written[name] = str(save_grid(bench.folder / "samples" / f"{name}.png", images, prompts))
    return written


def _report(bench: Bench) -> dict[str, Any]:
    from lpo.bench.report import render_report

    return {name: str(path) for name, path in render_report(bench.folder).items()}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------- the bench


def _comparable(config: BenchConfig) -> dict[str, Any]:
    """What must match to continue a bench (adding ablations or training seeds later is allowed)."""
    data = json.loads(json.dumps(asdict(config)))
    data.pop("ablations", None)
    data.pop("seeds", None)
    return data


def _check_same_bench(folder: Path, config: BenchConfig, kit_only: bool = False) -> None:
    """LpoError when ``folder`` holds a bench of another config (only the kit's values, with ``kit_only``)."""
    from lpo.bench.kit import KIT_FIELDS

    saved = folder / "bench.json"
    if not saved.is_file():
        return
    previous = json.loads(saved.read_text()).get("config", {})
    previous.pop("ablations", None)
    previous.pop("seeds", None)
    current = _comparable(config)
    defaults = _comparable(BenchConfig())  # a bench saved before a field existed ran with its default
    previous = {**defaults, **previous} if previous else previous
    if kit_only:
        previous = {k: previous.get(k) for k in KIT_FIELDS}
        current = {k: current[k] for k in KIT_FIELDS}
    if previous and previous != current:
        differs = sorted(k for k in current if previous.get(k) != current[k])
        raise LpoError(
            f"{folder} holds a bench with another config ({', '.join(differs[:3])} differ); continue it with the "
            "same preset and --set values, or pass a new --out folder"
        )


def run_bench(folder: Path, config: BenchConfig, console: Any = None) -> Bench:
    """Run (or continue) the whole bench in ``folder``, then its ablations; returns the Bench."""
    folder = Path(folder)
    _check_same_bench(folder, config)
    if config.guided_prompts and _is_flow_model(config.model):
        raise LpoError(f"the guided-sampling rows judge U-Net world samples; {config.model} is a flow model: "
                       "set guided_prompts=0")
    bench = Bench(folder, config, console)
    _core_stages(bench)
    c = config
    if c.guided_prompts:
        bench.stage("guided", lambda: _guided(bench))
    bench.stage("samples", lambda: _samples(bench))
    for name in c.ablations:
        bench.stage(f"ablation-{name}", lambda name=name: _run_ablation(bench, name))
    suffix = ("-" + "-".join(c.ablations) if c.ablations else "") + (f"-seeds-{c.seeds}" if c.seeds > 1 else "")
    bench.stage(f"report{suffix}", lambda: _report(bench))
    bench.write_summary()
    _say_answer(bench)
    return bench


def _say_answer(bench: Bench) -> None:
    """The report's paired headline and minimum detectable difference, on the console."""
    from lpo.bench.report import PAIRED_NAME, REPORT_DIR

    path = bench.folder / REPORT_DIR / PAIRED_NAME
    if path.is_file():
        for line in json.loads(path.read_text()).get("console", []):
            bench.say(line)


def _core_stages(bench: Bench, reward_eval: bool = True) -> None:
    c = bench.config
    if c.reward_kit != "none":
        _install_kit(bench)
    if c.pairs_from != "none":
        _copy_pairs(bench)
    _kit_stages(bench, reward_eval)
    for method in c.methods:
        for seed in range(c.seeds):
            name = f"train-{method}" + (f"-seed-{seed}" if seed else "")
            bench.stage(name, lambda method=method, seed=seed: _train_policy(bench, method, seed))
    # a bench continued with more seeds evaluates their final models (finished evaluations are skipped)
    bench.stage("evaluate" + (f"-seeds-{c.seeds}" if c.seeds > 1 else ""), lambda: _evaluate(bench))


def _kit_stages(bench: Bench, reward_eval: bool = True) -> None:
    """The stages a reward kit holds (lpo.bench.kit.KIT_STAGES): pairs, MPCF, reward models, accuracy."""
    c = bench.config
    bench.stage("pairs", lambda: _pairs(bench))
    bench.stage("mpcf", lambda: _mpcf(bench))
    bench.stage("reward-lrm", lambda: _train_reward(bench, "lrm", c.lrm_preset, c.lrm_overrides))
    if "spo" in c.methods:
        bench.stage("reward-pixel", lambda: _train_reward(bench, "pixel", c.pixel_preset, c.pixel_overrides))
    if reward_eval:
        bench.stage("reward-eval", lambda: _reward_eval(bench))


def _install_kit(bench: Bench) -> None:
    from lpo.bench.kit import install_kit, resolve_kit
    from lpo.world.grammar import WORLD_VERSION

    folder = resolve_kit(bench.config.reward_kit)
    installed, kit = install_kit(folder, bench.folder, bench.config, WORLD_VERSION)
    if installed:
        seconds = sum(s or 0.0 for s in kit.get("stage_seconds", {}).values())
        bench.say(f"reward kit [bold]{bench.config.reward_kit}[/]: {', '.join(installed)} from {folder} "
                  f"({seconds / 60:.1f} min measured where it was built, booked as this bench's; "
                  f"rebuild: {kit.get('command')})")


def _copy_pairs(bench: Bench) -> None:
    from lpo.bench.shared_pairs import copy_pair_stages

    copied = copy_pair_stages(Path(bench.config.pairs_from), bench.folder, bench.config)
    if copied:
        bench.say(f"{', '.join(copied)}: copied from {bench.config.pairs_from} (images of {bench.config.images_model}; "
                  "their measured seconds are booked as this bench's)")


def build_kit(folder: Path, config: BenchConfig, out: Path, command: str, console: Any = None) -> Path:
    """Run (or continue) only the kit stages of a bench in ``folder`` and export them to ``out``."""
    from dataclasses import replace

    from lpo.bench.kit import export_kit
    from lpo.world.grammar import WORLD_VERSION

    config = replace(config, reward_kit="none")
    bench = Bench(Path(folder), config, console)
    _check_same_bench(bench.folder, config, kit_only=True)
    _kit_stages(bench)
    return export_kit(bench.folder, config, out, command, WORLD_VERSION)


def _run_ablation(main: Bench, name: str) -> dict[str, Any]:
    """Each variant as a small bench of its own, reusing what it shares with the main bench."""
    from lpo.bench.ablations import ablation, slug
    from lpo.bench.config import variant_config

    spec = ablation(name)
    root = main.folder / "ablations" / name
    variants = []
    for index, (label, changes) in enumerate(spec.variants):
        config = variant_config(main.config, spec, changes)
        folder = root / slug(label)
        _reuse(main, folder, config)
        variant = Bench(folder, config, main.console, results_dir=root / "results", label_suffix=f" [{label}]",
                        evaluate_base=index == 0)
        main.say(f"[bold]ablation {name}: {label}[/]")
        _core_stages(variant, reward_eval=False)
        variants.append({"label": label, "overrides": [f"{k}={v}" for k, v in changes.items()]})
    atomic_write_json(root / "ablation.json", {"name": name, "description": spec.description, "variants": variants})
    return {"variants": variants, "results": str(root / "results")}


def _reuse(main: Bench, folder: Path, config: BenchConfig) -> None:
    """Copy the main bench's finished stages that ``config`` would redo identically."""
    same_pairs = (config.model, config.seed, config.train_prompts, config.pairs_per_prompt, config.pool_prompts) == (
        main.config.model, main.config.seed, main.config.train_prompts, main.config.pairs_per_prompt,
        main.config.pool_prompts)
    same_mpcf = same_pairs and config.mpcf_strategy == main.config.mpcf_strategy
    shared = [("pairs", "pairs", same_pairs), ("mpcf", "pairs", same_mpcf),
              ("reward-lrm", "rewards/lrm", same_mpcf and config.lrm_overrides == main.config.lrm_overrides
               and config.lrm_preset == main.config.lrm_preset),
              ("reward-pixel", "rewards/pixel", same_mpcf and config.pixel_overrides == main.config.pixel_overrides
               and config.pixel_preset == main.config.pixel_preset)]
    for stage, path, same in shared:
        marker = main._marker(stage)
        if not same or not marker.is_file() or (folder / STAGES_DIR / f"{stage}.json").is_file():
            continue
        target = folder / path
        if not target.exists():
            shutil.copytree(main.folder / path, target, ignore=shutil.ignore_patterns("checkpoints"))
        (folder / STAGES_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(marker, folder / STAGES_DIR / f"{stage}.json")
