"""The shipped accelerate launch configs parse as accelerate reads them and say what their comments say."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

import lpo.trainers

LAUNCH = Path(lpo.trainers.__file__).parent / "launch"


@pytest.mark.parametrize("name,machines,processes", [("ddp.yaml", 1, 8), ("ddp-multinode.yaml", 2, 16)])
def test_launch_config_parses(name, machines, processes):
    config = load_config_from_file(str(LAUNCH / name))
    assert config.distributed_type == "MULTI_GPU"
    assert (config.num_machines, config.num_processes) == (machines, processes)
    # precision is the preset's (optim.mixed_precision), not the launcher's
    assert config.mixed_precision == "no"
    assert f"--config_file lpo/trainers/launch/{name}" in (LAUNCH / name).read_text()


def test_zero2_config_parses_as_deepspeed_stage_2_and_leaves_the_numbers_to_lpo():
    config = load_config_from_file(str(LAUNCH / "zero2.yaml"))
    assert config.distributed_type == "DEEPSPEED" and config.mixed_precision == "no"
    assert config.deepspeed_config["zero_stage"] == 2
    # micro-batch, accumulation and clipping come from lpo's config (lpo.core.deepspeed_setup)
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & set(config.deepspeed_config)
    assert "--config_file lpo/trainers/launch/zero2.yaml" in (LAUNCH / "zero2.yaml").read_text()
