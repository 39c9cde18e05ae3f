"""The shared trainer harness: accelerate, the policy, optimiser steps, checkpoints, resume.

Every trainer (LPO, SPO, Diffusion-DPO) is built from the same parts:

- :func:`make_accelerator`: device placement, mixed precision and multiple processes come
  from ``accelerate`` (``accelerate launch`` sets the processes); trackers (tensorboard
  when installed, wandb on request) log through ``accelerator.log``.
- :class:`Policy` (:func:`build_policy`): what trains (a LoRA, or chosen U-Net weights)
  and the reference: the same U-Net with its adapters switched off (LoRA; one U-Net in
  memory), or a frozen copy taken before training (full fine-tune).
- :func:`accumulated_step`: one optimiser step over a list of micro-batches. Gradients of
  all but the last micro-batch stay local (``accelerator.no_sync``); each micro-batch's
  summed loss is scaled by P / (samples in the optimiser step over all P processes), so
  after DDP's mean the gradient is exactly the mean over the whole step's samples, also
  when the last micro-batch of a round is smaller.
- checkpoints (:func:`write_checkpoint`; resumed by :class:`lpo.core.training_loop.TrainingLoop`):
  ``checkpoints/step-NNNNNN/`` holds ``state/`` (``accelerator.save_state``: optimiser,
  RNG states, scaler; through save hooks the policy's trainable weights as
  ``trainable.safetensors``, never the frozen base, and the lr schedule as JSON: resume
  unpickles no objects, :mod:`lpo.core.checkpoint_state`), ``model/`` (the
  policy as a diffusers LoRA or U-Net folder, what an evaluation reads) and
  ``trainer_state.json``, written last; the folder is built under a hidden name and
  renamed into place, so a killed run leaves either a complete checkpoint or none.
- numerical health (:mod:`lpo.core.finite`): a step whose loss or gradients are NaN / inf is
  not taken and the run stops with one line; non-finite weights are never saved.

N counts rounds for LPO/SPO and optimiser steps for Diffusion-DPO.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from lpo.core.config import config_to_dict
from lpo.core.deepspeed_setup import mark_boundary, prepare_deepspeed_backend, uses_deepspeed
from lpo.core.errors import LpoError
from lpo.core.finite import check_finite_weights, diverged, nonfinite_quantity
from lpo.core.io import atomic_write_json
from lpo.core.training_loop import write_metrics
from lpo.trainers.lora import add_lora, adapters_disabled, save_lora, save_merged_pipeline, save_unet
from lpo.core.runs import RESULT_NAME, RunFolder
from lpo.core.runs import config_changes as run_config_changes
from lpo.core.runs import write_checkpoint as write_run_checkpoint
from lpo.trainers.config import OptimConfig, PolicyConfig, RunConfig

logger = logging.getLogger(__name__)

TRAINABLE_WEIGHTS_NAME = "trainable.safetensors"
MODEL_DIR = "model"
PIPELINE_DIR = "pipeline"
OPTIMISATION_STAGE = "optimisation"
ROLLOUT_STAGE = "rollout"
REWARD_STAGE = "reward_model_training"
# Run bookkeeping that may change between a run and its resume without changing its weights.
RESUME_FREE_FIELDS = frozenset({"run.save_every", "run.keep_checkpoints", "run.log_every", "run.trackers",
                                "run.save_merged_pipeline", "data.stream"})

ProgressFn = Callable[[str, int, int, float], None]


# --------------------------------------------------------------------------- accelerate


def resolve_trackers(names: Sequence[str]) -> list[str]:
    """accelerate tracker names for ``run.trackers``: ``auto`` = tensorboard when installed."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    out: list[str] = []
    for name in names:
        if name == "none":
            continue
        if name == "auto":
            if available["tensorboard"] and "tensorboard" not in out:
                out.append("tensorboard")
            continue
        if not available[name]:
            raise LpoError(f"tracker {name} is not installed; pip install {name}, or set run.trackers=auto")
        if name not in out:
            out.append(name)
    return out


def make_accelerator(optim: OptimConfig, run: RunConfig, accelerator: Any = None) -> Any:
    """An ``Accelerator`` for ``optim.mixed_precision``, or the given one checked.

    Gradient accumulation is done by :func:`accumulated_step` (micro-batches of a round have
    uneven sizes), so accelerate's own counter stays at 1. Trackers are attached later by
    :func:`start_trackers`, once the run folder (their logging directory) exists: accelerate
    refuses tensorboard without one.
    """
    if accelerator is not None:
        if str(accelerator.mixed_precision) != optim.mixed_precision:
            raise LpoError(
                f"the accelerator uses mixed_precision={accelerator.mixed_precision} but the config says "
                f"{optim.mixed_precision}; make them agree"
            )
        return accelerator
    from accelerate import Accelerator

    resolve_trackers(run.trackers)  # fail now, not after the model is loaded, when one is missing
    prepare_deepspeed_backend()
    try:
        accelerator = Accelerator(mixed_precision=optim.mixed_precision)
    except ValueError as err:
        raise LpoError(f"could not set up accelerate with mixed_precision={optim.mixed_precision}: {err}") from err
    _check_world_size(accelerator)
    return accelerator


def _check_world_size(accelerator: Any) -> None:
    """Refuse N launched processes that each think they are alone (they would all write one run).

    It happens on machines without GPUs: ``accelerate launch --multi_gpu`` marks the processes
    as non-CPU and finds no CUDA, and ``accelerate launch --cpu --num_processes N`` starts a
    single process unless an MPI hostfile is given.
    """
    import os

    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and accelerator.num_processes != world_size:
        raise LpoError(
            f"{world_size} processes were launched (WORLD_SIZE) but accelerate sees {accelerator.num_processes}; "
            "on a machine without GPUs launch with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N "
            "-m lpo.cli train ..."
        )


def flat_config(config: Any) -> dict[str, Any]:
    """Dotted keys -> scalar values (tracker hparams need flat scalars)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk(config_to_dict(config), "")
    return out


def start_trackers(accelerator: Any, run: RunFolder | None, name: str, config: Any, extra: Sequence[Any] = ()) -> None:
    """Start ``config.run.trackers`` (plus ``extra`` accelerate ``GeneralTracker`` objects) with
    the run folder as their logging directory, and log the flattened config as hyperparameters."""
    if run is None:
        return
    from accelerate.tracking import filter_trackers

    wanted = [*resolve_trackers(config.run.trackers), *extra]
    if not wanted:
        return
    accelerator.project_configuration.set_directories(str(run.path))
    accelerator.log_with = filter_trackers(wanted, accelerator.logging_dir)
    accelerator.init_trackers(name, config=flat_config(config))


# --------------------------------------------------------------------------- the policy


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


class Policy:
    """The trained U-Net and its reference (SPEC §5.1: the reference is the base model).

    ``unet``: the module to train (hand it to ``accelerator.prepare``); ``mode``: lora or
    full; ``reference_unet``: the frozen copy (full fine-tune only).
    """

    def __init__(self, unet: nn.Module, mode: str, reference_unet: nn.Module | None = None) -> None:
        self.unet = unet
        self.mode = mode
        self.reference_unet = reference_unet

    @property
    def is_lora(self) -> bool:
        return self.mode == "lora"

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        return {n: p.detach().to("cpu").contiguous() for n, p in self.unet.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, Tensor], where: str) -> None:
        params = {n: p for n, p in self.unet.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise LpoError(
                f"{where} does not match this policy ({len(missing)} missing, {len(unexpected)} unexpected trainable "
                f"weights, e.g. {(missing or unexpected)[0]}); resume with the same policy settings"
            )
        with torch.no_grad():
            for name, param in params.items():
                if tuple(state[name].shape) != tuple(param.shape):
                    raise LpoError(f"{where}: {name} has shape {tuple(state[name].shape)}, the policy {tuple(param.shape)}")
                param.copy_(state[name].to(param.dtype))

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """The reference U-Net to call, without gradients: adapters off (LoRA) or the frozen copy."""
        with torch.no_grad():
            if self.reference_unet is not None:
                yield self.reference_unet
            else:
                with adapters_disabled(self.unet):
                    yield self.unet

    def check_finite(self, what: str) -> None:
        check_finite_weights(((n, p) for n, p in self.unet.named_parameters() if p.requires_grad), what,
                             "lower optim.lr and start a new run")

    def save(self, folder: Path, kind: str) -> Path:
        """The policy as plain diffusers loads it: a LoRA folder, or a ``UNet2DConditionModel`` folder.
        Non-finite trained weights are refused: no folder is written."""
        self.check_finite(f"the policy to be saved in {folder}")
        return save_lora(self.unet, folder, kind) if self.is_lora else save_unet(self.unet, folder)


def build_policy(unet: nn.Module, config: PolicyConfig, seed: int, frozen_dtype: str = "fp32") -> Policy:
    """Make ``unet`` the policy in place (SPEC §5.1 / §5.3).

    lora: freeze the U-Net, add LoRA (seeded by ``seed`` so every process starts alike).
    full: copy the U-Net as the frozen reference (in ``frozen_dtype``), then make the policy
    float32 with only the parameters named by ``config.full_trainable`` trainable.
    """
    if config.is_lora:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            add_lora(unet, config.lora_rank, config.lora_alpha, config.lora_targets)
        policy = Policy(unet, "lora")
    else:
        reference = copy.deepcopy(unet).requires_grad_(False).eval()
        if reference.dtype != _dtype(frozen_dtype):
            reference.to(dtype=_dtype(frozen_dtype))
        if unet.dtype != torch.float32:
            unet.to(dtype=torch.float32)
        unet.requires_grad_(False)
        parts = set(config.full_trainable)
        chosen = [p for n, p in unet.named_parameters() if "all" in parts or parts & set(n.split("."))]
        if not chosen:
            raise LpoError(
                f"policy.full_trainable={list(config.full_trainable)} names no U-Net parameter; use parts of its "
                "parameter names such as attentions, resnets, or all"
            )
        for param in chosen:
            param.requires_grad_(True)
        policy = Policy(unet, "full", reference)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return policy


# --------------------------------------------------------------------------- optimiser


def build_optimizer(params: Sequence[nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    params = list(params)
    if not params:
        raise LpoError("the policy has no trainable parameters")
    not_fp32 = sorted({str(p.dtype).removeprefix("torch.") for p in params if p.dtype != torch.float32})
    if not_fp32:
        raise LpoError(f"trainable weights are {', '.join(not_fp32)}; they must be float32 (use optim.mixed_precision)")
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # The Diffusion-DPO SDXL launcher's settings: a fixed lr, no relative step.
        return Adafactor(params, lr=config.lr, weight_decay=config.weight_decay, clip_threshold=1.0,
                         scale_parameter=False, relative_step=False)
    if config.optimizer == "adamw8bit":
        return _adamw_8bit(params, config)
    return torch.optim.AdamW(
        params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )


def _adamw_8bit(params: list[nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW with 8-bit optimiser states: a quarter of AdamW's state memory
    (the state is 2 fp32 tensors per weight in AdamW), as the official LPO/SPO scripts offer."""
    devices = sorted({p.device.type for p in params})
    if devices != ["cuda"]:
        raise LpoError(f"optim.optimizer=adamw8bit runs on CUDA devices, but the weights are on {', '.join(devices)}; "
                       "use optim.optimizer=adamw")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise LpoError("optim.optimizer=adamw8bit needs bitsandbytes: pip install 'lpo[memory]', "
                       "or use optim.optimizer=adamw") from None
    return bnb.optim.AdamW8bit(params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                               eps=config.adam_epsilon, weight_decay=config.weight_decay)


def build_lr_schedule(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int) -> Any:
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[config.lr_scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=max(total_steps, 1))


@dataclass
class StepLogs:
    """Sums over one optimiser step's local samples: ``sums[name]`` and ``count``; grad norm; lr used;
    ``skipped``: the update was skipped (fp16 loss scaling found inf/NaN gradients)."""

    sums: dict[str, float]
    count: int
    grad_norm: float | None
    lr: float
    skipped: bool = False
    nonfinite: str | None = None  # the quantity that was NaN / inf; the update was not taken


def check_step(logs: "StepLogs | None", where: str, lr: float) -> None:
    """Raise the one-line divergence error when the step found a non-finite loss or gradient."""
    if logs is not None and logs.nonfinite is not None:
        raise diverged(where, logs.nonfinite, "optim.lr", lr)


def accumulated_step(
    accelerator: Any,
    model: nn.Module,
    optimizer: Any,
    lr_schedule: Any,
    params: Sequence[nn.Parameter],
    micro_batches: Sequence[Any],
    loss_fn: Callable[[Any], tuple[Tensor, dict[str, Tensor]]],
    global_count: int,
    grad_clip: float | None,
) -> StepLogs:
    """One optimiser step over ``micro_batches`` (this process's share; same count on every process).

    ``loss_fn(micro_batch)`` -> (per-sample losses (n,), {name: per-sample values (n,)} to log).
    ``global_count``: samples in this optimiser step over all processes. ``lr_schedule`` is
    stepped after the update (None: the caller steps it, e.g. once per round).
    """
    scale = accelerator.num_processes / float(global_count)
    sums: dict[str, float] = {}
    count = 0
    deepspeed = uses_deepspeed(accelerator)
    for j, micro in enumerate(micro_batches):
        last = j == len(micro_batches) - 1
        if deepspeed:  # ZeRO-2 has no no_sync; its engine updates inside the boundary's backward
            mark_boundary(accelerator, last)
        with contextlib.nullcontext() if last or deepspeed else accelerator.no_sync(model):
            with accelerator.autocast():
                losses, logs = loss_fn(micro)
            accelerator.backward(losses.sum() * scale)
        count += int(losses.shape[0])
        for name, values in {"loss": losses, **logs}.items():
            sums[name] = sums.get(name, 0.0) + float(values.detach().float().sum())
    grad_norm = None
    if grad_clip is not None:  # under DeepSpeed: the norm its engine clipped with (None before its first step)
        norm = accelerator.clip_grad_norm_(params, grad_clip)
        grad_norm = None if norm is None else float(norm)
    lr = float(optimizer.param_groups[0]["lr"])
    # A NaN / inf loss or gradient must not reach the weights: no update, the caller stops the run.
    nonfinite = nonfinite_quantity(accelerator, math.isfinite(sums.get("loss", 0.0)), params, grad_norm)
    if nonfinite is not None:
        optimizer.zero_grad(set_to_none=True)
        return StepLogs(sums=sums, count=count, grad_norm=grad_norm, lr=lr, nonfinite=nonfinite)
    optimizer.step()
    skipped = bool(accelerator.optimizer_step_was_skipped)
    if lr_schedule is not None and not skipped:  # fp16 overflow: keep the schedule where it was
        lr_schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return StepLogs(sums=sums, count=count, grad_norm=grad_norm, lr=lr, skipped=skipped)


def reduce_logs(accelerator: Any, logs: Sequence[StepLogs]) -> dict[str, float]:
    """Means over every sample of every process for the given optimiser steps."""
    names = sorted({n for log in logs for n in log.sums})
    local = torch.tensor([sum(log.sums.get(n, 0.0) for log in logs) for n in names] + [sum(l.count for l in logs)],
                         dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(local, "sum").tolist()
    count = total[-1]
    out = {n: (total[i] / count if count else float("nan")) for i, n in enumerate(names)}
    # Updates skipped by fp16 loss scaling (the same on every process): the first few steps of
    # an fp16 run are normal casualties while the scale comes down.
    out["skipped_updates"] = sum(log.skipped for log in logs)
    return out


# --------------------------------------------------------------------------- checkpoints


def register_policy_checkpointing(accelerator: Any, policy: Policy) -> None:
    """Save / load only the policy's trainable weights with accelerate's state (not the frozen base)."""
    from safetensors.torch import load_file, save_file

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        weights.clear()  # accelerate would otherwise write the whole U-Net
        if accelerator.is_main_process:
            save_file(policy.trainable_state_dict(), str(Path(output_dir) / TRAINABLE_WEIGHTS_NAME))

    def load_hook(models: list, input_dir: str) -> None:
        path = Path(input_dir) / TRAINABLE_WEIGHTS_NAME
        if not path.is_file():
            raise LpoError(f"{path} is missing; the checkpoint is incomplete: resume from an earlier one or start over")
        policy.load_trainable_state_dict(load_file(str(path)), str(path))
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def write_checkpoint(
    accelerator: Any, run: RunFolder, step: int, policy: Policy, kind: str, state: dict[str, Any], keep: int,
) -> Path:
    """``checkpoints/step-NNNNNN/`` via :func:`lpo.core.runs.write_checkpoint`, the policy in ``model/``."""
    policy.check_finite(f"the policy of checkpoint {step}")  # before any file of it is written
    return write_run_checkpoint(accelerator, run, step, lambda folder: policy.save(folder, kind), state, keep)


def write_checkpoint_cost(folder: Path, run: RunFolder) -> None:
    """Snapshot the run's cost record into a checkpoint: what this checkpoint cost to reach.

    An evaluation of ``checkpoints/step-N`` reads it, so quality-vs-compute curves place
    intermediate checkpoints at their own device-seconds, not the finished run's.
    """
    from lpo.core.runs import COST_NAME

    cost = run.read_cost()
    if cost is not None:
        atomic_write_json(folder / COST_NAME, cost)


def config_changes(old: dict[str, Any], config: Any) -> list[str]:
    """'key: old -> new' for every dotted key of ``config`` that differs from ``old``, bookkeeping
    fields excepted and fields added since ``old`` taken at their former behaviour."""
    return run_config_changes(old, config_to_dict(config), RESUME_FREE_FIELDS, getattr(config, "ADDED_DEFAULTS", None))


# --------------------------------------------------------------------------- results and callbacks


@dataclass
class CheckpointEvent:
    """Passed to checkpoint callbacks (e.g. automatic evaluation) on the main process.

    step: rounds (LPO/SPO) or optimiser steps (Diffusion-DPO) done; folder: the checkpoint
    folder (None for the final model); model_folder: the policy as diffusers loads it;
    kind: sd15 / sdxl / world; label: the method as results name it.
    """

    step: int
    folder: Path | None
    model_folder: Path
    final: bool
    kind: str
    label: str
    lora: bool


CheckpointCallback = Callable[[CheckpointEvent], None]


@dataclass
class TrainResult:
    """What a trainer did: ``steps`` counts rounds (LPO/SPO) or optimiser steps (Diffusion-DPO)."""

    method: str
    label: str
    steps: int
    optimizer_steps: int
    history: list[dict[str, Any]]
    cost: dict[str, Any]
    resumed_from: int | None = None
    run_folder: Path | None = None
    model_folder: Path | None = None
    pipeline_folder: Path | None = None

    @property
    def final_loss(self) -> float | None:
        losses = [row["loss"] for row in self.history if row.get("loss") is not None]
        return losses[-1] if losses else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "label": self.label, "steps": self.steps, "optimizer_steps": self.optimizer_steps,
            "final_loss": self.final_loss, "history": self.history, "cost": self.cost,
            "resumed_from": self.resumed_from,
            "run_folder": None if self.run_folder is None else str(self.run_folder),
            "model_folder": None if self.model_folder is None else str(self.model_folder),
            "pipeline_folder": None if self.pipeline_folder is None else str(self.pipeline_folder),
        }


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def finish_run(
    accelerator: Any, run: RunFolder | None, policy: Policy, components: Any, result: TrainResult, meter: Any,
    save_merged: bool, callbacks: Sequence[CheckpointCallback], history: list[dict[str, Any]],
) -> TrainResult:
    """Write the final policy (model/, optionally pipeline/), cost, metrics and result.json; call the callbacks."""
    if run is not None:  # every process: they hold the same weights and must stop together
        policy.check_finite("the trained policy")
    if run is not None and accelerator.is_main_process:
        with meter.stage(OPTIMISATION_STAGE):
            result.model_folder = policy.save(run.path / MODEL_DIR, components.kind)
            if save_merged:
                result.pipeline_folder = save_merged_pipeline(components, policy.unet, run.path / PIPELINE_DIR)
        result.cost = meter.as_dict()
        run.write_cost(result.cost)
        atomic_write_json(result.model_folder / "cost.json", result.cost)
        write_metrics(run, history)
        run.write_json(RESULT_NAME, result.as_dict())
        event = CheckpointEvent(result.steps, None, result.model_folder, True, components.kind, result.label, policy.is_lora)
        for callback in callbacks:
            callback(event)
    else:
        result.cost = meter.as_dict()
    if run is not None:
        accelerator.wait_for_everyone()
    # Trackers only: accelerator.end_training() would also destroy the process group, and a
    # second job in the same processes (tests, notebooks) could not run.
    for tracker in accelerator.trackers:
        tracker.finish()
    return result
