"""lpo's side of DeepSpeed, without DeepSpeed: the values it writes into the plugin, the ZeRO-3
refusal, the verdict on a skipped step, and the reshaping of 0-dim parameters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lpo.core.deepspeed_setup import (
    configure_deepspeed,
    deepspeed_step_nonfinite,
    scalar_shapes,
    uses_deepspeed,
    vectorise_scalar_parameters,
)
from lpo.core.errors import LpoError
from lpo.core.finite import GRADIENTS, LOSS, nonfinite_quantity


def _accelerator(stage: int = 2, skipped: bool = False, precision: str = "no", processes: int = 2):
    plugin = SimpleNamespace(zero_stage=stage, deepspeed_config={"zero_optimization": {"stage": stage}},
                             gradient_accumulation_steps=None)
    return SimpleNamespace(distributed_type="DEEPSPEED", state=SimpleNamespace(deepspeed_plugin=plugin),
                           num_processes=processes, mixed_precision=precision, optimizer_step_was_skipped=skipped,
                           scaler=None, reduce=lambda tensor, op: tensor, device=torch.device("cpu"))


def test_configure_writes_lpo_values_into_the_plugin():
    acc = _accelerator()
    configure_deepspeed(acc, micro_batch_size=4, accumulation_steps=3, grad_clip=1.0)
    config = acc.state.deepspeed_plugin.deepspeed_config
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (4, 3)
    assert config["train_batch_size"] == 4 * 3 * 2 and config["gradient_clipping"] == 1.0
    configure_deepspeed(acc, 4, 1, None)
    assert acc.state.deepspeed_plugin.deepspeed_config["gradient_clipping"] == 0.0  # DeepSpeed's "no clipping"


def test_zero3_is_refused_in_one_line_and_plain_accelerators_are_left_alone():
    with pytest.raises(LpoError, match="ZeRO stage 3.*zero2.yaml"):
        configure_deepspeed(_accelerator(stage=3), 4, 1, 1.0)
    plain = SimpleNamespace(distributed_type="MULTI_CPU")
    assert not uses_deepspeed(plain)
    configure_deepspeed(plain, 4, 1, 1.0)  # nothing to write


def test_a_skipped_deepspeed_step_is_a_nonfinite_gradient_except_under_fp16():
    assert deepspeed_step_nonfinite(_accelerator(skipped=True))
    assert not deepspeed_step_nonfinite(_accelerator(skipped=False))
    assert not deepspeed_step_nonfinite(_accelerator(skipped=True, precision="fp16"))  # the loss scaler's business
    acc = _accelerator()
    param = torch.nn.Parameter(torch.ones(2))  # partitioned away: no .grad to inspect under ZeRO-2
    assert nonfinite_quantity(acc, True, [param], None, deepspeed_skipped=True) == GRADIENTS
    assert nonfinite_quantity(acc, True, [param], None, deepspeed_skipped=False) is None
    assert nonfinite_quantity(acc, False, [param], None, deepspeed_skipped=False) == LOSS
    param.grad = torch.tensor([float("nan"), 0.0])  # without DeepSpeed's verdict the gradients are read
    assert nonfinite_quantity(acc, True, [param], None) == GRADIENTS


def test_scalar_parameters_are_shaped_1_for_the_engine_and_0_dim_when_saved():
    model = torch.nn.Module()
    model.scale = torch.nn.Parameter(torch.tensor(2.5))
    model.weight = torch.nn.Parameter(torch.ones(3))
    assert vectorise_scalar_parameters(SimpleNamespace(distributed_type="MULTI_CPU"), model) == []
    scalars = vectorise_scalar_parameters(_accelerator(), model)
    assert scalars == [model.scale] and model.scale.shape == (1,) and model.weight.shape == (3,)
    (model.scale.exp() * model.weight).sum().backward()  # the same value and gradient by broadcasting
    assert model.scale.grad.shape == (1,) and float(model.scale.grad) == pytest.approx(3 * torch.e ** 2.5)
    with scalar_shapes(scalars):
        assert model.state_dict()["scale"].shape == ()
    assert model.scale.shape == (1,)
