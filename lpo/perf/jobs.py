"""`lpo perf reward-cost`: build each architecture, time both step rewards, print and save."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Sequence

import torch

from lpo.core.errors import LpoError
from lpo.core.io import atomic_write_json, run_metadata
from lpo.perf.reward_cost import PARTS, RewardCostResult, measure_reward_cost

REWARD_COST_ARCHITECTURES = ("world", "sd15", "sdxl")
BENCH_PROMPT = "a red circle left of a blue square"  # any prompt: cost does not depend on words


def _build(architecture: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    from lpo.reward.lrm import LatentRewardModel
    from lpo.reward.pixel import PixelStepReward

    if architecture == "world":
        from lpo.sampling.generate import resolve_model_name
        from lpo.models.components import load_components

        components = load_components(resolve_model_name("world"), dtype=dtype, device=device)
        scorer = None  # PixelStepReward picks the world's own scorer
    else:
        from lpo.perf.architectures import random_components, random_pickscore_scorer

        components = random_components(architecture, device=device, dtype=dtype)
        scorer = random_pickscore_scorer(device=device, dtype=dtype)
    lrm = LatentRewardModel.from_components(components).to(device=device, dtype=dtype).eval()
    pixel = PixelStepReward.from_components(components, scorer).eval()
    pixel.scorer.to(device=device, dtype=dtype)
    return components, lrm, pixel


def run_reward_cost(
    architectures: Sequence[str],
    *,
    device: str = "cpu",
    dtype: str = "fp32",
    prompts: int = 1,
    candidates: int = 4,
    repeats: int = 5,
    warmup: int = 2,
    out: Path | None = None,
) -> list[RewardCostResult]:
    from lpo.sampling.generate import resolve_device, resolve_dtype

    unknown = [a for a in architectures if a not in REWARD_COST_ARCHITECTURES]
    if unknown:
        raise LpoError(f"unknown architecture {unknown[0]!r}; choose from {', '.join(REWARD_COST_ARCHITECTURES)}")
    if prompts < 1 or candidates < 1 or repeats < 1 or warmup < 0:
        raise LpoError("--prompts, --candidates and --repeats must be >= 1 and --warmup >= 0")
    from rich.console import Console

    from lpo.core.progress import count_progress

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    console = Console(stderr=True)
    results = []
    for architecture in architectures:
        # building full-size random models and timing them takes minutes on a CPU: say so
        console.print(f"{architecture}: building the base model, the LRM and the pixel reward "
                      f"({'world weights' if architecture == 'world' else 'random weights at full size'}) on {torch_device}")
        components, lrm, pixel = _build(architecture, torch_device, torch_dtype)
        with count_progress(console, f"{architecture}: timing {len(PARTS)} parts × {warmup} untimed + {repeats} timed calls") as update:
            results.append(
                measure_reward_cost(
                    components, lrm, pixel, [BENCH_PROMPT] * prompts,
                    candidates=candidates, repeats=repeats, warmup=warmup, progress=update,
                )
            )
        print_reward_cost([results[-1]])
        del components, lrm, pixel
        gc.collect()
        if torch_device.type == "cuda":
            torch.cuda.empty_cache()
    if out is not None:
        payload = {"results": [r.to_dict() for r in results], "meta": run_metadata()}
        atomic_write_json(out, payload)
    return results


def print_reward_cost(results: Sequence[RewardCostResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    labels = {
        "denoise": "policy step (CFG, B latents)",
        "x0_unet": "pixel: x̂0 U-Net call (CFG)",
        "vae_decode": "pixel: VAE decode",
        "pixel_scorer": "pixel: image scorer",
        "lrm": "LRM (truncated U-Net, VFE)",
    }
    console = Console()
    for r in results:
        s = r.setup
        n = s.prompts * s.candidates
        table = Table(
            title=f"{s.architecture} · {s.resolution}px · {s.dtype} · {s.device} · B={s.prompts} K={s.candidates}",
            caption=f"median of {s.repeats} calls after {s.warmup} warm-up",
        )
        table.add_column("part")
        table.add_column("ms per step", justify="right")
        table.add_column("ms per candidate", justify="right")
        if r.peak_memory_mib:
            table.add_column("peak MiB", justify="right")
        for part in PARTS:
            row = [labels[part], f"{1000 * r.seconds[part]:.2f}", "" if part == "denoise" else f"{1000 * r.seconds[part] / n:.2f}"]
            if r.peak_memory_mib:
                row.append(f"{r.peak_memory_mib[part]:.0f}")
            table.add_row(*row)
        table.add_row("pixel reward total", f"{1000 * r.pixel_seconds:.2f}", f"{1000 * r.pixel_seconds / n:.2f}")
        console.print(table)
        console.print(
            f"  pixel / LRM per candidate: [bold]{r.pixel_to_lrm:.1f}×[/]   "
            f"SPO / LPO per step (policy call + {s.candidates} candidates): [bold]{r.step_ratio:.1f}×[/]"
        )


PAPER_PRESETS = ("lpo-sd15", "spo-sd15", "dpo-sd15", "lpo-sdxl", "spo-sdxl", "dpo-sdxl")


def preset_architecture(config: Any) -> str:
    """sd15 or sdxl, from the preset's base model; world presets have no full-size estimate."""
    base = str(config.model.base).lower()
    if base.startswith("world"):
        raise LpoError(f"preset {config.preset} trains the world model; memory estimates are for the SD1.5 / SDXL "
                       f"presets ({', '.join(PAPER_PRESETS)})")
    return "sdxl" if "xl" in base else "sd15"


def run_memory_estimates(presets: Sequence[str], overrides: Sequence[str] = (), *, reward_dtype: str = "fp32",
                         out: Path | None = None) -> list[Any]:
    """Estimate each preset's peak training memory (lpo.perf.memory) and print the table; no presets: the paper's six."""
    from rich.console import Console

    from lpo.perf.memory import estimate_training_memory
    from lpo.trainers.jobs import resolve_config
    from lpo.trainers.presets import PRESET_METHOD

    presets = list(presets) or list(PAPER_PRESETS)
    unknown = [p for p in presets if p not in PRESET_METHOD]
    if unknown:
        raise LpoError(f"unknown trainer preset {unknown[0]!r}; known: {', '.join(PRESET_METHOD)}")
    configs = [resolve_config(PRESET_METHOD[p], p, overrides) for p in presets]
    architectures = [preset_architecture(c) for c in configs]
    console = Console(stderr=True)
    estimates = []
    for n, (config, architecture) in enumerate(zip(configs, architectures), 1):
        steps = "a rollout step and two updates" if config.method in ("lpo", "spo") else "two updates"
        console.print(f"[{n}/{len(configs)}] {config.preset}: building {architecture} at full size on fake tensors "
                      f"and running {steps} (10–40 s)")
        estimates.append(estimate_training_memory(config, architecture, reward_dtype=reward_dtype))
    print_memory_estimates(estimates)
    if out is not None:
        atomic_write_json(out, {"estimates": [e.to_dict() for e in estimates], "overrides": list(overrides),
                                "meta": run_metadata()})
    return estimates


def print_memory_estimates(estimates: Sequence[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    gib = 1024.0
    table = Table(title="Estimated peak training memory per process, GiB (fake tensors, CUDA's autocast policy)",
                  caption="batch: rollout prompts × candidates, update batch. rollout / update: transient above the "
                          "resident weights and trainable + optimiser states. Add the CUDA context and kernel "
                          "workspaces (~0.5-1 GiB; more for large convolutions). 40/48/80: fits a card of that many GB")
    for column in ("preset", "batch", "ckpt", "optim", "weights", "train+opt", "rollout", "update", "peak", "40/48/80"):
        table.add_column(column, justify="left" if column in ("preset", "batch", "optim") else "right")
    for e in estimates:
        r = e.resident_mib
        weights = sum(v for k, v in r.items() if k.startswith(("base", "step reward")))
        trainable = sum(v for k, v in r.items() if k.startswith(("policy", "optimiser")))
        fits = "/".join("y" if e.peak_mib / gib <= cap else "n" for cap in (40, 48, 80))
        b = e.batch
        batch = (f"{b['rollout prompts']}×{b['candidates']}, {b['update']}" if "update" in b
                 else f"{b['pairs per forward']} pair")
        table.add_row(
            e.preset, batch, "yes" if e.gradient_checkpointing else "no",
            e.optimizer, f"{weights / gib:.1f}", f"{trainable / gib:.1f}",
            f"{e.transient_mib['rollout'] / gib:.1f}" if "rollout" in e.transient_mib else "-",
            f"{e.transient_mib['update'] / gib:.1f}", f"[bold]{e.peak_mib / gib:.1f}[/]", fits,
        )
    console = Console(width=max(Console().width, 116))  # ten columns: don't squeeze them into 80 when piped
    console.print(table)
    for e in estimates:
        for note in e.notes:
            console.print(f"  {e.preset}: {note}")
