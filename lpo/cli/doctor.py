"""``lpo doctor``: load the named metrics and checkpoints as a run would, and report what was found."""

from __future__ import annotations

from typing import List, Optional

import typer

from lpo.cli.common import stdout_console, user_errors


@user_errors
def doctor_command(
    metrics: List[str] = typer.Option([], "--metric", help="A metric to load and run on the fixed doctor images (repeatable)."),
    checkpoints: List[str] = typer.Option([], "--checkpoint", help="A checkpoint to resolve and load (repeatable)."),
    metric_weights: List[str] = typer.Option([], "--metric-weights", help="NAME=REF: a metric's weights; repeatable."),
    metric_processors: List[str] = typer.Option([], "--metric-processor", help="NAME=REF: a metric's tokenizer / image processor."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16 (metrics and pipelines)."),
    registry: Optional[str] = typer.Option(None, help="A checkpoint registry file (JSON)."),
    load: bool = typer.Option(True, help="Load each checkpoint's pipeline (--no-load: its protocol card only)."),
    published_row: Optional[str] = typer.Option(None, "--published-row", help="A published row (e.g. SD1.5, SDXL): "
                                                "evaluate the checkpoint the paper evaluated under its protocol and "
                                                "compare (GPU and hub access; minutes to hours)."),
    max_prompts: Optional[int] = typer.Option(None, help="With --published-row: only the first N prompts."),
) -> None:
    """Before a real run: load each metric (strict keys) and score fixed images; resolve and load each checkpoint."""
    from lpo.core.errors import LpoError
    from lpo.evals.doctor import run_doctor
    from lpo.evals.harness import named_refs

    if published_row is not None:
        _published_row(published_row, device, dtype, max_prompts)
        if not metrics and not checkpoints:
            return
    if not metrics and not checkpoints:
        raise LpoError("name something to check: --metric NAME, --checkpoint SPEC (lpo list checkpoints) "
                       "and/or --published-row MODEL")
    checks, cards = run_doctor(
        metrics, checkpoints, metric_weights=named_refs(metric_weights, "--metric-weights"),
        metric_processors=named_refs(metric_processors, "--metric-processor"), device=device,
        dtype=dtype, registry=registry, load=load, console=stdout_console(),
    )
    failed = [c.name for c in checks if c.error] + [c["spec"] for c in cards if "error" in c]
    if failed:
        raise typer.Exit(1)


def _published_row(model: str, device: str, dtype: str, max_prompts: int | None) -> None:
    from lpo.evals.published_check import check_published_row

    console = stdout_console()
    checks = check_published_row(model, device=device, dtype=dtype,
                                 max_prompts=max_prompts, console=console)
    console.print(f"published row {model}: measured vs published (reproduces: within the 95% interval + 1%)",
                  highlight=False)
    for c in checks:
        if c.measured is None:
            console.print(f"  {c.metric}: published {c.published:g}, not measured", highlight=False)
            continue
        verdict = "reproduces" if c.reproduces else "DOES NOT reproduce"
        console.print(f"  {c.metric}: measured {c.measured:.4g} ± {c.half_width:.2g}, published {c.published:g}, "
                      f"Δ {c.delta:+.3g}: {verdict}", highlight=False)
    if any(c.reproduces is False for c in checks):
        raise typer.Exit(1)
