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


def test_what_lpo_has_not_run_under_deepspeed_is_refused_in_one_line():
    with pytest.raises(LpoError, match="ZeRO stage 3: ZeRO-3 partitions.*zero2.yaml"):
        configure_deepspeed(_accelerator(stage=3), 4, 1, 1.0)
    with pytest.raises(LpoError, match="ZeRO stage 0: without ZeRO.*NaN"):
        configure_deepspeed(_accelerator(stage=0), 4, 1, 1.0)
    for precision in ("fp16", "bf16"):
        with pytest.raises(LpoError, match=f"mixed precision {precision} under DeepSpeed.*mixed_precision=no"):
            configure_deepspeed(_accelerator(precision=precision), 4, 1, 1.0)
    for optimizer in ("adafactor", "adamw8bit"):
        with pytest.raises(LpoError, match=f"optimizer {optimizer} under ZeRO.*optim.optimizer=adamw"):
            configure_deepspeed(_accelerator(), 4, 1, 1.0, optimizer)
    plain = SimpleNamespace(distributed_type="MULTI_CPU", mixed_precision="bf16")
    assert not uses_deepspeed(plain)
    configure_deepspeed(plain, 4, 1, 1.0, "adafactor")  # nothing to check or write without DeepSpeed


def test_a_checkpoint_resumes_only_under_the_launch_that_wrote_it(tmp_path):
    from lpo.core.deepspeed_setup import refuse_other_launch

    plain_state, zero_state = tmp_path / "plain", tmp_path / "zero"
    plain_state.mkdir()
    (zero_state / "pytorch_model").mkdir(parents=True)
    (zero_state / "latest").write_text("pytorch_model")
    for rank in (0, 1):
        (zero_state / "pytorch_model" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    plain = SimpleNamespace(distributed_type="MULTI_CPU", num_processes=2)
    refuse_other_launch(plain, plain_state)
    refuse_other_launch(_accelerator(processes=2), zero_state)
    with pytest.raises(LpoError, match="written under DeepSpeed \\(ZeRO, 2 processes\\); resume with the launch"):
        refuse_other_launch(plain, zero_state)
    with pytest.raises(LpoError, match="written without DeepSpeed"):
        refuse_other_launch(_accelerator(), plain_state)
    with pytest.raises(LpoError, match="written by 2 DeepSpeed processes, this resume has 4"):
        refuse_other_launch(_accelerator(processes=4), zero_state)


def test_a_skipped_deepspeed_step_or_a_nonfinite_engine_norm_is_a_nonfinite_gradient():
    assert deepspeed_step_nonfinite(_accelerator(skipped=True))
    assert not deepspeed_step_nonfinite(_accelerator(skipped=False))
    engine = SimpleNamespace(get_global_grad_norm=lambda: float("nan"))
    assert deepspeed_step_nonfinite(SimpleNamespace(**vars(_accelerator()), deepspeed_engine_wrapped=engine))
    param = torch.nn.Parameter(torch.ones(2))  # partitioned away: no .grad to inspect under ZeRO-2
    assert nonfinite_quantity(_accelerator(skipped=True), True, [param], None) == GRADIENTS
    assert nonfinite_quantity(_accelerator(skipped=False), True, [param], None) is None
    assert nonfinite_quantity(_accelerator(skipped=False), False, [param], None) == LOSS
    param.grad = torch.tensor([float("nan"), 0.0])  # without DeepSpeed's verdict the gradients are read
    plain = SimpleNamespace(**{**vars(_accelerator()), "distributed_type": "MULTI_CPU"})
    assert nonfinite_quantity(plain, True, [param], None) == GRADIENTS


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
