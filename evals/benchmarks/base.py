"""What a benchmark is: a named, versioned prompt set plus the metrics it reports by default.

A benchmark is built by a factory registered in ``BENCHMARKS`` from its ``source`` (a
local path or dataset id overriding the default; None: the benchmark's own default) and
hands the harness a :class:`PromptSet`. The version goes into every result record; bump
it on any change of prompts or of how they are selected (seeds derive from prompt text,
so the prompt set fixes the images).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from lpo.core.errors import LpoError
from lpo.core.hashing import prompt_set_hash
from lpo.core.registry import Registry


def prompt_hash(prompt: str) -> str:
    """Stable 16-hex key of one prompt (image cache folders)."""
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PromptSet:
    """The prompts one evaluation runs on, in order, with optional per-prompt categories.

    ``categories[i]`` is the category of ``prompts[i]`` (world / T2I-CompBench++ category,
    HPSv2 style, PartiPrompts category); results are broken down by it.
    """

    prompts: tuple[str, ...]
    source: str
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.prompts:
            raise LpoError(f"{self.source} has no prompts; give a prompt source with at least one prompt")
        if self.categories is not None and len(self.categories) != len(self.prompts):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.categories)} categories")
        seen: dict[str, int] = {}
        for i, prompt in enumerate(self.prompts):
            if prompt in seen:
                # Seeds derive from the prompt text: a repeated prompt would repeat its
                # images and count them twice.
                raise LpoError(
                    f"{self.source}: prompt {i + 1} repeats prompt {seen[prompt] + 1} ({prompt[:60]!r}); remove duplicates"
                )
            seen[prompt] = i

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def hash(self) -> str:
        """12 hex of the ordered prompt list (:func:`lpo.core.hashing.prompt_set_hash`)."""
        return prompt_set_hash(list(self.prompts))

    def take(self, max_prompts: int | None) -> "PromptSet":
        """The first ``max_prompts`` prompts, round-robin over categories when there are any,
        so a small subset still covers every category."""
        if max_prompts is None or max_prompts >= len(self.prompts):
            return self
        if max_prompts < 1:
            raise LpoError(f"max_prompts must be >= 1, got {max_prompts}")
        if self.categories is None:
            return PromptSet(self.prompts[:max_prompts], self.source, None)
        order = list(dict.fromkeys(self.categories))
        by_category = {c: [i for i, pc in enumerate(self.categories) if pc == c] for c in order}
        picked: list[int] = []
        rank = 0
        while len(picked) < max_prompts:
            for c in order:
                if rank < len(by_category[c]) and len(picked) < max_prompts:
                    picked.append(by_category[c][rank])
            rank += 1
        return PromptSet(
            tuple(self.prompts[i] for i in picked), self.source, tuple(self.categories[i] for i in picked)
        )


class Benchmark(Protocol):
    name: str
    version: str
    description: str
    default_metrics: tuple[str, ...]

    def prompt_set(self, max_prompts: int | None = None) -> PromptSet:
        """The prompts (the first ``max_prompts``, category round-robin); LpoError when the
        source is missing or unreadable."""

    def reference_source(self, name: str, prompts: Sequence[str]):
        """An image source for a reference "checkpoint" (e.g. the world's ground truth),
        or None when the benchmark has no such reference. A source has ``name``,
        ``version`` (what its images depend on; part of the reference's content hash) and
        ``images(prompts, seeds)`` -> (N, H, W, 3) uint8."""


BenchmarkFactory = Callable[[str | None], Benchmark]
BENCHMARKS: Registry[BenchmarkFactory] = Registry("benchmark")
