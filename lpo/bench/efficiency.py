"""The efficiency view (SPEC §8, issue 6): quality against training device-seconds.

From the result records of one benchmark and one metric, each method gets a curve of
(training device-seconds, value ± 95% half-width, step) over its evaluated checkpoints
(intermediate ``step-N`` ones and the final model), and the bench's two questions get
explicit verdicts with their numbers:

- does LPO reach Diffusion-DPO's best score with at most 1/10 of the device-seconds
  Diffusion-DPO needed to reach it?
- does LPO reach SPO's best score with at most 1/3.5 of SPO's?

What is counted (:func:`training_seconds`). A checkpoint's ``training_cost`` is the cost
record (:meth:`lpo.core.runs.DeviceMeter.as_dict`) its run had written when the checkpoint was
saved. Its training device-seconds are

    Σ over the record itself and every record in its ``included`` list
      Σ over the stages ``reward_model_training``, ``rollout`` and ``optimisation``
        seconds[stage] × device_count

so LPO's and SPO's totals contain the training of their step reward model (folded into
the run with :meth:`DeviceMeter.include`; the reward model's own includes are flattened
into the same list) and Diffusion-DPO's contain none because it has none. LPO's and SPO's
rollouts (sampling the trajectories with the current policy and scoring them with the
step reward) are booked as ``rollout`` (:mod:`lpo.trainers.step_dpo`, step 1); policy
training (``optimisation`` of :class:`TrainingSeconds` and the curves) is rollout plus
gradient steps, and the rollout share is reported beside it. Cost records written before
the ledger split them count rollouts inside ``optimisation``, with the same total. Not counted here: the ``evaluation`` stage (periodic
evaluation during training, and the bench's own evaluations), and the offline pair data
(generation + MPCF) that all three methods share; :mod:`lpo.bench.efficiency_view` books
that as a column of its own. Device-seconds of different device types are never silently
treated as one: every point carries the device types it sums, and a comparison across
types says so.

Reward model in full or amortised. A reward model is trained once and can serve many
policy runs, so every point also has :meth:`CurvePoint.amortised_seconds`: optimisation +
reward model / R for R runs (the paper's SDXL LPO total of 92 A100-hours is 52 of LRM
training + 40 of optimisation; over 10 runs it is 45.2 per run). The verdicts give both.

Reaching a target. The first checkpoint (ordered by device-seconds) whose value is at
least the target "reaches" it. Because each value is a mean over prompts with a 95%
interval, a second, noise-tolerant answer is given beside the strict one: a checkpoint
reaches the target *within noise* when value ≥ target − √(h² + h_target²), h being the
two 95% half-widths. The bands are treated as independent, which is conservative: the
records share prompts and seeds, so a paired comparison would be tighter. The base
model is not a checkpoint of any method; it is the curves' starting value (at x = the
method's reward-model seconds, what the method spent before its first update) and it
never "reaches" anything. For a metric where lower is better, "at least" reads "at most".

Paired intervals. Given the results folder (the per-prompt side files), every point also
carries its paired difference from the base model, ``delta`` ± ``delta_half``: per prompt
on identical prompts and seeds, 95% Student t over prompts
(:func:`lpo.evals.paired.paired_difference_records`). That is the interval to read a
method's gain by; the unpaired ``ci_half`` mostly measures how hard the prompts are.

The assembled report (cost table, reported rows, fractions of each method's own best gain)
is :func:`lpo.bench.efficiency_view.efficiency_report`'s.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lpo.core.errors import LpoError
from lpo.evals.paired import paired_difference_records
from lpo.evals.store import ResultRecord

COUNTED_STAGES = ("reward_model_training", "rollout", "optimisation")
DEFAULT_AMORTISE_RUNS = 10  # policy runs one reward model (and one pair set) serves, for the amortised view
METHOD_ORDER = ("lpo", "spo", "diffusion-dpo")
METHOD_NAMES = {"lpo": "LPO", "spo": "SPO", "diffusion-dpo": "Diffusion-DPO", "base": "base model"}


@dataclass(frozen=True)
class Claim:
    """LPO reaches ``reference``'s best with at most ``ratio`` of ``reference``'s device-seconds."""

    challenger: str
    reference: str
    ratio: float
    ratio_text: str


CLAIMS = (Claim("lpo", "diffusion-dpo", 1 / 10, "1/10"), Claim("lpo", "spo", 1 / 3.5, "1/3.5"))


# --------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class TrainingSeconds:
    """Training device-seconds of one cost record, split by stage (see the module docstring)."""

    reward_model: float
    optimisation: float  # policy training: the gradient steps and, for LPO / SPO, their rollouts
    device_types: tuple[str, ...]
    rollout: float = 0.0  # of ``optimisation``: LPO / SPO sampling and scoring their trajectories

    @property
    def total(self) -> float:
        return self.reward_model + self.optimisation


def training_seconds(cost: dict[str, Any]) -> TrainingSeconds:
    """Device-seconds of reward-model training and of optimisation in a cost record, includes counted."""
    seconds = {stage: 0.0 for stage in COUNTED_STAGES}
    types: list[str] = []
    for part in [cost, *cost.get("included", [])]:
        count = int(part.get("device_count", 1))
        counted = False
        for stage in COUNTED_STAGES:
            value = float((part.get("seconds") or {}).get(stage, 0.0))
            seconds[stage] += value * count
            counted = counted or value > 0
        if counted and part.get("device_type") not in types:
            types.append(str(part.get("device_type")))
    return TrainingSeconds(seconds["reward_model_training"], seconds["rollout"] + seconds["optimisation"],
                           tuple(sorted(types)), rollout=seconds["rollout"])


# --------------------------------------------------------------------------- curves


@dataclass(frozen=True)
class CurvePoint:
    """One evaluated checkpoint of a method: its training device-seconds and its score."""

    label: str
    step: int | str | None  # None: the run's final model
    device_seconds: float
    reward_model_seconds: float
    optimisation_seconds: float  # policy training, rollouts included
    device_types: tuple[str, ...]
    value: float
    ci_half: float | None  # half-width of the 95% interval over prompts; None when unknown
    checkpoint_hash: str
    record_id: str
    delta: float | None = None  # paired Δ vs the base model (None without side files)
    delta_half: float | None = None  # its 95% half-width (Student t over prompts)
    rollout_seconds: float = 0.0  # of optimisation_seconds: LPO / SPO's rollouts

    @property
    def final(self) -> bool:
        return self.step is None

    def amortised_seconds(self, runs: int) -> float:
        """Optimisation + reward-model training / ``runs``: the reward model shared by ``runs`` policy runs."""
        return self.optimisation_seconds + self.reward_model_seconds / check_runs(runs)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["device_types"] = list(self.device_types)
        data["final"] = self.final
        return data


def check_runs(runs: int) -> int:
    """``runs`` for amortising, or an error naming the bad value."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise LpoError(f"amortise_runs must be a whole number of runs >= 1, got {runs!r}; 1 counts the reward model in full")
    return runs


@dataclass
class MethodCurve:
    """A method's points ordered by device-seconds (ties: intermediate before final, then step)."""

    name: str  # the series name: the method, or "method (run id)" when a method has several runs
    method: str
    run_id: str | None
    points: list[CurvePoint]
    protocol_hashes: tuple[str, ...] = ()

    @property
    def reward_model_seconds(self) -> float:
        """What the method spent before its first update (the curve's starting offset)."""
        return self.points[0].reward_model_seconds if self.points else 0.0

    @property
    def final(self) -> CurvePoint | None:
        finals = [p for p in self.points if p.final]
        return finals[-1] if finals else None

    @property
    def device_types(self) -> tuple[str, ...]:
        return tuple(sorted({t for p in self.points for t in p.device_types}))


@dataclass
class EfficiencyData:
    benchmark: str
    metric: str
    metric_key: str | None
    higher_is_better: bool
    base: CurvePoint | None
    curves: dict[str, MethodCurve]
    notes: list[str] = field(default_factory=list)


def _half(record: ResultRecord) -> float | None:
    if record.ci95 is None:
        return None
    return (float(record.ci95[1]) - float(record.ci95[0])) / 2


def _point(record: ResultRecord, cost: TrainingSeconds | None, delta=None) -> CurvePoint:
    ckpt = record.checkpoint
    return CurvePoint(
        label=str(ckpt.get("label") or ckpt.get("spec") or ckpt.get("hash")),
        step=ckpt.get("step"),
        device_seconds=cost.total if cost else 0.0,
        reward_model_seconds=cost.reward_model if cost else 0.0,
        optimisation_seconds=cost.optimisation if cost else 0.0,
        rollout_seconds=cost.rollout if cost else 0.0,
        device_types=cost.device_types if cost else (),
        value=float(record.value),
        ci_half=_half(record),
        checkpoint_hash=str(ckpt.get("hash")),
        record_id=record.record_id,
        delta=None if delta is None else delta.mean,
        delta_half=None if delta is None else delta.half_width,
    )


def _step_order(step: Any) -> tuple[int, float]:
    if step is None:
        return (1, 0.0)
    try:
        return (0, float(step))
    except (TypeError, ValueError):
        return (0, 0.0)


def collect_curves(
    records: Sequence[ResultRecord], benchmark: str = "world", metric: str = "world_utility", results_dir: Path | None = None
) -> EfficiencyData:
    """Per method, the (device-seconds, value) points of ``metric`` on ``benchmark``.

    With ``results_dir`` every point also gets its paired Δ vs the base model (a point
    that cannot be paired keeps None, and the reason is in ``notes``).

    Records of other benchmark versions, prompt sets or metric versions are not mixed in:
    the group with the most intermediate checkpoints (then the most records) is used and
    the others are named in ``notes``. A
    checkpoint evaluated twice keeps its latest record. Checkpoints without a cost record
    are left out (named in ``notes``): no cost beats a wrong one.
    """
    notes: list[str] = []
    chosen = [r for r in records if r.benchmark == benchmark and r.metric == metric]
    if not chosen:
        return EfficiencyData(benchmark, metric, None, True, None, {}, [f"no {metric} records on {benchmark}"])
    groups: dict[tuple[str, str, str], list[ResultRecord]] = {}
    for r in chosen:
        groups.setdefault((r.benchmark_version, r.prompt_set_hash, r.metric_version), []).append(r)
    # the group with the most intermediate checkpoints (a bench's curve protocol), then the largest
    key = max(groups, key=lambda k: (sum("step" in r.checkpoint for r in groups[k]), len(groups[k]),
                                     max(r.created for r in groups[k])))
    for other, group in groups.items():
        if other != key:
            what = [f"prompt set {other[1]}"] if other[1] != key[1] else []
            what += [f"{benchmark}@{other[0]}"] if other[0] != key[0] else []
            what += [f"{metric}@{other[2]}"] if other[2] != key[2] else []
            notes.append(
                f"the curve is drawn on {benchmark}@{key[0]} / prompt set {key[1]} / {metric}@{key[2]} (where the "
                f"checkpoints were evaluated); {len(group)} record(s) on {', '.join(what)} are not on it (a curve "
                "mixes no prompt sets or versions)"
            )
    group = groups[key]
    higher = group[-1].higher_is_better

    # the latest record per evaluated checkpoint (label + hash + step: a final model may share its
    # hash with the last intermediate checkpoint, and they are two points of the curve)
    latest: dict[tuple[Any, ...], ResultRecord] = {}
    for r in group:
        ckpt = r.checkpoint
        k = (r.method, r.run_id, ckpt.get("label"), ckpt.get("hash"), str(ckpt.get("step")), r.protocol_hash)
        if k not in latest or r.created >= latest[k].created:
            latest[k] = r

    base_record: ResultRecord | None = None
    by_series: dict[tuple[str, str | None], list[ResultRecord]] = {}
    for r in latest.values():
        if r.method == "base":
            if base_record is None or r.created >= base_record.created:
                base_record = r
            continue
        if r.method == "reference":  # ground truth / shuffled / noise: not trained, not a curve
            continue
        by_series.setdefault((r.method, r.run_id), []).append(r)

    base = None if base_record is None else _point(base_record, None)
    runs_per_method: dict[str, int] = {}
    for method, _ in by_series:
        runs_per_method[method] = runs_per_method.get(method, 0) + 1
    curves: dict[str, MethodCurve] = {}
    for (method, run_id), group_records in sorted(by_series.items(), key=lambda kv: (_method_rank(kv[0][0]), str(kv[0][1]))):
        name = method if runs_per_method[method] == 1 else f"{method} ({run_id})"
        points = []
        for r in group_records:
            if not r.training_cost:
                notes.append(f"{name}: checkpoint {r.checkpoint.get('label')} has no training cost record; left out of the curve")
                continue
            points.append(_point(r, training_seconds(r.training_cost), _delta(r, base_record, results_dir, notes)))
        points.sort(key=lambda p: (p.device_seconds, *_step_order(p.step)))
        curves[name] = MethodCurve(name, method, run_id, points, tuple(sorted({r.protocol_hash for r in group_records})))

    protocols = {h for c in curves.values() for h in c.protocol_hashes}
    if len(protocols) > 1:
        notes.append(
            "the methods were evaluated under different protocols ("
            + "; ".join(f"{c.name}: {', '.join(c.protocol_hashes)}" for c in curves.values())
            + "), e.g. another CFG scale"
        )
    types = {t for c in curves.values() for t in c.device_types}
    if len(types) > 1:
        notes.append(
            f"device-seconds of different device types ({', '.join(sorted(types))}) are compared below; "
            "ratios across hardware are not a like-for-like comparison"
        )
    return EfficiencyData(benchmark, metric, f"{metric}@{key[2]}", higher, base, curves, notes)


def _delta(record: ResultRecord, base: ResultRecord | None, results_dir: Path | None, notes: list[str]):
    if results_dir is None or base is None:
        return None
    try:
        return paired_difference_records(results_dir, record, base)
    except LpoError as err:
        notes.append(f"no paired Δ for {record.checkpoint.get('label')}: {err}")
        return None


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


# --------------------------------------------------------------------------- targets


def _sign(higher_is_better: bool) -> float:
    return 1.0 if higher_is_better else -1.0


def best_point(curve: MethodCurve, higher_is_better: bool = True) -> CurvePoint | None:
    """The checkpoint with the best value; among equals, the cheapest."""
    if not curve.points:
        return None
    s = _sign(higher_is_better)
    return max(curve.points, key=lambda p: (s * p.value, -p.device_seconds))


def noise_band(point: CurvePoint, target_half: float | None) -> float:
    """√(h² + h_target²) of the two 95% half-widths (0 for an unknown one)."""
    return math.hypot(point.ci_half or 0.0, target_half or 0.0)


def first_reaching(
    curve: MethodCurve, target: float, higher_is_better: bool = True, target_half: float | None = None, within_noise: bool = False
) -> CurvePoint | None:
    """The cheapest checkpoint whose value reaches ``target`` (or reaches it within noise); None if none does."""
    s = _sign(higher_is_better)
    for point in curve.points:  # ordered by device-seconds
        slack = noise_band(point, target_half) if within_noise else 0.0
        if s * (point.value - target) >= -slack:
            return point
    return None


def seconds_to_reach(
    curve: MethodCurve, target: float, higher_is_better: bool = True, target_half: float | None = None, within_noise: bool = False
) -> float | None:
    """Training device-seconds of :func:`first_reaching`, or None when the target is never reached."""
    point = first_reaching(curve, target, higher_is_better, target_half, within_noise)
    return None if point is None else point.device_seconds


# --------------------------------------------------------------------------- verdicts


def _fmt_value(value: float, half: float | None) -> str:
    return f"{value:.4g}" if half is None else f"{value:.4g} ± {half:.2g}"


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{seconds:,.0f} device-s" if seconds >= 100 else f"{seconds:.3g} device-s"


def _name(curve: MethodCurve | None, method: str) -> str:
    if curve is None or curve.name == curve.method:
        return METHOD_NAMES.get(method, method)
    return f"{METHOD_NAMES.get(curve.method, curve.method)} ({curve.run_id})"


def claim_verdict(
    data: EfficiencyData, claim: Claim, amortise_runs: int = DEFAULT_AMORTISE_RUNS, data_seconds: float | None = None
) -> list[dict[str, Any]]:
    """The verdicts on ``claim``: one per (challenger run, reference run), usually exactly one.

    Each answers with the reward models counted in full (``answer``; as the paper's table),
    within noise, and with the reward models amortised over ``amortise_runs`` runs
    (``answer_amortised``); ``data_seconds`` (the shared pair data) adds a ratio with it
    counted on both sides.
    """
    challengers = [c for c in data.curves.values() if c.method == claim.challenger]
    references = [c for c in data.curves.values() if c.method == claim.reference]
    question = (
        f"Does {METHOD_NAMES.get(claim.challenger, claim.challenger)} reach {METHOD_NAMES.get(claim.reference, claim.reference)}'s "
        f"best {data.metric} with at most {claim.ratio_text} of its device-seconds?"
    )
    if not challengers or not references:
        missing = [m for m, c in ((claim.challenger, challengers), (claim.reference, references)) if not c]
        return [{
            "claim": asdict(claim), "question": question, **_CANNOT, "amortise_runs": amortise_runs,
            "text": f"{question} Cannot answer: no {' and no '.join(missing)} checkpoints with a training cost on {data.benchmark}.",
        }]
    check_runs(amortise_runs)
    return [_one_verdict(data, claim, question, ch, ref, amortise_runs, data_seconds) for ch in challengers for ref in references]


_CANNOT = {"answer": "cannot answer", "answer_within_noise": "cannot answer", "answer_amortised": "cannot answer"}


def _one_verdict(data: EfficiencyData, claim: Claim, question: str, challenger: MethodCurve, reference: MethodCurve,
                 runs: int, data_seconds: float | None) -> dict[str, Any]:
    higher = data.higher_is_better
    ch_name, ref_name = _name(challenger, claim.challenger), _name(reference, claim.reference)
    if not challenger.points or not reference.points:
        empty = ch_name if not challenger.points else ref_name
        return {"claim": asdict(claim), "question": question, **_CANNOT, "amortise_runs": runs,
                "text": f"{question} Cannot answer: {empty} has no checkpoint with a training cost."}
    target_point = best_point(reference, higher)
    assert target_point is not None
    target, target_half = target_point.value, target_point.ci_half
    budget = target_point.device_seconds  # the reference's seconds to reach its own best
    strict = first_reaching(challenger, target, higher)
    noisy = first_reaching(challenger, target, higher, target_half, within_noise=True)
    own_best = best_point(challenger, higher)
    assert own_best is not None

    def ratio(point: CurvePoint | None) -> float | None:
        if point is None or budget <= 0:
            return None
        return point.device_seconds / budget

    def answer(point: CurvePoint | None, r: float | None) -> str:
        if point is None:
            return "no (never reached)"
        if r is None:
            return "cannot answer"
        return "yes" if r <= claim.ratio else "no"

    r_strict, r_noisy = ratio(strict), ratio(noisy)
    # the same checkpoints with the reward models amortised over `runs` (the order of a curve's points is unchanged)
    am_budget = target_point.amortised_seconds(runs)
    am_strict = None if strict is None else strict.amortised_seconds(runs)
    r_amortised = None if am_strict is None or am_budget <= 0 else am_strict / am_budget
    r_data = None
    if strict is not None and data_seconds is not None and budget + data_seconds > 0:
        r_data = (strict.device_seconds + data_seconds) / (budget + data_seconds)
    target_text = (
        f"{ref_name}'s best {data.metric} ({_fmt_value(target, target_half)}; {ref_name} needed {_fmt_seconds(budget)} "
        f"to reach it, at {target_point.label})"
    )
    if strict is not None:
        text = (
            f"{ch_name} reached {target_text} after {_fmt_seconds(strict.device_seconds)} at {strict.label} "
            f"({_fmt_value(strict.value, strict.ci_half)}): ratio {_fmt_ratio(r_strict)} "
            f"{'≤' if r_strict is not None and r_strict <= claim.ratio else '>'} {claim.ratio_text} ({claim.ratio:.3g})."
        )
    else:
        text = (
            f"{ch_name} never reached {target_text}; its best was {_fmt_value(own_best.value, own_best.ci_half)} "
            f"after {_fmt_seconds(own_best.device_seconds)} at {own_best.label}."
        )
    if noisy is not None and noisy is not strict:
        text += (
            f" Within noise (value ≥ target − √(h² + h_target²)) it reached it after {_fmt_seconds(noisy.device_seconds)} "
            f"at {noisy.label}: ratio {_fmt_ratio(r_noisy)} {'≤' if r_noisy is not None and r_noisy <= claim.ratio else '>'} {claim.ratio_text}."
        )
    elif noisy is None:
        text += " Not even within noise."
    if budget <= 0:
        text += f" {ref_name}'s best has zero training device-seconds, so no ratio can be formed."
    if strict is not None:
        text += (
            f" With the reward models amortised over {runs} runs (optimisation + reward model / {runs}): "
            f"{_fmt_seconds(am_strict)} vs {_fmt_seconds(am_budget)}, ratio {_fmt_ratio(r_amortised)} "
            f"{'≤' if r_amortised is not None and r_amortised <= claim.ratio else '>'} {claim.ratio_text}."
        )
        if r_data is not None:
            text += (f" With the shared pair data ({_fmt_seconds(data_seconds)}) added to both sides: ratio "
                     f"{_fmt_ratio(r_data)}.")
    base = data.base
    if base is not None:
        s = _sign(higher)
        if s * (target - base.value) <= noise_band(target_point, base.ci_half):
            text += (
                f" Note: {ref_name}'s best is within noise of the base model ({_fmt_value(base.value, base.ci_half)}), "
                "so reaching it says little."
            )
    ch_final, ref_final = challenger.final, reference.final
    total_ratio = total_amortised = None
    if ch_final is not None and ref_final is not None and ref_final.device_seconds > 0:
        total_ratio = ch_final.device_seconds / ref_final.device_seconds
        total_amortised = ch_final.amortised_seconds(runs) / ref_final.amortised_seconds(runs)
        text += (
            f" Total training cost of the final models (as in the paper's table): {_fmt_seconds(ch_final.device_seconds)} vs "
            f"{_fmt_seconds(ref_final.device_seconds)} = {_fmt_ratio(total_ratio)}; with the reward models amortised over "
            f"{runs} runs {_fmt_ratio(total_amortised)}."
        )
    return {
        "claim": asdict(claim),
        "question": question,
        "challenger": challenger.name,
        "reference": reference.name,
        "target": target,
        "target_ci_half": target_half,
        "target_checkpoint": target_point.label,
        "reference_seconds_to_best": budget,
        "challenger_seconds_to_reach": None if strict is None else strict.device_seconds,
        "challenger_checkpoint": None if strict is None else strict.label,
        "ratio": r_strict,
        "challenger_seconds_to_reach_within_noise": None if noisy is None else noisy.device_seconds,
        "challenger_checkpoint_within_noise": None if noisy is None else noisy.label,
        "ratio_within_noise": r_noisy,
        "challenger_best": own_best.value,
        "challenger_best_ci_half": own_best.ci_half,
        "total_cost_ratio": total_ratio,
        "amortise_runs": runs,
        "reference_seconds_to_best_amortised": am_budget,
        "challenger_seconds_to_reach_amortised": am_strict,
        "ratio_amortised": r_amortised,
        "total_cost_ratio_amortised": total_amortised,
        "data_seconds": data_seconds,
        "ratio_with_data": r_data,
        "answer": answer(strict, r_strict),
        "answer_within_noise": answer(noisy, r_noisy),
        "answer_amortised": answer(strict, r_amortised),
        "text": text,
    }


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    if ratio <= 0:
        return "0"
    return f"{ratio:.3g} (1/{1 / ratio:.3g})" if ratio < 1 else f"{ratio:.3g}"
