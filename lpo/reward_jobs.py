"""`lpo lrm train` / `lpo lrm eval`: load the parts, build the step reward model, call the
training loop or the accuracy-by-timestep evaluation, write results.

The LRM (SPEC §4.1) and SPO's pixel step model (§4.3) are trained by the same loop on the
same pairs; the evaluation puts them side by side at every DDIM timestep, with the
world's true utility of the decoded x̂0 as the ceiling of any pixel-space reward.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lpo.errors import LpoError

REWARD_KINDS = ("lrm", "spo-pixel")


def _components(model: str):
    from lpo.generate import resolve_model_name
    from lpo.models import load_components

    return load_components(resolve_model_name(model))


def _pairs(path: str, what: str):
    from lpo.pairs import load_pairs

    loaded = load_pairs(path)
    if not loaded.pairs:
        raise LpoError(f"{what} {path} holds no usable pairs ({loaded.summary()})")
    return loaded


def train_reward_job(
    model: str,
    pairs_path: str,
    preset: str,
    overrides: list[str],
    run_dir: Path | None = None,
    resume: bool = False,
    eval_pairs_path: str | None = None,
    console=None,
):
    """Train an LRM or an SPO pixel step model on pairs; returns the TrainingResult."""
    from lpo.config import apply_overrides
    from lpo.progress import stage_progress
    from lpo.reward_training import reward_training_preset, train_step_reward
    from lpo.runs import RunFolder

    config = apply_overrides(reward_training_preset(preset), overrides)
    components = _components(model)
    loaded = _pairs(pairs_path, "pairs file")
    if console is not None:
        console.print(loaded.summary())
    # With eval_fraction > 0 the trainer holds out prompts itself (split_by_prompt).
    eval_pairs = None if eval_pairs_path is None else _pairs(eval_pairs_path, "eval pairs file").pairs
    reward_model, save_fn = build_reward_model(config, components)
    extra = {"base_model": model, "pairs": str(pairs_path), "reward_model": config.reward_model}
    if resume:
        if run_dir is None:
            raise LpoError("--resume needs --run-dir pointing at the run to continue")
        run = RunFolder.resume(run_dir, config)
    elif run_dir is not None:
        run = RunFolder.create(config, folder=run_dir, extra=extra)
    else:
        run = RunFolder.create(config, name=config.preset, extra=extra)
    if console is not None:
        console.print(f"run folder [bold]{run.path}[/]")
    with stage_progress(console) as progress:
        return train_step_reward(
            reward_model, components, loaded.pairs, config, run,
            save_model=save_fn, progress=progress, eval_pairs=eval_pairs, resume=resume,
        )


def build_reward_model(config, components):
    """(model, save function) for ``config.reward_model``.

    The LRM's fresh projection is drawn from a generator seeded by ``config.seed`` (the
    global RNG left untouched), so a run does not depend on what the process did before
    it, e.g. the stages ahead of it in ``lpo bench``.
    """
    if config.reward_model == "lrm":
        import torch

        from lpo.lrm import LatentRewardModel, LRMConfig, save_lrm

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = LatentRewardModel.from_components(components, LRMConfig(vfe_scale=config.vfe_scale))
        return model, save_lrm
    from lpo.pixel_reward import PixelStepReward, save_pixel_reward

    return PixelStepReward.from_components(components), save_pixel_reward


def eval_reward_job(
    model: str,
    pairs_path: str,
    out_dir: Path,
    lrm_dir: Path | None = None,
    pixel_dir: Path | None = None,
    with_utility: bool = True,
    seed: int = 0,
    console=None,
) -> dict[str, Any]:
    """Held-out accuracy by timestep for each given step reward, side by side; table, JSON, plot."""
    from lpo.io import atomic_write_json
    from lpo.reward_training import encode_pairs, pairwise_accuracy_by_timestep
    from lpo.sampling import ddim_timesteps

    components = _components(model)
    pairs = _pairs(pairs_path, "held-out pairs file").pairs
    rewards: dict[str, Any] = {}
    if lrm_dir is not None:
        from lpo.lrm import load_lrm

        rewards["LRM (latent)"] = load_lrm(lrm_dir, components)
    if pixel_dir is not None:
        from lpo.pixel_reward import load_pixel_reward

        rewards["SPO pixel model on x̂0"] = load_pixel_reward(pixel_dir, components)
    if with_utility and components.kind == "world":
        from lpo.world.utility_reward import WorldUtilityOnX0

        rewards["true utility on x̂0 (ceiling)"] = WorldUtilityOnX0(components)
    if not rewards:
        raise LpoError("nothing to evaluate: pass --lrm and/or --pixel (the utility ceiling exists only in the world)")
    timesteps = sorted(int(t) for t in ddim_timesteps(components.scheduler, 20))
    encoded = encode_pairs(components, pairs)  # once: every model scores the same latents
    table: dict[str, dict[int, list]] = {}
    for name, reward in rewards.items():
        reward.eval()
        accuracy = pairwise_accuracy_by_timestep(reward, components, encoded, timesteps, seed=seed)
        table[name] = {int(t): [float(a), int(n)] for t, (a, n) in accuracy.items()}
        if console is not None:
            console.print(f"scored {name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"model": model, "pairs": str(pairs_path), "noise": "independent", "seed": seed, "accuracy": table}
    atomic_write_json(out_dir / "accuracy_by_timestep.json", result)
    plot_accuracy(table, out_dir / "accuracy_by_timestep.png")
    return result


def plot_accuracy(table: dict[str, dict[int, list]], path: Path) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lpo.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, by_t in table.items():
        ts = sorted(by_t)
        ax.plot(ts, [by_t[t][0] for t in ts], marker="o", ms=3, label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("timestep t (noisier →)")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def render_accuracy_table(result: dict[str, Any], console) -> None:
    from rich.table import Table

    table = Table(title="held-out preference accuracy by timestep (decisive pairs)")
    table.add_column("t", justify="right")
    names = list(result["accuracy"])
    for name in names:
        table.add_column(name, justify="right")
    ts = sorted({int(t) for by_t in result["accuracy"].values() for t in by_t})
    for t in ts:
        table.add_row(str(t), *(f"{result['accuracy'][n][t][0]:.3f}" for n in names))
    n = next(iter(result["accuracy"].values()))[ts[0]][1]
    console.print(table)
    console.print(f"n = {n} decisive pairs per cell; same noise for every model at each t")


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
