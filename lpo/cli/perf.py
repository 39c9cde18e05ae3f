"""``lpo perf ...``: performance benchmarks measured side by side in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lpo.cli.common import user_errors

perf_app = typer.Typer(no_args_is_help=True, help="Performance benchmarks that print ratios measured side by side in one run.")


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


@perf_app.command("memory")
@user_errors
def perf_memory(
    preset: list[str] = typer.Option([], "--preset", help="Trainer preset (repeatable); default: the six paper presets."),
    set_: list[str] = typer.Option([], "--set", help="Override applied to every preset, e.g. --set train.train_batch_size=4."),
    reward_dtype: str = typer.Option("fp32", help="The step reward model's weights as loaded (lpo's reward training saves fp32)."),
    out: Optional[Path] = typer.Option(None, help="Also write the estimates as JSON here."),
) -> None:
    """Peak training memory per process of each preset, estimated on fake tensors (no GPU, no weights)."""
    from lpo.core.dtypes import canonical_dtype
    from lpo.perf.jobs import run_memory_estimates

    run_memory_estimates(preset, set_, reward_dtype=canonical_dtype(reward_dtype), out=out)
