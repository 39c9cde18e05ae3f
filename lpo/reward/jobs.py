"""`lpo lrm train` / `lpo lrm eval`: load the parts, build the step reward model, call the
training loop or the accuracy-by-timestep evaluation, write results.

The LRM (SPEC §4.1) and SPO's pixel step model (§4.3) are trained by the same loop on the
same pairs; the evaluation puts them side by side at every DDIM timestep, with the
world's true utility of the decoded x̂0 as the ceiling of any pixel-space reward.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lpo.core.errors import LpoError

REWARD_KINDS = ("lrm", "spo-pixel")


def _components(model: str):
    """The base model's components: a U-Net pipeline's, or a flow pipeline's (SD3)."""
    from lpo.sampling.generate import resolve_model_name
    from lpo.models.components import load_components
    from lpo.models.flow_components import is_flow_pipeline, load_flow_components

    name = resolve_model_name(model)
    return load_flow_components(name) if is_flow_pipeline(name) else load_components(name)


def _pairs(path: str, what: str, stream: bool = False):
    """The pairs of ``path``: loaded whole, or (``stream``, a local file) a memory-mapped
    :class:`~lpo.pairs.stream.PairTable` whose images are decoded as they are encoded."""
    from lpo.pairs.stream import read_pairs

    loaded = read_pairs(path, stream=stream)
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
    from lpo.core.config import apply_overrides
    from lpo.core.progress import stage_progress
    from lpo.reward.config import reward_training_preset
    from lpo.reward.setup import make_reward_accelerator
    from lpo.reward.training import train_step_reward
    from lpo.core.runs import RunFolder, resume_mismatches

    config = apply_overrides(reward_training_preset(preset), overrides)
    if resume:  # refused before anything is loaded
        if run_dir is None:
            raise LpoError("--resume needs --run-dir pointing at the run to continue")
        RunFolder.open(run_dir).refuse_if_finished()
    components = _components(model)
    loaded = _pairs(pairs_path, "pairs file", stream=config.latent_cache in ("disk", "none"))
    if console is not None:
        console.print(loaded.summary())
    # With eval_fraction > 0 the trainer holds out prompts itself (split_by_prompt).
    eval_pairs = None if eval_pairs_path is None else _pairs(eval_pairs_path, "eval pairs file").pairs
    reward_model, save_fn = build_reward_model(config, components)
    extra = {"base_model": model, "pairs": str(pairs_path), "reward_model": config.reward_model}
    # One accelerator before the run folder: under `accelerate launch` only the main process writes it.
    accelerator = make_reward_accelerator(config, None)
    if not accelerator.is_main_process:
        console = None
    if resume:
        from lpo.reward.setup import RESUME_FREE_FIELDS

        run = RunFolder.resume(run_dir, config, accelerator=accelerator, resume_free=RESUME_FREE_FIELDS)
        for mismatch in resume_mismatches(run, components.device):
            if console is not None:
                console.print(f"[yellow]warning:[/] {mismatch}", highlight=False)
    elif run_dir is not None:
        run = RunFolder.create(config, folder=run_dir, accelerator=accelerator, extra=extra)
    else:
        run = RunFolder.create(config, name=config.preset, accelerator=accelerator, extra=extra)
    if console is not None:
        console.print(f"run folder [bold]{run.path}[/]")
    # a diagnosed failure (divergence) before any checkpoint leaves nothing to resume: nothing stays
    with run.discarded_on_error(accelerator, errors=(LpoError,)), stage_progress(console) as progress:
        return train_step_reward(
            reward_model, components, loaded.pairs, config, run, accelerator=accelerator,
            save_model=save_fn, progress=progress, eval_pairs=eval_pairs, resume=resume,
        )


def build_reward_model(config, components):
    """(model, save function) for ``config.reward_model``.

    The LRM's fresh projection is drawn from a generator seeded by ``config.seed`` (the
    global RNG left untouched), so a run does not depend on what the process did before
    it, e.g. the stages ahead of it in ``lpo bench``.
    """
    from lpo.models.flow_components import FlowComponents

    if isinstance(components, FlowComponents) and config.reward_model == "lrm":
        import torch

        from lpo.reward.lrm_mmdit import MMDiTLatentRewardModel, MMDiTLRMConfig
        from lpo.reward.lrm_mmdit_io import save_mmdit_lrm

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = MMDiTLatentRewardModel.from_components(
                components, MMDiTLRMConfig(num_blocks=config.mmdit_blocks, vfe_scale=config.vfe_scale,
                                           head=config.lrm_head, max_sequence_length=components.max_sequence_length))
        return model, save_mmdit_lrm
    if config.reward_model == "lrm":
        import torch

        from lpo.reward.lrm import LatentRewardModel, LRMConfig
        from lpo.reward.lrm_io import save_lrm

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = LatentRewardModel.from_components(
                components, LRMConfig(vfe_scale=config.vfe_scale, head=config.lrm_head))
        return model, save_lrm
    from lpo.reward.pixel import PixelStepReward
    from lpo.reward.pixel_io import save_pixel_reward

    scorer = None
    if components.kind not in ("world", "world-flow"):  # the world's scorer is built on its own tokenizer
        from lpo.reward.pixel_scorer import TimestepConditionedScorer

        scorer = TimestepConditionedScorer.from_clip_pretrained(config.pixel_scorer, config.pixel_scorer_processor)
    return PixelStepReward.from_components(components, scorer), save_pixel_reward


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
    """Held-out accuracy by timestep for each given step reward, side by side; table, JSON, plot.

    Accuracy is against the pairs' labels; in the world also against the true-utility order
    of the two images (what a noise-free annotator would say), with the labels' agreement
    with that order beside it. Bands (mean over t ≤ 251 and over all t) carry a 95%
    binomial half-width over the decisive pairs (pairs are shared across t, so it is not
    narrowed by averaging over t).
    """
    import torch

    from lpo.core.io import atomic_write_json
    from lpo.models.families import kind_family
    from lpo.reward.data import encode_pairs, timestep_pool
    from lpo.reward.training import accuracy_from_scores, pair_scores_by_timestep_many

    components = _components(model)
    pairs = _pairs(pairs_path, "held-out pairs file").pairs
    rewards: dict[str, Any] = {}
    if lrm_dir is not None:
        from lpo.reward.lrm_io import load_lrm
        from lpo.reward.lrm_mmdit_io import is_mmdit_lrm_folder, load_mmdit_lrm

        load = load_mmdit_lrm if is_mmdit_lrm_folder(lrm_dir) else load_lrm
        rewards["LRM (latent)"] = load(lrm_dir, components)
    if pixel_dir is not None:
        from lpo.reward.pixel_io import load_pixel_reward

        rewards["SPO pixel model on x̂0"] = load_pixel_reward(pixel_dir, components)
    family = kind_family(components.kind)  # a family with a ground truth (the world) gives the ceiling
    if with_utility and family is not None and family.true_utility is not None:
        rewards["true utility on x̂0 (ceiling)"] = family.true_utility(components)
    if not rewards:
        raise LpoError("nothing to evaluate: pass --lrm and/or --pixel (the utility ceiling exists only in the world)")
    timesteps = sorted(int(t) for t in timestep_pool(components.scheduler, "ddim", 20))  # flow models: σ·1000
    encoded = encode_pairs(components, pairs)  # once: every model scores the same latents
    if not bool(encoded.decisive.any()):
        raise LpoError(f"all {len(encoded)} held-out pairs are ties; accuracy needs pairs with a winner")
    targets = {"accuracy": encoded.labels_0}
    if family is not None and family.true_order_labels is not None:
        targets["accuracy_true_order"] = torch.tensor(family.true_order_labels(pairs), dtype=torch.float32)
    tables: dict[str, dict[str, dict[int, list]]] = {key: {} for key in targets}
    # every reward on the same x_t; the pixel model and the ceiling share their x̂0 decode
    all_scores = pair_scores_by_timestep_many(rewards, components, encoded, timesteps, seed=seed)
    for name, scores in all_scores.items():
        for key, labels in targets.items():
            tables[key][name] = {
                t: [float(a), int(n)] for t, (a, n) in ((t, accuracy_from_scores(s0, s1, labels)) for t, (s0, s1) in scores.items())
            }
    if console is not None:
        console.print(f"scored {', '.join(all_scores)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"model": model, "pairs": str(pairs_path), "noise": "independent", "seed": seed, **tables,
              "bands": {key: accuracy_bands(table) for key, table in tables.items()},
              "ensembles": {key: {name: noise_ensembles(scores, labels) for name, scores in all_scores.items()}
                            for key, labels in targets.items()}}
    if "accuracy_true_order" in targets:
        both = (targets["accuracy"] != 0.5) & (targets["accuracy_true_order"] != 0.5)
        agree = (targets["accuracy"][both] == targets["accuracy_true_order"][both]).float()
        result["label_agreement"] = [float(agree.mean()) if len(agree) else None, int(both.sum())]
    atomic_write_json(out_dir / "accuracy_by_timestep.json", result)
    plot_accuracy(tables["accuracy"], out_dir / "accuracy_by_timestep.png",
                  tables.get("accuracy_true_order"))
    return result


LOW_T = 251  # the band the paper's claim is about: low noise, where pixel rewards still work


def noise_ensembles(scores: dict[int, tuple[Any, Any]], labels: Any) -> dict[str, list]:
    """Test-time noise ensembling (DiNa-LRM): each image's score averaged over its noised
    copies at every t of a band (t <= 251, and all t), then the pair judged once:
    {"t<=251": [accuracy, n], "all": [accuracy, n]}. The copies are the table's own x_t
    (one posterior sample and one ε per pair, shared by every t), so the ensemble is over
    noise levels, as DiNa-LRM's multi-timestep ensemble."""
    import torch

    from lpo.reward.training import accuracy_from_scores

    out = {}
    for band, keep in (("t<=251", lambda t: t <= LOW_T), ("all", lambda t: True)):
        chosen = [scores[t] for t in sorted(scores) if keep(t)]
        if chosen:
            s0 = torch.stack([torch.as_tensor(a, dtype=torch.float64) for a, _ in chosen]).mean(dim=0)
            s1 = torch.stack([torch.as_tensor(b, dtype=torch.float64) for _, b in chosen]).mean(dim=0)
            accuracy, n = accuracy_from_scores(s0, s1, labels)
            out[band] = [float(accuracy), int(n)]
    return out


def binomial_half_width(accuracy: float, n: int) -> float:
    """95% normal-approximation half-width of an accuracy over n pairs."""
    return 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n) if n else float("nan")


def accuracy_bands(table: dict[str, dict[int, list]]) -> dict[str, dict[str, list[float]]]:
    """{scorer: {"t<=251": [mean, half-width], "all": [...]}} with a 95% binomial half-width."""
    out = {}
    for name, by_t in table.items():
        bands = {}
        for band, ts in ((f"t<={LOW_T}", [t for t in by_t if int(t) <= LOW_T]), ("all", list(by_t))):
            if not ts:
                continue
            mean = sum(by_t[t][0] for t in ts) / len(ts)
            bands[band] = [mean, binomial_half_width(mean, min(by_t[t][1] for t in ts))]
        out[name] = bands
    return out


def plot_accuracy(table: dict[str, dict[int, list]], path: Path, true_order: dict[str, dict[int, list]] | None = None) -> Path:
    """Accuracy vs t per scorer (labels: solid; true-utility order, when given: dashed, same colour)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lpo.core.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, by_t in table.items():
        ts = sorted(by_t)
        line, = ax.plot(ts, [by_t[t][0] for t in ts], marker="o", ms=3, label=f"{name} vs labels" if true_order else name)
        if true_order and name in true_order:
            other = true_order[name]
            ax.plot(ts, [other[t][0] for t in ts], ls="--", marker="o", ms=2, color=line.get_color(), label=f"{name} vs true order")
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


TARGET_TITLES = {"accuracy": "annotator labels", "accuracy_true_order": "true-utility order"}


def render_accuracy_table(result: dict[str, Any], console) -> None:
    from rich.table import Table

    for key, title in TARGET_TITLES.items():
        if key not in result:
            continue
        names = list(result[key])
        table = Table(title=f"held-out accuracy by timestep against {title} (decisive pairs)")
        table.add_column("t", justify="right")
        for name in names:
            table.add_column(name, justify="right")
        ts = sorted({int(t) for by_t in result[key].values() for t in by_t})
        for t in ts:
            table.add_row(str(t), *(f"{result[key][n][t][0]:.3f}" for n in names))
        for band in (f"t<={LOW_T}", "all"):
            cells = [result.get("bands", {}).get(key, {}).get(n, {}).get(band) for n in names]
            table.add_row(f"mean {band}", *("—" if c is None else f"{c[0]:.3f} ± {c[1]:.3f}" for c in cells))
        for band in (f"t<={LOW_T}", "all"):  # one judgement of the scores averaged over the band's t
            cells = [result.get("ensembles", {}).get(key, {}).get(n, {}).get(band) for n in names]
            table.add_row(f"ensemble {band}", *("—" if c is None else f"{c[0]:.3f} ± {binomial_half_width(*c):.3f}"
                                                for c in cells))
        n = next(iter(result[key].values()))[ts[0]][1]
        console.print(table)
        console.print(f"n = {n} decisive pairs per cell; same noise for every model at each t; ± is a 95% binomial half-width")
    if result.get("label_agreement", [None])[0] is not None:
        agree, n = result["label_agreement"]
        console.print(f"the annotators' labels agree with the true-utility order on {agree:.3f} of {n} pairs decisive under both")


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
