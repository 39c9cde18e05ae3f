"""``lpo world ...``: pretrain the embedded world's model, evaluate with its judges, list its prompts.

The CLI may hand a ``world`` choice to the world (a dispatcher); real-mode code never imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from lpo.cli.common import SET_OPTION, stdout_console, user_errors

world_app = typer.Typer(no_args_is_help=True, help="The embedded synthetic world: pretrain its model, evaluate with its judges.")


@world_app.command("pretrain")
@user_errors
def world_pretrain(
    preset: str = typer.Option("quick", help="quick (~5 min on 2 cores), full, wide, tiny (tests); flow: the flow-matching (SD3-style) world, flow-tiny (tests)."),
    overrides: List[str] = SET_OPTION,
    output: Optional[Path] = typer.Option(None, help="Folder to write; default: the cache ($LPO_HOME/world/PRESET-HASH)."),
    force: bool = typer.Option(False, help="Retrain even if the cache holds this model."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Pretrain the world's tiny latent diffusion model and save it as a StableDiffusionPipeline folder."""
    from lpo.core.config import apply_overrides, config_to_dict
    from lpo.world.pretrain import WORLD_MARKER, pretrain_preset, world_model_dir

    config = apply_overrides(pretrain_preset(preset), overrides)
    target = output or world_model_dir(config)
    console = stdout_console()
    if dry_run:
        console.print_json(json.dumps({"output": str(target), "config": config_to_dict(config)}))
        return
    if (target / WORLD_MARKER).exists() and not force:
        console.print(f"world model already pretrained: [bold]{target}[/] (use --force to retrain)")
        return
    from lpo.core.progress import stage_progress
    from lpo.world.pretrain import pretrain_world, resolve_world_alias
    from lpo.world.pretrain_flow import WorldFlowPretrainConfig, pretrain_world_flow

    if isinstance(config, WorldFlowPretrainConfig):
        console.print(f"pretraining flow world model [bold]{preset}[/]: {config.num_images} images, transformer "
                      f"{config.layers} blocks × {config.heads} heads × {config.head_dim}, {config.steps} steps × {config.batch_size}")
        with stage_progress(console) as progress:
            flow = pretrain_world_flow(config, resolve_world_alias(f"world:{config.vae_from}"), target, progress)
        console.print(f"saved [bold]{flow.folder}[/] in {sum(flow.seconds.values()):.0f} s "
                      f"(transformer {flow.seconds['transformer']:.0f} s); flow-matching loss {flow.loss:.4f}")
        return
    console.print(
        f"pretraining world model [bold]{preset}[/]: {config.num_images} images, "
        f"VAE {config.vae_steps} steps × {config.vae_batch_size}, U-Net {config.unet_steps} steps × {config.unet_batch_size}"
    )
    with stage_progress(console) as progress:
        out = pretrain_world(config, target, progress)
    total = sum(out.seconds.values())
    console.print(
        f"saved [bold]{out.folder}[/] in {total:.0f} s "
        f"(render {out.seconds['render']:.0f} s, VAE {out.seconds['vae']:.0f} s, U-Net {out.seconds['unet']:.0f} s); "
        f"VAE MSE {out.vae_mse:.4f}, U-Net loss {out.unet_loss:.4f}"
    )


@world_app.command("eval")
@user_errors
def world_eval(
    model: str = typer.Argument("world", help="world, world:PRESET, a pipeline folder, or a reference: ground-truth, shuffled (another prompt's ground truth: chance level), noise."),
    split: str = typer.Option("test", help="Prompt split: test, test_heldout, val, train."),
    images_per_prompt: int = typer.Option(4, help="Images per prompt (all are scored)."),
    guidance_scale: float = typer.Option(5.0, "--cfg", help="Classifier-free guidance scale."),
    steps: int = typer.Option(20, help="DDIM steps."),
    seed: int = typer.Option(42, help="Protocol seed (per-image seeds derive from it)."),
    max_prompts: Optional[int] = typer.Option(None, help="Evaluate only this many prompts (round-robin over categories)."),
    references: bool = typer.Option(False, "--references", help="Also score ground-truth, shuffled and noise images of the same prompts and seeds, side by side."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    output: Optional[Path] = typer.Option(None, help="Also write the JSON result to this file (atomically)."),
) -> None:
    """Score a model with the world judges: a per-category table with 95% confidence intervals."""
    from lpo.world.benchmark import REFERENCE_SOURCES, WorldEvalProtocol
    from lpo.world.evaluate import evaluate_named_source, render_comparison_table, render_world_table

    protocol = WorldEvalProtocol(
        split=split, images_per_prompt=images_per_prompt, num_inference_steps=steps,
        guidance_scale=guidance_scale, seed=seed, max_prompts=max_prompts,
    )
    console = stdout_console() if not as_json else None
    result = evaluate_named_source(model, protocol, console=console)
    payload = result.as_dict()
    extra = []
    if references:
        extra = [evaluate_named_source(name, protocol, console=console) for name in REFERENCE_SOURCES if name != model]
        payload["references"] = {r.source: r.as_dict() for r in extra}
    if output is not None:
        from lpo.core.io import atomic_write_json

        atomic_write_json(output, payload)
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        render_world_table(result, stdout_console())
        if extra:
            render_comparison_table([result, *extra], stdout_console())


@world_app.command("guided-eval")
@user_errors
def world_guided_eval(
    lrm: Path = typer.Option(..., help="LRM folder trained on the world model (a `lpo lrm train` run's model/)."),
    model: str = typer.Option("world", help="World model: world, world:PRESET or a world pipeline folder."),
    split: str = typer.Option("test", help="Prompt split: test, test_heldout, val, train."),
    num_prompts: int = typer.Option(64, help="Prompts (round-robin over categories)."),
    seeds: int = typer.Option(2, help="Seeds (images) per prompt; every method uses the same ones."),
    candidates: int = typer.Option(4, help="K: candidates per step (guided) and final images (best-of-K)."),
    temperature: float = typer.Option(1.0, help="τ of guided-softmax."),
    lrm_timestep: str = typer.Option("current", help="Timestep told to the LRM: current (official LPO code) or prev."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated subset of plain, guided-best, guided-softmax, guided-random, guided-worst, best-of-k-lrm, best-of-k-judge (default: all but guided-softmax)."),
    steps: int = typer.Option(20, help="DDIM steps."),
    guidance_scale: float = typer.Option(5.0, "--cfg", help="Classifier-free guidance scale."),
    seed: int = typer.Option(42, help="Base seed (per-image seeds derive from it)."),
    batch_size: int = typer.Option(32, help="Images per U-Net batch."),
    out: Optional[Path] = typer.Option(None, help="Write the JSON result here (atomically)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
) -> None:
    """LRM-guided sampling vs plain, random-pick and best-of-K final images: true utility, alignment, U-Net/LRM calls."""
    from lpo.world.guided_eval import GuidedEvalProtocol, guided_eval_job, render_guided_eval

    protocol = GuidedEvalProtocol(
        split=split, num_prompts=num_prompts, seeds_per_prompt=seeds, num_candidates=candidates,
        temperature=temperature, lrm_timestep=lrm_timestep, num_inference_steps=steps,
        guidance_scale=guidance_scale, seed=seed, batch_size=batch_size,
        **({} if methods is None else {"methods": tuple(m.strip() for m in methods.split(",") if m.strip())}),
    )
    result = guided_eval_job(model, lrm, protocol, out, device=device, console=stdout_console())
    render_guided_eval(result, stdout_console())
    if out is not None:
        stdout_console().print(f"wrote [bold]{out}[/]")


@world_app.command("prompts")
@user_errors
def world_prompts_cmd(split: str = typer.Option("test", help="train, val, test or test_heldout.")) -> None:
    """List the world's prompts of one split with their categories."""
    from lpo.world.grammar import make_splits

    for spec in make_splits().get(split):
        typer.echo(f"{spec.category}\t{spec.text()}")
