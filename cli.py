"""The ``lpo`` command line (Typer). Installed as ``lpo.cli``; ``lpo/cli.py`` links here.

Each command: arguments -> config -> one harness call -> rich output. Heavy imports
(torch, diffusers) happen inside commands so that ``lpo --help`` is instant. User
mistakes (``LpoError``) print one line and exit with status 2.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import typer

from lpo.errors import LpoError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="lpo: preference optimisation of text-to-image diffusion models (LPO, SPO, Diffusion-DPO), evaluation first.",
)
world_app = typer.Typer(no_args_is_help=True, help="The embedded synthetic world: pretrain its model, evaluate with its judges.")
app.add_typer(world_app, name="world")
lrm_app = typer.Typer(no_args_is_help=True, help="Step reward models: the Latent Reward Model and SPO's pixel step model.")
app.add_typer(lrm_app, name="lrm")
perf_app = typer.Typer(no_args_is_help=True, help="Performance benchmarks that print ratios measured side by side in one run.")
app.add_typer(perf_app, name="perf")
list_app = typer.Typer(no_args_is_help=True, help="List what lpo knows by name: checkpoints, benchmarks, metrics.")
app.add_typer(list_app, name="list")


def user_errors(fn: Callable) -> Callable:
    """Turn an LpoError into one red line and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import lpo
        import lpo.world

        lpo.quiet_libraries()
        lpo.world.install()  # the composition root plugs the world in (real-mode code never imports it)
        try:
            return fn(*args, **kwargs)
        except LpoError as err:
            from rich.console import Console

            Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _console():
    from rich.console import Console

    return Console()


SetOption = typer.Option([], "--set", help="Override a config value, e.g. --set unet_steps=500 (repeatable).")


@app.command()
@user_errors
def version() -> None:
    """Print the lpo version."""
    import lpo

    typer.echo(lpo.__version__)


@app.command("env")
@user_errors
def env_command() -> None:
    """Print what every run records about this machine: versions, CPU model, CPU kernels, threads (JSON)."""
    from lpo.io import hardware, package_versions

    typer.echo(json.dumps({"versions": package_versions(), "hardware": hardware()}, indent=2))


@world_app.command("pretrain")
@user_errors
def world_pretrain(
    preset: str = typer.Option("quick", help="quick (~5 min on 2 cores), full, or tiny (tests)."),
    overrides: List[str] = SetOption,
    output: Optional[Path] = typer.Option(None, help="Folder to write; default: the cache ($LPO_HOME/world/PRESET-HASH)."),
    force: bool = typer.Option(False, help="Retrain even if the cache holds this model."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Pretrain the world's tiny latent diffusion model and save it as a StableDiffusionPipeline folder."""
    from lpo.config import apply_overrides, config_to_dict
    from lpo.world.pretrain import WORLD_MARKER, pretrain_preset, world_model_dir

    config = apply_overrides(pretrain_preset(preset), overrides)
    target = output or world_model_dir(config)
    console = _console()
    if dry_run:
        console.print_json(json.dumps({"output": str(target), "config": config_to_dict(config)}))
        return
    if (target / WORLD_MARKER).exists() and not force:
        console.print(f"world model already pretrained: [bold]{target}[/] (use --force to retrain)")
        return
    from lpo.progress import stage_progress
    from lpo.world.pretrain import pretrain_world

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
    console = _console() if not as_json else None
    result = evaluate_named_source(model, protocol, console=console)
    payload = result.as_dict()
    extra = []
    if references:
        extra = [evaluate_named_source(name, protocol, console=console) for name in REFERENCE_SOURCES if name != model]
        payload["references"] = {r.source: r.as_dict() for r in extra}
    if output is not None:
        from lpo.io import atomic_write_json

        atomic_write_json(output, payload)
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        render_world_table(result, _console())
        if extra:
            render_comparison_table([result, *extra], _console())


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
    result = guided_eval_job(model, lrm, protocol, out, device=device, console=_console())
    render_guided_eval(result, _console())
    if out is not None:
        _console().print(f"wrote [bold]{out}[/]")


@world_app.command("prompts")
@user_errors
def world_prompts_cmd(split: str = typer.Option("test", help="train, val, test or test_heldout.")) -> None:
    """List the world's prompts of one split with their categories."""
    from lpo.world.grammar import make_splits

    for spec in make_splits().get(split):
        typer.echo(f"{spec.category}\t{spec.text()}")


@app.command()
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
    from lpo.guided import check_guided_options

    check_guided_options(guide, lrm, candidates, eta)
    if guide is not None:
        from lpo.guided import GuidanceConfig, run_guided_sample

        config = GuidanceConfig(candidates, select, temperature, lrm_timestep)
        path, counts = run_guided_sample(
            model=model, lrm_path=lrm, prompts=list(prompts), prompts_file=prompts_file, num_prompts=num_prompts,
            images_per_prompt=images_per_prompt, guidance_scale=guidance_scale, steps=steps, seed=seed,
            out=out, config=config, eta=1.0 if eta is None else eta, device=device, dtype=dtype, console=_console(),
        )
        per_image = counts.per_image()
        _console().print(
            f"wrote [bold]{path}[/] ({counts.images} images; per image {per_image['unet_calls']:g} U-Net calls "
            f"(CFG pair = 1), {per_image['lrm_calls']:g} LRM calls)"
        )
        return
    from lpo.generate import run_sample

    path = run_sample(
        model=model, prompts=list(prompts), prompts_file=prompts_file, num_prompts=num_prompts,
        images_per_prompt=images_per_prompt, guidance_scale=guidance_scale, steps=steps, seed=seed,
        out=out, device=device, dtype=dtype, console=_console(),
    )
    _console().print(f"wrote [bold]{path}[/]")


@app.command()
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
        model, out, num_prompts, pairs_per_prompt, seed, _console(),
        steps=steps, guidance_scale=guidance_scale, device=device, prompt_split=prompt_split,
        sources=source_mix(sources) if sources else None,
    )
    _console().print_json(json.dumps(summary, default=str))


@app.command()
@user_errors
def mpcf(
    pairs_path: str = typer.Argument(..., help="Pairs: a parquet file from `lpo pairs`, a folder of parquets, or a dataset id."),
    out: Path = typer.Option(..., help="Parquet file for the kept pairs."),
    preset: str = typer.Option("world", help="Threshold preset: world or paper."),
    strategy: Optional[str] = typer.Option(None, help="none, 1, 2 or 3 (default: the preset's, 2)."),
    overrides: List[str] = SetOption,
    split: Optional[str] = typer.Option(None, help="Split of a dataset id or parquet folder."),
    limit: Optional[int] = typer.Option(None, help="Read at most this many rows."),
    cache_dir: Optional[Path] = typer.Option(None, help="Score cache (default: next to --out)."),
    metric_weights: List[str] = typer.Option([], "--metric-weights", help="SCORER=REF: weights of a metric-backed scorer (real mode), e.g. laion-aesthetic=/models/sac+logos+ava1-l14-linearMSE.pth."),
    metric_processors: List[str] = typer.Option([], "--metric-processor", help="SCORER=REF: its tokenizer / image processor (local folder or hub id)."),
) -> None:
    """Multi-preference consistent filtering: score every pair's gaps, keep the consistent ones, report each rule."""
    from lpo.config import apply_overrides
    from lpo.evals.harness import named_refs
    from lpo.mpcf import filter_pairs_file, mpcf_preset
    from lpo.pairs import load_pairs

    config = apply_overrides(mpcf_preset(preset), overrides + ([f"strategy={strategy}"] if strategy else []))
    console = _console()
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
    preset: str = typer.Option("lrm-world", help="lrm-world, lrm-sd15, lrm-sdxl, spo-pixel-world, spo-pixel-sd15, spo-pixel-sdxl."),
    overrides: List[str] = SetOption,
    run_dir: Optional[Path] = typer.Option(None, help="Run folder (default runs/PRESET-TIMESTAMP)."),
    resume: bool = typer.Option(False, help="Continue the run in --run-dir from its last checkpoint."),
    eval_pairs: Optional[str] = typer.Option(None, help="Held-out pairs evaluated during training."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Train a step reward model (LRM, or SPO's pixel model with a spo-pixel preset) on preference pairs."""
    if dry_run:
        from lpo.config import apply_overrides, config_to_dict
        from lpo.reward_training import reward_training_preset

        _console().print_json(json.dumps(config_to_dict(apply_overrides(reward_training_preset(preset), overrides))))
        return
    from lpo.reward_jobs import train_reward_job

    result = train_reward_job(model, pairs_path, preset, overrides, run_dir, resume, eval_pairs, console=_console())
    # accuracy is None when the last log window held only ties (nothing to be right about)
    accuracy = "n/a (only ties)" if result.final_accuracy is None else f"{result.final_accuracy:.3f}"
    _console().print(
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
    from lpo.reward_jobs import eval_reward_job, render_accuracy_table

    result = eval_reward_job(model, pairs_path, out, lrm_dir=lrm, pixel_dir=pixel, seed=seed, console=_console())
    render_accuracy_table(result, _console())
    _console().print(f"wrote [bold]{out}/accuracy_by_timestep.json[/] and .png")


@app.command()
@user_errors
def bench(
    preset: str = typer.Option("quick", help="quick (about 10 minutes on 2 CPU cores) or full."),
    out: Optional[Path] = typer.Option(None, help="Bench folder (default: bench-PRESET); rerunning continues it."),
    ablation: List[str] = typer.Option([], "--ablation", help="Also run an ablation (repeatable): mpcf, vfe, lrm-t0, lpo-timesteps, spo-all-t, beta."),
    seeds: Optional[int] = typer.Option(None, help="Training seeds per method (default: the preset's); seed i trains in runs/METHOD/seed-i."),
    overrides: List[str] = SetOption,
    threads: int = typer.Option(2, help="torch CPU threads, the same on every machine: results depend on the count (lpo.cpu_dispatch)."),
    build_kit: Optional[Path] = typer.Option(None, "--build-kit", help="Only make the pairs, MPCF, reward models and their accuracy table (in --out) and write them as a reward kit to this folder (lpo.bench.kit); the quick preset's shipped kit is lpo/world/assets/kits/quick."),
) -> None:
    """The whole study on the embedded world: pairs → MPCF → LRM / pixel model → LPO, SPO, Diffusion-DPO → eval → report."""
    from dataclasses import replace

    from lpo.bench.config import bench_preset
    from lpo.bench.runner import run_bench
    from lpo.config import apply_overrides
    from lpo.cpu_dispatch import pinned_threads

    config = apply_overrides(bench_preset(preset), overrides)
    if seeds is not None:
        config = replace(config, seeds=seeds)
    if ablation:
        from lpo.bench.ablations import ablation as check_ablation

        for name in ablation:
            check_ablation(name)
        config = replace(config, ablations=tuple(dict.fromkeys((*config.ablations, *ablation))))
    folder = out or Path(f"bench-{preset}")
    started = time.perf_counter()
    if build_kit is not None:
        from lpo.bench.runner import build_kit as build_reward_kit

        command = "lpo bench --preset " + preset + "".join(f" --set {o}" for o in overrides) + f" --out {folder} --build-kit {build_kit}"
        with pinned_threads(threads):
            kit = build_reward_kit(folder, config, build_kit, command, console=_console())
        _console().print(f"reward kit written to [bold]{kit}[/] in {(time.perf_counter() - started) / 60:.1f} min")
        return
    with pinned_threads(threads):
        result = run_bench(folder, config, console=_console())
    minutes = (time.perf_counter() - started) / 60
    _console().print(f"bench finished in {minutes:.1f} min: report [bold]{result.folder / 'report' / 'index.html'}[/]")


@perf_app.command("reward-cost")
@user_errors
def perf_reward_cost(
    arch: list[str] = typer.Option(["world", "sd15"], "--arch", help="world, sd15 or sdxl (repeatable); sd15/sdxl use random weights at full size."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16."),
    prompts: int = typer.Option(1, help="Prompts per step (B)."),
    candidates: int = typer.Option(4, help="Candidates per prompt (K)."),
    repeats: int = typer.Option(5, help="Timed calls per part (the median is reported)."),
    warmup: int = typer.Option(2, help="Untimed calls before timing."),
    out: Optional[Path] = typer.Option(None, help="Also write the measurements as JSON here."),
) -> None:
    """Cost per candidate of the LRM vs SPO's pixel step reward (x̂0 U-Net + VAE decode + scorer)."""
    from lpo.perf.jobs import run_reward_cost

    run_reward_cost(arch, device=device, dtype=dtype, prompts=prompts, candidates=candidates,
                    repeats=repeats, warmup=warmup, out=out)


def _registry_help_command():
    from lpo.evals.cli_support import RegistryHelpCommand

    return RegistryHelpCommand


@app.command("eval", cls=_registry_help_command())
@user_errors
def eval_command(
    ctx: typer.Context,
    checkpoint_arg: Optional[str] = typer.Argument(None, metavar="CHECKPOINT", help="A registry name ({checkpoints}), world, world:PRESET, a diffusers pipeline folder, a run folder, a hub id; on world benchmarks also ground-truth, shuffled, noise."),
    checkpoint_opt: Optional[str] = typer.Option(None, "--checkpoint", help="The checkpoint, as an option instead of the argument."),
    benchmark: str = typer.Option("world", help="{benchmarks}."),
    prompts: Optional[str] = typer.Option(None, help="The benchmark's prompt source: a local file/folder or a dataset id (prompts-file needs one)."),
    metrics: List[str] = typer.Option([], "--metric", help="A metric (repeatable); default: the benchmark's metrics and its diversity measure."),
    images_per_prompt: Optional[int] = typer.Option(None, help="Images per prompt (all are scored); default: the benchmark's (T2I-CompBench++ 10, GenEval 4, else 4)."),
    max_prompts: Optional[int] = typer.Option(None, help="Only the first N prompts (round-robin over categories)."),
    guidance_scale: Optional[float] = typer.Option(None, "--cfg", help="Classifier-free guidance scale; default: a registry checkpoint's own CFG, else 5.0."),
    steps: int = typer.Option(20, help="DDIM steps."),
    seed: int = typer.Option(42, help="Protocol seed (per-image seeds derive from it)."),
    resolution: Optional[int] = typer.Option(None, help="Image side in pixels (default: the model's native size)."),
    dtype: str = typer.Option("fp32", help="Generation precision: fp32, fp16 or bf16."),
    batch_size: int = typer.Option(8, help="Images per generation batch."),
    metric_weights: List[str] = typer.Option([], "--metric-weights", help="NAME=REF: a metric's weights (local folder/file or hub id); repeatable."),
    metric_processors: List[str] = typer.Option([], "--metric-processor", help="NAME=REF: a metric's tokenizer / image processor; repeatable."),
    metric_dtype: str = typer.Option("float32", help="Metric precision: float32, float16 or bfloat16."),
    metric_batch_size: int = typer.Option(16, help="Images per metric batch."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ... (under accelerate launch: each process's device)."),
    label: Optional[str] = typer.Option(None, help="Row label in the leaderboard (default: CHECKPOINT)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Image cache (default $LPO_HOME/eval-images)."),
    results_dir: Path = typer.Option(Path("results"), help="Results folder the records are appended to."),
    registry: Optional[Path] = typer.Option(None, help="A checkpoint registry file (JSON) read after the shipped one and $LPO_HOME/checkpoints.json."),
    no_save: bool = typer.Option(False, "--no-save", help="Print the scores without writing records."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
    watch: Optional[Path] = typer.Option(None, "--watch", metavar="RUN_DIR", help="A training run: evaluate each checkpoint it saves (and its final model) once, as they appear, with the config `lpo train` recorded unless options here change it."),
    interval: float = typer.Option(60.0, help="With --watch: seconds between looks at the run folder."),
    until_done: bool = typer.Option(False, "--until-done", help="With --watch: stop once the run has finished and everything it saved is evaluated (default: watch until interrupted)."),
) -> None:
    """Generate each image once (cached), score it with every metric, append one record per metric to the results."""
    from lpo.evals.harness import EvalConfig, EvalProtocol, named_refs, render_eval, run_eval

    if watch is not None:
        from lpo.trainers.auto_eval import watch_command

        # Compared by name: typer may carry its own copy of click's ParameterSource enum.
        given = {name: value for name, value in ctx.params.items() if name not in ("watch", "interval", "until_done", "dry_run")
                 and getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
        watch_command(watch, given, interval=interval, until_done=until_done, dry_run=dry_run, console=_console())
        return
    if (checkpoint_arg is None) == (checkpoint_opt is None):
        raise LpoError("name one checkpoint: `lpo eval CHECKPOINT` or `lpo eval --checkpoint CHECKPOINT` (`lpo list checkpoints`)")
    checkpoint = checkpoint_arg or checkpoint_opt
    config = EvalConfig(
        checkpoint=checkpoint, benchmark=benchmark, prompts=prompts, metrics=tuple(metrics), max_prompts=max_prompts,
        protocol=EvalProtocol(
            steps=steps, guidance_scale=guidance_scale, resolution=resolution, dtype=dtype,
            images_per_prompt=images_per_prompt, seed=seed, batch_size=batch_size,
        ),
        metric_weights=named_refs(metric_weights, "--metric-weights"), metric_processors=named_refs(metric_processors, "--metric-processor"),
        metric_dtype=metric_dtype, metric_batch_size=metric_batch_size, device=device, label=label,
        cache_dir=cache_dir, results_dir=None if no_save else results_dir, registry=registry,
    )
    if dry_run:
        _console().print_json(json.dumps(config.as_dict()))
        return
    render_eval(run_eval(config, console=_console()), _console())


@app.command("compare", cls=_registry_help_command())
@user_errors
def compare_command(
    checkpoints: List[str] = typer.Argument(..., help="Checkpoints to compare: registry names ({checkpoints}), folders, run folders, hub ids."),
    benchmarks: List[str] = typer.Option(["world"], "--benchmark", help="A benchmark (repeatable): {benchmarks}."),
    reference: Optional[str] = typer.Option(None, help="Win-rates are against this checkpoint (default: the first one)."),
    cfg: str = typer.Option("own", help="'own': each checkpoint's own CFG (registry entries' original evaluation CFG, else 5.0); or one number for all."),
    prompts: List[str] = typer.Option([], "--prompts", help="BENCHMARK=SOURCE: a benchmark's prompt source (repeatable)."),
    metrics: List[str] = typer.Option([], "--metric", help="A metric (repeatable); default: each benchmark's metrics and its diversity measure."),
    win_metrics: List[str] = typer.Option([], "--win-metric", help="Metric(s) of the win-rate (repeatable); default: pickscore, else world_utility."),
    images_per_prompt: Optional[int] = typer.Option(None, help="Images per prompt; default: each benchmark's."),
    max_prompts: Optional[int] = typer.Option(None, help="Only the first N prompts of each benchmark (round-robin over categories)."),
    steps: int = typer.Option(20, help="DDIM steps."),
    seed: int = typer.Option(42, help="Protocol seed (image k of a prompt: image_seed(seed, prompt, k) for every checkpoint)."),
    resolution: Optional[int] = typer.Option(None, help="Image side in pixels (default: each model's native size)."),
    dtype: str = typer.Option("fp32", help="Generation precision: fp32, fp16 or bf16."),
    batch_size: int = typer.Option(8, help="Images per generation batch."),
    tie_tolerance: float = typer.Option(0.0, help="Scores within this of each other are a tie (½) in the win-rate."),
    metric_weights: List[str] = typer.Option([], "--metric-weights", help="NAME=REF: a metric's weights; repeatable."),
    metric_processors: List[str] = typer.Option([], "--metric-processor", help="NAME=REF: a metric's tokenizer / image processor; repeatable."),
    metric_batch_size: int = typer.Option(16, help="Images per metric batch."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
    cache_dir: Optional[Path] = typer.Option(None, help="Image cache (default $LPO_HOME/eval-images)."),
    results_dir: Path = typer.Option(Path("results"), help="Results folder the records are appended to."),
    registry: Optional[Path] = typer.Option(None, help="A checkpoint registry file (JSON)."),
    out: Optional[Path] = typer.Option(None, help="Write the table here (Markdown, plus the same name .json); default: print it."),
) -> None:
    """Several checkpoints × benchmarks under one pinned protocol, with win-rates against a reference; nothing generated twice."""
    from lpo.evals.compare import CompareConfig, parse_prompt_sources, render_markdown, run_compare, write_compare
    from lpo.evals.harness import named_refs

    if cfg == "own":
        common = None
    else:
        try:
            common = float(cfg)
        except ValueError:
            raise LpoError(f"--cfg {cfg!r} is neither 'own' nor a number; write --cfg own or e.g. --cfg 5") from None
    config = CompareConfig(
        checkpoints=tuple(checkpoints), benchmarks=tuple(benchmarks), reference=reference, cfg=common,
        prompts=parse_prompt_sources(prompts), metrics=tuple(metrics), win_metrics=tuple(win_metrics),
        max_prompts=max_prompts, steps=steps, seed=seed, images_per_prompt=images_per_prompt, resolution=resolution,
        dtype=dtype, batch_size=batch_size, tie_tolerance=tie_tolerance,
        metric_weights=named_refs(metric_weights, "--metric-weights"),
        metric_processors=named_refs(metric_processors, "--metric-processor"), metric_batch_size=metric_batch_size,
        device=device, cache_dir=cache_dir, results_dir=results_dir, registry=registry,
    )
    result = run_compare(config, console=_console())
    command = "lpo " + " ".join(sys.argv[1:]) if sys.argv[1:] else None
    if out is None:
        typer.echo(render_markdown(result, command), nl=False)
    else:
        md, data = write_compare(result, out, command)
        _console().print(f"wrote [bold]{md}[/] and {data}")


@list_app.command("checkpoints")
@user_errors
def list_checkpoints(
    registry: Optional[Path] = typer.Option(None, help="A checkpoint registry file (JSON) read after the shipped one and $LPO_HOME/checkpoints.json."),
) -> None:
    """The named checkpoints `lpo eval NAME` and `lpo compare` resolve (shipped and yours)."""
    from lpo.evals.checkpoint_registry import load_registry, registry_table

    _console().print(registry_table(load_registry(registry)))


@list_app.command("benchmarks")
@user_errors
def list_benchmarks() -> None:
    """The registered benchmarks and their default metrics."""
    from lpo.evals.benchmarks import BENCHMARKS

    for name in BENCHMARKS.names():
        typer.echo(name)


@list_app.command("metrics")
@user_errors
def list_metrics() -> None:
    """The registered metrics (lpo eval --metric NAME)."""
    from lpo.evals.cli_support import metric_names

    for name in metric_names():
        typer.echo(name)


@app.command("leaderboard", cls=_registry_help_command())
@user_errors
def leaderboard_command(
    benchmarks: List[str] = typer.Option([], "--benchmark", help="Only these benchmarks (repeatable): {benchmarks}; default: all with records."),
    fmt: str = typer.Option("md", "--format", help="md, csv or html (tables, plots with intervals, sample strips)."),
    reported: bool = typer.Option(False, "--reported", help="Add the published rows (SPEC §7), marked reported."),
    out: Optional[Path] = typer.Option(None, help="Write here (atomically) instead of printing; html defaults to RESULTS/leaderboard.html."),
    results_dir: Path = typer.Option(Path("results"), help="Results folder holding the records."),
) -> None:
    """Render the result records: one table per benchmark and prompt set, one column per metric@version."""
    from lpo.evals.leaderboard import leaderboard

    if fmt == "html" and out is None:
        out = results_dir / "leaderboard.html"
    text = leaderboard(results_dir, list(benchmarks) or None, fmt, reported, out)
    if out is None:
        typer.echo(text, nl=False)
    else:
        _console().print(f"wrote [bold]{out}[/]")


@app.command("train")
@user_errors
def train_command(
    method: str = typer.Option(..., help="lpo, spo or diffusion-dpo."),
    preset: str = typer.Option(..., help="lpo-sd15, lpo-sdxl, lpo-world, spo-sd15, spo-sdxl, spo-world, dpo-sd15, dpo-sdxl, dpo-world."),
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
        from lpo.config import config_to_dict

        _console().print_json(json.dumps(config_to_dict(resolve_config(method, preset, overrides))))
        return
    auto_eval = None
    if evaluate:
        from lpo.evals.harness import named_refs
        from lpo.trainers.auto_eval import AutoEvalConfig

        auto_eval = AutoEvalConfig(
            benchmarks=tuple(eval_benchmarks), metrics=tuple(eval_metrics), max_prompts=eval_max_prompts,
            images_per_prompt=eval_images_per_prompt, prompts=named_refs(eval_prompts, "--eval-prompts"),
            metric_weights=named_refs(eval_metric_weights, "--eval-metric-weights"), results_dir=results_dir,
        )
    elif eval_benchmarks or eval_metrics or eval_max_prompts or eval_images_per_prompt or eval_prompts or eval_metric_weights:
        raise LpoError("--eval-* options have no effect with --no-eval; drop them, or pass them to `lpo eval --watch RUN_DIR`")
    result = run_training(method, preset, overrides, run_dir, resume, console=_console(), auto_eval=auto_eval)
    _console().print(
        f"{result.label}: {result.steps} {'steps' if method == 'diffusion-dpo' else 'rounds'}, {result.optimizer_steps} "
        f"optimiser steps, final loss {result.final_loss if result.final_loss is None else format(result.final_loss, '.4f')}; "
        f"model [bold]{result.model_folder}[/]"
    )


def main() -> None:
    """The ``lpo`` entry point: pin the CPU kernels (:mod:`lpo.cpu_dispatch`) before torch loads, then run."""
    from lpo.cpu_dispatch import pin

    try:
        pin()
    except LpoError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
    app()


if __name__ == "__main__":
    main()
