"""Training step reward models on preference pairs: the LRM (SPEC §4.1) and SPO's pixel step model (§4.3).

A *step reward model* scores noisy latents: ``model(latents_t, timesteps, prompts)`` →
(B,) float32 scores (:class:`StepRewardModel`). The LRM scores them directly; SPO's
pixel model predicts x̂0, decodes and scores it inside its own forward. Both train
through :func:`train_step_reward`, which implements the LRM recipe of the LPO paper
(arXiv 2502.01051, §4.2–4.3) on top of accelerate.

Paper notation -> code:

=======================  ================================================================
x_0 (winner / loser)     ``EncodedPairs``: VAE posterior of ``image_0`` / ``image_1`` of each
                         pair, kept as mean and std and re-sampled every time a pair is used;
                         x_0 = posterior sample × ``vae.config.scaling_factor``
t                        ``timesteps`` (B,) long: one per pair, the SAME for both images;
                         drawn uniformly from the N = 20 DDIM timesteps {1, 51, …, 951}
                         (``timestep_sampling="ddim"``, the official code) or from
                         U{0, …, T−1} (``"uniform"``, the paper's text)
ε_0, ε_1                 ``noise_0`` / ``noise_1``: independent for the LRM
                         (``noise="independent"``); SPO's step model uses one shared ε
                         (``noise="shared"``)
x_t = add_noise(x_0,ε,t) ``latents_t_0`` / ``latents_t_1`` (``scheduler.add_noise``)
S_0, S_1                 ``scores_0`` / ``scores_1`` = model(x_t, t, prompt)
soft labels              [label_0, 1 − label_0]: (1, 0), (0, 1) or (0.5, 0.5) for a tie
loss                     2-way cross-entropy on the logits [S_0, S_1] (Bradley–Terry:
                         P(0 ≻ 1) = σ(S_0 − S_1)), per pair × its loss weight, averaged;
                         or DiNa-LRM's noise-calibrated Thurstone likelihood with its
                         fidelity loss (``likelihood="thurstone"``, :func:`thurstone_loss`)
=======================  ================================================================

Optimisation (paper): AdamW (β = 0.9, 0.999), weight decay 0.3 on matrices and
convolutions (not on biases, norms or ``logit_scale``), linear warmup then linear
decay, gradient clipping at 1.0, bf16 autocast with float32 master weights; every
parameter of the model that requires grad trains, the VAE never does.

Reproducibility: every random draw of optimiser step s (which pairs, posterior samples,
t, noise) comes from a generator keyed by (seed, s), so resuming from a checkpoint needs
no sampler state and gives the same weights as an uninterrupted run; each process
draws the same global batch and takes its own slice, so the batch does not depend on the
number of processes or accumulation steps.

Memory: the cache holds 2 images × (mean, std) × C·h·w float32 per pair on the CPU:
256 KiB per pair for SD1.5 (4×64×64), 1 MiB for SDXL, 2 KiB for the world (4×8×8).

The config and its presets are :mod:`lpo.reward.config`; the data (encoded pairs, noised
batches, keyed random streams) :mod:`lpo.reward.data`; accelerate, optimiser, schedule,
checkpoints and resume :mod:`lpo.reward.setup`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from lpo.core.deepspeed_setup import configure_deepspeed, restore_scalar_shapes, scalar_shapes, vectorise_scalar_parameters
from lpo.core.errors import LpoError
from lpo.core.checkpoint_state import register_schedule_checkpointing
from lpo.core.finite import check_finite_module, diverged, nonfinite_quantity
from lpo.core.io import atomic_write_json
from lpo.core.training_loop import ProgressFn, TrainingLoop, write_metrics
from lpo.core.seeding import Stream, keyed_generator, pair_indices
from lpo.pairs.format import PreferencePair
from lpo.reward.config import NoiseMode, RewardTrainingConfig
from lpo.reward.likelihood import PreferenceLossOutput, noise_variance, preference_loss, thurstone_loss  # noqa: F401  (re-exported)
from lpo.reward.data import (
    EncodedPairs,
    NoisyPairBatch,
    encode_pairs,
    loss_weights,
    noise_pairs,
    split_by_prompt,
    is_flow_scheduler,
    timestep_pool,
)
from lpo.reward.setup import (
    NONFINITE_FIX,
    RESUME_FREE_FIELDS,
    SaveFn,
    make_reward_accelerator,
    reward_lr_schedule,
    reward_optimizer,
    write_reward_checkpoint,
)
from lpo.core.runs import RESULT_NAME, RunFolder

logger = logging.getLogger(__name__)

TRAINING_STAGE = "reward_model_training"
EVALUATION_STAGE = "evaluation"
PROGRESS_LABEL = "reward model"
MODEL_DIR = "model"
LATENT_CACHE_DIR = "latent-cache"  # latent_cache=disk: the training pairs' posteriors, memory-mapped


@runtime_checkable
class StepRewardModel(Protocol):
    """A reward on noisy latents, trainable by :func:`train_step_reward` (an ``nn.Module``).

    ``forward(latents_t (B, C, h, w), timesteps (B,) long, prompts: list of B str)`` →
    (B,) float32 scores, higher = preferred; differentiable in its trainable parameters.
    """

    def forward(self, latents_t: Tensor, timesteps: Tensor, prompts: list[str]) -> Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


# --------------------------------------------------------------------------- scoring


def score_pairs(model: Any, batch: NoisyPairBatch, device: torch.device) -> tuple[Tensor, Tensor]:
    """(S_0, S_1), each (B,) float32, from ONE forward over the 2B latents."""
    latents_t = torch.cat([batch.latents_t_0, batch.latents_t_1]).to(device)  # (2B, C, h, w)
    timesteps = torch.cat([batch.timesteps, batch.timesteps]).to(device)
    scores = model(latents_t, timesteps, batch.prompts + batch.prompts).float()
    if scores.shape != (2 * len(batch),):
        raise LpoError(
            f"the reward model returned scores of shape {tuple(scores.shape)} for {2 * len(batch)} latents; "
            "a step reward model must return one score per latent, shape (B,)"
        )
    return scores[: len(batch)], scores[len(batch) :]


# --------------------------------------------------------------------------- evaluation


def _module_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def pair_scores_by_timestep(
    model: StepRewardModel,
    components: Any,
    encoded: EncodedPairs,
    timesteps: Sequence[int],
    indices: Tensor | None = None,
    batch_size: int = 64,
    seed: int = 0,
    *,
    noise: NoiseMode = "independent",
) -> dict[int, tuple[Tensor, Tensor]]:
    """{t: (S_0, S_1)} of pairs ``indices`` (default: all) noised to each fixed t.

    Every t sees the same posterior samples and the same noise (drawn from (seed, batch)),
    so scores differ only through t, and two models scored with the same seed see
    identical x_t. The model's train/eval mode is restored.
    """
    was_training = model.training
    try:
        return pair_scores_by_timestep_many({"model": model}, components, encoded, timesteps, batch_size, seed,
                                            indices=indices, noise=noise)["model"]
    finally:
        model.train(was_training)


@torch.no_grad()
def pair_scores_by_timestep_many(
    models: dict[str, StepRewardModel],
    components: Any,
    encoded: EncodedPairs,
    timesteps: Sequence[int],
    batch_size: int = 64,
    seed: int = 0,
    *,
    indices: Tensor | None = None,
    noise: NoiseMode = "independent",
) -> dict[str, dict[int, tuple[Tensor, Tensor]]]:
    """{name: {t: (S_0, S_1)}}: :func:`pair_scores_by_timestep` of every model, each x_t built once.

    Models that read the decoded one-step x̂0 (an ``x0_key`` attribute and
    ``decode_for_scoring`` / ``score_decoded`` methods: SPO's pixel model, the world's
    utility ceiling) share the base U-Net pass and the VAE decode when their keys match
    (same U-Net, VAE, CFG), which is most of their cost. Scores equal those of
    :func:`pair_scores_by_timestep` with the same seed.
    """
    indices = torch.arange(len(encoded)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    num_train = int(components.scheduler.config.num_train_timesteps)
    last = num_train if is_flow_scheduler(components.scheduler) else num_train - 1  # flow: t = σ·1000, σ ≤ 1
    bad = [int(t) for t in timesteps if not 0 <= int(t) <= last]
    if bad or not len(timesteps):
        raise LpoError(f"evaluation timesteps must be in [0, {last}], got {list(timesteps)}")
    for model in models.values():
        model.eval()
    scores = {name: {int(t): ([], []) for t in timesteps} for name in models}
    for number, start in enumerate(range(0, len(indices), batch_size)):
        batch_indices = indices[start : start + batch_size]
        for t in scores[next(iter(models))]:
            generator = keyed_generator(seed, Stream.EVAL, number)  # as pair_scores_by_timestep: same draws
            batch = noise_pairs(encoded, batch_indices, components.scheduler, generator, timesteps=torch.tensor(t), noise=noise)
            latents_t = torch.cat([batch.latents_t_0, batch.latents_t_1])
            both_t, prompts = torch.cat([batch.timesteps, batch.timesteps]), batch.prompts + batch.prompts
            decoded: dict[Any, Any] = {}
            for name, model in models.items():
                key = getattr(model, "x0_key", None)
                if key is None:
                    s0, s1 = score_pairs(model, batch, _module_device(model))
                else:
                    if key not in decoded:
                        decoded[key] = model.decode_for_scoring(latents_t, both_t, prompts)
                    both = model.score_decoded(decoded[key], both_t, prompts).float().cpu()
                    s0, s1 = both[: len(batch)], both[len(batch):]
                scores[name][t][0].append(s0.cpu())
                scores[name][t][1].append(s1.cpu())
    return {name: {t: (torch.cat(a), torch.cat(b)) for t, (a, b) in by_t.items()} for name, by_t in scores.items()}


def accuracy_from_scores(scores_0: Tensor, scores_1: Tensor, labels_0: Tensor) -> tuple[float, int]:
    """(accuracy, n) over the decisive pairs of ``labels_0``; equal scores count half."""
    out = preference_loss(scores_0, scores_1, labels_0)
    n = int(out.decisive.sum())
    return (float(out.correct.sum()) / n if n else float("nan")), n


def pairwise_accuracy_by_timestep(
    model: StepRewardModel,
    components: Any,
    pairs: Sequence[PreferencePair] | EncodedPairs,
    timesteps: Sequence[int],
    batch_size: int = 64,
    seed: int = 0,
    *,
    noise: NoiseMode = "independent",
    encode_batch_size: int = 32,
) -> dict[int, tuple[float, int]]:
    """Held-out accuracy of a step reward model at each fixed t: {t: (accuracy, n)}.

    Only decisive (non-tie) pairs are scored and counted; a pair is right when the
    preferred image scores higher (equal scores count half). Noise as in
    :func:`pair_scores_by_timestep`.
    """
    encoded = pairs if isinstance(pairs, EncodedPairs) else encode_pairs(components, pairs, encode_batch_size)
    decisive = torch.nonzero(encoded.decisive).flatten()
    if len(decisive) == 0:
        raise LpoError(f"all {len(encoded)} evaluation pairs are ties; accuracy needs pairs with a winner")
    scores = pair_scores_by_timestep(model, components, encoded, timesteps, decisive, batch_size, seed, noise=noise)
    labels = encoded.labels_0[decisive]
    return {t: accuracy_from_scores(s0, s1, labels) for t, (s0, s1) in scores.items()}


# --------------------------------------------------------------------------- plan and result


@dataclass(frozen=True)
class TrainingPlan:
    """Derived totals, printed before the first step (and stored with the run)."""

    num_pairs: int
    num_ties: int
    num_eval_pairs: int
    num_processes: int
    batch_size: int  # pairs per optimiser step (all processes, all micro-batches)
    gradient_accumulation_steps: int
    micro_batch_size: int  # pairs per forward on one process
    max_steps: int
    timesteps: tuple[int, ...]

    @property
    def updates_per_epoch(self) -> float:
        return self.num_pairs / self.batch_size

    @property
    def epochs(self) -> float:
        return self.max_steps * self.batch_size / self.num_pairs

    def describe(self) -> str:
        ts = self.timesteps
        span = f"{len(ts)} timesteps {ts[0]}…{ts[-1]}" if len(ts) > 3 else f"timesteps {list(ts)}"
        return (
            f"{self.num_pairs} training pairs ({self.num_ties} ties), {self.num_eval_pairs} held-out; "
            f"batch {self.batch_size} = {self.micro_batch_size} per forward × {self.gradient_accumulation_steps} "
            f"accumulation × {self.num_processes} processes; {self.max_steps} steps = {self.epochs:.2f} epochs "
            f"({self.updates_per_epoch:.1f} updates per epoch); t from {span}"
        )


def plan_training(
    config: RewardTrainingConfig, num_pairs: int, num_ties: int = 0, num_eval_pairs: int = 0,
    num_processes: int = 1, timesteps: Sequence[int] = (),
) -> TrainingPlan:
    """The derived batch layout; LpoError when the batch does not split evenly over processes."""
    per_step = config.gradient_accumulation_steps * num_processes
    if config.batch_size % per_step:
        raise LpoError(
            f"batch_size {config.batch_size} does not split into {config.gradient_accumulation_steps} accumulation "
            f"steps × {num_processes} processes; use a multiple of {per_step}"
        )
    if num_pairs < 1:
        raise LpoError("no training pairs; pass at least one pair")
    return TrainingPlan(
        num_pairs=num_pairs, num_ties=num_ties, num_eval_pairs=num_eval_pairs, num_processes=num_processes,
        batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
        micro_batch_size=config.batch_size // per_step, max_steps=config.max_steps, timesteps=tuple(int(t) for t in timesteps),
    )


@dataclass
class TrainingResult:
    """What :func:`train_step_reward` did.

    history: one row per log step {step, loss, accuracy (decisive pairs), lr, grad_norm, seconds}.
    eval_history: {step, accuracy: {t: [accuracy, n]}} per evaluation.
    cost: the DeviceMeter record (also cost.json).  resumed_from: checkpoint step, or None.
    """

    steps: int
    plan: TrainingPlan
    history: list[dict[str, Any]]
    eval_history: list[dict[str, Any]]
    cost: dict[str, Any]
    resumed_from: int | None = None
    run_folder: Path | None = None
    model_folder: Path | None = None

    @property
    def final_loss(self) -> float | None:
        return self.history[-1]["loss"] if self.history else None

    @property
    def final_accuracy(self) -> float | None:
        return self.history[-1]["accuracy"] if self.history else None

    @property
    def final_eval(self) -> dict[int, tuple[float, int]] | None:
        if not self.eval_history:
            return None
        return {int(t): (v[0], v[1]) for t, v in self.eval_history[-1]["accuracy"].items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "plan": {**asdict(self.plan), "epochs": self.plan.epochs},
            "final_loss": self.final_loss,
            "final_accuracy": self.final_accuracy,
            "history": self.history,
            "eval_history": self.eval_history,
            "cost": self.cost,
            "resumed_from": self.resumed_from,
            "run_folder": None if self.run_folder is None else str(self.run_folder),
            "model_folder": None if self.model_folder is None else str(self.model_folder),
        }


# --------------------------------------------------------------------------- training


class RewardTrainingLoop(TrainingLoop):
    """Reward-model training as a :class:`~lpo.core.training_loop.TrainingLoop`: one unit = one optimiser step."""

    stage = TRAINING_STAGE
    progress_label = PROGRESS_LABEL
    unit = "step"
    history_key = "step"
    resume_free = RESUME_FREE_FIELDS

    def __init__(self, model: StepRewardModel, components: Any, pairs: Sequence[PreferencePair],
                 config: RewardTrainingConfig, run: RunFolder | None, save_model: SaveFn | None, accelerator: Any,
                 progress: ProgressFn | None, eval_pairs: Sequence[PreferencePair] | None,
                 log: Callable[[str], None] | None) -> None:
        self.model, self.components, self.pairs, self.eval_pairs = model, components, pairs, eval_pairs
        self.config, self.run, self.save_model, self.progress, self.log = config, run, save_model, progress, log
        self.accelerator = make_reward_accelerator(config, accelerator)

    @property
    def schedule(self) -> tuple[int, int, int]:
        return self.config.log_every, self.config.save_every, self.config.keep_checkpoints

    def data_fingerprint(self) -> str:
        return self.encoded.fingerprint()

    def check_saved_data(self, saved: dict[str, Any], folder: Path) -> None:
        if saved["data_fingerprint"] != self.fingerprint or saved["num_pairs"] != len(self.encoded):
            raise LpoError(
                f"cannot resume {folder}: it was trained on {saved['num_pairs']} other pairs (fingerprint "
                f"{saved['data_fingerprint']}, now {len(self.encoded)} pairs, {self.fingerprint}); pass the same pairs"
            )

    def setup(self) -> int:
        config, acc = self.config, self.accelerator
        self.pool = timestep_pool(self.components.scheduler, config.timestep_sampling, config.num_inference_steps)
        # the data: posteriors of every image, once
        cache = None
        if config.latent_cache == "disk":
            if self.run is None:
                raise LpoError("latent_cache=disk keeps the latents in the run folder; pass a run folder or use latent_cache=memory")
            cache = self.run.path / LATENT_CACHE_DIR
        self.encoded = encode_pairs(self.components, self.pairs, config.encode_batch_size, cache=cache,
                                    on_the_fly=config.latent_cache == "none", shard_pairs=config.latent_shard_pairs)
        self.eval_encoded = encode_pairs(self.components, self.eval_pairs, config.encode_batch_size) if self.eval_pairs else None
        self.weights = loss_weights(self.encoded, config.pair_weighting)
        self.run_plan = plan_training(
            config, len(self.encoded), int((~self.encoded.decisive).sum()),
            len(self.eval_encoded) if self.eval_encoded else 0, acc.num_processes, self.pool.tolist(),
        )
        self.say(self.run_plan.describe())
        # optimiser, lr schedule, accelerate
        optimizer = reward_optimizer(self.model, config)
        self.lr_schedule = reward_lr_schedule(optimizer, config)
        configure_deepspeed(acc, self.run_plan.micro_batch_size, config.gradient_accumulation_steps, config.grad_clip)
        self.scalars = vectorise_scalar_parameters(acc, self.model)  # DeepSpeed only
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        register_schedule_checkpointing(acc, self.lr_schedule)  # as JSON: nothing pickled
        self.eval_history: list[dict[str, Any]] = []
        return config.max_steps

    def state_fields(self, done: int) -> dict[str, Any]:
        return {"num_pairs": len(self.encoded), "eval_history": self.eval_history}

    def restore(self, saved: dict[str, Any], done: int) -> None:
        self.eval_history = [row for row in saved["eval_history"] if row["step"] <= done]

    def begin_units(self) -> None:
        self.model.train()
        self.window = torch.zeros(4, dtype=torch.float64, device=self.accelerator.device)  # Σ w·ce, pairs, Σ correct, decisive
        self.window_start = time.perf_counter()
        self.last_norm: float | None = None
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])

    def run_unit(self, step: int, log_due: bool) -> dict[str, Any] | None:
        """One optimiser step over the step's batch (this process's micro-batches); a row every log_every."""
        config, acc, model, optimizer = self.config, self.accelerator, self.model, self.optimizer
        device, micro, rank = acc.device, self.run_plan.micro_batch_size, acc.process_index
        generator = keyed_generator(config.seed, Stream.REWARD_STEP, step)
        indices = pair_indices(len(self.encoded), step * config.batch_size, config.batch_size, config.seed)
        batch = noise_pairs(self.encoded, indices, self.components.scheduler, generator, pool=self.pool,
                            noise=config.noise, weights=self.weights)
        loss_finite = True
        for m in range(config.gradient_accumulation_steps):
            start = (m * acc.num_processes + rank) * micro
            part = batch.slice(start, start + micro)
            with acc.accumulate(model):
                scores_0, scores_1 = score_pairs(model, part, device)
                if config.likelihood == "thurstone":
                    variance = noise_variance(self.components.scheduler, part.timesteps).to(device)
                    out = thurstone_loss(scores_0, scores_1, part.labels_0.to(device), variance, part.weights.to(device))
                else:
                    out = preference_loss(scores_0, scores_1, part.labels_0.to(device), part.weights.to(device))
                acc.backward(out.loss)
                loss_finite = loss_finite and math.isfinite(float(out.loss.detach()))
                if acc.sync_gradients:
                    if config.grad_clip is not None:  # under DeepSpeed: the norm its engine clipped with
                        norm = acc.clip_grad_norm_(model.parameters(), config.grad_clip)
                        self.last_norm = None if norm is None else float(norm)
                    self.last_lr = float(optimizer.param_groups[0]["lr"])  # the lr this update uses
                    # a NaN / inf loss or gradient must not reach the weights: stop before the update
                    bad = nonfinite_quantity(acc, loss_finite, list(model.parameters()), self.last_norm)
                    if bad is not None:
                        raise diverged(f"step {step + 1}", bad, "lr", config.lr)
                    optimizer.step()
                    if not acc.optimizer_step_was_skipped:  # fp16 overflow: keep the schedule
                        self.lr_schedule.step()
                optimizer.zero_grad(set_to_none=True)
            self.window += torch.stack([
                (out.ce * part.weights.to(device)).sum().double(), torch.tensor(float(len(part)), device=device).double(),
                out.correct.sum().double(), out.decisive.sum().double(),
            ])
        self.last_loss = float(out.loss.detach())
        if not log_due:
            return None
        totals = acc.reduce(self.window.clone(), "sum").tolist()
        row = {
            "step": step + 1, "loss": totals[0] / max(totals[1], 1.0), "accuracy": totals[2] / totals[3] if totals[3] else None,
            "lr": self.last_lr, "grad_norm": self.last_norm, "seconds": time.perf_counter() - self.window_start,
        }
        self.window.zero_()
        self.window_start = time.perf_counter()
        return row

    def progress_loss(self, row: dict[str, Any] | None) -> float:
        return self.last_loss

    def describe_row(self, row: dict[str, Any], total: int) -> str:
        accuracy = "n/a" if row["accuracy"] is None else format(row["accuracy"], ".3f")
        return f"step {row['step']}/{total}: loss {row['loss']:.4f}, accuracy {accuracy}, lr {row['lr']:.2e}"

    def evaluate(self, done: int) -> None:
        """Held-out accuracy by t (main process; the others wait)."""
        if self.eval_encoded is None:
            return
        config, acc = self.config, self.accelerator
        with self.meter.stage(EVALUATION_STAGE):
            if acc.is_main_process:
                accuracy = pairwise_accuracy_by_timestep(
                    acc.unwrap_model(self.model), self.components, self.eval_encoded, config.eval_timesteps,
                    config.eval_batch_size, config.seed, noise=config.noise,
                )
                self.eval_history.append({"step": done, "accuracy": {str(t): [a, n] for t, (a, n) in accuracy.items()}})
                self.say(f"step {done}: held-out accuracy " + ", ".join(f"t={t} {a:.3f}" for t, (a, _) in accuracy.items()))
            acc.wait_for_everyone()

    def after_unit(self, done: int, total: int) -> None:
        if self.config.eval_every and done % self.config.eval_every == 0 and done < total:
            self.evaluate(done)

    def save_checkpoint(self, done: int, state: dict[str, Any]) -> Path:
        save = self.save_model
        if self.scalars and save is not None:  # DeepSpeed's own state keeps the engine's shapes
            def save(model: Any, folder: Path, _save: SaveFn = self.save_model) -> Any:
                with scalar_shapes(self.scalars):
                    return _save(model, folder)
        return write_reward_checkpoint(self.accelerator, self.run, done, self.model, save, state,
                                       self.config.keep_checkpoints)

    def end_units(self) -> None:
        self.evaluate(self.config.max_steps)
        self.model.eval()

    def finish(self) -> TrainingResult:
        """The final model (``run/model``), its cost, ``metrics.jsonl`` and ``result.json``."""
        acc, run, meter = self.accelerator, self.run, self.meter
        unwrapped = acc.unwrap_model(self.model, keep_fp32_wrapper=False)
        restore_scalar_shapes(self.scalars)  # the engine is done with them: their usual shape from here on
        result = TrainingResult(
            steps=self.config.max_steps, plan=self.run_plan, history=self.history, eval_history=self.eval_history,
            cost=meter.as_dict(), resumed_from=self.resumed_from, run_folder=None if run is None else run.path,
        )
        if run is not None:  # every process: they hold the same weights and must stop together
            check_finite_module(unwrapped, "the trained reward model", NONFINITE_FIX)
        if run is not None and acc.is_main_process:
            if self.save_model is not None:
                result.model_folder = run.path / MODEL_DIR
                with meter.stage(TRAINING_STAGE):
                    self.save_model(unwrapped, result.model_folder)
            result.cost = meter.as_dict()
            run.write_cost(result.cost)
            if result.model_folder is not None:
                atomic_write_json(result.model_folder / "cost.json", result.cost)
            write_metrics(run, self.history)
            run.write_json(RESULT_NAME, result.as_dict())
        if run is not None:
            acc.wait_for_everyone()
        return result


def train_step_reward(
    model: StepRewardModel,
    components: Any,
    pairs: Sequence[PreferencePair],
    config: RewardTrainingConfig,
    run: RunFolder | None = None,
    *,
    save_model: SaveFn | None = None,
    accelerator: Any = None,
    progress: ProgressFn | None = None,
    eval_pairs: Sequence[PreferencePair] | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainingResult:
    """Train ``model`` in place on ``pairs`` (SPEC §4.1 data, loss and optimisation).

    components: the diffusion model's parts; its VAE encodes the images (frozen, no
        gradients) and its scheduler noises them. ``model`` may be built from them (the
        LRM) or hold its own (SPO's pixel model).
    run: where checkpoints, ``metrics.jsonl``, ``result.json``, ``cost.json`` and the final
        model (``run/model``, written by ``save_model``) go; None trains in memory only.
    save_model: writes the model to a folder (e.g. :func:`lpo.reward.lrm_io.save_lrm`); called for
        every checkpoint and at the end, on the main process, with the unwrapped model.
    accelerator: an ``accelerate.Accelerator`` agreeing with the config, or None for a
        new one (CPU when there is no GPU).
    progress: ``(stage, step, total, loss)`` after every step (main process only).
    eval_pairs: held-out pairs for accuracy by t every ``eval_every`` steps and at the end;
        alternatively ``config.eval_fraction`` holds out prompts of ``pairs``.
    resume: continue from ``run``'s newest checkpoint (same config and pairs required); the
        result equals an uninterrupted run's. Without a checkpoint it starts at step 0.
    log: receives the derived totals before the first step and one line per log step.
    """
    if resume and run is None:
        raise LpoError("resume needs the run folder to resume from")
    if eval_pairs is not None and config.eval_fraction > 0:
        raise LpoError(
            f"pass eval_pairs or set eval_fraction (now {config.eval_fraction}), not both; set eval_fraction=0 to use eval_pairs"
        )
    if config.eval_fraction > 0:
        pairs, eval_pairs = split_by_prompt(pairs, config.eval_fraction, config.seed)
    loop = RewardTrainingLoop(model, components, pairs, config, run, save_model, accelerator, progress, eval_pairs, log)
    return loop.train(resume=resume)
