"""``lpo train``: preference-optimise a diffusion model (LPO, SPO or Diffusion-DPO), evaluating as it saves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from lpo.cli.common import stdout_console, user_errors
from lpo.core.errors import LpoError


@user_errors
def train_command(
    method: str = typer.Option(..., help="lpo, spo, grpo or diffusion-dpo."),
    preset: str = typer.Option(..., help="lpo-sd15, lpo-sdxl, lpo-sd3, lpo-world, spo-sd15, spo-sdxl, spo-world, grpo-sd15, grpo-sdxl, "
                                         "grpo-sd3, grpo-world, dpo-sd15, dpo-sdxl, dpo-world, and lpo|spo|grpo|dpo-world-flow "
                                         "(sd3, world-flow: flow models)."),
    overrides: List[str] = typer.Option([], "--set", help="Override a config value, e.g. --set loss.beta=250 --set reward.path=RUN/model (repeatable)."),
    run_dir: Optional[Path] = typer.Option(None, help="Run folder (default runs/PRESET-TIMESTAMP)."),
    resume: bool = typer.Option(False, help="Continue the run in --run-dir from its last checkpoint."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate every checkpoint and the final model as they are saved (default; world: 32 world prompts × 2 images, ~20 s each on a CPU core; SD: Pick-a-Pic validation_unique × 1 image with PickScore, HPSv2.1, ImageReward, Aesthetic). --no-eval: evaluate elsewhere with `lpo eval --watch RUN_DIR`."),
    eval_benchmarks: List[str] = typer.Option([], "--eval-benchmark", help="A benchmark to evaluate on (repeatable); default: world for world models, pickapic for SD."),
    eval_metrics: List[str] = typer.Option([], "--eval-metric", help="A metric (repeatable); default: the benchmark's (SD: pickscore, hpsv21, image_reward, laion_aesthetic)."),
    eval_max_prompts: Optional[int] = typer.Option(None, help="Evaluate on the first N prompts (default: world 32, else all)."),
    eval_images_per_prompt: Optional[int] = typer.Option(None, help="Images per prompt (default: world 2, SD 1, a benchmark's own)."),
    eval_prompts: List[str] = typer.Option([], "--eval-prompts", help="BENCHMARK=SOURCE: a benchmark's prompt source (local file or dataset id); repeatable."),
    eval_metric_weights: List[str] = typer.Option([], "--eval-metric-weights", help="NAME=REF: a metric's weights (local folder/file or hub id); repeatable."),
    results_dir: Path = typer.Option(Path("results"), help="Results folder the evaluation records are appended to."),
) -> None:
    """Preference-optimise a diffusion model with LPO, SPO or Diffusion-DPO (multi-GPU: accelerate launch -m lpo.cli train ...)."""
    from lpo.trainers.jobs import resolve_config, run_training

    if dry_run:
        from lpo.core.config import config_to_dict

        stdout_console().print_json(json.dumps(config_to_dict(resolve_config(method, preset, overrides))))
        return
    auto_eval = None
    if evaluate:
        from lpo.evals.harness import named_refs
        from lpo.trainers.auto_eval import AutoEvalConfig

        auto_eval = AutoEvalConfig.from_settings(
            benchmarks=tuple(eval_benchmarks), metrics=tuple(eval_metrics), max_prompts=eval_max_prompts,
            images_per_prompt=eval_images_per_prompt, prompts=named_refs(eval_prompts, "--eval-prompts"),
            metric_weights=named_refs(eval_metric_weights, "--eval-metric-weights"), results_dir=results_dir,
        )
    elif eval_benchmarks or eval_metrics or eval_max_prompts or eval_images_per_prompt or eval_prompts or eval_metric_weights:
        raise LpoError("--eval-* options have no effect with --no-eval; drop them, or pass them to `lpo eval --watch RUN_DIR`")
    from lpo.trainers import TRAINERS

    result = run_training(method, preset, overrides, run_dir, resume, console=stdout_console(), auto_eval=auto_eval)
    stdout_console().print(
        f"{result.label}: {result.steps} {TRAINERS.get(method).unit}s, {result.optimizer_steps} "
        f"optimiser steps, final loss {result.final_loss if result.final_loss is None else format(result.final_loss, '.4f')}; "
        f"model [bold]{result.model_folder}[/]"
    )
