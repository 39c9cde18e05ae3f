"""Evaluate a model (or a reference image source) on world prompts with the world judges.

Every image gets a fixed seed derived from (protocol seed, prompt text, image index), so
two checkpoints are compared on identical initial noise and adding prompts changes no
other prompt's images. Confidence intervals treat the prompt as the unit (images of one
prompt are averaged first), which is the honest unit when images share a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from lpo.core.errors import LpoError
from lpo.evals.statistics import prompt_unit_summary
from lpo.sampling.generate import generate_images, image_seed
from lpo.core.hashing import prompt_set_hash
from lpo.world.grammar import CATEGORIES, WORLD_VERSION, PromptSpec, make_splits
from lpo.world.judges import SCORE_NAMES, judge
from lpo.world.render import IMAGE_SIZE, render_prompt

REFERENCE_SOURCES = ("ground-truth", "shuffled", "noise")
# What a reference source's images depend on (the grammar and renderer); evaluation folds
# it into the reference "checkpoint"'s content hash (lpo.evals.checkpoints).
REFERENCE_VERSION = f"world{WORLD_VERSION}"


@dataclass(frozen=True)
class WorldEvalProtocol:
    split: str = "test"
    images_per_prompt: int = 4
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 0.0  # diffusers' DDIM default; the protocol records it
    seed: int = 42
    batch_size: int = 64
    max_prompts: int | None = None

    def __post_init__(self) -> None:
        if self.images_per_prompt < 1:
            raise LpoError(f"images_per_prompt must be >= 1, got {self.images_per_prompt}")
        if self.num_inference_steps < 1:
            raise LpoError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.batch_size < 1:
            raise LpoError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise LpoError(f"max_prompts must be >= 1, got {self.max_prompts}")


class ImageSource(Protocol):
    name: str

    def images(self, prompts: list[str], seeds: list[int]) -> np.ndarray:
        """(N, H, W, 3) uint8 images, one per (prompt, seed)."""


@dataclass
class GroundTruthSource:
    """The renderer: what a perfect model would draw."""

    name: str = "ground-truth"

    @property
    def version(self) -> str:
        return REFERENCE_VERSION

    def images(self, prompts, seeds):
        from lpo.world.grammar import parse_prompt

        return np.stack([render_prompt(parse_prompt(p), np.random.default_rng(s)) for p, s in zip(prompts, seeds)])


@dataclass
class ShuffledSource:
    """Ground truth of a different prompt of the same split: each score's chance level."""

    prompts: list[str]
    name: str = "shuffled"

    @property
    def version(self) -> str:
        return REFERENCE_VERSION

    def images(self, prompts, seeds):
        from lpo.world.grammar import parse_prompt

        out = []
        for prompt, seed in zip(prompts, seeds):
            rng = np.random.default_rng(seed)
            others = [p for p in self.prompts if p != prompt]
            out.append(render_prompt(parse_prompt(others[rng.integers(len(others))]), rng))
        return np.stack(out)


@dataclass
class NoiseSource:
    """Uniform noise images: the floor."""

    name: str = "noise"
    size: int = IMAGE_SIZE

    @property
    def version(self) -> str:
        return REFERENCE_VERSION

    def images(self, prompts, seeds):
        return np.stack([np.random.default_rng(s).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8) for s in seeds])


@dataclass
class PipelineSource:
    """A diffusers text-to-image pipeline sampled with DDIM under the protocol."""

    pipeline: object
    protocol: WorldEvalProtocol
    name: str = "model"

    def images(self, prompts, seeds):
        return generate_images(
            self.pipeline,
            prompts,
            seeds,
            num_inference_steps=self.protocol.num_inference_steps,
            guidance_scale=self.protocol.guidance_scale,
            eta=self.protocol.eta,
        )


@dataclass
class CategoryResult:
    n_prompts: int
    n_images: int
    mean: dict[str, float]
    ci95: dict[str, float]


@dataclass
class WorldEvalResult:
    source: str
    protocol: WorldEvalProtocol
    prompt_set_hash: str
    categories: dict[str, CategoryResult] = field(default_factory=dict)
    per_image: list[dict] = field(default_factory=list)

    @property
    def overall(self) -> dict[str, float]:
        """Unweighted mean over categories, as T2I-CompBench++ summaries are read."""
        return {k: float(np.mean([c.mean[k] for c in self.categories.values()])) for k in SCORE_NAMES}

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return {
            "world_version": WORLD_VERSION,
            "source": self.source,
            "protocol": asdict(self.protocol),
            "prompt_set_hash": self.prompt_set_hash,
            "categories": {k: asdict(v) for k, v in self.categories.items()},
            "overall": self.overall,
        }


def world_prompts(protocol: WorldEvalProtocol) -> list[PromptSpec]:
    specs = make_splits().get(protocol.split)
    if protocol.max_prompts is not None:
        # Keep every category represented: take prompts round-robin by category.
        by_cat = {c: [s for s in specs if s.category == c] for c in CATEGORIES}
        picked: list[PromptSpec] = []
        i = 0
        while len(picked) < min(protocol.max_prompts, len(specs)):
            for c in CATEGORIES:
                if i < len(by_cat[c]) and len(picked) < protocol.max_prompts:
                    picked.append(by_cat[c][i])
            i += 1
        specs = picked
    return specs


def evaluate_source(
    source: ImageSource,
    protocol: WorldEvalProtocol,
    progress: Callable[[int, int], None] | None = None,
) -> WorldEvalResult:
    specs = world_prompts(protocol)
    jobs = [(spec, k) for spec in specs for k in range(protocol.images_per_prompt)]
    per_image = []
    for start in range(0, len(jobs), protocol.batch_size):
        batch = jobs[start : start + protocol.batch_size]
        prompts = [spec.text() for spec, _ in batch]
        seeds = [image_seed(protocol.seed, p, k) for p, (_, k) in zip(prompts, batch)]
        images = source.images(prompts, seeds)
        for (spec, k), seed, image in zip(batch, seeds, images):
            scores = judge(image, spec)
            per_image.append({"prompt": spec.text(), "category": spec.category, "index": k, "seed": seed, **scores.as_dict()})
        if progress:
            progress(min(start + len(batch), len(jobs)), len(jobs))
    result = WorldEvalResult(
        source=source.name,
        protocol=protocol,
        prompt_set_hash=prompt_set_hash([s.text() for s in specs]),
        per_image=per_image,
    )
    for category in CATEGORIES:
        rows = [r for r in per_image if r["category"] == category]
        if not rows:
            continue
        prompts = sorted({r["prompt"] for r in rows})
        mean, ci = {}, {}
        for key in SCORE_NAMES:
            summary = prompt_unit_summary([[r[key] for r in rows if r["prompt"] == p] for p in prompts])
            mean[key], ci[key] = summary.mean, summary.ci95
        result.categories[category] = CategoryResult(len(prompts), len(rows), mean, ci)
    return result
