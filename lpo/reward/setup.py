"""Reward-model training's parts: accelerate, optimiser, lr schedule and checkpoints.

The job is :class:`lpo.reward.training.RewardTrainingLoop` (resume by its scaffold,
:class:`lpo.core.training_loop.TrainingLoop`); these are its parts that
do not depend on the data. Checkpoints go through :func:`lpo.core.runs.write_checkpoint` (the
same layout as the policy trainers'); the lr schedule is saved as JSON and resume loads
no pickled objects (:mod:`lpo.core.checkpoint_state`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lpo.core.deepspeed_setup import prepare_deepspeed_backend
from lpo.core.errors import LpoError
from lpo.core.finite import check_finite_module
from lpo.reward.config import RewardTrainingConfig
from lpo.core.runs import RunFolder, write_checkpoint

NONFINITE_FIX = "lower lr and start a new run"
SaveFn = Callable[[nn.Module, Path], Any]  # writes a model to a folder, e.g. lpo.reward.lrm_io.save_lrm


# --------------------------------------------------------------------------- checkpoints

# Changing these between a run and its resume does not change the weights it produces.
RESUME_FREE_FIELDS = frozenset({"log_every", "save_every", "keep_checkpoints", "eval_every", "eval_timesteps",
                                "eval_batch_size", "encode_batch_size", "latent_cache",
                                "latent_shard_pairs"})


def write_reward_checkpoint(
    accelerator: Any, run: RunFolder, step: int, model: nn.Module, save_model: SaveFn | None,
    state: dict[str, Any], keep: int,
) -> Path:
    """checkpoints/step-NNNNNN/ via :func:`lpo.core.runs.write_checkpoint`; ``model/`` by ``save_model``.
    Non-finite weights are refused before any file is written."""
    check_finite_module(model, f"the reward model of checkpoint {step}", NONFINITE_FIX)
    save = None if save_model is None else (lambda folder: save_model(accelerator.unwrap_model(model), folder))
    return write_checkpoint(accelerator, run, step, save, state, keep)


# --------------------------------------------------------------------------- accelerate, optimiser, schedule


def make_reward_accelerator(config: RewardTrainingConfig, accelerator: Any) -> Any:
    if accelerator is not None:
        if accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
            raise LpoError(
                f"the accelerator accumulates {accelerator.gradient_accumulation_steps} steps but the config says "
                f"{config.gradient_accumulation_steps}; build it with Accelerator(gradient_accumulation_steps="
                f"{config.gradient_accumulation_steps}) or pass none"
            )
        if str(accelerator.mixed_precision) != config.mixed_precision:
            raise LpoError(
                f"the accelerator uses mixed_precision={accelerator.mixed_precision} but the config says "
                f"{config.mixed_precision}; make them agree"
            )
        return accelerator
    from accelerate import Accelerator

    prepare_deepspeed_backend()
    try:
        return Accelerator(
            mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps
        )
    except ValueError as err:
        raise LpoError(f"could not set up accelerate with mixed_precision={config.mixed_precision}: {err}") from err


def reward_optimizer(model: nn.Module, config: RewardTrainingConfig) -> torch.optim.Optimizer:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise LpoError("the reward model has no trainable parameters (all have requires_grad=False)")
    not_fp32 = sorted({str(p.dtype).removeprefix("torch.") for _, p in trainable if p.dtype != torch.float32})
    if not_fp32:
        raise LpoError(
            f"trainable weights are {', '.join(not_fp32)}; build the reward model from float32 components "
            "and set mixed_precision=bf16 or fp16 for low-precision compute"
        )
    decay = [p for _, p in trainable if p.ndim >= 2]  # matrices, convolutions, embeddings
    no_decay = [p for _, p in trainable if p.ndim < 2]  # biases, norms, logit_scale
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )


def reward_lr_schedule(optimizer: torch.optim.Optimizer, config: RewardTrainingConfig) -> Any:
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[config.lr_scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps)



