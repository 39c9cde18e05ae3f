"""``lpo sample`` (an image grid, optionally LRM-guided) and ``lpo pairs`` (labelled world image pairs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from lpo.cli.common import stdout_console, user_errors


@user_errors
def sample(
    model: str = typer.Argument(..., help="world, world:PRESET, a pipeline folder or a hub id (SD1.5 / SDXL)."),
    prompts: List[str] = typer.Option([], "--prompt", help="A prompt (repeatable). Default for world models: test prompts."),
    prompts_file: Optional[Path] = typer.Option(None, help="A text file with one prompt per line."),
    num_prompts: int = typer.Option(8, help="How many default prompts to draw when none are given."),
    images_per_prompt: int = typer.Option(1, help="Images per prompt."),
    guidance_scale: float = typer.Option(5.0, "--cfg", help="Classifier-free guidance scale."),
    steps: int = typer.Option(20, help="DDIM steps."),
    seed: int = typer.Option(42, help="Base seed; image i of a prompt always gets the same seed."),
    out: Path = typer.Option(Path("samples.png"), help="Where to write the PNG grid."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16."),
    guide: Optional[str] = typer.Option(None, help="lrm: LRM-guided sampling (branch K candidates per step, keep the LRM's pick)."),
    lrm: Optional[Path] = typer.Option(None, help="LRM folder for --guide lrm (a `lpo lrm train` run's model/)."),
    candidates: int = typer.Option(4, help="K candidates per step with --guide (>= 2)."),
    select: str = typer.Option("best", help="With --guide: best, softmax (∝ exp(S/τ)), random (control) or worst."),
    temperature: float = typer.Option(1.0, help="τ of --select softmax."),
    lrm_timestep: str = typer.Option("current", help="With --guide: timestep told to the LRM, current (official LPO code) or prev."),
    eta: Optional[float] = typer.Option(None, help="DDIM η with --guide (default 1; must be > 0)."),
) -> None:
    """Sample a model with fixed seeds into a PNG grid captioned with the prompts (optionally LRM-guided)."""
    from lpo.sampling.guided_generation import check_guided_options

    check_guided_options(guide, lrm, candidates, eta)
    if guide is not None:
        from lpo.reward.lrm_io import load_lrm
        from lpo.sampling.guided import GuidanceConfig, lrm_scorer
        from lpo.sampling.guided_generation import run_guided_sample

        def load_scorer(components):
            model_lrm = load_lrm(lrm, components)  # one-line LpoError if it was trained for another base model
            model_lrm.requires_grad_(False)
            return lrm_scorer(model_lrm)

        config = GuidanceConfig(candidates, select, temperature, lrm_timestep)
        path, counts = run_guided_sample(
            model=model, load_scorer=load_scorer, prompts=list(prompts), prompts_file=prompts_file, num_prompts=num_prompts,
            images_per_prompt=images_per_prompt, guidance_scale=guidance_scale, steps=steps, seed=seed,
            out=out, config=config, eta=1.0 if eta is None else eta, device=device, dtype=dtype, console=stdout_console(),
        )
        per_image = counts.per_image()
        stdout_console().print(
            f"wrote [bold]{path}[/] ({counts.images} images; per image {per_image['unet_calls']:g} U-Net calls "
            f"(CFG pair = 1), {per_image['lrm_calls']:g} LRM calls)"
        )
        return
    from lpo.sampling.generate import check_guidance_scale, run_sample

    check_guidance_scale(guidance_scale)  # before a model is resolved or loaded
    path = run_sample(
        model=model, prompts=list(prompts), prompts_file=prompts_file, num_prompts=num_prompts,
        images_per_prompt=images_per_prompt, guidance_scale=guidance_scale, steps=steps, seed=seed,
        out=out, device=device, dtype=dtype, console=stdout_console(), load=_checkpoint_loader(model),
    )
    stdout_console().print(f"wrote [bold]{path}[/]")


def _checkpoint_loader(model: str):
    """What `lpo eval` takes besides a pipeline (a run folder, its model/, an intermediate
    checkpoint, a registry name) as a loader for run_sample; None for a plain pipeline."""
    from lpo.evals.checkpoints import resolve_checkpoint
    from lpo.models.components import WORLD_MARKER
    from lpo.sampling.generate import resolve_model_name

    from lpo.models.families import alias_family

    path = Path(model)
    if alias_family(model) is not None or (path / "model_index.json").is_file() or not (path.exists() or "/" not in model):
        return None  # a pipeline folder, world alias or hub id: loaded as it is, nothing hashed
    checkpoint = resolve_checkpoint(model)
    if checkpoint.kind != "pipeline" or (checkpoint.adapter_kind is None and not checkpoint.vae and not checkpoint.registry):
        return None
    base = Path(resolve_model_name(checkpoint.model))
    kind = "world" if (base / WORLD_MARKER).is_file() else "diffusers"
    return lambda device, dtype: (checkpoint.load_pipeline(device, dtype), kind)


@user_errors
def pairs(
    out: Path = typer.Option(Path("pairs/world-train.parquet"), help="Parquet file to write (Pick-a-Pic columns)."),
    model: str = typer.Option("world", help="World model: world, world:PRESET or a world pipeline folder."),
    num_prompts: int = typer.Option(64, help="Train-split prompts to draw."),
    pairs_per_prompt: int = typer.Option(4, help="Labelled image pairs per prompt."),
    seed: int = typer.Option(0, help="Seed for prompts, images and annotators."),
    prompt_split: str = typer.Option("train", help="World prompt split to draw from (val for held-out pairs)."),
    steps: int = typer.Option(20, help="DDIM steps."),
    guidance_scale: float = typer.Option(5.0, "--cfg", help="Classifier-free guidance scale."),
    sources: Optional[str] = typer.Option(None, help="A named mix of (CFG, steps) per image instead of --cfg/--steps: single or pickapic."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
) -> None:
    """Generate world image pairs from a model and label them with the simulated annotators."""
    from lpo.world.pairs import run_pairs, source_mix

    summary = run_pairs(
        model, out, num_prompts, pairs_per_prompt, seed, stdout_console(),
        steps=steps, guidance_scale=guidance_scale, device=device, prompt_split=prompt_split,
        sources=source_mix(sources) if sources else None,
    )
    stdout_console().print_json(json.dumps(summary, default=str))
