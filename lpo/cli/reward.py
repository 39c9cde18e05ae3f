"""The reward core's commands: ``lpo mpcf`` (the pair filter) and ``lpo lrm train|eval`` (step reward models)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from lpo.cli.common import SET_OPTION, stdout_console, user_errors

lrm_app = typer.Typer(no_args_is_help=True, help="Step reward models: the Latent Reward Model and SPO's pixel step model.")


@user_errors
def mpcf(
    pairs_path: str = typer.Argument(..., help="Pairs: a parquet file from `lpo pairs`, a folder of parquets, or a dataset id."),
    out: Path = typer.Option(..., help="Parquet file for the kept pairs."),
    preset: str = typer.Option("world", help="Threshold preset: world or paper."),
    strategy: Optional[str] = typer.Option(None, help="none, 1, 2 or 3 (default: the preset's, 2)."),
    overrides: List[str] = SET_OPTION,
    split: Optional[str] = typer.Option(None, help="Split of a dataset id or parquet folder."),
    limit: Optional[int] = typer.Option(None, help="Read at most this many rows."),
    cache_dir: Optional[Path] = typer.Option(None, help="Score cache (default: next to --out)."),
    metric_weights: List[str] = typer.Option([], "--metric-weights", help="SCORER=REF: weights of a metric-backed scorer (real mode), e.g. laion-aesthetic=/models/sac+logos+ava1-l14-linearMSE.pth."),
    metric_processors: List[str] = typer.Option([], "--metric-processor", help="SCORER=REF: its tokenizer / image processor (local folder or hub id)."),
) -> None:
    """Multi-preference consistent filtering: score every pair's gaps, keep the consistent ones, report each rule."""
    from lpo.core.config import apply_overrides
    from lpo.evals.harness import named_refs
    from lpo.pairs.mpcf import filter_pairs_file, mpcf_preset
    from lpo.pairs.format import load_pairs

    config = apply_overrides(mpcf_preset(preset), overrides + ([f"strategy={strategy}"] if strategy else []))
    console = stdout_console()
    loaded = load_pairs(pairs_path, split=split, limit=limit)
    console.print(loaded.summary())
    result = filter_pairs_file(
        loaded.pairs, config, out, str(pairs_path), cache_dir=cache_dir,
        weights=named_refs(metric_weights, "--metric-weights"),
        processors=named_refs(metric_processors, "--metric-processor"),
    )
    console.print(result.report.as_table())
    console.print(f"kept {len(result.pairs)} of {len(loaded.pairs)} pairs -> [bold]{out}[/]")


@lrm_app.command("train")
@user_errors
def lrm_train(
    pairs_path: str = typer.Argument(..., help="Training pairs (parquet from `lpo pairs` / `lpo mpcf`, or a dataset id)."),
    model: str = typer.Option("world", help="Base diffusion model: world, a pipeline folder or a hub id."),
    preset: str = typer.Option("lrm-world", help="lrm-world, lrm-world-flow, lrm-sd15, lrm-sdxl, spo-pixel-world, spo-pixel-sd15, spo-pixel-sdxl."),
    overrides: List[str] = SET_OPTION,
    run_dir: Optional[Path] = typer.Option(None, help="Run folder (default runs/PRESET-TIMESTAMP)."),
    resume: bool = typer.Option(False, help="Continue the run in --run-dir from its last checkpoint."),
    eval_pairs: Optional[str] = typer.Option(None, help="Held-out pairs evaluated during training."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Train a step reward model (LRM, or SPO's pixel model with a spo-pixel preset) on preference pairs."""
    if dry_run:
        from lpo.core.config import apply_overrides, config_to_dict
        from lpo.reward.config import reward_training_preset

        stdout_console().print_json(json.dumps(config_to_dict(apply_overrides(reward_training_preset(preset), overrides))))
        return
    from lpo.reward.jobs import train_reward_job

    result = train_reward_job(model, pairs_path, preset, overrides, run_dir, resume, eval_pairs, console=stdout_console())
    if int(os.environ.get("RANK", "0") or 0) != 0:  # under accelerate launch the main process reports
        return
    # accuracy is None when the last log window held only ties (nothing to be right about)
    accuracy = "n/a (only ties)" if result.final_accuracy is None else f"{result.final_accuracy:.3f}"
    stdout_console().print(
        f"trained {result.steps} steps; final loss {result.final_loss:.4f}, train accuracy {accuracy}; "
        f"model [bold]{result.model_folder}[/]"
    )


@lrm_app.command("eval")
@user_errors
def lrm_eval(
    pairs_path: str = typer.Argument(..., help="Held-out pairs (e.g. `lpo pairs --prompt-split val`)."),
    model: str = typer.Option("world", help="Base diffusion model the reward models were built on."),
    lrm: Optional[Path] = typer.Option(None, help="An LRM folder (a run's model/)."),
    pixel: Optional[Path] = typer.Option(None, help="An SPO pixel step model folder."),
    out: Path = typer.Option(Path("results/lrm-eval"), help="Folder for accuracy_by_timestep.json and .png."),
    seed: int = typer.Option(0, help="Seed of the noise (the same for every model)."),
) -> None:
    """Held-out preference accuracy at every DDIM timestep: LRM vs pixel model on x̂0 (vs true utility in the world)."""
    from lpo.reward.jobs import eval_reward_job, render_accuracy_table

    result = eval_reward_job(model, pairs_path, out, lrm_dir=lrm, pixel_dir=pixel, seed=seed, console=stdout_console())
    render_accuracy_table(result, stdout_console())
    stdout_console().print(f"wrote [bold]{out}/accuracy_by_timestep.json[/] and .png")
