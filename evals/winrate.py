"""Win-rate of one checkpoint against a reference: per-image paired comparison (SPEC §6.1).

Two evaluations under one protocol give image ``k`` of a prompt the same seed
(``image_seed(seed, prompt, k)``), so image ``k`` of checkpoint A and image ``k`` of the
reference start from the same noise: a natural pair. For each pair the outcome is 1 if
A's score is better (higher, or lower for a lower-is-better metric), 0 if worse and ½
for a tie (``|a − b| <= tie_tolerance``; exact ties are common with the world's 0/1
judges). The win-rate is the mean outcome; its interval treats the prompt as the unit,
as every other number here: each prompt's mean outcome, then the mean, standard error
and 95% interval (1.96 SE) over prompts. 0.5 means no difference.

Pairs come from the evaluations in memory (``lpo compare``) or from the per-prompt side
files of two records (:func:`paired_from_records`), which must hold the same prompts
with the same seeds.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lpo.errors import LpoError


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
    values = np.array(per_prompt)
    mean = float(values.mean())
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    ci = (mean - 1.96 * stderr, mean + 1.96 * stderr) if stderr is not None else None
    return WinRate(mean, stderr, ci, wins, ties, losses, len(values), wins + ties + losses)


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


def paired_grids(side: dict[str, Any], reference: dict[str, Any], key: str) -> tuple[list[list[float]], list[list[float]]]:
    """The paired score grids of metric ``key`` over the prompts both side files hold.

    Image ``k`` of a prompt pairs with image ``k`` of the reference only when both were
    made from the same seed; a prompt set or seed that differs is refused.
    """
    for name, data in (("checkpoint", side), ("reference", reference)):
        if key not in data["scores"]:
            raise LpoError(f"the {name}'s evaluation has no scores for {key}; evaluate it with that metric")
        if key in data.get("per_prompt_metrics", []):
            raise LpoError(f"{key} scores a prompt's images together; a win-rate needs per-image scores")
    ref_index = {p: i for i, p in enumerate(reference["prompts"])}
    a_grid, b_grid = [], []
    for i, prompt in enumerate(side["prompts"]):
        j = ref_index.get(prompt)
        if j is None:
            continue
        n = min(len(side["seeds"][i]), len(reference["seeds"][j]))
        if side["seeds"][i][:n] != reference["seeds"][j][:n]:
            raise LpoError(f"prompt {prompt[:50]!r} was generated from other seeds for the reference; compare under one protocol seed")
        a_grid.append(side["scores"][key][i][:n])
        b_grid.append(reference["scores"][key][j][:n])
    if not a_grid:
        raise LpoError("the two evaluations share no prompt; compare them on the same benchmark and prompt set")
    return a_grid, b_grid


def paired_from_records(results_dir: Path, record, reference_record, tie_tolerance: float = 0.0) -> WinRate:
    """Win-rate of ``record``'s checkpoint against ``reference_record``'s, same metric version."""
    if record.metric_key != reference_record.metric_key:
        raise LpoError(f"cannot pair {record.metric_key} with {reference_record.metric_key}: one metric version per win-rate")
    a, b = paired_grids(read_side_file(results_dir, record), read_side_file(results_dir, reference_record), record.metric_key)
    return paired_win_rate(a, b, record.higher_is_better, tie_tolerance)
