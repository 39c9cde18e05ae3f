"""The efficiency view's tables and Markdown (:mod:`lpo.bench.efficiency_view` computes them).

Each ``*_table`` takes the dict of :func:`lpo.bench.efficiency_view.efficiency_report` and
returns (header, rows) of strings, so the Markdown here and the bench's HTML report
(:mod:`lpo.bench.report`) render one set of tables.
"""

from __future__ import annotations

from typing import Any

from lpo.bench.efficiency import METHOD_NAMES, METHOD_ORDER, _fmt_ratio, _fmt_seconds, _fmt_value
from lpo.core.tables import markdown_table


def curve_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Every point of every curve: checkpoint, step, device-seconds split, value ± half-width."""
    paired = any(p.get("delta") is not None for m in report["methods"].values() for p in m["curve"])
    runs = report["amortise_runs"]
    header = ["method", "checkpoint", "step", "reward-model device-s", "optimisation device-s", "total device-s",
              f"total, reward model / {runs} runs",
              f"{report['metric_key'] or report['metric']} {'↑' if report['higher_is_better'] else '↓'}"]
    header += ["Δ vs base (paired, 95% t)"] if paired else []
    rows = []
    base = report.get("base")
    if base is not None:
        rows.append(["base", base["label"], "—", "0", "0", "0", "0", _fmt_value(base["value"], base["ci_half"])]
                    + (["—"] if paired else []))
    for name, m in report["methods"].items():
        for p in m["curve"]:
            row = [name, p["label"], "final" if p["final"] else str(p["step"]), f"{p['reward_model_seconds']:.1f}",
                   f"{p['optimisation_seconds']:.1f}", f"{p['device_seconds']:.1f}", f"{p['amortised_seconds']:.1f}",
                   _fmt_value(p["value"], p["ci_half"])]
            if paired:
                d, h = p.get("delta"), p.get("delta_half")
                row.append("—" if d is None else (f"{d:+.3f}" if h is None else f"{d:+.3f} ± {h:.3f}"))
            rows.append(row)
    return header, rows


def reach_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Rows: methods; columns: their best, and device-seconds to reach each method's best."""
    names = list(report["targets"])
    header = ["method", "best (at device-s)"] + [f"to reach {n}'s best ({_fmt_value(report['targets'][n]['target'], report['targets'][n]['target_ci_half'])})" for n in names]
    rows = []
    for name, m in report["methods"].items():
        best = m["best"]
        cells = [name, "—" if best is None else f"{_fmt_value(best['value'], best['ci_half'])} (at {best['device_seconds']:.1f})"]
        for target in names:
            s = report["targets"][target]["seconds"][name]
            cell = _fmt_seconds(s["strict"])
            if s["strict"] != s["within_noise"]:
                cell += f" (within noise: {_fmt_seconds(s['within_noise'])})"
            cells.append(cell)
        rows.append(cells)
    return header, rows


def fraction_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per method: its best paired gain vs base, and device-seconds (in full; amortised) to reach each fraction of it."""
    runs = report["amortise_runs"]
    fractions = report["fractions"]
    header = ["method", "best Δ vs base (paired, 95% t)"] + [
        f"to {f:.0%} of it: device-s (reward model / {runs} runs)" for f in fractions]
    rows = []
    for name, f in report["fraction_of_best"].items():
        best = f["best"]
        cells = [name, "—" if best is None else f"{_pm(best['delta'], best['delta_half'])} at {best['label']} "
                 f"({_fmt_seconds(best['device_seconds'])})"]
        if not f["detectable"]:
            cells += [f["reason"]] * len(fractions)
        else:
            cells += [f"{_fmt_seconds(r['device_seconds'])} ({_fmt_seconds(r['amortised_seconds'])}) at {r['label']}, "
                      f"Δ {_pm(r['delta'], r['delta_half'])}" for r in f["reach"]]
        rows.append(cells)
    return header, rows


def _pm(mean: float, half: float | None) -> str:
    return f"{mean:+.3f}" if half is None else f"{mean:+.3f} ± {half:.3f}"


def _s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.1f}"


def cost_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Measured device-seconds of the final models: the parts, one run in full, and per run over R runs.

    Below the methods, LPO's total over each other method's in every total column.
    """
    runs = report["amortise_runs"]
    header = ["method", "reward model", "optimisation (incl. rollouts)", "pair data (shared)",
              "one run: RM + opt", "one run + data", f"per run over {runs} runs: opt + RM/{runs}",
              f"per run over {runs} runs + data/{runs}"]
    totals = ("one_run", "one_run_with_data", "amortised", "amortised_with_data")
    costs = report["costs"]
    rows = []
    for name, c in costs.items():
        one_run = (f"{c['reward_model_seconds']:.1f} + {c['optimisation_seconds']:.1f} = {c['one_run']:.1f} "
                   f"({', '.join(c['device_types']) or '?'})")
        optimisation = _s(c["optimisation_seconds"])
        if c.get("rollout_seconds"):  # cost records written since the ledger books rollouts apart
            optimisation += f" (rollouts {_s(c['rollout_seconds'])})"
        rows.append([name, _s(c["reward_model_seconds"]), optimisation, _s(c["data_seconds"]), one_run,
                     _s(c["one_run_with_data"]), _s(c["amortised"]), _s(c["amortised_with_data"])])
    lpo = [c for c in costs.values() if c["method"] == "lpo"]
    for ref in ("diffusion-dpo", "spo"):
        others = [c for c in costs.values() if c["method"] == ref]
        if len(lpo) != 1 or len(others) != 1:
            continue
        ratios = [None if not others[0][k] or lpo[0][k] is None else lpo[0][k] / others[0][k] for k in totals]
        rows.append([f"LPO / {METHOD_NAMES[ref]}", "", "", ""] + [_fmt_ratio(r) for r in ratios])
    return header, rows


def reported_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The published A100-hours (reported): reward model + optimisation = total, and per run over R runs."""
    runs = report["amortise_runs"]
    reported = {(r["base_model"], r["method"]): r for r in report["reported_a100_hours"]}
    header = ["method (reported)"]
    for base in ("SD1.5", "SDXL"):
        header += [f"{base}: RM + opt = total A100-h", f"{base} per run over {runs} runs: opt + RM/{runs}"]
    rows = []
    for method in METHOD_ORDER:
        row = [METHOD_NAMES[method]]
        for base in ("sd15", "sdxl"):
            r = reported.get((base, method))
            row += ["—", "—"] if r is None else [
                f"{r['reward_model_a100_hours']:g} + {r['optimisation_a100_hours']:g} = {r['total_a100_hours']:g}",
                f"{r['amortised_a100_hours']:.4g}"]
        rows.append(row)
    ratios = report["reported_total_cost_ratios"]
    for ref in ("diffusion-dpo", "spo"):
        row = [f"LPO / {METHOD_NAMES[ref]}"]
        for base in ("sd15", "sdxl"):
            row += [_fmt_ratio(ratios.get(base, {}).get(ref)), _fmt_ratio(ratios.get(base, {}).get(f"{ref} amortised"))]
        rows.append(row)
    return header, rows


def verdict_markdown(verdict: dict[str, Any]) -> str:
    """One verdict as a Markdown line: the question, both answers in bold, then the numbers."""
    parts = [f"{label}: **{answer}**" for label, answer in verdict_answers(verdict)]
    return f"**{verdict['question']}** {'; '.join(parts)}. {verdict['text']}"


def verdict_answers(verdict: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, answer) pairs: strict, within noise, and with the reward models amortised over R runs."""
    runs = verdict.get("amortise_runs")
    out = [("strict", verdict["answer"]), ("within noise", verdict["answer_within_noise"])]
    if runs is not None:
        out.append((f"reward models amortised over {runs} runs", verdict["answer_amortised"]))
    return out


def efficiency_notes(report: dict[str, Any]) -> list[str]:
    """The footnotes of the efficiency tables: what is counted, what "within noise" means, what reported means."""
    counted = report["counted"]
    data = report.get("data_cost")
    data_note = ("pair data: unknown (no pairs stage timing in the bench folder)" if data is None else
                 f"pair data: {data['seconds']:.1f} device-s = training pairs {data['pairs_seconds']:.1f} + MPCF "
                 f"{data['mpcf_seconds']:.1f} (from {data['source']})"
                 + ("" if data["val_pairs_seconds"] is None else f"; the val pairs' {data['val_pairs_seconds']:.1f} s "
                    "are evaluation data, not booked"))
    return [
        f"counted: {counted['formula']}; not counted: {counted['not_counted']}.",
        f"rollouts: {counted['rollouts']}.",
        f"{data_note}. Data cost is {counted['data']}.",
        f"amortised: {counted['amortised']}.",
        f"within noise: {counted['within_noise']} (the bands are treated as independent: conservative, the records "
        "share prompts and seeds).",
        f"Δ vs base: {counted['delta']}.",
        f"fraction of own best gain: {counted['fraction']}.",
        "reported: the LPO paper's A100-hours on SD1.5 / SDXL (published, not measured here; other hardware, "
        "models and units). Only ratios compare, and the published ones are of total training cost, not of cost to "
        "reach a score.",
    ] + [f"note: {n}" for n in report["notes"]]


def render_efficiency_markdown(report: dict[str, Any], level: int = 2) -> str:
    """The efficiency section: verdicts, curve table, reach table, measured vs reported cost."""
    h = "#" * level
    lines = [f"{h} Efficiency: {report['metric_key'] or report['metric']} on {report['benchmark']} against training device-seconds", ""]
    lines += [f"{h}# Verdicts", ""]
    lines += [f"- {verdict_markdown(v)}" for v in report["verdicts"]] + [""]
    lines += [f"{h}# Quality against training device-seconds", "", report["curve_y"]["note"], ""]
    lines += markdown_table(*curve_table(report)) + [""]
    lines += [f"{h}# Compute to reach a fraction of each method's own best gain", ""] + markdown_table(*fraction_table(report)) + [""]
    lines += [f"{h}# Device-seconds to reach a target", ""] + markdown_table(*reach_table(report)) + [""]
    lines += [f"{h}# Training cost: reward model in full and amortised, pair data", ""] + markdown_table(*cost_table(report)) + [""]
    lines += [f"{h}# Published training cost (reported)", ""] + markdown_table(*reported_table(report)) + [""]
    lines += [f"- {n}" for n in efficiency_notes(report)]
    return "\n".join(lines) + "\n"
