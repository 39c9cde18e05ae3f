"""What the world plugs into real-mode code, and :func:`install`, which plugs it in.

Real-mode modules never import the world (it is a leaf). Instead the world registers:
  - the ``world`` model family (:mod:`lpo.model_families`): the ``world`` /
    ``world:PRESET`` alias resolves to the pretrained folder
    (:func:`lpo.world.pretrain.resolve_world_alias`), and a world model given no prompts
    samples the first test prompts, round-robin over categories;
  - the MPCF gap scorers ``world-aesthetic``, ``world-clip`` and ``world-vqa``
    (:data:`lpo.gap_scores.GAP_SCORERS`), each reading one score of the exact judges.

:func:`install` is idempotent. The composition roots call it: the CLI before every
command, the tests' conftest, the scripts.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from lpo.errors import LpoError

# Revision of the world scorers themselves; the judges' own changes bump JUDGES_VERSION.
_WORLD_SCORER_REVISION = "1"


class WorldJudgeScorer:
    """An MPCF ``GapScorer`` reading one score of the world's exact judges (lpo.world.judges)."""

    def __init__(self, name: str, judge_field: str):
        from lpo.world.grammar import WORLD_VERSION
        from lpo.world.judges import JUDGES_VERSION

        self.name = name
        self.version = f"{_WORLD_SCORER_REVISION}-world{WORLD_VERSION}.{JUDGES_VERSION}"
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


def _default_prompts(num_prompts: int) -> list[str]:
    from lpo.world.benchmark import WorldEvalProtocol, world_prompts

    return [s.text() for s in world_prompts(WorldEvalProtocol(max_prompts=num_prompts))]


def install() -> None:
    """Register the world's model family and gap scorers (once; later calls do nothing)."""
    from lpo.model_families import MODEL_FAMILIES, ModelFamily
    from lpo.gap_scores import GAP_SCORERS

    if "world" not in MODEL_FAMILIES:
        MODEL_FAMILIES.add("world", ModelFamily(name="world", resolve=_resolve, default_prompts=_default_prompts))
    for name, judge_field in WORLD_GAP_SCORERS.items():
        if name not in GAP_SCORERS:
            GAP_SCORERS.add(name, functools.partial(WorldJudgeScorer, name, judge_field))
