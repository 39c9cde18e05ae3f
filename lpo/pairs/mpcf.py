"""Multi-Preference Consistent Filtering (MPCF) of preference pairs (LPO paper; SPEC §4.2).

MPCF keeps a labelled pair only when three independent scorers agree, up to a margin,
with the annotator about which image is better; ties are kept only when the scorers
also call them close. This module holds the filter and its report; the scorers'
interface, registry and the cached scoring of every image are :mod:`lpo.pairs.gap_scores`.

Paper notation -> code:
  scorers        roles ``aesthetic`` (LAION aesthetic predictor), ``clip`` (CLIP score,
                 CLIP-ViT-H-14-laion2B) and ``vqa`` (VQAScore); any object with the
                 ``GapScorer`` protocol can fill a role
  G_A, G_C, G_V  ``MPCFResult.gaps["aesthetic" | "clip" | "vqa"]``: for a decisive pair
                 scale·(score(winner) − score(loser)); for a tie scale·(score(image_0) −
                 score(image_1)); ``scale`` is the role's ``MPCFConfig.*_scale``, so gaps
                 are in the units of the thresholds
  strategy s     keep a decisive pair iff G_A ≥ aesthetic_min[s−1], G_C ≥ clip_min and
                 G_V ≥ vqa_min (paper: aesthetic_min = 0, −0.5, −1; the others 0)
  tie rule       keep a tie iff |G_A| ≤ tie_aesthetic, |G_C| ≤ tie_clip, |G_V| ≤ tie_vqa
                 (paper: 0.2, 0.03, 0.07)

Comparisons are inclusive up to ``EDGE_TOLERANCE`` so that a gap equal to a threshold
in decimal (0.53 − 0.50 against 0.03) is not lost to floating-point rounding.
Scoring every image is the expensive part in real mode (VQAScore runs an 11 B model), so
:func:`~lpo.pairs.gap_scores.compute_gap_scores` scores each distinct image once per scorer and
caches the scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from lpo.core.errors import LpoError
from lpo.pairs.gap_scores import (
    ROLES,
    GapScorer,
    GapScores,
    MetricGapScorerFactory,
    compute_gap_scores,
    gap_scorer_factory,
)
from lpo.pairs.format import TIE, PreferencePair

GAP_SYMBOLS: dict[str, str] = {"aesthetic": "G_A", "clip": "G_C", "vqa": "G_V"}
STRATEGIES: tuple[str, ...] = ("none", "1", "2", "3")
EDGE_TOLERANCE = 1e-9


# -------------------------------------------------------------------------- config


@dataclass(frozen=True)
class MPCFConfig:
    """Which scorers fill the three roles and the thresholds of each rule.

    Defaults are the paper's (LAION-aesthetic units for G_A, cosine for G_C, VQAScore's
    probability for G_V); ``mpcf_preset("world")`` holds the world's.
    """

    strategy: Literal["none", "1", "2", "3"] = field(
        default="2", metadata={"help": "none (no filtering), 1, 2 (the paper's default) or 3 (loosest aesthetic bound)."}
    )
    aesthetic_scorer: str = field(default="laion-aesthetic", metadata={"help": "GAP_SCORERS name for the aesthetic role (G_A)."})
    clip_scorer: str = field(default="clip-score", metadata={"help": "GAP_SCORERS name for the CLIP-score role (G_C)."})
    vqa_scorer: str = field(default="vqascore", metadata={"help": "GAP_SCORERS name for the VQA-alignment role (G_V)."})
    aesthetic_min: tuple[float, float, float] = field(
        default=(0.0, -0.5, -1.0), metadata={"help": "Lower bound on G_A for strategies 1, 2, 3 (non-increasing)."}
    )
    clip_min: float = field(default=0.0, metadata={"help": "Lower bound on G_C (strategies 1-3)."})
    vqa_min: float = field(default=0.0, metadata={"help": "Lower bound on G_V (strategies 1-3)."})
    tie_aesthetic: float = field(default=0.2, metadata={"help": "A tie is kept only if |G_A| <= this."})
    tie_clip: float = field(default=0.03, metadata={"help": "A tie is kept only if |G_C| <= this."})
    tie_vqa: float = field(default=0.07, metadata={"help": "A tie is kept only if |G_V| <= this."})
    keep_ties: bool = field(default=True, metadata={"help": "Keep ties (those passing the tie rule, or all under strategy none)."})
    aesthetic_scale: float = field(
        default=1.0, metadata={"help": "Gaps of the aesthetic scorer are multiplied by this to reach threshold units."}
    )
    clip_scale: float = field(
        default=1.0, metadata={"help": "Same for the CLIP scorer (e.g. 0.01 for a metric that reports 100·cos)."}
    )
    vqa_scale: float = field(default=1.0, metadata={"help": "Same for the VQA scorer."})

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        for role in ROLES:
            name = getattr(self, f"{role}_scorer")
            if not isinstance(name, str) or not name:
                raise ValueError(f"{role}_scorer must be a scorer name, got {name!r}")
        bounds = tuple(self.aesthetic_min)
        if len(bounds) != 3 or not all(math.isfinite(b) for b in bounds):
            raise ValueError(f"aesthetic_min must be 3 finite bounds (strategies 1, 2, 3), got {self.aesthetic_min}")
        if not bounds[0] >= bounds[1] >= bounds[2]:
            raise ValueError(f"aesthetic_min must be non-increasing so that strategy 1 ⊆ 2 ⊆ 3, got {self.aesthetic_min}")
        for name in ("clip_min", "vqa_min"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        for name in ("tie_aesthetic", "tie_clip", "tie_vqa"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite value >= 0, got {value}")
        for name in ("aesthetic_scale", "clip_scale", "vqa_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite value > 0, got {value}")
        if not isinstance(self.keep_ties, bool):
            raise ValueError(f"keep_ties must be true or false, got {self.keep_ties!r}")

    def scorer_names(self) -> dict[str, str]:
        return {role: getattr(self, f"{role}_scorer") for role in ROLES}

    def scale(self, role: str) -> float:
        return getattr(self, f"{role}_scale")

    def minimum(self, role: str, strategy: str) -> float:
        """Lower bound on the role's gap under strategy "1", "2" or "3"."""
        if role == "aesthetic":
            return self.aesthetic_min[int(strategy) - 1]
        return getattr(self, f"{role}_min")

    def tie_max(self, role: str) -> float:
        return getattr(self, f"tie_{role}")

    def describe(self, strategy: str | None = None) -> str:
        """The rule as text, e.g. 'G_A ≥ -0.5, G_C ≥ 0, G_V ≥ 0; ties |G_A| ≤ 0.2, ...'."""
        strategy = self.strategy if strategy is None else strategy
        ties = ", ".join(f"|{GAP_SYMBOLS[r]}| ≤ {self.tie_max(r):g}" for r in ROLES)
        ties = f"ties {ties}" if self.keep_ties else "ties dropped"
        if strategy == "none":
            return "no gap rule; " + ("all ties kept" if self.keep_ties else "ties dropped")
        rule = ", ".join(f"{GAP_SYMBOLS[r]} ≥ {self.minimum(r, strategy):g}" for r in ROLES)
        return f"{rule}; {ties}"


MPCF_PRESETS: dict[str, MPCFConfig] = {
    # The paper's thresholds on LAION aesthetic (1-10), CLIP cosine and VQAScore P(yes).
    "paper": MPCFConfig(),
    # The world's scorers are all in [0, 1]; thresholds in their units:
    "world": MPCFConfig(
        aesthetic_scorer="world-aesthetic",
        clip_scorer="world-clip",
        vqa_scorer="world-vqa",
        # LAION's ~1-10 range is 9 units wide and the world aesthetic's 1 unit: dividing
        # the paper's 0 / −0.5 / −1 by 9 gives 0 / −0.056 / −0.111, rounded to 0 / −0.05 /
        # −0.1 (−0.05 is ten stray pixels, or one object's colour noticeably impure).
        aesthetic_min=(0.0, -0.05, -0.1),
        # Both are cosines: G_C ≥ 0 as in the paper.
        clip_min=0.0,
        # Both are [0, 1] probability-like alignment scores: G_V ≥ 0 as in the paper.
        vqa_min=0.0,
        # 0.2 / 9 ≈ 0.022 on the world aesthetic's [0, 1].
        tie_aesthetic=0.02,
        # Same cosine units; one wrong colour or shape moves the bag-of-words proxy by
        # 0.035 to 0.2 (median 0.125, measured on 150 training prompts), so a kept tie
        # reads the same attributes.
        tie_clip=0.03,
        # Same [0, 1] units; below soft alignment's smallest step (0.083, measured as
        # above), so a kept tie differs in no attribute.
        tie_vqa=0.07,
    ),
}


def mpcf_preset(name: str) -> MPCFConfig:
    if name not in MPCF_PRESETS:
        raise LpoError(f"unknown MPCF preset {name!r}; known: {', '.join(MPCF_PRESETS)}")
    return MPCF_PRESETS[name]


# ------------------------------------------------------------ scorers of a config


def build_gap_scorers(
    config: MPCFConfig,
    weights: Mapping[str, str] | None = None,
    processors: Mapping[str, str] | None = None,
) -> dict[str, GapScorer]:
    """The scorers that ``config`` names, one per role (gap scorers or evaluation metrics).

    ``weights`` / ``processors`` map a scorer name to a local path or hub id for the
    metric-backed (real-mode) scorers, e.g. ``{"laion-aesthetic": "/models/aesthetic.pth"}``.
    """
    weights, processors = dict(weights or {}), dict(processors or {})
    scorers = {}
    for role, name in config.scorer_names().items():
        factory = gap_scorer_factory(name)
        if isinstance(factory, MetricGapScorerFactory):
            # Keyed by the scorer name or by its metric's name (what the metric's own errors print).
            from lpo.evals.metrics.gap import GAP_SCORER_METRICS

            keys = (name, GAP_SCORER_METRICS.get(name, name))
            scorers[role] = factory(
                next((weights.pop(k) for k in keys if k in weights), None),
                next((processors.pop(k) for k in keys if k in processors), None),
            )
        else:
            scorers[role] = factory()
    unused = sorted({*weights, *processors})
    if unused:
        raise LpoError(
            f"--metric-weights/--metric-processor given for {', '.join(unused)}, which no metric-backed "
            f"scorer of this config uses; name one of: {', '.join(config.scorer_names().values())}"
        )
    return scorers



# ------------------------------------------------------------------------ filtering


@dataclass(frozen=True)
class MPCFReport:
    """What MPCF kept and why the rest went.

    ``*_failed`` count, per role, the dropped pairs whose gap broke that role's condition
    (a pair failing two conditions counts twice); ``*_failed_only`` count those dropped
    by that condition alone. ``kept_decisive_by_strategy`` is what every strategy would
    keep of the decisive pairs (the paper's 101,573 / 168,539 / 201,885) and
    ``ties_within_rule`` the ties passing the tie rule (the paper's 8,537), whichever
    strategy ran.
    """

    strategy: str
    rule: str
    scorers: dict[str, str]
    total_decisive: int
    total_ties: int
    kept_decisive: int
    kept_ties: int
    decisive_failed: dict[str, int]
    decisive_failed_only: dict[str, int]
    ties_failed: dict[str, int]
    ties_failed_only: dict[str, int]
    ties_dropped_by_keep_ties: int
    kept_decisive_by_strategy: dict[str, int]
    ties_within_rule: int
    thresholds: dict[str, Any]

    @property
    def total(self) -> int:
        return self.total_decisive + self.total_ties

    @property
    def kept(self) -> int:
        return self.kept_decisive + self.kept_ties

    @property
    def dropped_decisive(self) -> int:
        return self.total_decisive - self.kept_decisive

    @property
    def dropped_ties(self) -> int:
        return self.total_ties - self.kept_ties

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "rule": self.rule,
            "scorers": dict(self.scorers),
            "thresholds": dict(self.thresholds),
            "total": self.total,
            "kept": self.kept,
            "total_decisive": self.total_decisive,
            "kept_decisive": self.kept_decisive,
            "dropped_decisive": self.dropped_decisive,
            "total_ties": self.total_ties,
            "kept_ties": self.kept_ties,
            "dropped_ties": self.dropped_ties,
            "decisive_failed": dict(self.decisive_failed),
            "decisive_failed_only": dict(self.decisive_failed_only),
            "ties_failed": dict(self.ties_failed),
            "ties_failed_only": dict(self.ties_failed_only),
            "ties_dropped_by_keep_ties": self.ties_dropped_by_keep_ties,
            "kept_decisive_by_strategy": dict(self.kept_decisive_by_strategy),
            "ties_within_rule": self.ties_within_rule,
        }

    def as_rows(self) -> list[tuple[str, str]]:
        """(label, value) rows, the content of ``as_table``."""
        rows = [
            ("scorers", ", ".join(f"{GAP_SYMBOLS[r]}: {s}" for r, s in self.scorers.items())),
            ("rule", f"strategy {self.strategy}: {self.rule}"),
            ("kept", f"{self.kept} of {self.total}"),
            ("decisive pairs kept", f"{self.kept_decisive} of {self.total_decisive}"),
        ]
        for role in ROLES:
            if self.decisive_failed.get(role):
                symbol, failed, only = GAP_SYMBOLS[role], self.decisive_failed[role], self.decisive_failed_only[role]
                rows.append((f"  dropped: {symbol} below bound", f"{failed} ({only} by {symbol} alone)"))
        rows.append(("ties kept", f"{self.kept_ties} of {self.total_ties}"))
        for role in ROLES:
            if self.ties_failed.get(role):
                symbol, failed, only = GAP_SYMBOLS[role], self.ties_failed[role], self.ties_failed_only[role]
                rows.append((f"  dropped: |{symbol}| above tie bound", f"{failed} ({only} by |{symbol}| alone)"))
        if self.ties_dropped_by_keep_ties:
            rows.append(("  dropped: keep_ties is false", str(self.ties_dropped_by_keep_ties)))
        for strategy, count in self.kept_decisive_by_strategy.items():
            mark = " (this run)" if strategy == self.strategy else ""
            rows.append((f"strategy {strategy} would keep{mark}", f"{count} decisive"))
        rows.append(("ties within the tie rule", str(self.ties_within_rule)))
        return rows

    def as_table(self):
        """A rich Table of ``as_rows``."""
        from rich.table import Table

        table = Table(title=f"MPCF strategy {self.strategy}", show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        for label, value in self.as_rows():
            table.add_row(label, value)
        return table


@dataclass(frozen=True)
class MPCFResult:
    """pairs: the kept pairs, input order. gaps: role -> (N,) gaps of all input pairs in
    threshold units (see the module docstring). keep: (N,) bool mask of the kept ones."""

    pairs: list[PreferencePair]
    report: MPCFReport
    gaps: dict[str, np.ndarray]
    keep: np.ndarray


def filter_pairs(pairs: Sequence[PreferencePair], config: MPCFConfig, scores: GapScores) -> MPCFResult:
    """Apply ``config.strategy`` (and the tie rule) to ``pairs``; report every strategy's count."""
    pairs = list(pairs)
    if not pairs:
        raise LpoError("no preference pairs to filter; collect or load pairs first")

    # 1. The scores must come from the scorers the thresholds were set for.
    for role, name in config.scorer_names().items():
        made_by = scores.scorers.get(role)
        if made_by is None or made_by.rsplit("@", 1)[0] != name:
            raise LpoError(
                f"MPCF config expects {role} scorer {name!r} but the scores came from {made_by!r}; "
                f"score with {name!r} or set {role}_scorer (thresholds are in that scorer's units)"
            )
    labels = np.array([p.label_0 for p in pairs], dtype=np.float64)
    bad = [p for p in pairs if p.label_0 not in (0.0, TIE, 1.0)]
    if bad:
        raise LpoError(f"pair {bad[0].pair_id!r} has label_0={bad[0].label_0}; MPCF needs 1.0, 0.0 or 0.5 (tie)")

    # 2. Gaps in threshold units: winner − loser for decisive pairs, image_0 − image_1 for ties.
    sign = np.where(labels == 0.0, -1.0, 1.0)
    gaps = {}
    for role in ROLES:
        rows = scores.rows(pairs, role)  # (N, 2)
        if not np.isfinite(rows).all():
            raise ValueError(f"{role} scores of some pairs are not finite; rescore them")
        gaps[role] = config.scale(role) * sign * (rows[:, 0] - rows[:, 1])
    tie = labels == TIE
    decisive = ~tie

    # 3. Every strategy's verdict, so that the report can show what each would keep.
    passes = {s: {r: gaps[r] >= config.minimum(r, s) - EDGE_TOLERANCE for r in ROLES} for s in STRATEGIES[1:]}
    tie_ok = {r: np.abs(gaps[r]) <= config.tie_max(r) + EDGE_TOLERANCE for r in ROLES}
    tie_all_ok = np.logical_and.reduce([tie_ok[r] for r in ROLES])
    kept_by = {"none": int(decisive.sum())}
    for s in STRATEGIES[1:]:
        kept_by[s] = int((decisive & np.logical_and.reduce([passes[s][r] for r in ROLES])).sum())

    # 4. This run's verdict.
    if config.strategy == "none":
        keep_decisive = decisive
        keep_tie = tie & config.keep_ties
    else:
        keep_decisive = decisive & np.logical_and.reduce([passes[config.strategy][r] for r in ROLES])
        keep_tie = tie & tie_all_ok & config.keep_ties
    keep = keep_decisive | keep_tie

    # 5. Why the dropped ones went: each failed condition, and those failing alone.
    zero = {r: 0 for r in ROLES}
    decisive_failed, decisive_only, ties_failed, ties_only = dict(zero), dict(zero), dict(zero), dict(zero)
    if config.strategy != "none":
        decisive_failed, decisive_only = _failure_counts(decisive & ~keep, {r: ~passes[config.strategy][r] for r in ROLES})
        if config.keep_ties:
            ties_failed, ties_only = _failure_counts(tie & ~keep, {r: ~tie_ok[r] for r in ROLES})
    report = MPCFReport(
        strategy=config.strategy,
        rule=config.describe(),
        scorers={r: scores.scorers[r] for r in ROLES},
        total_decisive=int(decisive.sum()),
        total_ties=int(tie.sum()),
        kept_decisive=int(keep_decisive.sum()),
        kept_ties=int(keep_tie.sum()),
        decisive_failed=decisive_failed,
        decisive_failed_only=decisive_only,
        ties_failed=ties_failed,
        ties_failed_only=ties_only,
        ties_dropped_by_keep_ties=0 if config.keep_ties else int(tie.sum()),
        kept_decisive_by_strategy=kept_by,
        ties_within_rule=int((tie & tie_all_ok).sum()),
        thresholds={
            "aesthetic_min": list(config.aesthetic_min),
            "clip_min": config.clip_min,
            "vqa_min": config.vqa_min,
            "tie_aesthetic": config.tie_aesthetic,
            "tie_clip": config.tie_clip,
            "tie_vqa": config.tie_vqa,
            "keep_ties": config.keep_ties,
            "scales": {r: config.scale(r) for r in ROLES},
        },
    )
    if not keep.any():
        raise LpoError(_empty_message(config, report))
    return MPCFResult(pairs=[p for p, k in zip(pairs, keep) if k], report=report, gaps=gaps, keep=keep)


def _failure_counts(dropped: np.ndarray, failed: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, int]]:
    num_failed = np.sum([failed[r] for r in ROLES], axis=0)
    counts = {r: int((dropped & failed[r]).sum()) for r in ROLES}
    only = {r: int((dropped & failed[r] & (num_failed == 1)).sum()) for r in ROLES}
    return counts, only


def _empty_message(config: MPCFConfig, report: MPCFReport) -> str:
    """One line: the strategy and thresholds that emptied the set, and what would not."""

    def would_keep(strategy: str) -> int:
        ties = (report.total_ties if strategy == "none" else report.ties_within_rule) if config.keep_ties else 0
        return report.kept_decisive_by_strategy[strategy] + ties

    # The strictest looser strategy that keeps something, then no filtering at all.
    looser = {"1": ("2", "3"), "2": ("3",)}.get(config.strategy, ())
    tips = [f"--strategy {s} (keeps {would_keep(s)})" for s in looser if would_keep(s)][:1]
    if config.strategy != "none" and would_keep("none"):
        tips.append(f"--strategy none (keeps {would_keep('none')})")
    if not tips and not config.keep_ties and report.total_ties:
        tips.append("keeping ties (keep_ties=true)")
    suggestion = "try " + " or ".join(tips) if tips else "collect more pairs or loosen the thresholds"
    return (
        f"no pairs left after MPCF strategy {config.strategy} ({config.describe()}) "
        f"of {report.total_decisive} decisive pairs and {report.total_ties} ties; {suggestion}"
    )


def filter_pairs_file(
    pairs: Sequence[PreferencePair],
    config: MPCFConfig,
    out: str | Path,
    source: str,
    *,
    cache_dir: str | Path | None = None,
    weights: Mapping[str, str] | None = None,
    processors: Mapping[str, str] | None = None,
) -> MPCFResult:
    """`lpo mpcf` as one call: score (cached), filter, save the kept pairs to ``out`` with
    the report as provenance. ``source`` names the input in that provenance; the score
    cache defaults to ``.OUT-STEM-scores`` beside ``out``."""
    from lpo.pairs.format import save_pairs

    out = Path(out)
    scorers = build_gap_scorers(config, weights, processors)
    scores = compute_gap_scores(pairs, scorers, cache_dir or out.parent / f".{out.stem}-scores")
    result = filter_pairs(pairs, config, scores)
    save_pairs(result.pairs, out, provenance={"mpcf": result.report.as_dict(), "input": source})
    return result
