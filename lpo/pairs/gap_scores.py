"""MPCF's gap scorers and the cached scoring of every pair's images (LPO paper; SPEC §4.2).

A gap scorer is anything with the :class:`GapScorer` protocol; :data:`GAP_SCORERS` names
them (the real-mode ones wrap evaluation metrics, the world's are registered by
``lpo.world.install()``). The filter itself, which turns these scores into gaps and keeps
or drops pairs, is :mod:`lpo.pairs.mpcf`.

Scoring every image is the expensive part in real mode (VQAScore runs an 11 B
model), so ``compute_gap_scores`` scores each distinct image once per scorer and caches
the scores in ``<cache_dir>/<scorer name>@<version>.json``, keyed by pair id and image
index and guarded by a fingerprint of the image and its prompt; a new scorer, a bumped
version or a changed image is scored, nothing else is.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from lpo.core.errors import LpoError
from lpo.core.io import atomic_write_json
from lpo.pairs.format import PreferencePair
from lpo.core.registry import Registry

ROLES: tuple[str, ...] = ("aesthetic", "clip", "vqa")
CACHE_FORMAT = 1
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # scorer names and versions name cache files


@runtime_checkable
class GapScorer(Protocol):
    """Anything that scores images for their prompts; higher is better.

    ``name`` and ``version`` name the cache file (bump the version on any scoring
    change). ``score`` takes a batch of (H, W, 3) uint8 images and the prompt of each
    and returns a float array of shape (len(images),). Real-mode scorers (LAION
    aesthetic, CLIP-ViT-H-14 score, VQAScore) are thin wrappers around the evaluation
    metrics that expose these three members; nothing else is required.
    """

    name: str
    version: str

    def score(self, images: list[np.ndarray], prompts: list[str]) -> np.ndarray: ...


# Factories, so that a scorer's weights load only when it is built. The world's scorers
# (world-aesthetic, world-clip, world-vqa) are registered by lpo.world.install().
GAP_SCORERS: Registry[Callable[[], GapScorer]] = Registry("gap scorer")


class MetricGapScorerFactory:
    """Builds a real-mode gap scorer from an evaluation metric (lpo.evals.metrics.gap).

    Imported lazily so that world-mode filtering never touches transformers' CLIP code;
    weights load when the factory is called, on CUDA when one is available.
    """

    def __init__(self, gap_name: str):
        self.gap_name = gap_name

    def __call__(self, weights: str | None = None, processor: str | None = None) -> GapScorer:
        import torch

        from lpo.evals.metrics.base import MetricSpec
        from lpo.evals.metrics.gap import gap_scorer

        cuda = torch.cuda.is_available()
        spec = MetricSpec(
            weights=weights, processor=processor,
            device="cuda" if cuda else "cpu", dtype="float16" if cuda else "float32",
        )
        return gap_scorer(self.gap_name, spec)


def _vqascore_unavailable() -> GapScorer:
    raise LpoError(
        "the VQAScore gap scorer (clip-flan-t5-xxl, 11B) is not built into lpo; pick another alignment "
        "scorer with --set vqa_scorer=NAME (a gap scorer or an evaluation metric, e.g. image_reward)"
    )


# Real mode (SPEC §4.2): the evaluation metrics fill the aesthetic and CLIP roles.
GAP_SCORERS.add("laion-aesthetic", MetricGapScorerFactory("laion-aesthetic"))
GAP_SCORERS.add("clip-score", MetricGapScorerFactory("clip-score"))
GAP_SCORERS.add("vqascore", _vqascore_unavailable)


def gap_scorer_factory(name: str) -> Callable[[], GapScorer]:
    """A registered gap scorer, or else any evaluation metric by its registry name."""
    if name in GAP_SCORERS:
        return GAP_SCORERS.get(name)
    from lpo.evals.metrics import METRICS

    if name in METRICS:
        return MetricGapScorerFactory(name)
    known = ", ".join(GAP_SCORERS.names())
    raise LpoError(f"unknown gap scorer {name!r}; known: {known}, or any metric: {', '.join(METRICS.names())}")


@dataclass(frozen=True)
class GapScores:
    """Scores of both images of every pair under each role's scorer.

    values: role -> (N, 2) float64, column j = score of image_j, rows in ``pair_ids`` order.
    scorers: role -> "name@version".
    num_scored: role -> images actually scored by this call (cache misses).
    """

    pair_ids: tuple[str, ...]
    values: dict[str, np.ndarray]
    scorers: dict[str, str]
    num_scored: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.pair_ids)
        for role, values in self.values.items():
            if role not in ROLES:
                raise ValueError(f"unknown MPCF role {role!r}; roles: {', '.join(ROLES)}")
            if np.shape(values) != (n, 2):
                raise ValueError(f"scores of role {role!r} have shape {np.shape(values)}, expected ({n}, 2)")
            if role not in self.scorers:
                raise ValueError(f"scores of role {role!r} do not say which scorer made them")

    def rows(self, pairs: Sequence[PreferencePair], role: str) -> np.ndarray:
        """(len(pairs), 2) scores of ``pairs``, looked up by pair id."""
        if role not in self.values:
            raise LpoError(f"no {role} scores; compute them with a scorer for every role ({', '.join(ROLES)})")
        index = {pid: i for i, pid in enumerate(self.pair_ids)}
        missing = [p.pair_id for p in pairs if p.pair_id not in index]
        if missing:
            raise LpoError(f"no gap scores for {len(missing)} pairs (first: {missing[0]!r}); run compute_gap_scores on these pairs")
        return np.asarray(self.values[role], dtype=np.float64)[[index[p.pair_id] for p in pairs]]


def image_fingerprint(image: np.ndarray, prompt: str) -> str:
    """Short hash of an image and its prompt: a cached score is reused only for both unchanged."""
    image = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(prompt.encode())
    digest.update(f"|{image.shape}|{image.dtype}|".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def compute_gap_scores(
    pairs: Sequence[PreferencePair],
    scorers: Mapping[str, GapScorer],
    cache_dir: Path | None = None,
    batch_size: int = 64,
    flush_every: int = 100,
    progress: Callable[[str, int, int], None] | None = None,
) -> GapScores:
    """Score both images of every pair with each role's scorer, reusing cached scores.

    scorers: role ("aesthetic", "clip", "vqa"; a subset is fine) -> GapScorer.
    cache_dir: where ``<name>@<version>.json`` files live; None scores everything.
    batch_size: images per ``score`` call. flush_every: batches between cache writes.
    progress: optional ``progress(role, done, total)`` over the images to score.
    """
    # 1. Check the inputs: known roles, scorers honouring the protocol, unique pair ids.
    unknown = sorted(set(scorers) - set(ROLES))
    if unknown:
        raise LpoError(f"unknown MPCF role {unknown[0]!r}; roles: {', '.join(ROLES)}")
    if batch_size < 1 or flush_every < 1:
        raise ValueError(f"batch_size and flush_every must be >= 1, got {batch_size} and {flush_every}")
    for role, scorer in scorers.items():
        _check_scorer(role, scorer)
    seen: set[str] = set()
    for pair in pairs:
        if pair.pair_id in seen:
            raise LpoError(f"duplicate pair_id {pair.pair_id!r}: gap scores are cached by pair id, so ids must be unique")
        seen.add(pair.pair_id)

    # 2. Fingerprint every image once; all scorers share them.
    fingerprints = [(image_fingerprint(p.image_0, p.prompt), image_fingerprint(p.image_1, p.prompt)) for p in pairs]

    values: dict[str, np.ndarray] = {}
    num_scored: dict[str, int] = {}
    for role, scorer in scorers.items():
        # 3. Cached entries whose fingerprint still matches are reused.
        path = None if cache_dir is None else Path(cache_dir) / f"{scorer.name}@{scorer.version}.json"
        cache = _load_cache(path, scorer) if path is not None else {}
        scores = np.full((len(pairs), 2), np.nan)
        todo: dict[str, list[tuple[int, int]]] = {}  # fingerprint -> (pair index, image index)
        for i, pair in enumerate(pairs):
            entry = cache.get(pair.pair_id) or [None, None]
            for j in (0, 1):
                if entry[j] is not None and entry[j][0] == fingerprints[i][j]:
                    scores[i, j] = entry[j][1]
                else:
                    todo.setdefault(fingerprints[i][j], []).append((i, j))

        # 4. Score each distinct missing image once, in batches; flush the cache now and then.
        items = list(todo.items())
        for b, start in enumerate(range(0, len(items), batch_size)):
            batch = items[start : start + batch_size]
            images = [_image(pairs[places[0][0]], places[0][1]) for _, places in batch]
            prompts = [pairs[places[0][0]].prompt for _, places in batch]
            batch_scores = _check_output(scorer, scorer.score(images, prompts), len(batch))
            for (fingerprint, places), value in zip(batch, batch_scores):
                for i, j in places:
                    scores[i, j] = value
                    entry = cache.setdefault(pairs[i].pair_id, [None, None])
                    entry[j] = [fingerprint, float(value)]
            if path is not None and (b + 1) % flush_every == 0:
                _save_cache(path, scorer, cache)
            if progress is not None:
                progress(role, min(start + batch_size, len(items)), len(items))
        if path is not None and items:
            _save_cache(path, scorer, cache)
        values[role] = scores
        num_scored[role] = len(items)
    return GapScores(
        pair_ids=tuple(p.pair_id for p in pairs),
        values=values,
        scorers={role: f"{s.name}@{s.version}" for role, s in scorers.items()},
        num_scored=num_scored,
    )


def _image(pair: PreferencePair, index: int) -> np.ndarray:
    return pair.image_0 if index == 0 else pair.image_1


def _check_scorer(role: str, scorer: Any) -> None:
    if not isinstance(scorer, GapScorer):
        raise TypeError(f"the {role} scorer {scorer!r} lacks the GapScorer members name, version and score(images, prompts)")
    for attr in ("name", "version"):
        value = getattr(scorer, attr)
        if not isinstance(value, str) or not _SAFE_NAME.match(value):
            raise ValueError(f"the {role} scorer's {attr} {value!r} must be letters, digits, '.', '_', '+' or '-' (it names a cache file)")


def _check_output(scorer: GapScorer, output: Any, n: int) -> np.ndarray:
    scores = np.asarray(output, dtype=np.float64)
    if scores.shape != (n,):
        raise ValueError(f"gap scorer {scorer.name}@{scorer.version} returned shape {scores.shape} for {n} images; expected ({n},)")
    if not np.isfinite(scores).all():
        raise ValueError(f"gap scorer {scorer.name}@{scorer.version} returned a non-finite score: {scores[~np.isfinite(scores)][0]}")
    return scores


def _load_cache(path: Path, scorer: GapScorer) -> dict[str, list]:
    """pair_id -> [[fingerprint, score] | None for image 0, same for image 1]."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if data["scorer"] != scorer.name or data["version"] != scorer.version or data["format"] != CACHE_FORMAT:
            raise ValueError(f"it holds {data['scorer']}@{data['version']} (format {data['format']})")
        return dict(data["entries"])
    except (ValueError, KeyError, TypeError) as err:
        raise LpoError(f"gap-score cache {path} is unreadable ({err}); delete it to rescore") from None


def _save_cache(path: Path, scorer: GapScorer, cache: dict[str, list]) -> None:
    atomic_write_json(path, {"format": CACHE_FORMAT, "scorer": scorer.name, "version": scorer.version, "entries": cache})
