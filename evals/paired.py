"""Paired comparison of two checkpoints on identical prompts and seeds (SPEC §6.4).

Two evaluations under one protocol give image ``k`` of prompt ``p`` the same seed
(``image_seed(seed, prompt, k)``), so checkpoint A's and checkpoint B's images start from
the same noise. With ``a[p][k]`` and ``b[p][k]`` their scores on ``n`` prompts of ``m``
images each::

    d_p   = mean_k a[p][k] − mean_k b[p][k]          the per-prompt difference
    Δ     = mean_p d_p                               the paired difference (A − B)
    s     = SD_p d_p  (n − 1 in the denominator)
    h     = t_{0.975, n−1} · s / √n                  95% half-width, Student t over prompts
    Δ ± h                                            the 95% interval

The prompt is the unit (images of a prompt share it and are averaged first), as in every
other interval here, and pairing cancels prompt difficulty and the sampling noise both
checkpoints share. ``h`` is also the *minimum detectable difference* of the evaluation:
a true difference smaller than about ``h`` cannot be told from zero with these prompts.
Every interval this module makes says which it is (:data:`INTERVAL_METHOD`).

Which evaluations pair (:func:`check_pairable`): the same metric@version, benchmark@version
and prompt-set hash, the same protocol seed and images per prompt, and then, from the
per-prompt side files, the same prompts in the same order with the same per-image seeds.
Anything else is refused with a one-line :class:`LpoError` naming the mismatch; CFG,
sampler or resolution may differ (that is what ``lpo compare`` compares).

Training seeds (:func:`seeded_difference`). One training run is one draw; the verdict on a
method takes its ``S`` runs (seeds) into account twice:

1. *pooled paired interval*: each prompt's difference is averaged over the seeds first
   (``d̄_p = mean_s d_{s,p}``), then Δ ± h over prompts as above;
2. *seed spread*: the per-seed Δ_s give a mean and a between-seed SD; their 95% interval
   is Student t over seeds (``t_{0.975, S−1} · SD / √S``) against the base model, Welch's
   two-sample interval for method A against method B (their seeds are independent runs).

The word is ``better`` / ``worse`` (``significant``) only when both intervals exclude 0
on the same side. When either includes 0 it is ``no detectable difference``. With one
seed the spread is unknown, so nothing is called significant; a pooled interval that
excludes 0 then reads ``better (1 seed, spread unknown)`` (or ``worse ...``).

Power (:func:`required_eval_size`). The per-prompt SD at ``m`` images is
``√(σ_p² + σ_i²/m)``: a prompt part that more images do not shrink and an image part that
they do. Given the SD measured at ``m0`` images (and, when known, the within-prompt SD
``σ_i`` of the per-image differences), it returns the prompts needed at each images-per-
prompt choice for a target half-width. Without ``σ_i`` it assumes image noise dominates
(σ_p = 0): the most optimistic case for adding images, said in the result.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lpo.core.errors import LpoError

LEVEL = 0.95
INTERVAL_METHOD = "paired per prompt (images averaged first), 95% Student t over prompts"
# The metric a table's Δ column and `lpo compare`'s win-rate use: the first of these a
# benchmark evaluated, else its first per-image metric.
PRIMARY_METRICS = ("pickscore", "world_utility")


# --------------------------------------------------------------------------- Student t


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4, exact)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/π)(θ + sinθ cosθ (1 + 2/3 cos² + 2·4/(3·5) cos⁴ + ...)), ν − 3 powers
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sinθ (1 + 1/2 cos² + 1·3/(2·4) cos⁴ + ...), ν − 2 powers
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_critical(df: int | float, level: float = LEVEL) -> float:
    """The ``t`` with P(|T| < t) = ``level`` for Student's t with ``df`` degrees of freedom.

    Fractional ``df`` (Welch) is rounded down, which widens the interval slightly.
    """
    df = int(math.floor(df + 1e-9))  # a Welch df of 3.9999999 is 4
    if df < 1:
        raise ValueError(f"Student t needs df >= 1, got {df}")
    if df > 10_000:
        df = 10_000  # within 1e-4 of the normal quantile
    low, high = 0.0, 1.0
    while _t_two_sided(high, df) < level:
        high *= 2
    for _ in range(80):  # bisection to double precision
        mid = (low + high) / 2
        low, high = (mid, high) if _t_two_sided(mid, df) < level else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class MeanInterval:
    """Mean of ``n`` values with its SD, standard error and Student-t 95% half-width (None below 2 values)."""

    mean: float
    sd: float | None
    stderr: float | None
    half_width: float | None
    n: int

    @property
    def ci95(self) -> tuple[float, float] | None:
        return None if self.half_width is None else (self.mean - self.half_width, self.mean + self.half_width)


def mean_interval(values: Sequence[float]) -> MeanInterval:
    """Mean ± t_{0.975, n−1}·SD/√n of ``values`` (the unit of each value is one prompt, or one seed)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to summarise")
    if x.size < 2:
        return MeanInterval(float(x.mean()), None, None, None, int(x.size))
    sd = float(x.std(ddof=1))
    se = sd / math.sqrt(x.size)
    return MeanInterval(float(x.mean()), sd, se, t_critical(x.size - 1) * se, int(x.size))


# --------------------------------------------------------------------------- one paired difference


def _word(low: float | None, high: float | None, higher_is_better: bool) -> str:
    if low is None or high is None or low <= 0 <= high:
        return "no detectable difference"
    return "better" if (low > 0) == higher_is_better else "worse"


@dataclass(frozen=True)
class PairedDifference:
    """A − B on identical prompts and seeds: Δ ± half-width (95% Student t over prompts)."""

    a: str
    b: str
    metric: str  # metric@version
    higher_is_better: bool
    mean: float
    sd: float | None  # SD of the per-prompt differences
    half_width: float | None
    n_prompts: int
    images_per_prompt: int
    within_sd: float | None  # SD of the per-image differences around their prompt's mean (None with 1 image)
    per_prompt: tuple[float, ...]
    method: str = INTERVAL_METHOD

    @property
    def ci95(self) -> tuple[float, float] | None:
        return None if self.half_width is None else (self.mean - self.half_width, self.mean + self.half_width)

    @property
    def word(self) -> str:
        """better / worse (A than B, in the metric's direction) when the interval excludes 0, else no detectable difference."""
        ci = self.ci95
        return _word(*(ci or (None, None)), self.higher_is_better)

    def format(self, digits: int = 3) -> str:
        """``+0.037 ± 0.036`` (half-width of the 95% interval), or the bare Δ with one prompt."""
        text = f"{self.mean:+.{digits}f}"
        return text if self.half_width is None else f"{text} ± {self.half_width:.{digits}f}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_prompt"] = list(self.per_prompt)
        data["ci95"] = None if self.ci95 is None else list(self.ci95)
        data["word"] = self.word
        return data


def paired_difference(
    scores_a: Sequence[Sequence[float]], scores_b: Sequence[Sequence[float]], higher_is_better: bool = True, *,
    a: str = "A", b: str = "B", metric: str = "",
) -> PairedDifference:
    """A − B from paired score grids [prompt][image] (image k of a prompt has one seed on both sides)."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"{len(scores_a)} prompts against {len(scores_b)}; pair the same prompts")
    if not len(scores_a):
        raise ValueError("no prompts to compare")
    diffs = []
    for row_a, row_b in zip(scores_a, scores_b):
        if len(row_a) != len(row_b) or not len(row_a):
            raise ValueError("each prompt needs the same, non-zero number of images on both sides")
        diffs.append(np.asarray(row_a, dtype=np.float64) - np.asarray(row_b, dtype=np.float64))
    sizes = {len(d) for d in diffs}
    m = min(sizes)
    per_prompt = [float(d.mean()) for d in diffs]
    within = None
    if m >= 2:  # pooled within-prompt variance of the per-image differences
        within = math.sqrt(float(np.mean([d.var(ddof=1) for d in diffs])))
    s = mean_interval(per_prompt)
    return PairedDifference(a, b, metric, higher_is_better, s.mean, s.sd, s.half_width, s.n, m, within, tuple(per_prompt))


# --------------------------------------------------------------------------- from records


def read_side_file(results_dir: Path, record) -> dict[str, Any]:
    """A record's per-prompt side file, checked against the sha256 the record carries."""
    if not record.per_prompt:
        raise LpoError(f"record {record.record_id} has no per-image scores (evaluated with --no-save); evaluate it again")
    path = Path(results_dir) / record.per_prompt
    if not path.is_file():
        raise LpoError(f"{path} (per-image scores of record {record.record_id}) is missing; restore the results folder")
    data = path.read_bytes()
    if record.per_prompt_sha256 and hashlib.sha256(data).hexdigest() != record.per_prompt_sha256:
        raise LpoError(f"{path} does not match the sha256 in record {record.record_id}; the file was changed")
    return json.loads(data)


def _label(record) -> str:
    ckpt = record.checkpoint
    return str(ckpt.get("label") or ckpt.get("spec") or ckpt.get("hash"))


def check_pairable(record_a, record_b) -> None:
    """Refuse (one-line LpoError naming the mismatch) two records that are not on one protocol."""
    a, b = _label(record_a), _label(record_b)
    checks = (
        ("metric", record_a.metric_key, record_b.metric_key),
        ("benchmark", record_a.benchmark_key, record_b.benchmark_key),
        ("prompt set", record_a.prompt_set_hash, record_b.prompt_set_hash),
        ("protocol seed", record_a.protocol.get("seed"), record_b.protocol.get("seed")),
        ("images per prompt", record_a.protocol.get("images_per_prompt"), record_b.protocol.get("images_per_prompt")),
    )
    for what, left, right in checks:
        if left != right:
            raise LpoError(f"cannot pair {a} with {b}: {what} {left} vs {right}; evaluate both under one protocol")


def paired_grids(side_a: dict[str, Any], side_b: dict[str, Any], key: str, a: str = "A", b: str = "B") -> tuple[list, list]:
    """The paired score grids of metric ``key``: the same prompts in the same order with the same per-image seeds."""
    for name, data in ((a, side_a), (b, side_b)):
        if key not in data["scores"]:
            raise LpoError(f"the evaluation of {name} has no scores for {key}; evaluate it with that metric")
        if key in data.get("per_prompt_metrics", []):
            raise LpoError(f"{key} scores a prompt's images together; a paired comparison needs per-image scores")
    if side_a["prompts"] != side_b["prompts"]:
        raise LpoError(f"cannot pair {a} with {b}: their side files hold other prompts; evaluate both on one prompt set")
    for i, (seeds_a, seeds_b) in enumerate(zip(side_a["seeds"], side_b["seeds"])):
        if seeds_a != seeds_b:
            raise LpoError(f"cannot pair {a} with {b}: prompt {i} ({side_a['prompts'][i][:40]!r}) has other image seeds")
    return side_a["scores"][key], side_b["scores"][key]


def paired_difference_records(results_dir: Path, record_a, record_b) -> PairedDifference:
    """A − B of two records of one metric, from their per-prompt side files (protocol checked first)."""
    check_pairable(record_a, record_b)
    a, b = _label(record_a), _label(record_b)
    grid_a, grid_b = paired_grids(read_side_file(results_dir, record_a), read_side_file(results_dir, record_b),
                                  record_a.metric_key, a, b)
    return paired_difference(grid_a, grid_b, record_a.higher_is_better, a=a, b=b, metric=record_a.metric_key)


def primary_metric(metric_keys: Sequence[str], per_image: Sequence[str] | None = None) -> str | None:
    """The metric@version a Δ column uses: pickscore, else world_utility, else the first per-image one."""
    candidates = list(per_image if per_image is not None else metric_keys)
    by_name = {k.split("@")[0]: k for k in candidates}
    for name in PRIMARY_METRICS:
        if name in by_name:
            return by_name[name]
    return candidates[0] if candidates else None


# --------------------------------------------------------------------------- training seeds


@dataclass(frozen=True)
class SeededDifference:
    """A − B over training seeds: the pooled paired interval and the between-seed spread (module docstring)."""

    pooled: PairedDifference  # per-prompt differences averaged over seeds, then Student t over prompts
    seed_means: tuple[float, ...]  # Δ of each of A's seeds against the common reference
    against_seed_means: tuple[float, ...]  # the same for B's seeds; () when B is the common reference
    seed_mean: float  # mean over A's seeds (minus the mean over B's)
    seed_sd: float | None  # between-seed SD of Δ (for A − B: √(SD_A² + SD_B²)); None below 2 seeds a side
    seed_half_width: float | None  # 95% half-width over seeds (Student t; Welch for two methods)
    seeds: tuple[int, int]  # seeds of A and of B (B = 1 for the base model)

    @property
    def significant(self) -> bool:
        return self.word in ("better", "worse")

    @property
    def word(self) -> str:
        paired = self.pooled.word
        if paired == "no detectable difference":
            return paired
        if self.seed_half_width is None:
            return f"{paired} (1 seed, spread unknown)"
        low, high = self.seed_mean - self.seed_half_width, self.seed_mean + self.seed_half_width
        return paired if _word(low, high, self.pooled.higher_is_better) == paired else "no detectable difference"

    def as_dict(self) -> dict[str, Any]:
        return {"pooled": self.pooled.as_dict(), "seed_means": list(self.seed_means),
                "against_seed_means": list(self.against_seed_means), "seed_mean": self.seed_mean,
                "seed_sd": self.seed_sd, "seed_half_width": self.seed_half_width, "seeds": list(self.seeds),
                "word": self.word, "significant": self.significant}


def _pool(per_seed: Sequence[PairedDifference]) -> tuple[float, ...]:
    lengths = {len(d.per_prompt) for d in per_seed}
    if len(lengths) != 1:
        raise LpoError(f"the seeds were evaluated on different prompt counts ({sorted(lengths)}); evaluate all on one protocol")
    return tuple(float(x) for x in np.mean([d.per_prompt for d in per_seed], axis=0))


def seeded_difference(per_seed: Sequence[PairedDifference], against: Sequence[PairedDifference] | None = None) -> SeededDifference:
    """Δ over training seeds.

    ``per_seed``: one paired difference per seed of method A against one common B (the
    base model), all on the same prompts. With ``against`` (method B's seeds against the
    same common reference), the result is A − B: per prompt the seed-pooled Δ_A − Δ_B
    (the reference cancels), and Welch's interval over the two sets of seed means.
    """
    if not per_seed or (against is not None and not against):
        raise ValueError("each side needs at least one seed")
    first = per_seed[0]
    pooled_a = _pool(per_seed)
    seeds_a = [d.mean for d in per_seed]
    if against is None:
        per_prompt, seeds_b, b = pooled_a, [], first.b
        spread = mean_interval(seeds_a)
        seed_mean, seed_sd, seed_half = spread.mean, spread.sd, spread.half_width
    else:
        pooled_b = _pool(against)
        if len(pooled_b) != len(pooled_a):
            raise LpoError("the two methods were evaluated on different prompt counts; evaluate both on one protocol")
        per_prompt = tuple(x - y for x, y in zip(pooled_a, pooled_b))
        seeds_b, b = [d.mean for d in against], against[0].a
        seed_mean = float(np.mean(seeds_a) - np.mean(seeds_b))
        seed_sd = seed_half = None
        if len(seeds_a) >= 2 and len(seeds_b) >= 2:  # Welch: unequal variances, Welch–Satterthwaite df
            va, vb = np.var(seeds_a, ddof=1) / len(seeds_a), np.var(seeds_b, ddof=1) / len(seeds_b)
            se = math.sqrt(va + vb)
            seed_sd = math.sqrt(np.var(seeds_a, ddof=1) + np.var(seeds_b, ddof=1))
            if se > 0:
                df = (va + vb) ** 2 / (va**2 / (len(seeds_a) - 1) + vb**2 / (len(seeds_b) - 1))
                seed_half = t_critical(df) * se
            else:
                seed_half = 0.0
    s = mean_interval(per_prompt)
    label_a = first.a if len(per_seed) == 1 else f"{first.a} ({len(per_seed)} seeds)"
    pooled = PairedDifference(label_a, b, first.metric, first.higher_is_better, s.mean, s.sd, s.half_width, s.n,
                              first.images_per_prompt, first.within_sd, per_prompt)
    return SeededDifference(pooled, tuple(seeds_a), tuple(seeds_b), seed_mean, seed_sd, seed_half,
                            (len(per_seed), len(seeds_b) or 1))


# --------------------------------------------------------------------------- power


@dataclass(frozen=True)
class EvalSize:
    """An evaluation size and the 95% half-width (minimum detectable difference) it is predicted to give."""

    prompts: int
    images_per_prompt: int
    per_prompt_sd: float  # predicted SD of the per-prompt difference at this many images
    half_width: float
    assumption: str

    @property
    def images(self) -> int:
        return self.prompts * self.images_per_prompt

    def format(self) -> str:
        return f"{self.prompts} prompts × {self.images_per_prompt} images (±{self.half_width:.3f})"


def minimum_detectable_difference(sd: float, n_prompts: int) -> float:
    """The paired 95% half-width t_{0.975, n−1} · sd / √n of ``n_prompts`` prompts."""
    if n_prompts < 2:
        raise LpoError(f"a half-width needs at least 2 prompts, got {n_prompts}")
    return t_critical(n_prompts - 1) * sd / math.sqrt(n_prompts)


def required_eval_size(
    sd: float, target_half_width: float, *, measured_images_per_prompt: int = 2, within_sd: float | None = None,
    images_per_prompt: Sequence[int] = (1, 2, 4, 8), max_prompts: int = 1_000_000,
) -> list[EvalSize]:
    """Prompts needed at each images-per-prompt choice for a 95% half-width <= ``target_half_width``.

    ``sd``: the per-prompt difference SD measured at ``measured_images_per_prompt`` images
    (SPEC §6.4: about 0.15 in utility at 2 images in the first world). ``within_sd``: the
    SD of the per-image differences within a prompt (:attr:`PairedDifference.within_sd`);
    without it image noise is assumed to dominate. Sorted by total images, fewest first.
    """
    if sd < 0 or target_half_width <= 0 or measured_images_per_prompt < 1:
        raise LpoError(f"need sd >= 0, a target half-width > 0 and >= 1 measured image; got sd={sd}, "
                       f"target={target_half_width}, images={measured_images_per_prompt}")
    if within_sd is None:
        prompt_var, image_var = 0.0, sd**2 * measured_images_per_prompt
        assumption = "image noise dominates (no within-prompt SD given): the most images help"
    else:
        image_var = within_sd**2
        prompt_var = max(sd**2 - image_var / measured_images_per_prompt, 0.0)
        assumption = f"prompt SD {math.sqrt(prompt_var):.3g} + image SD {within_sd:.3g}/√m"
    out = []
    for m in sorted(set(images_per_prompt)):
        sd_m = math.sqrt(prompt_var + image_var / m)
        n = max(2, math.ceil((1.96 * sd_m / target_half_width) ** 2))  # the normal answer, then step up for t
        while n <= max_prompts and minimum_detectable_difference(sd_m, n) > target_half_width:
            n += 1
        if n > max_prompts:
            continue
        out.append(EvalSize(n, m, sd_m, minimum_detectable_difference(sd_m, n), assumption))
    return sorted(out, key=lambda e: (e.images, e.images_per_prompt))
