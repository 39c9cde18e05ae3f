"""The base of every trainer of the diffusion policy (LPO, SPO, Diffusion-DPO).

:class:`PolicyTrainer` puts the policy parts of :mod:`lpo.trainers.harness` (accelerator,
optimiser and lr schedule over the policy's trainable weights, checkpoints that hold only
those weights, trackers, the final save and the checkpoint callbacks) into the job
scaffold of :class:`lpo.core.training_loop.TrainingLoop`. A trainer subclass supplies its
plan (``setup``), one unit of work (``run_unit``) and its data fingerprint, and declares
what the job must hand it (``needs``), so no code branches on method names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Sequence

from lpo.core.checkpoint_state import register_schedule_checkpointing
from lpo.core.deepspeed_setup import configure_deepspeed, uses_deepspeed
from lpo.core.errors import LpoError
from lpo.core.training_loop import TrainingLoop
from lpo.models.components import DiffusionComponents
from lpo.core.runs import RunFolder
from lpo.trainers.harness import (
    OPTIMISATION_STAGE,
    RESUME_FREE_FIELDS,
    CheckpointCallback,
    CheckpointEvent,
    Policy,
    ProgressFn,
    TrainResult,
    build_lr_schedule,
    build_optimizer,
    finish_run,
    make_accelerator,
    register_policy_checkpointing,
    start_trackers,
    write_checkpoint,
    write_checkpoint_cost,
)

# What a trainer is handed besides the base model and its policy: a frozen step reward
# (LRM or SPO's pixel model) and training prompts, or preference pairs.
Needs = Literal["step_reward", "pairs"]


class PolicyTrainer(TrainingLoop):
    """Trains ``policy`` (built on ``components.denoiser``) inside a run folder (or in memory)."""

    method: ClassVar[str]
    config_class: ClassVar[type]
    needs: ClassVar[Needs]
    stage = OPTIMISATION_STAGE
    resume_free = RESUME_FREE_FIELDS

    def __init__(
        self,
        config: Any,
        components: DiffusionComponents,
        policy: Policy,
        *,
        run: RunFolder | None = None,
        accelerator: Any = None,
        callbacks: Sequence[CheckpointCallback] = (),
        trackers: Sequence[Any] = (),
        progress: ProgressFn | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if policy.unet is not components.denoiser:
            raise ValueError("policy.unet must be components.denoiser (build the policy on the components' U-Net or MMDiT)")
        self.config = config
        self.components = components
        self.policy = policy
        self.run = run
        self.accelerator = make_accelerator(config.optim, config.run, accelerator)
        self.callbacks = list(callbacks)
        self.trackers = list(trackers)  # extra accelerate GeneralTracker objects, besides config.run.trackers
        self.progress = progress
        self.log = log

    @property
    def label(self) -> str:
        return self.method

    @property
    def schedule(self) -> tuple[int, int, int]:
        run = self.config.run
        return run.log_every, run.save_every, run.keep_checkpoints

    def prepare_optimisation(self, units: int) -> None:
        """Optimiser and lr schedule over the trainable weights, through accelerate; trackers started.

        Sets ``model`` (the accelerate-wrapped U-Net), ``params``, ``optimizer`` and ``lr_schedule``.
        """
        acc = self.accelerator
        register_policy_checkpointing(acc, self.policy)
        self.params = self.policy.trainable_parameters()
        optimizer = build_optimizer(self.params, self.config.optim)
        self.lr_schedule = self.build_schedule(optimizer, units)
        if uses_deepspeed(acc):  # lpo scales every micro-batch's loss itself (accumulated_step): DeepSpeed accumulates 1
            configure_deepspeed(acc, self.micro_batch_size(), 1, self.config.optim.grad_clip, self.config.optim.optimizer)
        self.model, self.optimizer = acc.prepare(self.policy.unet, optimizer)
        register_schedule_checkpointing(acc, self.lr_schedule)  # as JSON: nothing pickled
        start_trackers(acc, self.run, f"lpo-{self.method}", self.config, self.trackers)

    def micro_batch_size(self) -> int:
        """Samples per micro-batch on one process (DeepSpeed's bookkeeping; lpo batches itself).
        Asked only under DeepSpeed; a trainer that supports it says."""
        raise LpoError(f"{self.method} does not support DeepSpeed yet; launch it without DeepSpeed's config")

    def build_schedule(self, optimizer: Any, units: int) -> Any:
        """The lr schedule over ``units`` optimiser steps (transformers' schedules)."""
        return build_lr_schedule(optimizer, self.config.optim, units)

    def save_checkpoint(self, done: int, state: dict[str, Any]) -> Path:
        return write_checkpoint(self.accelerator, self.run, done, self.policy, self.components.kind, state,
                                self.schedule[2])

    def on_checkpoint(self, done: int, folder: Path) -> None:
        write_checkpoint_cost(folder, self.run)
        event = CheckpointEvent(done, folder, folder / "model", False, self.components.kind, self.label,
                                self.policy.is_lora)
        for callback in self.callbacks:
            callback(event)

    def finish_with(self, steps: int, optimizer_steps: int) -> TrainResult:
        """Save the final policy and the result (:func:`lpo.trainers.harness.finish_run`)."""
        result = TrainResult(
            method=self.method, label=self.label, steps=steps, optimizer_steps=optimizer_steps, history=self.history,
            cost={}, resumed_from=self.resumed_from, run_folder=None if self.run is None else self.run.path,
        )
        return finish_run(self.accelerator, self.run, self.policy, self.components, result, self.meter,
                          self.config.run.save_merged_pipeline, self.callbacks, self.history)
