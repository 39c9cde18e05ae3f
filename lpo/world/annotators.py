"""Simulated annotators: Pick-a-Pic-like labels for pairs of images of one prompt.

Each annotator looks at the pair through a bias — ``balanced`` (the true utility),
``looks`` (aesthetics only) or ``literal`` (prompt alignment only) — and picks with a
Bradley–Terry probability P(A ≻ B) = σ((u_A − u_B)/τ), τ being that annotator's noise.
When the two images look about equally good to them (|u_A − u_B| < tie_margin) they
call a tie with probability ``tie_probability``. The result is a dataset with
contradictory and tied pairs, which is what MPCF exists to clean up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lpo.world.judges import JudgeScores

ANNOTATOR_KINDS = ("balanced", "looks", "literal")


@dataclass(frozen=True)
class AnnotatorPoolConfig:
    num_annotators: int = 40
    kind_weights: tuple[float, float, float] = (0.6, 0.25, 0.15)  # balanced, looks, literal
    temperature_range: tuple[float, float] = (0.03, 0.15)
    tie_margin: float = 0.03
    tie_probability: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_annotators < 1:
            raise ValueError(f"num_annotators must be >= 1, got {self.num_annotators}")
        if len(self.kind_weights) != len(ANNOTATOR_KINDS) or min(self.kind_weights) < 0 or sum(self.kind_weights) <= 0:
            raise ValueError(f"kind_weights must be 3 non-negative weights with a positive sum, got {self.kind_weights}")
        lo, hi = self.temperature_range
        if not 0 < lo <= hi:
            raise ValueError(f"temperature_range must satisfy 0 < low <= high, got {self.temperature_range}")
        if not 0 <= self.tie_probability <= 1:
            raise ValueError(f"tie_probability must be in [0, 1], got {self.tie_probability}")


@dataclass(frozen=True)
class Annotator:
    annotator_id: int
    kind: str
    temperature: float

    def perceived(self, scores: JudgeScores) -> float:
        if self.kind == "looks":
            return scores.aesthetic
        if self.kind == "literal":
            return scores.soft_alignment
        return scores.utility


@dataclass(frozen=True)
class PairLabel:
    """label: 0.0 = first image preferred, 1.0 = second preferred, 0.5 = tie."""

    label: float
    annotator_id: int
    annotator_kind: str


def make_annotators(config: AnnotatorPoolConfig) -> list[Annotator]:
    rng = np.random.default_rng(config.seed)
    weights = np.array(config.kind_weights, dtype=float)
    kinds = rng.choice(len(ANNOTATOR_KINDS), size=config.num_annotators, p=weights / weights.sum())
    temps = rng.uniform(*config.temperature_range, size=config.num_annotators)
    return [Annotator(i, ANNOTATOR_KINDS[k], float(t)) for i, (k, t) in enumerate(zip(kinds, temps))]


def label_pair(
    annotator: Annotator, scores_a: JudgeScores, scores_b: JudgeScores, u_tie: float, u_pick: float,
    config: AnnotatorPoolConfig,
) -> PairLabel:
    """One label from two uniform draws: ``u_tie`` decides a tie (when the gap is small),
    ``u_pick`` the Bradley–Terry choice. Both are drawn whichever branch runs, so a tie
    that flips changes this pair's label and no other."""
    gap = annotator.perceived(scores_a) - annotator.perceived(scores_b)
    if abs(gap) < config.tie_margin and u_tie < config.tie_probability:
        return PairLabel(0.5, annotator.annotator_id, annotator.kind)
    p_first = 1.0 / (1.0 + np.exp(-gap / annotator.temperature))
    return PairLabel(0.0 if u_pick < p_first else 1.0, annotator.annotator_id, annotator.kind)


def label_pairs(
    scores_a: list[JudgeScores], scores_b: list[JudgeScores], config: AnnotatorPoolConfig, seed: int = 0
) -> list[PairLabel]:
    """Label each pair by an annotator drawn at random from the pool.

    Pair n draws from its own stream (seed, n): its annotator, then a tie draw and a pick
    draw. A last-bit change in one pair's images (another CPU's kernels) can flip that
    pair's tie or label, but it cannot shift the draws of the pairs after it.
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(f"got {len(scores_a)} first images but {len(scores_b)} second images")
    pool = make_annotators(config)
    labels = []
    for n, (a, b) in enumerate(zip(scores_a, scores_b)):
        rng = np.random.default_rng([seed, n])
        annotator = pool[int(rng.integers(len(pool)))]
        u_tie, u_pick = rng.random(2)
        labels.append(label_pair(annotator, a, b, float(u_tie), float(u_pick), config))
    return labels
