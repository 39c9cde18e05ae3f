"""Model families that plug into real-mode code from outside it (the embedded world).

A family contributes a model-name alias, ``NAME`` or ``NAME:PRESET`` (``world``,
``world:quick``), resolved to a pipeline folder, and the prompts to sample when a
model of its kind is given none. Real-mode code (generation, evaluation, the checkpoint
registry) asks this registry and knows no family by name, so the world stays a leaf: it
registers itself here in :func:`lpo.world.install`, which the composition roots call
(the CLI before every command, the tests' conftest, the scripts). A library user who
wants the ``world`` alias calls ``lpo.world.install()`` once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lpo.registry import Registry


@dataclass(frozen=True)
class ModelFamily:
    """What a family plugs in; ``name`` is both its alias and its components' ``kind``."""

    name: str
    resolve: Callable[[str], Path]  # "NAME" / "NAME:PRESET" -> the pipeline folder
    default_prompts: Callable[[int], list[str]]  # n -> the first n prompts to sample


MODEL_FAMILIES: Registry[ModelFamily] = Registry("model family")


def alias_family(model: str) -> ModelFamily | None:
    """The family whose alias ``model`` is (``NAME`` or ``NAME:PRESET``), else None."""
    name = model.split(":", 1)[0]
    return MODEL_FAMILIES.get(name) if name in MODEL_FAMILIES else None


def is_model_alias(model: str) -> bool:
    return alias_family(model) is not None


def resolve_model_alias(model: str) -> Path:
    """The folder of an alias; raises LpoError listing the families for anything else."""
    family = alias_family(model)
    if family is None:
        return MODEL_FAMILIES.get(model.split(":", 1)[0]).resolve(model)  # raises: unknown, known: ...
    return family.resolve(model)
