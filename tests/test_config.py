"""Dotted, type-checked config overrides and the registry."""

import pytest

from lpo.core.config import apply_overrides
from lpo.core.errors import LpoError
from lpo.core.registry import Registry
from lpo.world.pretrain import pretrain_preset


def test_overrides_parse_to_declared_types():
    cfg = apply_overrides(pretrain_preset("quick"), ["unet_steps=7", "unet_lr=0.5", "model.unet_channels=16,32", "seed=3"])
    assert cfg.unet_steps == 7 and cfg.unet_lr == 0.5 and cfg.model.unet_channels == (16, 32) and cfg.seed == 3
    assert cfg.fingerprint() != pretrain_preset("quick").fingerprint()


@pytest.mark.parametrize(
    "override, match",
    [
        ("unet_stpes=3", "unknown config key 'unet_stpes'"),
        ("unet_steps=many", "expects int"),
        ("unet_steps", "key=value"),
        ("model=3", "is a section"),
        ("unet_steps=0", "unet_steps must be >= 1"),
    ],
)
def test_bad_overrides_are_user_errors(override, match):
    with pytest.raises(LpoError, match=match):
        apply_overrides(pretrain_preset("quick"), [override])


def test_registry_rejects_duplicates_and_lists_known_names():
    reg: Registry[int] = Registry("metric")
    reg.register("b")(2)
    reg.add("a", 1)
    assert reg.names() == ["a", "b"] and reg.get("a") == 1 and "b" in reg
    with pytest.raises(ValueError):
        reg.add("a", 3)
    with pytest.raises(LpoError, match="unknown metric 'c'; known: a, b"):
        reg.get("c")


def test_overrides_apply_together_so_order_does_not_matter():
    cfg = apply_overrides(pretrain_preset("quick"), ["warmup_steps=1", "unet_steps=2"])
    assert (cfg.warmup_steps, cfg.unet_steps) == (1, 2)
    from lpo.reward.config import reward_training_preset

    cfg = apply_overrides(reward_training_preset("lrm-world"), ["max_steps=2", "warmup_steps=1"])
    assert (cfg.max_steps, cfg.warmup_steps) == (2, 1)


def test_an_invalid_override_names_only_the_overrides_of_its_section():
    from lpo.core.errors import LpoError
    from lpo.trainers.jobs import resolve_config

    with pytest.raises(LpoError) as err:
        resolve_config("lpo", "lpo-world", ["model.base=/some/where", "train.max_rounds=2", "optim.lr=-1"])
    assert str(err.value).startswith("invalid override optim.lr=-1: ") and "model.base" not in str(err.value)
