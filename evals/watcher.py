"""``lpo eval --watch RUN``: evaluate each checkpoint of a training run as it appears.

A watcher polls the run folder from a separate process (another GPU, another machine
sharing the folder) and evaluates each complete checkpoint once, then the final model
when ``result.json`` appears, so training devices are never blocked. It shares the plan,
the state file and the per-checkpoint evaluation with the inline evaluator of ``lpo
train`` (:mod:`lpo.trainers.auto_eval`, whose docstring describes both).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lpo.core.errors import LpoError
from lpo.trainers.auto_eval import (
    FINAL,
    AutoEvalConfig,
    CheckpointOutcome,
    Log,
    done_jobs,
    evaluate_checkpoint,
    model_kind,
    read_state,
    resolve_plan,
    state_path,
    summary_line,
)


def watch_config(run_dir: Path, overrides: dict[str, Any]) -> AutoEvalConfig:
    """The config ``lpo train`` recorded for the run (else the defaults), with ``overrides`` applied."""
    recorded = read_state(run_dir).get("config")
    base = AutoEvalConfig.from_dict(recorded) if recorded else AutoEvalConfig()
    return base.with_settings(overrides)


def run_kind(run_dir: Path) -> str:
    """The base-model kind of a run folder (its config.json ``model.base``)."""
    from lpo.core.runs import RunFolder

    config = RunFolder.open(run_dir).read_config()
    model = config.get("model")
    base = model.get("base") if isinstance(model, dict) else model
    if not base:
        raise LpoError(f"{run_dir}/config.json names no base model (model.base); pass a run folder written by lpo train")
    return model_kind(str(base))


def ready_checkpoints(run_dir: Path, finished: bool) -> list[tuple[str, str]]:
    """(name, spec) of what can be evaluated now: each complete checkpoint whose cost snapshot
    is written (or the run has finished), then the final model once the run has finished."""
    from lpo.core.runs import COST_NAME, RunFolder, list_checkpoints

    out = [(folder.name, str(folder)) for _, folder in list_checkpoints(RunFolder.open(run_dir))
           if finished or (folder / COST_NAME).is_file()]
    if finished:
        out.append((FINAL, str(Path(run_dir))))
    return out


@dataclass
class WatchSummary:
    outcomes: list[CheckpointOutcome]
    polls: int

    @property
    def failed(self) -> list[CheckpointOutcome]:
        return [o for o in self.outcomes if o.failed]


def watch_run(
    run_dir: Path, config: AutoEvalConfig, *, interval: float = 60.0, until_done: bool = False, console: Any = None,
    log: Log | None = None, sleep: Callable[[float], None] = time.sleep, max_polls: int | None = None,
) -> WatchSummary:
    """Evaluate each new checkpoint of the run in ``run_dir`` once, polling every ``interval`` seconds.

    With ``until_done``, return once the run has finished (``result.json``) and everything it
    saved has been evaluated or has failed once in this watch; otherwise watch until
    interrupted (or ``max_polls`` polls, for tests).
    """
    from lpo.core.runs import RunFolder
    from lpo.core.runs import RESULT_NAME

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise LpoError("lpo eval --watch runs as one process; start it without accelerate launch / torchrun")
    if interval < 0:
        raise LpoError(f"--interval must be >= 0 seconds, got {interval}")
    run = RunFolder.open(run_dir)
    say = log or (lambda message: None)
    plan = resolve_plan(config, run_kind(run.path))
    say(f"watching {run.path}: {plan.describe()}")
    keys = [plan.job_key(job) for job in plan.jobs]
    tried: set[str] = set()  # checkpoints that failed in this watch are not retried by it
    outcomes: list[CheckpointOutcome] = []
    polls = 0
    while True:
        polls += 1
        # Read before listing: once the run has finished, this listing holds everything it saved.
        finished = (run.path / RESULT_NAME).is_file()
        for name, spec in ready_checkpoints(run.path, finished):
            if name in tried or set(keys) <= done_jobs(read_state(run.path), name):
                continue
            if not Path(spec).exists():  # removed by the run's keep_checkpoints meanwhile
                continue
            outcome = evaluate_checkpoint(run.path, name, spec, plan, mode="watch", console=console, log=say)
            outcomes.append(outcome)
            if outcome.failed:
                tried.add(name)
            if outcome.evaluated:
                say(summary_line(outcome, name))
        if until_done and finished:
            break
        if max_polls is not None and polls >= max_polls:
            break
        sleep(interval)
    return WatchSummary(outcomes, polls)


# --------------------------------------------------------------------------- lpo eval --watch

# `lpo eval` option -> AutoEvalConfig field, for the options a watch takes from the command line.
_EVAL_OPTIONS = {
    "metrics": "metrics", "images_per_prompt": "images_per_prompt", "max_prompts": "max_prompts",
    "guidance_scale": "guidance_scale", "steps": "steps", "seed": "seed", "resolution": "resolution", "dtype": "dtype",
    "batch_size": "batch_size", "metric_dtype": "metric_dtype", "metric_batch_size": "metric_batch_size",
    "device": "device", "cache_dir": "cache_dir", "results_dir": "results_dir",
}
_NOT_WITH_WATCH = {"checkpoint_arg": "a CHECKPOINT", "checkpoint_opt": "--checkpoint", "label": "--label",
                   "registry": "--registry", "no_save": "--no-save"}


def watch_overrides(given: dict[str, Any]) -> dict[str, Any]:
    """:class:`AutoEvalConfig` fields from the ``lpo eval`` options given on the command line."""
    from lpo.evals.harness import named_refs

    for name, what in _NOT_WITH_WATCH.items():
        if name in given:
            raise LpoError(f"--watch evaluates the run's own checkpoints and records them; drop {what}")
    out = {field_name: given[name] for name, field_name in _EVAL_OPTIONS.items() if name in given}
    if "metrics" in out:
        out["metrics"] = tuple(out["metrics"])
    if "benchmark" in given:
        out["benchmarks"] = (given["benchmark"],)
    if "prompts" in given:
        if "benchmark" not in given:
            raise LpoError("--prompts with --watch needs the --benchmark it is for")
        out["prompts"] = {given["benchmark"]: given["prompts"]}
    if "metric_weights" in given:
        out["metric_weights"] = named_refs(given["metric_weights"], "--metric-weights")
    if "metric_processors" in given:
        out["metric_processors"] = named_refs(given["metric_processors"], "--metric-processor")
    return out


def watch_command(run_dir: Path, given: dict[str, Any], *, interval: float, until_done: bool, dry_run: bool,
                  console: Any) -> WatchSummary | None:
    """The body of ``lpo eval --watch RUN``: ``given`` holds the options set on the command line."""
    config = watch_config(run_dir, watch_overrides(given))
    if dry_run:
        plan = resolve_plan(config, run_kind(run_dir))
        console.print_json(json.dumps({"run": str(run_dir), "kind": plan.kind, "config": plan.config.as_dict(),
                                       "jobs": {plan.job_key(j): plan.job_record(j) for j in plan.jobs}}))
        return None
    say = lambda message: console.print(message, highlight=False)  # noqa: E731
    summary = watch_run(run_dir, config, interval=interval, until_done=until_done, console=console, log=say)
    evaluated = [o.name for o in summary.outcomes if o.evaluated]
    say(f"evaluated {len(evaluated)} checkpoint(s) of {run_dir}" + (f": {', '.join(evaluated)}" if evaluated else
                                                                    " (nothing new)"))
    if summary.failed:
        raise LpoError(f"evaluation failed for {', '.join(o.name for o in summary.failed)} (errors above and in "
                       f"{state_path(run_dir)}); fix the cause and run `lpo eval --watch {run_dir} --until-done` again")
    return summary
