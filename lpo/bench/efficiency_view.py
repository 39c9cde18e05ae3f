"""The efficiency view assembled (SPEC §8, issue 11 item 4): what each method's gain costs.

:mod:`lpo.bench.efficiency` builds the curves (training device-seconds, value, paired Δ vs
the base model) and the claim verdicts; this module adds the accounting a user needs to
choose a method, and returns everything as one JSON-able dict (:func:`efficiency_report`;
:mod:`lpo.bench.efficiency_tables` renders it).

What is booked where, per method (device-seconds = wall seconds × devices):

==================  =======================================================================
reward model        the step reward model's training (LPO: the LRM; SPO: the pixel model;
                    Diffusion-DPO: none), from the cost record its policy run includes
optimisation        policy training: the run's ``rollout`` and ``optimisation`` stages. LPO's
                    and SPO's rollouts (sampling trajectories with the current policy, scoring
                    them with the step reward; :mod:`lpo.trainers.step_dpo`, step 1) are
                    booked apart and shown beside the total; Diffusion-DPO VAE-encodes its
                    pairs inside its optimisation
pair data           the offline preference pairs of the training split (``pairs`` stage
                    less its val split) and their MPCF filtering (``mpcf`` stage), from
                    ``BENCH/stages/{pairs,mpcf}.json`` (:func:`read_data_cost`). All three
                    methods use them: the LRM and the pixel model train on them, Diffusion-
                    DPO trains on them directly, LPO and SPO draw their prompts from them.
                    It is the same for every method, so it is a column of its own, not a
                    shift of every curve. The val pairs are evaluation data (the reward-model
                    accuracy table) and are not booked
==================  =======================================================================

Counted in full or amortised. One run pays for its reward model and its pair data; a
reward model (and a pair set) trained once can serve R policy runs (other base models,
seeds, sweeps), each then paying ``optimisation + (reward model + pair data) / R``. The
paper's SDXL LPO total of 92 A100-hours holds 52 of LRM training (SPEC §7): 45.2 per run
over 10 runs. R is ``amortise_runs`` (default :data:`DEFAULT_AMORTISE_RUNS`).

Compute to reach a fraction of a method's own best gain (:func:`fraction_of_best`). A
method's best gain is the largest paired Δ vs base among its checkpoints (95% Student t
over prompts). Only when that interval excludes 0 is there a gain to reach a fraction of;
then for each fraction f the first checkpoint (by device-seconds) whose Δ ≥ f × best gives
the device-seconds, in full and amortised. Both the best and the crossing are point
estimates of noisy checkpoints: the best of several is biased upward, and a checkpoint
within its interval of the target may sit either side of it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from lpo.bench.efficiency import (
    CLAIMS,
    COUNTED_STAGES,
    DEFAULT_AMORTISE_RUNS,
    EfficiencyData,
    MethodCurve,
    best_point,
    check_runs,
    claim_verdict,
    collect_curves,
    seconds_to_reach,
)
from lpo.evals.store import ResultRecord

FRACTIONS = (0.5, 0.9)  # of each method's own best paired gain vs base
NO_GAIN = "no detectable gain to reach a fraction of"


# --------------------------------------------------------------------------- pair data


@dataclass(frozen=True)
class DataCost:
    """Device-seconds of the training pairs and their MPCF filtering, shared by every method."""

    pairs_seconds: float  # the pairs stage less its val split (loading the base model included)
    mpcf_seconds: float
    val_pairs_seconds: float | None  # evaluation data; not booked
    source: str

    @property
    def seconds(self) -> float:
        return self.pairs_seconds + self.mpcf_seconds

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds}


def _stage(bench: Path, name: str, summary: dict[str, Any]) -> tuple[dict[str, Any] | None, float | None, str | None]:
    """(the stage's output, its wall seconds, where they came from) from stages/NAME.json, else bench.json."""
    path = bench / "stages" / f"{name}.json"
    if path.is_file():
        try:
            payload = json.loads(path.read_text())
            return payload.get("output"), float(payload["timing"]["seconds"]), f"stages/{name}.json"
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: fall back to bench.json's timing
    timing = (summary.get("stages") or {}).get(name)
    if isinstance(timing, dict) and timing.get("seconds") is not None:
        return None, float(timing["seconds"]), "bench.json"
    return None, None, None


def read_data_cost(bench_dir: str | Path) -> tuple[DataCost | None, list[str]]:
    """The pair data's cost of a bench folder, and notes on what could not be split or found.

    The bench runs its stages in one process on one device (``BenchConfig.device``), so a
    stage's wall seconds are its device-seconds on the device type the training runs report.
    """
    bench = Path(bench_dir)
    try:
        summary = json.loads((bench / "bench.json").read_text())
    except (OSError, ValueError):
        summary = {}
    summary = summary if isinstance(summary, dict) else {}
    output, pairs_s, source = _stage(bench, "pairs", summary)
    if pairs_s is None:
        return None, [f"no pairs stage timing in {bench}/stages/pairs.json or bench.json: the pair data's cost is unknown"]
    notes = []
    val_s = None
    try:
        val_s = float(output["val"]["seconds"]) if output else None
    except (KeyError, TypeError, ValueError):
        val_s = None
    if val_s is None:
        notes.append(f"the pairs stage ({source}) does not split train and val time: all {pairs_s:.1f} s booked as data")
    _, mpcf_s, mpcf_source = _stage(bench, "mpcf", summary)
    if mpcf_s is None:
        notes.append("no mpcf stage timing: MPCF booked as 0 s")
    sources = source if mpcf_source in (None, source) else f"{source}, {mpcf_source}"
    cost = DataCost(pairs_s - (val_s or 0.0), mpcf_s or 0.0, val_s, sources)
    return cost, notes


# --------------------------------------------------------------------------- per method


def fraction_of_best(curve: MethodCurve, higher_is_better: bool = True, fractions: Sequence[float] = FRACTIONS,
                     runs: int = DEFAULT_AMORTISE_RUNS) -> dict[str, Any]:
    """Device-seconds for ``curve`` to reach each fraction of its own best paired gain vs base (module docstring)."""
    s = 1.0 if higher_is_better else -1.0
    paired = [p for p in curve.points if p.delta is not None]
    out: dict[str, Any] = {"best": None, "detectable": False, "reason": None, "reach": []}
    if not paired:
        out["reason"] = "no paired Δ vs base (no per-prompt side files or no base-model record)"
        return out
    best = max(paired, key=lambda p: (s * p.delta, -p.device_seconds))
    gain = s * best.delta
    out["best"] = {"label": best.label, "step": best.step, "delta": best.delta, "delta_half": best.delta_half,
                   "device_seconds": best.device_seconds, "amortised_seconds": best.amortised_seconds(runs)}
    if best.delta_half is None or gain - best.delta_half <= 0:
        out["reason"] = NO_GAIN  # the best Δ's interval includes 0, or it has none
        return out
    out["detectable"] = True
    for fraction in fractions:
        target = fraction * gain
        point = next(p for p in curve.points if p.delta is not None and s * p.delta >= target)  # the best reaches it
        out["reach"].append({
            "fraction": fraction, "target_delta": s * target, "label": point.label, "step": point.step,
            "delta": point.delta, "delta_half": point.delta_half, "device_seconds": point.device_seconds,
            "amortised_seconds": point.amortised_seconds(runs),
        })
    return out


def method_costs(data: EfficiencyData, data_cost: DataCost | None, runs: int) -> dict[str, dict[str, Any]]:
    """Each series' final model: reward model, optimisation, pair data, totals in full and amortised over ``runs``."""
    shared = None if data_cost is None else data_cost.seconds
    out = {}
    for name, curve in data.curves.items():
        final = curve.final
        if final is None:
            continue
        amortised = final.amortised_seconds(runs)
        out[name] = {
            "method": curve.method, "device_types": list(final.device_types),
            "reward_model_seconds": final.reward_model_seconds, "optimisation_seconds": final.optimisation_seconds,
            "rollout_seconds": final.rollout_seconds,
            "data_seconds": shared, "one_run": final.device_seconds, "amortised": amortised,
            "one_run_with_data": None if shared is None else final.device_seconds + shared,
            "amortised_with_data": None if shared is None else amortised + shared / runs,
        }
    return out


def _curve_y(data: EfficiencyData) -> dict[str, str]:
    """What the quality-vs-cost curve plots: the paired Δ vs base where every point pairs, else the values and why."""
    points = [p for c in data.curves.values() for p in c.points]
    unpaired = [p.label for p in points if p.delta is None]
    if points and not unpaired:
        return {"kind": "delta", "note": "y: paired Δ vs the base model with its 95% interval (Student t over prompts)"}
    if data.base is None:
        why = "there is no base-model record to pair against"
    elif len(unpaired) == len(points):
        why = "no point could be paired with the base model (no per-prompt side files, or see the notes)"
    else:
        why = f"{len(unpaired)} of {len(points)} points could not be paired ({', '.join(unpaired)}; see the notes)"
    return {"kind": "value", "note": f"y: the unpaired values with their 95% interval over prompts, because {why}"}


# --------------------------------------------------------------------------- reported


def reported_cost_rows(runs: int = DEFAULT_AMORTISE_RUNS) -> list[dict[str, Any]]:
    """SPEC §7's A100-hour table as rows marked reported (other hardware and models than the bench)."""
    from lpo.evals.reported import A100_HOURS, LPO_PAPER_COST

    rows = []
    for (base, method), (rm, opt) in A100_HOURS.items():
        rows.append({"source": "reported", "reference": LPO_PAPER_COST, "base_model": base, "method": method,
                     "reward_model_a100_hours": rm, "optimisation_a100_hours": opt, "total_a100_hours": rm + opt,
                     "amortised_a100_hours": opt + rm / runs})
    return rows


def reported_ratios(runs: int = DEFAULT_AMORTISE_RUNS) -> dict[str, dict[str, float]]:
    """LPO's published A100-hours over Diffusion-DPO's and SPO's per base model: total, and amortised over ``runs``."""
    from lpo.evals.reported import A100_HOURS

    def amortised(key):
        rm, opt = A100_HOURS[key]
        return opt + rm / runs

    out = {}
    for base in sorted({b for b, _ in A100_HOURS}):
        lpo = sum(A100_HOURS[(base, "lpo")])
        out[base] = {ref: lpo / sum(A100_HOURS[(base, ref)]) for ref in ("diffusion-dpo", "spo")}
        out[base].update({f"{ref} amortised": amortised((base, "lpo")) / amortised((base, ref)) for ref in ("diffusion-dpo", "spo")})
    return out


# --------------------------------------------------------------------------- the report


def efficiency_report(
    records: Sequence[ResultRecord], benchmark: str = "world", metric: str = "world_utility", results_dir: Path | None = None,
    *, data_cost: DataCost | None = None, amortise_runs: int = DEFAULT_AMORTISE_RUNS, fractions: Sequence[float] = FRACTIONS,
) -> dict[str, Any]:
    """Curves (with paired Δ vs base when ``results_dir`` is given), best values, device-seconds to
    reach every method's best and a fraction of its own best gain, the cost table (reward model in
    full and amortised over ``amortise_runs``, the shared pair data ``data_cost``), verdicts and the
    reported cost rows, as one JSON-able dict."""
    runs = check_runs(amortise_runs)
    data = collect_curves(records, benchmark, metric, results_dir)
    higher = data.higher_is_better
    methods: dict[str, Any] = {}
    for name, curve in data.curves.items():
        best = best_point(curve, higher)
        final = curve.final
        methods[name] = {
            "method": curve.method,
            "run_id": curve.run_id,
            "device_types": list(curve.device_types),
            "reward_model_seconds": curve.reward_model_seconds,
            "start": None if data.base is None else {"device_seconds": curve.reward_model_seconds,
                                                     "amortised_seconds": curve.reward_model_seconds / runs,
                                                     "value": data.base.value},
            "curve": [{**p.as_dict(), "amortised_seconds": p.amortised_seconds(runs)} for p in curve.points],
            "best": None if best is None else best.as_dict(),
            "final": None if final is None else final.as_dict(),
        }
    # device-seconds for every method to reach every method's best
    targets: dict[str, dict[str, Any]] = {}
    for target_name, target_curve in data.curves.items():
        best = best_point(target_curve, higher)
        if best is None:
            continue
        targets[target_name] = {
            "target": best.value,
            "target_ci_half": best.ci_half,
            "seconds": {
                name: {
                    "strict": seconds_to_reach(curve, best.value, higher),
                    "within_noise": seconds_to_reach(curve, best.value, higher, best.ci_half, within_noise=True),
                }
                for name, curve in data.curves.items()
            },
        }
    shared = None if data_cost is None else data_cost.seconds
    verdicts = [v for claim in CLAIMS for v in claim_verdict(data, claim, runs, shared)]
    return {
        "benchmark": data.benchmark,
        "metric": data.metric,
        "metric_key": data.metric_key,
        "higher_is_better": higher,
        "amortise_runs": runs,
        "fractions": list(fractions),
        "counted": {
            "stages": list(COUNTED_STAGES),
            "formula": "Σ over the checkpoint's cost record and its included records (the reward model's training) of "
            "seconds[stage] × device_count, stage ∈ {reward_model_training, rollout, optimisation}",
            "rollouts": "LPO's and SPO's rollouts (sampling with the current policy, scoring with the step reward) are "
            "booked as rollout and counted in policy training (optimisation_seconds, with rollout_seconds beside it); "
            "records written before the split count them inside optimisation",
            "data": "the training pairs' generation and MPCF (bench stages pairs less its val split, and mpcf), shared by "
            "all three methods (reward models and Diffusion-DPO train on them, LPO and SPO take their prompts): a column "
            "of its own, not on the curves' x axis",
            "amortised": f"optimisation + reward model / {runs} (+ pair data / {runs} where the data is counted): one "
            f"reward model and one pair set serving {runs} policy runs (the paper's SDXL LPO 92 A100-h = 52 LRM + 40 "
            "optimisation)",
            "not_counted": "evaluation (also periodic evaluation during training) and the val pairs (evaluation data)",
            "within_noise": "value ≥ target − √(h² + h_target²), h = half-width of the 95% interval over prompts",
            "delta": "paired Δ vs the base model, per prompt on identical prompts and seeds, 95% Student t over prompts",
            "fraction": "first checkpoint (by device-seconds) whose paired Δ vs base ≥ fraction × the method's best Δ, "
            "only when the best Δ's 95% interval excludes 0; point estimates (the best of several checkpoints is "
            "biased upward)",
        },
        "base": None if data.base is None else data.base.as_dict(),
        "curve_y": _curve_y(data),
        "methods": methods,
        "targets": targets,
        "fraction_of_best": {name: fraction_of_best(curve, higher, fractions, runs) for name, curve in data.curves.items()},
        "data_cost": None if data_cost is None else data_cost.as_dict(),
        "costs": method_costs(data, data_cost, runs),
        "verdicts": verdicts,
        "reported_a100_hours": reported_cost_rows(runs),
        "reported_total_cost_ratios": reported_ratios(runs),
        "notes": data.notes,
    }
