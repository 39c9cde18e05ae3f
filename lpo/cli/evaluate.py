"""Evaluation commands: ``lpo eval`` (and ``--watch``), ``lpo compare``, ``lpo leaderboard`` and ``lpo list ...``.

Their help texts name the registries' entries (``{checkpoints}``, ``{benchmarks}``), which
:func:`lpo.cli.common.registry_help_command` fills in when the help is shown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from lpo.cli.common import stdout_console, user_errors
from lpo.core.errors import LpoError

list_app = typer.Typer(no_args_is_help=True, help="List what lpo knows by name: checkpoints, benchmarks, metrics.")


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
    metric_dtype: str = typer.Option("fp32", help="Metric precision: fp32, fp16 or bf16 (as --dtype)."),
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
    from lpo.evals.harness import EvalConfig, EvalProtocol, named_refs, run_eval

    if watch is not None:
        from lpo.evals.watcher import watch_command

        # Compared by name: typer may carry its own copy of click's ParameterSource enum.
        given = {name: value for name, value in ctx.params.items() if name not in ("watch", "interval", "until_done", "dry_run")
                 and getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
        watch_command(watch, given, interval=interval, until_done=until_done, dry_run=dry_run, console=stdout_console())
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
        stdout_console().print_json(json.dumps(config.as_dict()))
        return
    render_eval(run_eval(config, console=stdout_console()), stdout_console())


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
    from lpo.evals.protocol import EvalProtocol

    if cfg == "own":
        common = None
    else:
        try:
            common = float(cfg)
        except ValueError:
            raise LpoError(f"--cfg {cfg!r} is neither 'own' nor a number; write --cfg own or e.g. --cfg 5") from None
    config = CompareConfig(
        checkpoints=tuple(checkpoints), benchmarks=tuple(benchmarks), reference=reference,
        prompts=parse_prompt_sources(prompts), metrics=tuple(metrics), win_metrics=tuple(win_metrics),
        max_prompts=max_prompts,
        protocol=EvalProtocol(steps=steps, guidance_scale=common, seed=seed, images_per_prompt=images_per_prompt,
                              resolution=resolution, dtype=dtype, batch_size=batch_size),
        tie_tolerance=tie_tolerance,
        metric_weights=named_refs(metric_weights, "--metric-weights"),
        metric_processors=named_refs(metric_processors, "--metric-processor"), metric_batch_size=metric_batch_size,
        device=device, cache_dir=cache_dir, results_dir=results_dir, registry=registry,
    )
    result = run_compare(config, console=stdout_console())
    command = "lpo " + " ".join(sys.argv[1:]) if sys.argv[1:] else None
    if out is None:
        typer.echo(render_markdown(result, command), nl=False)
    else:
        md, data = write_compare(result, out, command)
        stdout_console().print(f"wrote [bold]{md}[/] and {data}")


@list_app.command("checkpoints")
@user_errors
def list_checkpoints(
    registry: Optional[Path] = typer.Option(None, help="A checkpoint registry file (JSON) read after the shipped one and $LPO_HOME/checkpoints.json."),
) -> None:
    """The named checkpoints `lpo eval NAME` and `lpo compare` resolve (shipped and yours)."""
    from lpo.evals.checkpoint_registry import load_registry, registry_table

    console = stdout_console()
    console.print(registry_table(load_registry(registry), width=console.width))


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
        stdout_console().print(f"wrote [bold]{out}[/]")


def render_eval(output, console) -> None:
    """The records of one evaluation as a rich table, then where the time went."""
    from rich.table import Table

    ps = output.prompt_set
    sources = output.protocol_sources
    notes = [f"{what} from the {sources[key]}" for key, what in (("guidance_scale", "CFG"), ("images_per_prompt", "images per prompt"))
             if sources.get(key) in ("checkpoint", "benchmark")]
    title = f"{output.checkpoint.label} · {len(ps)} prompts ({ps.hash}) · {output.protocol.summary()}"
    table = Table(title=title + (f" ({', '.join(notes)})" if notes else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right")
    for r in output.records:
        ci = f"[{r.ci95[0]:.4g}, {r.ci95[1]:.4g}]" if r.ci95 else "—"
        key = r.metric_key + (" (mean of categories)" if r.aggregation == "category_mean" else "")
        table.add_row(key, f"{r.value:.4g}", ci, f"{r.n_prompts} × {r.n_images // max(r.n_prompts, 1)}")
    console.print(table)
    breakdowns = [r for r in output.records if r.breakdown]
    if breakdowns:
        sub = Table(title="by category (mean over prompts)")
        sub.add_column("metric")
        for entry in breakdowns[0].breakdown:
            sub.add_column(entry["category"], justify="right")
        for r in breakdowns:
            sub.add_row(r.metric_key, *(f"{entry['value']:.3f}" for entry in r.breakdown))
        console.print(sub)
    parts = [f"generated {output.images_generated} images in {output.generate_s:.1f} s ({output.images_cached} from cache)"]
    parts += [f"{k}: load {t.load_s:.1f} s, score {t.score_s:.1f} s" for k, t in output.metric_timing.items()]
    console.print(" · ".join(parts))
    if output.written:
        appended = len(output.records) - len(output.repeated)
        console.print(f"appended {appended} records to " + ", ".join(str(p) for p in output.written))
    if output.repeated:
        console.print(f"{len(output.repeated)} of these evaluations were in the store already (same checkpoint, "
                      "protocol and metric): not appended again")
