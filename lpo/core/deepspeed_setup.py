"""DeepSpeed ZeRO-2 under ``accelerate launch --config_file lpo/trainers/launch/zero2.yaml``.

The launch config only chooses ZeRO-2; lpo's own config owns the numbers DeepSpeed also
keeps (micro-batch, accumulation, gradient clipping), as it owns mixed precision, so
:func:`configure_deepspeed` writes them into the plugin before ``accelerator.prepare``.

ZeRO-2 partitions the optimiser state and the gradients; every process still holds the
whole model, so rollouts, sampling and saving read the module as under plain data
parallelism. ZeRO-3 partitions the weights themselves and is refused.

What changes in a step: DeepSpeed's engine takes the update inside the last micro-batch's
``accelerator.backward`` (clipping with its ``gradient_clipping``, and skipping the update
when the gradients are NaN / inf), so lpo marks that micro-batch as the accumulation
boundary itself (:func:`mark_boundary`) and reads the outcome afterwards
(:func:`deepspeed_step_nonfinite`).

On a machine without GPUs accelerate finds no device backend and would treat the
processes as unrelated; :func:`prepare_deepspeed_backend` gives it gloo, DeepSpeed's CPU
one (that is how the test suite runs ZeRO-2 on two CPU processes).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lpo.core.errors import LpoError


def deepspeed_requested() -> bool:
    """Whether ``accelerate launch`` was asked for DeepSpeed (its config sets this variable)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def uses_deepspeed(accelerator: Any) -> bool:
    return getattr(accelerator, "distributed_type", None) == "DEEPSPEED"  # a str enum


def prepare_deepspeed_backend() -> None:
    """Before the first ``Accelerator``: under DeepSpeed without a GPU, set up accelerate on gloo."""
    if not deepspeed_requested() or int(os.environ.get("WORLD_SIZE", "1") or 1) < 2:
        return
    import torch

    if torch.cuda.is_available():
        return
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        raise LpoError("the launch config asks for DeepSpeed, which is not installed; pip install 'lpo[deepspeed]'") from err
    from accelerate import PartialState

    PartialState(backend="gloo")


def configure_deepspeed(accelerator: Any, micro_batch_size: int, accumulation_steps: int, grad_clip: float | None,
                        optimizer: str = "adamw") -> None:
    """Check what lpo supports under DeepSpeed and write lpo's batch, accumulation and clipping
    values into the plugin (no-op without DeepSpeed).

    ``accumulation_steps``: micro-batches per optimiser step as DeepSpeed scales the loss
    (1 where lpo scales each micro-batch's loss itself, :func:`lpo.trainers.harness.accumulated_step`).

    Supported: ZeRO stage 1 or 2, float32 (mixed_precision=no), AdamW. Refused in one line:
    ZeRO-3 (it partitions the weights lpo's rollouts, sampling and saving read whole); stage 0
    (DeepSpeed's plain optimiser does not skip a step with NaN gradients, which lpo's guard
    reads); fp16 / bf16, because DeepSpeed then casts the whole module, frozen parts and
    reference included, instead of autocasting as lpo's presets assume (its torch_autocast
    mode has not been run with lpo); Adafactor and 8-bit AdamW, which would see ZeRO's flat
    1-D partitions instead of each tensor (Adafactor's factored moments and per-tensor
    clipping are per-shape).
    """
    if not uses_deepspeed(accelerator):
        return
    plugin = accelerator.state.deepspeed_plugin
    stage = int(plugin.zero_stage or 0)
    if stage not in (1, 2):
        why = ("ZeRO-3 partitions the weights that lpo's rollouts, sampling and saving read whole" if stage > 2 else
               "without ZeRO, DeepSpeed's optimiser applies NaN gradients instead of skipping the step")
        raise LpoError(f"the launch config asks for ZeRO stage {stage}: {why}; use lpo/trainers/launch/zero2.yaml")
    if accelerator.mixed_precision != "no":
        raise LpoError(
            f"mixed precision {accelerator.mixed_precision} under DeepSpeed casts the whole model to 16 bits (lpo's presets "
            "autocast and keep float32 weights); set the preset's mixed precision to no (optim.mixed_precision=no for "
            "lpo train, mixed_precision=no for lpo lrm train) or launch without DeepSpeed"
        )
    if optimizer != "adamw":
        raise LpoError(
            f"optimizer {optimizer} under ZeRO sees flat 1-D partitions instead of each weight tensor (a different "
            "algorithm); use optim.optimizer=adamw or launch without DeepSpeed"
        )
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = int(micro_batch_size)
    config["gradient_accumulation_steps"] = int(accumulation_steps)
    config["train_batch_size"] = int(micro_batch_size) * int(accumulation_steps) * accelerator.num_processes
    config["gradient_clipping"] = float(grad_clip) if grad_clip is not None else 0.0
    # lpo's accelerator carries the run's gradient accumulation, which accelerate checks against this plugin
    plugin.gradient_accumulation_steps = int(accumulation_steps)


def mark_boundary(accelerator: Any, last: bool) -> None:
    """Tell accelerate (and through it DeepSpeed's engine) whether this micro-batch ends the optimiser step."""
    accelerator.gradient_state._set_sync_gradients(last)


def deepspeed_step_nonfinite(accelerator: Any) -> bool:
    """After the boundary backward: whether DeepSpeed met NaN / inf gradients (and so skipped the update).

    ZeRO-1/2 skip a step whose gradient norm is not finite; lpo reads that verdict and, as a
    second witness, the norm itself (float32 only: :func:`configure_deepspeed`).
    """
    if accelerator.optimizer_step_was_skipped:
        return True
    engine = getattr(accelerator, "deepspeed_engine_wrapped", None)
    norm = engine.get_global_grad_norm() if engine is not None else None
    return norm is not None and not math.isfinite(float(norm))


def save_state_kwargs(accelerator: Any) -> dict[str, Any]:
    """``accelerator.save_state`` keywords: under DeepSpeed its checkpoint leaves the frozen weights out
    (a LoRA run would otherwise write the whole base model into every checkpoint)."""
    return {"exclude_frozen_parameters": True} if uses_deepspeed(accelerator) else {}


def load_state_kwargs(accelerator: Any) -> dict[str, Any]:
    """``accelerator.load_state`` keywords: the frozen weights a DeepSpeed checkpoint left out are the
    base model's, already loaded (a policy's trainable ones are also checked strictly by lpo's own hook)."""
    return {"load_module_strict": False} if uses_deepspeed(accelerator) else {}


def refuse_other_launch(accelerator: Any, folder: Any) -> None:
    """One line when a checkpoint's ``state/`` was written under another launch than this resume's:
    DeepSpeed or not, or DeepSpeed with another number of processes (its optimiser state is
    partitioned by process)."""
    folder = Path(folder)
    partitions = len(list((folder / "pytorch_model").glob("zero_pp_rank_*_optim_states.pt")))
    written_by_deepspeed = (folder / "latest").is_file()
    fix = "resume with the launch it was written under, or start a new run"
    if written_by_deepspeed and not uses_deepspeed(accelerator):
        raise LpoError(f"{folder} was written under DeepSpeed (ZeRO, {partitions} processes); {fix}")
    if uses_deepspeed(accelerator) and not written_by_deepspeed:
        raise LpoError(f"{folder} was written without DeepSpeed; {fix}")
    if written_by_deepspeed and partitions != accelerator.num_processes:
        raise LpoError(f"{folder} was written by {partitions} DeepSpeed processes, this resume has "
                       f"{accelerator.num_processes}; {fix}")


@contextmanager
def weights_only_deepspeed_loads(accelerator: Any) -> Iterator[None]:
    """Within: DeepSpeed's engines read their checkpoint files with ``torch.load(weights_only=True)``.

    DeepSpeed's own loader unpickles without restriction. Its ZeRO-2 files hold tensors, plain
    containers and four DeepSpeed types of plain data (the two loss scalers' settings, the
    ZeRO stage enum, a fragment's (numel, start) record), which are allowed besides torch's
    defaults. A file that needs more is refused by torch's unpickler
    (:func:`lpo.core.checkpoint_state.load_checkpoint_state` says so in one line).
    """
    if not uses_deepspeed(accelerator):
        yield
        return
    import torch
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]

    def load(path: str, map_location: Any = None) -> Any:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    engines = [model.checkpoint_engine for model in accelerator._models if hasattr(model, "checkpoint_engine")]
    originals = [engine.load for engine in engines]
    for engine in engines:
        engine.load = load
    try:
        yield
    finally:
        for engine, original in zip(engines, originals):
            engine.load = original


def vectorise_scalar_parameters(accelerator: Any, model: Any) -> list[Any]:
    """Before ``accelerator.prepare`` under DeepSpeed: shape 0-dim parameters (the LRM's logit
    scale) (1,) for the engine's life; returns them (none without DeepSpeed).

    DeepSpeed 0.19 broadcasts every parameter at start-up as a byte view, which a 0-dim tensor
    cannot give ("self.dim() cannot be 0 to view Float as Byte"), and ZeRO-2 later re-points
    each parameter into its flat buffer with the shape it had at start-up. A (1,) parameter
    computes the same values and gradients through broadcasting; :func:`scalar_shapes` gives
    the saved files their usual shape.
    """
    scalars = [p for p in model.parameters() if p.dim() == 0] if uses_deepspeed(accelerator) else []
    for param in scalars:
        param.data = param.data.reshape(1)
    return scalars


def restore_scalar_shapes(params: list[Any]) -> None:
    """The parameters :func:`vectorise_scalar_parameters` reshaped, 0-dim again."""
    for param in params:
        param.data = param.data.reshape(())


@contextmanager
def scalar_shapes(params: list[Any]) -> Iterator[None]:
    """Within: the parameters :func:`vectorise_scalar_parameters` reshaped are 0-dim again (to save them)."""
    restore_scalar_shapes(params)
    try:
        yield
    finally:
        for param in params:
            param.data = param.data.reshape(1)
