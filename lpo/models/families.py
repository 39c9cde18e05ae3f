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
from typing import Any, Callable, Sequence

from lpo.core.registry import Registry


@dataclass(frozen=True)
class ModelFamily:
    """What a family plugs in; ``name`` is both its alias and its components' ``kind``.

    The optional parts are what only a family with a ground truth can give (the world):
    ``split_prompts`` serves ``NAME:SPLIT`` as a training prompt source (``lpo train
    --set train.prompts=world:train``); ``true_utility`` builds the step reward that reads
    the true utility of the decoded x̂0 (the ceiling in ``lpo reward eval``);
    ``true_order_labels`` gives each pair's label by the true utility of its images;
    ``build_tokenizer`` writes a CLIP BPE tokenizer into a folder without a download (the
    cost benchmarks' random SD-sized models use it, lpo.perf.architectures).
    """

    name: str
    resolve: Callable[[str], Path]  # "NAME" / "NAME:PRESET" -> the pipeline folder
    default_prompts: Callable[[int], list[str]]  # n -> the first n prompts to sample
    split_prompts: Callable[[str], list[str]] | None = None  # SPLIT -> its prompts; LpoError for an unknown split
    true_utility: Callable[[Any], Any] | None = None  # components -> StepRewardModel
    true_order_labels: Callable[[Sequence[Any]], list[float]] | None = None  # pairs -> label_0 per pair
    build_tokenizer: Callable[[Path], Any] | None = None  # folder -> CLIPTokenizer


MODEL_FAMILIES: Registry[ModelFamily] = Registry("model family")


def alias_family(model: str) -> ModelFamily | None:
    """The family whose alias ``model`` is (``NAME`` or ``NAME:PRESET``), else None."""
    name = model.split(":", 1)[0]
    return MODEL_FAMILIES.get(name) if name in MODEL_FAMILIES else None


def kind_family(kind: str) -> ModelFamily | None:
    """The family whose components have ``kind`` (``components.kind``), else None."""
    return MODEL_FAMILIES.get(kind) if kind in MODEL_FAMILIES else None


def offline_tokenizer_builder() -> Callable[[Path], Any]:
    """The first family's (by name) ``build_tokenizer``; LpoError when no family has one."""
    from lpo.core.errors import LpoError

    for name in MODEL_FAMILIES.names():
        if MODEL_FAMILIES.get(name).build_tokenizer is not None:
            return MODEL_FAMILIES.get(name).build_tokenizer
    raise LpoError("no model family builds a tokenizer offline; call lpo.world.install() first (the lpo command does)")


def is_model_alias(model: str) -> bool:
    return alias_family(model) is not None


def resolve_model_alias(model: str) -> Path:
    """The folder of an alias; raises LpoError listing the families for anything else."""
    family = alias_family(model)
    if family is None:
        return MODEL_FAMILIES.get(model.split(":", 1)[0]).resolve(model)  # raises: unknown, known: ...
    return family.resolve(model)
