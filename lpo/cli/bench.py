"""``lpo bench``: the whole study on the embedded world, from pairs to the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from lpo.cli.common import SET_OPTION, stdout_console, user_errors


@user_errors
def bench(
    preset: str = typer.Option("quick", help="quick (about 10 minutes on 2 CPU cores), full (everything made, 3 seeds) or flow (the flow-matching world; --set pairs_from=FULL_BENCH reuses the full preset's pairs)."),
    out: Optional[Path] = typer.Option(None, help="Bench folder (default: bench-PRESET); rerunning continues it."),
    ablation: List[str] = typer.Option([], "--ablation", help="Also run an ablation (repeatable): mpcf, vfe, lrm-t0, lpo-timesteps, spo-all-t, beta."),
    seeds: Optional[int] = typer.Option(None, help="Training seeds per method (default: the preset's); seed i trains in runs/METHOD/seed-i."),
    overrides: List[str] = SET_OPTION,
    threads: int = typer.Option(2, help="torch CPU threads, the same on every machine: results depend on the count (lpo.core.cpu_dispatch)."),
    build_kit: Optional[Path] = typer.Option(None, "--build-kit", help="Only make the pairs, MPCF, reward models and their accuracy table (in --out) and write them as a reward kit to this folder (lpo.bench.kit); the quick preset's shipped kit is lpo/world/assets/kits/quick."),
) -> None:
    """The whole study on the embedded world: pairs → MPCF → LRM / pixel model → LPO, SPO, Diffusion-DPO → eval → report."""
    from dataclasses import replace

    from lpo.bench.config import bench_preset
    from lpo.bench.runner import run_bench
    from lpo.core.config import apply_overrides
    from lpo.core.cpu_dispatch import pinned_threads

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

        command = f"lpo bench --preset {preset}" + "".join(f" --set {o}" for o in overrides) + f" --out {folder} --build-kit {build_kit}"
        with pinned_threads(threads):
            kit = build_reward_kit(folder, config, build_kit, command, console=stdout_console())
        stdout_console().print(f"reward kit written to [bold]{kit}[/] in {(time.perf_counter() - started) / 60:.1f} min")
        return
    with pinned_threads(threads):
        result = run_bench(folder, config, console=stdout_console())
    minutes = (time.perf_counter() - started) / 60
    stdout_console().print(f"bench finished in {minutes:.1f} min: report [bold]{result.folder / 'report' / 'index.html'}[/]")
