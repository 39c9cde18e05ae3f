"""LPO (SPEC §5.1) and SPO (§5.2): online step-level DPO rounds on one loop.

Per round (:meth:`StepDPOTrainer.run_unit`, read top to bottom; the job around it is
:class:`lpo.core.training_loop.TrainingLoop`):

1. each process takes ``sampler.sample_batch_size`` prompts of the shuffled prompt stream
   and rolls out that many trajectories with the policy (:func:`lpo.trainers.rollout.step_rollout`:
   K candidates per trained step, the frozen step reward, the threshold, a random
   continuation);
2. the kept samples of every process are gathered, shuffled with one permutation shared by
   all processes, and split evenly (the remainder of M mod P is dropped, as the official
   code does);
3. one pass over them in micro-batches of ``train.train_batch_size``,
   ``optim.gradient_accumulation_steps`` micro-batches per optimiser step; per sample, the
   log-probs of x_w and x_l given x_t under the policy (through the accelerate-wrapped
   U-Net, with CFG) and the reference (adapters off, or the frozen copy), and the clipped
   step DPO loss (:func:`lpo.trainers.losses.clipped_step_dpo_loss`). x_w and x_l share x_t, t and
   the prompt, so one policy and one reference forward serve both;
4. the lr: warmup counts optimiser steps, decay counts rounds (:mod:`lpo.trainers.schedules`).

LPO and SPO differ only in their config (reward, skipped steps, thresholds, β) and in
which reward model the job hands in. Reproducibility: round r's rollout on process p draws
from ``keyed_generator(seed, Stream.ROLLOUT, r, p)`` and the shuffle from
``keyed_generator(seed, Stream.SHUFFLE, r)``, so a resumed run needs only the weights,
optimiser and schedule of its checkpoint to produce the weights of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch

from lpo.core.errors import LpoError
from lpo.trainers.losses import clipped_step_dpo_loss
from lpo.models.parts import LatentPipelineParts
from lpo.core.seeding import Stream, keyed_generator, pair_indices
from lpo.sampling.ddim import initial_latents
from lpo.sampling.step_kernels import kernel_for, policy_conditioning
from lpo.trainers.rollout import KeptSteps, StepReward, StepRolloutSettings, step_rollout, trained_steps
from lpo.trainers.config import StepTrainerConfig
from lpo.trainers.guards import GapTracker, check_rollout_scores, check_trained
from lpo.trainers.harness import (
    ROLLOUT_STAGE,
    Policy,
    TrainResult,
    accumulated_step,
    check_step,
    finite_or_none,
    reduce_logs,
)
from lpo.trainers.policy_trainer import PolicyTrainer
from lpo.trainers.schedules import StepRoundSchedule

PROGRESS_LABEL = "rounds"


@dataclass(frozen=True)
class StepPlan:
    """Derived totals, printed before the first round and stored with the run."""

    num_prompts: int
    num_processes: int
    prompts_per_round: int  # over all processes
    rounds: int
    epochs: float
    train_batch_size: int  # per process per micro-batch
    gradient_accumulation_steps: int
    trained_timesteps: tuple[int, ...]
    num_candidates: int

    def describe(self) -> str:
        ts = self.trained_timesteps
        span = f"{len(ts)} steps t = {ts[0]} … {ts[-1]}" if ts else "no step"
        return (
            f"{self.num_prompts} prompts; {self.rounds} rounds × {self.prompts_per_round} trajectories "
            f"({self.prompts_per_round // self.num_processes} per process × {self.num_processes}) = {self.epochs:.2f} epochs; "
            f"K = {self.num_candidates} candidates at {span}; training micro-batches of {self.train_batch_size} per "
            f"process, {self.gradient_accumulation_steps} per optimiser step (effective batch "
            f"{self.train_batch_size * self.gradient_accumulation_steps * self.num_processes} kept samples)"
        )


def plan_rounds(config: StepTrainerConfig, num_prompts: int, num_processes: int, trained_timesteps: Sequence[int]) -> StepPlan:
    if num_prompts < 1:
        raise LpoError("no training prompts; set train.prompts to world:train, a .txt file or a pairs parquet")
    per_round = config.sampler.sample_batch_size * num_processes
    rounds = math.ceil(config.train.epochs * num_prompts / per_round)
    if config.train.max_rounds is not None:
        rounds = min(rounds, config.train.max_rounds)
    return StepPlan(
        num_prompts=num_prompts, num_processes=num_processes, prompts_per_round=per_round, rounds=rounds,
        epochs=rounds * per_round / num_prompts, train_batch_size=config.train.train_batch_size,
        gradient_accumulation_steps=config.optim.gradient_accumulation_steps,
        trained_timesteps=tuple(int(t) for t in trained_timesteps), num_candidates=config.sampler.num_candidates,
    )


def _timestep_key(t: torch.Tensor) -> str:
    """A DDIM timestep as its integer; a flow timestep (σ·1000) with one decimal, so steps never merge."""
    value = float(t)
    return str(int(value)) if value.is_integer() else f"{value:.1f}"


def prompts_fingerprint(prompts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for prompt in prompts:
        h.update(prompt.encode() + b"\x1e")
    return h.hexdigest()[:16]


def rollout_settings(config: StepTrainerConfig) -> StepRolloutSettings:
    s = config.sampler
    return StepRolloutSettings(
        num_inference_steps=s.num_inference_steps, eta=s.eta, num_candidates=s.num_candidates,
        skip_first_steps=s.skip_first_steps, min_timestep=s.min_timestep, reward_timestep=s.reward_timestep,
        threshold_min=s.threshold_min, threshold_max=s.threshold_max, inner_steps=s.inner_steps,
    )


def gather_kept(accelerator: Any, kept: Any) -> Any:
    """Every process's kept samples (KeptSteps, or GRPO's GroupSteps), concatenated in process order (on the CPU)."""
    local = kept.to("cpu")
    if accelerator.num_processes == 1:
        return local
    from accelerate.utils import gather_object

    return type(kept).cat(gather_object([local]))


class StepDPOTrainer(PolicyTrainer):
    """The step-level DPO loop (LPO / SPO) with its parts handed in.

    components: the base model's parts (denoiser = ``policy.unet``, scheduler, text encoders):
    a U-Net pipeline's (DDIM steps with ``sampler.eta``) or a flow pipeline's (SD3: the flow
    ODE's SDE with ``sampler.noise_level``; :mod:`lpo.sampling.step_kernels`).
    policy: from :func:`lpo.trainers.harness.build_policy` on ``components.denoiser``.
    reward: the frozen step reward (:class:`lpo.trainers.rollout.StepReward`), in eval mode.
    prompts: the training prompts.  reward_cost: the reward model's own cost record
    (:func:`lpo.core.runs.read_cost`), folded into this run's cost.
    """

    method: ClassVar[str] = "lpo"
    config_class: ClassVar[type] = StepTrainerConfig
    needs = "step_reward"
    reward_kind: ClassVar[str] = "lrm"  # which step reward the job loads: "lrm" or "pixel"
    progress_label = PROGRESS_LABEL
    unit = "round"
    history_key = "round"
    rollout = staticmethod(step_rollout)  # (unet, kernel, conditioning, reward, reward_text, latents, settings, generator, prompts)

    def __init__(
        self,
        config: StepTrainerConfig,
        components: LatentPipelineParts,
        policy: Policy,
        reward: StepReward,
        prompts: Sequence[str],
        *,
        reward_cost: dict[str, Any] | None = None,
        reward_source: str = "reward model",
        **common: Any,
    ) -> None:
        if config.method != self.method:
            raise LpoError(f"{type(self).__name__} trains {self.method}, but the config is for {config.method}")
        super().__init__(config, components, policy, **common)
        self.reward = reward
        self.prompts = list(prompts)
        self.reward_cost = reward_cost
        self.reward_source = reward_source
        self.kernel = kernel_for(components, config.sampler.eta, config.sampler.noise_level)

    # ----------------------------------------------------------------- one round's pieces

    def _round_prompts(self, round_index: int) -> list[str]:
        acc, size = self.accelerator, self.config.sampler.sample_batch_size
        start = (round_index * acc.num_processes + acc.process_index) * size
        return [self.prompts[i] for i in pair_indices(len(self.prompts), start, size, self.config.run.seed).tolist()]

    @torch.no_grad()
    def _rollout(self, round_index: int, prompts: list[str]) -> Any:
        c, s = self.components, self.config.sampler
        generator = keyed_generator(self.config.run.seed, Stream.ROLLOUT, round_index, self.accelerator.process_index)
        conditioning = policy_conditioning(c, prompts, s.guidance_scale, s.negative_prompt)
        reward_text = self.reward.encode_text(prompts)
        height = width = c.default_resolution // c.vae_scale_factor
        latents = initial_latents(len(prompts), c.latent_channels, height, width, generator, self.kernel,
                                  device=c.device, dtype=self.kernel.state_dtype(c.denoiser.dtype))
        with self.accelerator.autocast():
            return self.rollout(c.denoiser, self.kernel, conditioning, self.reward, reward_text, latents,
                                rollout_settings(self.config), generator, prompts)

    def _loss_fn(self, model: Any, samples: KeptSteps) -> Callable[[torch.Tensor], tuple[torch.Tensor, dict]]:
        kernel = self.kernel
        beta, epsilon = self.config.loss.beta, self.config.loss.clip_epsilon

        def loss_fn(rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            batch = samples.select(rows)
            conditioning = batch.row_conditioning()
            latents_t, timesteps = batch.latents_t, batch.timesteps

            def log_prob(pred: torch.Tensor, sample: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
                return kernel.log_prob(pred, timesteps, x_t, sample)

            if batch.latents_t_l is None:
                # μ_θ and μ_ref at (x_t, t) with CFG; x_w and x_l are both scored against them
                noise_pred = kernel.predict(model, latents_t, timesteps, conditioning)
                with self.policy.reference() as reference:
                    ref_noise_pred = kernel.predict(reference, latents_t, timesteps, conditioning)
                logs_w = log_prob(noise_pred, batch.latents_w, latents_t), log_prob(ref_noise_pred, batch.latents_w, latents_t)
                logs_l = log_prob(noise_pred, batch.latents_l, latents_t), log_prob(ref_noise_pred, batch.latents_l, latents_t)
            else:
                # inner steps: the winner's and the loser's transitions start from their own x_t
                both = torch.cat([latents_t, batch.latents_t_l])
                both_t = torch.cat([timesteps, timesteps])
                both_cond = conditioning.index(torch.cat([torch.arange(len(timesteps))] * 2))
                pred_w, pred_l = kernel.predict(model, both, both_t, both_cond).chunk(2)
                with self.policy.reference() as reference:
                    ref_w, ref_l = kernel.predict(reference, both, both_t, both_cond).chunk(2)
                logs_w = log_prob(pred_w, batch.latents_w, latents_t), log_prob(ref_w, batch.latents_w, latents_t)
                logs_l = log_prob(pred_l, batch.latents_l, batch.latents_t_l), log_prob(ref_l, batch.latents_l, batch.latents_t_l)
            out = clipped_step_dpo_loss(logs_w[0], logs_l[0], logs_w[1], logs_l[1], beta, epsilon)
            logs = {
                "log_ratio_w": out.log_ratio_w, "log_ratio_l": out.log_ratio_l,
                "abs_log_ratio": (out.log_ratio_w.abs() + out.log_ratio_l.abs()) / 2,
                "clip_fraction": (out.clipped_w.float() + out.clipped_l.float()) / 2,
                "implicit_accuracy": (out.margin > 0).float(),
            }
            return out.losses, logs

        return loss_fn

    # ----------------------------------------------------------------- the scaffold's hooks

    def data_fingerprint(self) -> str:
        return prompts_fingerprint(self.prompts)

    def setup(self) -> int:
        settings = rollout_settings(self.config)
        timesteps = self.kernel.set_schedule(settings.num_inference_steps)
        trained = timesteps[trained_steps(timesteps, settings)].tolist()
        self.run_plan = plan_rounds(self.config, len(self.prompts), self.accelerator.num_processes, trained)
        self.say(self.run_plan.describe())
        self.prepare_optimisation(self.run_plan.rounds)
        self.optimizer_steps = 0
        self.gaps = GapTracker()
        return self.run_plan.rounds

    def start_meter(self) -> None:
        if self.reward_cost is not None:
            self.meter.include(self.reward_cost, source=self.reward_source)

    def state_fields(self, done: int) -> dict[str, Any]:
        return {"method": self.method, "unit": "rounds", "optimizer_steps": self.optimizer_steps}

    def micro_batch_size(self) -> int:
        return self.config.train.train_batch_size

    def build_schedule(self, optimizer: Any, units: int) -> StepRoundSchedule:
        return StepRoundSchedule(optimizer, self.config.optim, units)  # warmup in optimiser steps, decay in rounds

    def restore(self, saved: dict[str, Any], done: int) -> None:
        self.optimizer_steps = int(saved["optimizer_steps"])
        self.lr_schedule.restore(self.optimizer_steps, done)

    def run_unit(self, round_index: int, log_due: bool) -> dict[str, Any]:
        """One round: roll out, gather and share the kept samples, one pass of optimiser steps."""
        config, acc, model = self.config, self.accelerator, self.model
        P, rank = acc.num_processes, acc.process_index
        micro, accumulation = config.train.train_batch_size, config.optim.gradient_accumulation_steps
        began = time.perf_counter()
        # 1. roll out this process's trajectories with the current policy (booked as rollout)
        model.eval()
        with self.meter.stage(ROLLOUT_STAGE):
            prompts = self._round_prompts(round_index)
            out = self._rollout(round_index, prompts)
            check_rollout_scores(acc, out.scores, f"round {round_index + 1}", self.optimizer_steps, self.reward_source,
                                 config.optim.lr)
            self.gaps.update(out.scores, out.branched)
            # 2. gather every process's kept samples; one shared shuffle; an even split
            kept = gather_kept(acc, out.kept).to(acc.device)
        total = len(kept)
        per_process = total // P
        order = torch.randperm(total, generator=keyed_generator(config.run.seed, Stream.SHUFFLE, round_index))
        mine = order[rank * per_process:(rank + 1) * per_process]
        # 3. one pass in micro-batches; accumulation groups form optimiser steps
        model.train()
        # a round that kept nothing trains nothing (torch.split of an empty range yields one empty chunk)
        chunks = [c for c in torch.split(torch.arange(per_process), micro) if len(c)]
        step_logs = []
        for first in range(0, len(chunks), accumulation):
            group = [mine[c] for c in chunks[first:first + accumulation]]
            global_count = P * sum(len(g) for g in group)
            step_logs.append(accumulated_step(
                acc, model, self.optimizer, self.lr_schedule, self.params, group, self._loss_fn(model, kept),
                global_count, config.optim.grad_clip,
            ))
            check_step(step_logs[-1], f"round {round_index + 1}, optimiser step {self.optimizer_steps + 1}",
                       config.optim.lr)
            self.optimizer_steps += 1
        self.lr_schedule.end_round()
        model.eval()
        # 4. the round's record
        counts = acc.reduce(torch.tensor([out.branched, out.kept_count], dtype=torch.float64, device=acc.device), "sum")
        row = {
            "round": round_index + 1, "optimizer_steps": self.optimizer_steps, "kept": total,
            "trained_on": per_process * P, "branched": int(counts[0]),
            "keep_rate": float(counts[1] / counts[0]) if counts[0] else 0.0,
            "kept_by_timestep": {_timestep_key(t): int(n) for t, n in zip(*kept.timesteps.unique(return_counts=True))},
            "mean_gap": float(kept.gaps.mean()) if total else None,
            "lr": float(self.optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - began,
        }
        if step_logs:
            row.update(reduce_logs(acc, step_logs))
            norms = [s.grad_norm for s in step_logs if s.grad_norm is not None]
            row["grad_norm"] = finite_or_none(norms[-1]) if norms else None  # NaN after an fp16 overflow
        return row

    def describe_row(self, row: dict[str, Any], total: int) -> str:
        loss = row.get("loss")
        return (f"round {row['round']}/{total}: kept {row['kept']} ({row['keep_rate']:.2f} of branched), "
                f"loss {'n/a' if loss is None else format(loss, '.4f')}, |log r| "
                f"{row.get('abs_log_ratio', float('nan')):.2e}, {row['seconds']:.1f} s")

    def progress_loss(self, row: dict[str, Any] | None) -> float:
        return float(row.get("loss") or float("nan"))

    def finish(self) -> TrainResult:
        rounds = self.run_plan.rounds
        check_trained(self.optimizer_steps, rounds - (self.resumed_from or 0), self.gaps, self.config.sampler)
        return self.finish_with(rounds, self.optimizer_steps)


class LPOTrainer(StepDPOTrainer):
    """LPO (SPEC §5.1): the LRM scores the candidate latents."""

    method = "lpo"
    reward_kind = "lrm"


class SPOTrainer(StepDPOTrainer):
    """SPO (SPEC §5.2): the step-aware pixel model scores the candidates' decoded x̂0."""

    method = "spo"
    reward_kind = "pixel"
