"""The embedded world's benchmarks: its test prompts, scored by its exact judges.

Registered into ``lpo.evals.benchmarks.BENCHMARKS`` by :func:`register`, which
:func:`lpo.world.install` hooks onto that registry's loading (lpo.core.plugins); real-mode
evaluation knows no world benchmark by name.

``world`` is the world's ``test`` split, ``world-heldout`` its ``test_heldout`` split
(prompts with colour-shape pairs no training prompt contains). Prompts, their categories
and the ``max_prompts`` selection come from :mod:`lpo.world.benchmark`, so ``lpo eval
--benchmark world`` and ``lpo world eval`` run on the same prompts and seeds.

Besides model checkpoints, these benchmarks accept the world's reference image sources
as checkpoints: ``ground-truth`` (the renderer), ``shuffled`` (another prompt's ground
truth: each score's chance level) and ``noise``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from lpo.core.errors import LpoError
from lpo.evals.benchmarks.base import BENCHMARKS, PromptSet

WORLD_METRICS = ("world_alignment", "world_soft_alignment", "world_aesthetic", "world_clip", "world_utility")
# Bump on any change of how prompts are selected; the world grammar's own version is
# folded in, so a new grammar is a new benchmark version.
SELECTION_VERSION = "1"


@dataclass(frozen=True)
class WorldBenchmark:
    name: str
    split: str
    description: str
    default_metrics: tuple[str, ...] = WORLD_METRICS
    # Reported beside quality when a prompt has >= 2 images: the judges' attribute spread.
    diversity_metric: str = "world_diversity"

    @property
    def version(self) -> str:
        from lpo.world.grammar import WORLD_VERSION

        return f"{WORLD_VERSION}.{SELECTION_VERSION}"

    def prompt_set(self, max_prompts: int | None = None) -> PromptSet:
        from lpo.world.benchmark import WorldEvalProtocol, world_prompts

        specs = world_prompts(WorldEvalProtocol(split=self.split, max_prompts=max_prompts))
        return PromptSet(
            tuple(s.text() for s in specs), f"world {self.split} split", tuple(s.category for s in specs)
        )

    def reference_source(self, name: str, prompts: Sequence[str]):
        from lpo.world.benchmark import GroundTruthSource, NoiseSource, ShuffledSource

        if name == "ground-truth":
            return GroundTruthSource()
        if name == "noise":
            return NoiseSource()
        if name == "shuffled":
            return ShuffledSource(list(prompts))
        return None


def _world_factory(name: str, split: str, description: str):
    def build(source: str | None) -> WorldBenchmark:
        if source is not None:
            raise LpoError(
                f"benchmark {name!r} has fixed prompts (the world's {split} split) and takes no prompt source; "
                f"drop --prompts, or use --benchmark prompts-file --prompts {source}"
            )
        return WorldBenchmark(name, split, description)

    return build


WORLD_BENCHMARKS = {
    "world": ("test", "the world's test prompts (T2I-CompBench++-style categories)"),
    "world-heldout": ("test_heldout", "world prompts with colour-shape pairs unseen in training"),
}


def register() -> None:
    """Add ``world`` and ``world-heldout`` to the benchmark registry (idempotent)."""
    for name, (split, description) in WORLD_BENCHMARKS.items():
        if name not in BENCHMARKS:
            BENCHMARKS.add(name, _world_factory(name, split, description))
