"""The world's Pick-a-Pic: image pairs from the world base model, labelled by the
simulated annotators (SPEC §2).

For each of ``num_prompts`` train prompts (drawn with ``seed``), ``pairs_per_prompt``
pairs of images are sampled from the base model, image ``k`` of a prompt with seed
``image_seed(seed, prompt, k)`` (pair j = images 2j and 2j+1). Both images are judged,
and a randomly drawn annotator of the pool labels the pair.

Like Pick-a-Pic, whose two images of a prompt often come from different models and
guidance scales, each image may come from its own *source*: a (guidance scale, DDIM
steps) setting drawn per image from ``sources`` (:data:`PICKAPIC_LIKE_SOURCES` mixes
weak and strong guidance and short and full schedules). The annotators see the true
utility through biases and noise, so some labels disagree with the true ordering; the
agreement rate (and its complement, the label-noise rate) is reported per annotator
kind and recorded in the pairs file's sidecar.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lpo.core.config import config_to_dict
from lpo.core.errors import LpoError
from lpo.sampling.generate import generate_images, image_seed
from lpo.core.hashing import prompt_set_hash
from lpo.pairs.format import TIE, PreferencePair, check_pairs_path, pair_counts, save_pairs
from lpo.world.annotators import AnnotatorPoolConfig, label_pairs
from lpo.world.grammar import SPLIT_NAMES, WORLD_VERSION, make_splits
from lpo.world.judges import judge

WORLD_SOURCE = "world"


@dataclass(frozen=True)
class WorldPairsConfig:
    num_prompts: int = 64
    pairs_per_prompt: int = 4
    seed: int = 0
    prompt_split: str = "train"
    # (guidance scale, DDIM steps) per source; each image draws one uniformly.
    sources: tuple[tuple[float, int], ...] = ((5.0, 20),)
    eta: float = 1.0  # the sampler LPO/SPO train with; the LRM then sees the same kind of images
    batch_size: int = 32  # images per pipeline call; recorded, since batching moves pixels by ±1
    annotators: AnnotatorPoolConfig = field(default_factory=AnnotatorPoolConfig)

    def __post_init__(self) -> None:
        for name in ("num_prompts", "pairs_per_prompt", "batch_size"):
            if getattr(self, name) < 1:
                raise LpoError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.sources or any(len(s) != 2 or s[0] < 1 or int(s[1]) < 1 for s in self.sources):
            raise LpoError(
                f"sources must be (guidance scale >= 1, steps >= 1) pairs, got {self.sources!r}; e.g. ((5.0, 20), (2.0, 10))"
            )
        if self.prompt_split not in SPLIT_NAMES:
            raise LpoError(f"unknown prompt split {self.prompt_split!r}; known: {', '.join(SPLIT_NAMES)}")
        if not 0.0 <= self.eta <= 1.0:
            raise LpoError(f"eta must be in [0, 1], got {self.eta}")


# A Pick-a-Pic-like mix of generation settings: guidance from weak to strong, short and
# full schedules (Pick-a-Pic pairs images of several models and guidance scales).
PICKAPIC_LIKE_SOURCES: tuple[tuple[float, int], ...] = ((1.5, 20), (3.0, 20), (5.0, 20), (7.5, 20), (3.0, 8), (7.5, 8))


# Named source mixes (``lpo pairs --sources``, ``lpo bench --set pair_sources=...``).
SOURCE_MIXES: dict[str, tuple[tuple[float, int], ...]] = {
    "single": ((5.0, 20),),  # the first world's pairs: one model, one setting
    "pickapic": PICKAPIC_LIKE_SOURCES,
}


def source_mix(name: str) -> tuple[tuple[float, int], ...]:
    if name not in SOURCE_MIXES:
        raise LpoError(f"unknown pair source mix {name!r}; known: {', '.join(SOURCE_MIXES)}")
    return SOURCE_MIXES[name]


def image_source(config: WorldPairsConfig, prompt: str, index: int) -> int:
    """Which of ``config.sources`` image ``index`` of ``prompt`` comes from (seeded)."""
    if len(config.sources) == 1:
        return 0
    return int(np.random.default_rng((config.seed, image_seed(config.seed, prompt, index), 7)).integers(len(config.sources)))


@dataclass
class WorldPairsOutput:
    """pairs: in prompt order. utilities: (N, 2) true utility of image_0 and image_1.
    sources: (N, 2) index into ``config.sources`` of each image."""

    pairs: list[PreferencePair]
    utilities: np.ndarray
    config: WorldPairsConfig
    model: str
    prompts: list[str]
    seconds: float = 0.0
    sources: np.ndarray | None = None

    def label_agreement(self) -> dict[str, Any]:
        """How often a decisive label picks the image of higher true utility.

        Ties and pairs of exactly equal utility have no true ordering and are left out
        of the rate (and counted). ``noise_rate`` = 1 − ``agreement``.
        """
        labels = np.array([p.label_0 for p in self.pairs])
        kinds = np.array([p.annotator_kind or "" for p in self.pairs])
        u0, u1 = self.utilities[:, 0], self.utilities[:, 1]
        scored = (labels != TIE) & (u0 != u1)
        agree = ((labels == 1.0) & (u0 > u1)) | ((labels == 0.0) & (u1 > u0))

        def rate(mask: np.ndarray) -> dict[str, Any]:
            n = int((mask & scored).sum())
            k = int((mask & scored & agree).sum())
            return {"scored": n, "agree": k, "agreement": k / n if n else None, "noise_rate": 1 - k / n if n else None}

        everyone = np.ones(len(self.pairs), dtype=bool)
        return {
            **rate(everyone),
            "ties": int((labels == TIE).sum()),
            "equal_utility": int(((labels != TIE) & (u0 == u1)).sum()),
            "by_annotator_kind": {k: rate(kinds == k) for k in sorted(set(kinds.tolist()))},
        }

    def provenance(self) -> dict[str, Any]:
        """What the pairs file's sidecar records about how the pairs were made."""
        from lpo.sampling.generate import resolve_model_name

        folder = Path(resolve_model_name(self.model))
        marker = folder / "lpo_world.json"
        fingerprint = json.loads(marker.read_text()).get("fingerprint") if marker.is_file() else None
        return {
            "generator": "lpo.world.pairs",
            "model": self.model,
            "model_folder": str(folder),
            "model_fingerprint": fingerprint,
            "world_version": WORLD_VERSION,
            "config": config_to_dict(self.config),
            "prompt_set_hash": prompt_set_hash(self.prompts),
            "label_agreement": self.label_agreement(),
            "images_per_source": {
                f"cfg{g:g}-steps{n}": int((self.sources == i).sum()) for i, (g, n) in enumerate(self.config.sources)
            } if self.sources is not None else None,
            "seconds": round(self.seconds, 2),
        }


def true_order_labels(pairs: Sequence[PreferencePair], judge_fn: Callable = judge) -> list[float]:
    """label_0 by the hidden true utility of the two images (1.0, 0.0, or 0.5 when equal):
    what a perfect, noise-free annotator would say. ``judge_fn``: another judges version's
    ``judge`` (the world study compares versions)."""
    labels = []
    for pair in pairs:
        u0, u1 = judge_fn(pair.image_0, pair.prompt).utility, judge_fn(pair.image_1, pair.prompt).utility
        labels.append(1.0 if u0 > u1 else 0.0 if u0 < u1 else TIE)
    return labels


def draw_prompts(config: WorldPairsConfig) -> list[str]:
    """``num_prompts`` distinct prompts of ``prompt_split``, drawn with ``seed``."""
    specs = make_splits().get(config.prompt_split)
    if config.num_prompts > len(specs):
        raise LpoError(f"num_prompts={config.num_prompts} but the {config.prompt_split} split has {len(specs)} prompts")
    return [s.text() for s in random.Random(config.seed).sample(specs, config.num_prompts)]


def generate_world_pairs(
    model: str = "world",
    config: WorldPairsConfig | None = None,
    *,
    pipeline=None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> WorldPairsOutput:
    """Sample, judge and label ``num_prompts × pairs_per_prompt`` pairs of a world model.

    pipeline: an already-loaded pipeline of ``model`` (else it is loaded on ``device``).
    progress: called with (images done, images total).
    """
    config = config or WorldPairsConfig()
    start_time = time.perf_counter()
    if pipeline is None:
        from lpo.sampling.generate import load_pipeline

        pipeline, components = load_pipeline(model, device=device)
        if components.kind != "world":
            raise LpoError(
                f"{model} is a {components.kind} model; world pairs need a world model (the judges read world images). "
                "For real models load Pick-a-Pic with lpo.pairs.format.load_pairs"
            )

    # 1. Prompts and per-image seeds: pair j of a prompt is images 2j and 2j + 1.
    prompts = draw_prompts(config)
    jobs = [(p, k) for p in prompts for k in range(2 * config.pairs_per_prompt)]

    # 2. Generate and judge, in batches of one source each (a pipeline call has one
    #    guidance scale and schedule).
    image_sources = np.array([image_source(config, p, k) for p, k in jobs])
    images: list = [None] * len(jobs)
    scores: list = [None] * len(jobs)
    done = 0
    for source, (guidance_scale, steps) in enumerate(config.sources):
        todo = np.flatnonzero(image_sources == source)
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            batch_images = generate_images(
                pipeline,
                [jobs[i][0] for i in batch],
                [image_seed(config.seed, *jobs[i]) for i in batch],
                num_inference_steps=int(steps),
                guidance_scale=float(guidance_scale),
                eta=config.eta,
            )
            for i, image in zip(batch, batch_images):
                images[i] = image
                scores[i] = judge(image, jobs[i][0])
            done += len(batch)
            if progress:
                progress(done, len(jobs))

    # 3. Label: PairLabel.label 0.0 means the FIRST image won, so label_0 = 1 − label.
    labels = label_pairs(scores[0::2], scores[1::2], config.annotators, seed=config.seed)
    pairs = [
        PreferencePair(
            pair_id=f"{WORLD_SOURCE}-s{config.seed}-{n:06d}",
            prompt=jobs[2 * n][0],
            image_0=images[2 * n],
            image_1=images[2 * n + 1],
            label_0=1.0 - label.label,
            source=WORLD_SOURCE,
            annotator_kind=label.annotator_kind,
        )
        for n, label in enumerate(labels)
    ]
    utilities = np.array([[scores[2 * n].utility, scores[2 * n + 1].utility] for n in range(len(pairs))])
    return WorldPairsOutput(
        pairs, utilities, config, model, prompts, time.perf_counter() - start_time, image_sources.reshape(-1, 2)
    )


def run_pairs(
    model: str,
    out: Path,
    num_prompts: int,
    pairs_per_prompt: int,
    seed: int,
    console=None,
    *,
    steps: int = 20,
    guidance_scale: float = 5.0,
    eta: float = 1.0,
    batch_size: int = 32,
    device: str = "auto",
    prompt_split: str = "train",
    sources: tuple[tuple[float, int], ...] | None = None,
    annotators: AnnotatorPoolConfig | None = None,
) -> dict[str, Any]:
    """`lpo pairs`: generate and label world pairs, save them; returns a summary for display."""
    from lpo.core.progress import count_progress

    out = check_pairs_path(out)  # fail before generating, not after
    config = WorldPairsConfig(
        num_prompts=num_prompts,
        pairs_per_prompt=pairs_per_prompt,
        seed=seed,
        sources=sources or ((guidance_scale, steps),),
        eta=eta,
        batch_size=batch_size,
        prompt_split=prompt_split,
        **({"annotators": annotators} if annotators is not None else {}),
    )
    with count_progress(console, f"pairs from {model}") as progress:
        output = generate_world_pairs(model, config, device=device, progress=progress)
    sidecar = save_pairs(output.pairs, out, provenance=output.provenance())
    agreement = sidecar["provenance"]["label_agreement"]
    return {
        "out": str(out),
        "sidecar": str(out) + ".json",
        **pair_counts(output.pairs),
        "label_agreement": agreement["agreement"],
        "label_noise_rate": agreement["noise_rate"],
        "seconds": round(output.seconds, 1),
    }
