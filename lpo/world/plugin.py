"""What the world plugs into real-mode code, and :func:`install`, which plugs it in.

Real-mode modules never import the world (it is a leaf). Instead the world registers:
  - the ``world`` model family (:mod:`lpo.models.families`): the ``world`` /
    ``world:PRESET`` alias resolves to the pretrained folder (``world-flow``: the
    flow-matching world model, an SD3-style pipeline, :mod:`lpo.world.pretrain_flow`)
    (:func:`lpo.world.pretrain.resolve_world_alias`), a world model given no prompts
    samples the first test prompts, round-robin over categories; ``world:SPLIT`` is a
    training prompt source; the true utility of x̂0 (lpo.world.utility_reward) and the
    true-utility order of a pair's images (lpo.world.pairs) are the ground truth that
    ``lpo reward eval`` reports beside a learned reward; the grammar's CLIP BPE tokenizer
    builds offline (the cost benchmarks' random SD-sized models use it);
  - the MPCF gap scorers ``world-aesthetic``, ``world-clip`` and ``world-vqa``
    (:data:`lpo.pairs.gap_scores.GAP_SCORERS`), each reading one score of the exact judges;
  - the evaluation benchmarks ``world`` / ``world-heldout`` (:mod:`lpo.world.eval_benchmarks`)
    and the metrics ``world_*`` (:mod:`lpo.world.eval_metrics`), through load hooks
    (:mod:`lpo.core.plugins`): the evaluation registries import torch, so they are filled when
    they load, not here.

:func:`install` is idempotent. The composition roots call it: the CLI before every
command, the tests' conftest, the scripts.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from lpo.core.errors import LpoError

# Revision of the world scorers themselves; the judges' own changes bump JUDGES_VERSION.
_WORLD_SCORER_REVISION = "1"


class WorldJudgeScorer:
    """An MPCF ``GapScorer`` reading one score of the world's exact judges (lpo.world.judges)."""

    def __init__(self, name: str, judge_field: str):
        from lpo.world.grammar import RENDER_WORLD_VERSION
        from lpo.world.judges import JUDGES_VERSION

        self.name = name
        self.version = f"{_WORLD_SCORER_REVISION}-world{RENDER_WORLD_VERSION}.{JUDGES_VERSION}"
        self.judge_field = judge_field

    def score(self, images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
        from lpo.world.judges import judge

        try:
            return np.array([getattr(judge(image, prompt), self.judge_field) for image, prompt in zip(images, prompts)],
                            dtype=np.float64)
        except LpoError as err:  # a real caption: the grammar's message would not say what to do
            raise LpoError(f"{err}; the {self.name} scorer reads world prompts only: filter real pairs with --preset paper") from err

    def __repr__(self) -> str:
        return f"WorldJudgeScorer({self.name}@{self.version}: judge().{self.judge_field})"


# name -> judge field. The world's aesthetic proxy stands in for the LAION aesthetic
# predictor; its "CLIP score" is the cosine of attribute-word bags, blind to binding like
# CLIP. VQAScore is P("yes"), a graded signal. The world's binary category score
# (``alignment``, an exact-match product) is 0 or 1 for most prompts, so its gaps would be
# 0 or ±1 and the tie rule could never tell a close pair from a far one;
# ``soft_alignment`` gives partial credit per attribute, as a probability does.
WORLD_GAP_SCORERS = {"world-aesthetic": "aesthetic", "world-clip": "clip", "world-vqa": "soft_alignment"}


def _resolve(name: str) -> Path:
    from lpo.world.pretrain import resolve_world_alias

    return resolve_world_alias(name)


def _resolve_flow(name: str) -> Path:
    """``world-flow`` / ``world-flow:PRESET`` -> the flow world's folder (preset ``flow`` by default)."""
    from lpo.world.pretrain import PRETRAIN_PRESETS, resolve_world_alias
    from lpo.world.pretrain_flow import WorldFlowPretrainConfig

    preset = name.split(":", 1)[1] if ":" in name else "flow"
    flow = [p for p, c in PRETRAIN_PRESETS.items() if isinstance(c, WorldFlowPretrainConfig)]
    if preset not in flow:
        raise LpoError(f"{name}: {preset!r} is not a flow world preset; known: {', '.join(flow)}")
    return resolve_world_alias(f"world:{preset}")


def _default_prompts(num_prompts: int) -> list[str]:
    from lpo.world.benchmark import WorldEvalProtocol, world_prompts

    return [s.text() for s in world_prompts(WorldEvalProtocol(max_prompts=num_prompts))]


def _split_prompts(split: str) -> list[str]:
    from lpo.world.grammar import SPLIT_NAMES, make_splits

    if split not in SPLIT_NAMES:
        raise LpoError(f"unknown world prompt split {split!r}; known: {', '.join(SPLIT_NAMES)}")
    return [s.text() for s in make_splits().get(split)]


def _true_utility(components):
    from lpo.world.utility_reward import WorldUtilityOnX0

    return WorldUtilityOnX0(components)


def _true_order_labels(pairs) -> list[float]:
    from lpo.world.pairs import true_order_labels

    return true_order_labels(pairs)


def _build_tokenizer(folder: Path):
    from lpo.world.tokenizer import build_world_tokenizer

    return build_world_tokenizer(folder)


WORLD_FAMILY_PARTS = dict(
    resolve=_resolve, default_prompts=_default_prompts, split_prompts=_split_prompts,
    true_utility=_true_utility, true_order_labels=_true_order_labels, build_tokenizer=_build_tokenizer,
)


def _register_benchmarks() -> None:
    from lpo.world.eval_benchmarks import register

    register()


def _register_metrics() -> None:
    from lpo.world.eval_metrics import register

    register()


def install() -> None:
    """Register the world's model family, gap scorers, benchmarks and metrics (once; later calls do nothing)."""
    from lpo.models.families import MODEL_FAMILIES, ModelFamily
    from lpo.pairs.gap_scores import GAP_SCORERS
    from lpo.core.plugins import BENCHMARK_HOOKS, METRIC_HOOKS

    if "world" not in MODEL_FAMILIES:
        MODEL_FAMILIES.add("world", ModelFamily(name="world", **WORLD_FAMILY_PARTS))
    if "world-flow" not in MODEL_FAMILIES:
        # the flow-matching world (components kind "world-flow"): the same prompts and ground truth
        MODEL_FAMILIES.add("world-flow", ModelFamily(name="world-flow", **{**WORLD_FAMILY_PARTS, "resolve": _resolve_flow}))
    for name, judge_field in WORLD_GAP_SCORERS.items():
        if name not in GAP_SCORERS:
            GAP_SCORERS.add(name, functools.partial(WorldJudgeScorer, name, judge_field))
    BENCHMARK_HOOKS.add(_register_benchmarks)
    METRIC_HOOKS.add(_register_metrics)
