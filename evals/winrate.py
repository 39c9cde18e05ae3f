"""Win-rate of one checkpoint against a reference: per-image paired comparison (SPEC §6.1).

Two evaluations under one protocol give image ``k`` of a prompt the same seed
(``image_seed(seed, prompt, k)``), so image ``k`` of checkpoint A and image ``k`` of the
reference start from the same noise: a natural pair. For each pair the outcome is 1 if
A's score is better (higher, or lower for a lower-is-better metric), 0 if worse and ½
for a tie (``|a − b| <= tie_tolerance``; exact ties are common with the world's 0/1
judges). The win-rate is the mean outcome; its interval treats the prompt as the unit,
as every other number here: each prompt's mean outcome, then the mean, standard error
and 95% interval (Student t over prompts, :func:`lpo.evals.paired.mean_interval`) over
prompts. 0.5 means no difference.

Pairs come from the evaluations in memory (``lpo compare``) or from the per-prompt side
files of two records (:func:`paired_from_records`), which must be on one protocol: the
same rule as the paired difference (:func:`lpo.evals.paired.check_pairable`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lpo.evals.paired import check_pairable, mean_interval, paired_grids, read_side_file


@dataclass(frozen=True)
class WinRate:
    value: float
    stderr: float | None
    ci95: tuple[float, float] | None
    wins: int
    ties: int
    losses: int
    n_prompts: int
    n_pairs: int

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci95"] = list(self.ci95) if self.ci95 else None
        return data

    def format(self) -> str:
        ci = f" [{self.ci95[0]:.3f}, {self.ci95[1]:.3f}]" if self.ci95 else ""
        return f"{self.value:.3f}{ci} ({self.wins}W/{self.ties}T/{self.losses}L)"


def paired_win_rate(
    scores: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]],
    higher_is_better: bool = True,
    tie_tolerance: float = 0.0,
) -> WinRate:
    """Win-rate of ``scores`` against ``reference``: grids [prompt][image] of paired scores."""
    if len(scores) != len(reference):
        raise ValueError(f"{len(scores)} prompts against {len(reference)}; pair the same prompts")
    if not len(scores):
        raise ValueError("no prompts to compare")
    per_prompt, wins, ties, losses = [], 0, 0, 0
    for a_row, b_row in zip(scores, reference):
        if len(a_row) != len(b_row) or not len(a_row):
            raise ValueError("each prompt needs the same, non-zero number of images on both sides")
        diff = np.asarray(a_row, dtype=np.float64) - np.asarray(b_row, dtype=np.float64)
        if not higher_is_better:
            diff = -diff
        tie = np.abs(diff) <= tie_tolerance
        win = (diff > 0) & ~tie
        outcome = np.where(tie, 0.5, win.astype(np.float64))
        per_prompt.append(float(outcome.mean()))
        wins, ties, losses = wins + int(win.sum()), ties + int(tie.sum()), losses + int((~win & ~tie).sum())
    s = mean_interval(per_prompt)
    return WinRate(s.mean, s.stderr, s.ci95, wins, ties, losses, s.n, wins + ties + losses)


# --------------------------------------------------------------------------- from records


def paired_from_records(results_dir: Path, record, reference_record, tie_tolerance: float = 0.0) -> WinRate:
    """Win-rate of ``record``'s checkpoint against ``reference_record``'s, paired as
    :func:`lpo.evals.paired.paired_difference_records` pairs (one protocol, checked)."""
    check_pairable(record, reference_record)
    a, b = paired_grids(read_side_file(results_dir, record), read_side_file(results_dir, reference_record),
                        record.metric_key, "the checkpoint", "the reference")
    return paired_win_rate(a, b, record.higher_is_better, tie_tolerance)
