"""Numerical health: a diverging run stops with one line; non-finite weights are never saved or used.

Every trainer (LPO / SPO / Diffusion-DPO through :mod:`lpo.trainers.harness`, the reward
models through :mod:`lpo.reward.training`) checks each optimiser step before it is taken:

- the loss of every micro-batch is finite on every process (one process's NaN would reach
  all of them through the gradient all-reduce, so all processes stop together);
- the gradients are finite, except under fp16 loss scaling, where an overflow is normal
  and the scaler skips the update itself.

A bad step raises :class:`DivergedError` before ``optimizer.step``: the weights in memory
and every checkpoint on disk stay finite, and no final model is written. Before any
checkpoint or final model is written, and when a model is loaded for evaluation or as a
step reward, :func:`check_finite_weights` refuses non-finite weights.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from lpo.core.deepspeed_setup import deepspeed_step_nonfinite, uses_deepspeed
from lpo.core.errors import LpoError

LOSS = "the loss"
GRADIENTS = "the gradients"


class DivergedError(LpoError):
    """Training produced a non-finite loss, gradient or reward score."""


def nonfinite_summary(named: Iterable[tuple[str, Tensor]]) -> tuple[int, int, str | None]:
    """(non-finite values, all values, name of the first tensor holding one)."""
    bad, total, first = 0, 0, None
    for name, tensor in named:
        n = int((~torch.isfinite(tensor.detach())).sum()) if tensor.is_floating_point() else 0
        bad, total = bad + n, total + tensor.numel()
        if n and first is None:
            first = name
    return bad, total, first


def check_finite_weights(named: Iterable[tuple[str, Tensor]], what: str, fix: str) -> None:
    """LpoError when any weight is NaN or inf: ``what`` names the model, ``fix`` what to do."""
    bad, total, first = nonfinite_summary(named)
    if bad:
        raise LpoError(f"{what} has non-finite weights ({bad} of {total} values are NaN or inf, first in {first}); {fix}")


def check_finite_module(module: nn.Module, what: str, fix: str) -> None:
    check_finite_weights(module.state_dict().items(), what, fix)


def grads_finite(params: Sequence[nn.Parameter]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def any_process(accelerator: Any, flag: bool) -> bool:
    """True when ``flag`` is true on any process (every process gets the same answer)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, "sum").item() > 0)


def nonfinite_quantity(accelerator: Any, loss_finite: bool, params: Sequence[nn.Parameter],
                       grad_norm: float | None) -> str | None:
    """Which quantity of this optimiser step is not finite on some process (None: all finite).

    Call after the last backward of the step and before ``optimizer.step``. Under fp16 loss
    scaling (``accelerator.scaler``) non-finite gradients are the scaler's business. Under
    DeepSpeed, whose engine has already judged the gradients inside the backward (it skips
    the update when they are NaN / inf) and keeps them partitioned, its verdict is read
    (:func:`lpo.core.deepspeed_setup.deepspeed_step_nonfinite`).
    """
    if any_process(accelerator, not loss_finite):
        return LOSS
    if uses_deepspeed(accelerator):
        return GRADIENTS if deepspeed_step_nonfinite(accelerator) else None
    if accelerator.scaler is not None:
        return None
    ok = math.isfinite(grad_norm) if grad_norm is not None else grads_finite(params)
    return GRADIENTS if any_process(accelerator, not ok) else None


def diverged(where: str, quantity: str, lr_key: str, lr: float) -> DivergedError:
    """The one line for a diverged step, ``where`` e.g. 'round 3' or 'step 12'."""
    return DivergedError(
        f"{where}: {quantity} became NaN or inf, training diverged; lower {lr_key} (now {lr:g}) and start a new run "
        "(no final model was written; the checkpoints written so far are finite)"
    )
