"""The efficiency view's tables and Markdown (:mod:`lpo.bench.efficiency` computes them).

Each ``*_table`` takes the dict of :func:`lpo.bench.efficiency.efficiency_report` and
returns (header, rows) of strings, so the Markdown here and the bench's HTML report
(:mod:`lpo.bench.report`) render one set of tables.
"""

from __future__ import annotations

from typing import Any

from lpo.bench.efficiency import METHOD_NAMES, METHOD_ORDER, _fmt_ratio, _fmt_seconds, _fmt_value


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]


def curve_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Every point of every curve: checkpoint, step, device-seconds split, value ± half-width."""
    paired = any(p.get("delta") is not None for m in report["methods"].values() for p in m["curve"])
    header = ["method", "checkpoint", "step", "reward-model device-s", "optimisation device-s", "total device-s",
              f"{report['metric_key'] or report['metric']} {'↑' if report['higher_is_better'] else '↓'}"]
    header += ["Δ vs base (paired, 95% t)"] if paired else []
    rows = []
    base = report.get("base")
    if base is not None:
        rows.append(["base", base["label"], "—", "0", "0", "0", _fmt_value(base["value"], base["ci_half"])] + (["—"] if paired else []))
    for name, m in report["methods"].items():
        for p in m["curve"]:
            row = [name, p["label"], "final" if p["final"] else str(p["step"]), f"{p['reward_model_seconds']:.1f}",
                   f"{p['optimisation_seconds']:.1f}", f"{p['device_seconds']:.1f}", _fmt_value(p["value"], p["ci_half"])]
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


def cost_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Measured training device-seconds of the final models beside the published A100-hours (reported)."""
    reported = {(r["base_model"], r["method"]): r for r in report["reported_a100_hours"]}
    header = ["method", f"measured ({report['benchmark']}): RM + optimisation = total device-s",
              "reported SD1.5: RM + opt = total A100-h", "reported SDXL: RM + opt = total A100-h"]
    rows = []
    for method in METHOD_ORDER:
        measured = [m for m in report["methods"].values() if m["method"] == method]
        cells = []
        for m in measured:
            f = m["final"]
            if f is not None:
                cells.append(f"{f['reward_model_seconds']:.1f} + {f['optimisation_seconds']:.1f} = {f['device_seconds']:.1f} "
                             f"({', '.join(f['device_types']) or '?'})")
        row = [METHOD_NAMES[method], "; ".join(cells) or "—"]
        for base in ("sd15", "sdxl"):
            r = reported.get((base, method))
            row.append("—" if r is None else f"{r['reward_model_a100_hours']:g} + {r['optimisation_a100_hours']:g} = {r['total_a100_hours']:g}")
        rows.append(row)
    ratios = report["reported_total_cost_ratios"]
    measured_ratio = {}
    for v in report["verdicts"]:
        if v.get("total_cost_ratio") is not None:
            measured_ratio.setdefault(v["claim"]["reference"], v["total_cost_ratio"])
    for ref in ("diffusion-dpo", "spo"):
        rows.append([
            f"LPO / {METHOD_NAMES[ref]} (total)",
            _fmt_ratio(measured_ratio.get(ref)),
            _fmt_ratio(ratios.get("sd15", {}).get(ref)),
            _fmt_ratio(ratios.get("sdxl", {}).get(ref)),
        ])
    return header, rows


def verdict_markdown(verdict: dict[str, Any]) -> str:
    """One verdict as a Markdown line: the question, both answers in bold, then the numbers."""
    return (
        f"**{verdict['question']}** strict: **{verdict['answer']}**; within noise: **{verdict['answer_within_noise']}**. "
        f"{verdict['text']}"
    )


def efficiency_notes(report: dict[str, Any]) -> list[str]:
    """The footnotes of the efficiency tables: what is counted, what "within noise" means, what reported means."""
    counted = report["counted"]
    return [
        f"counted: {counted['formula']}; not counted: {counted['not_counted']}.",
        f"within noise: {counted['within_noise']} (the bands are treated as independent: conservative, the records "
        "share prompts and seeds).",
        f"Δ vs base: {counted['delta']}.",
        "reported columns: the LPO paper's A100-hours on SD1.5 / SDXL (published, not measured here; other hardware, "
        "models and units). Only ratios compare, and the published ones are of total training cost, not of cost to "
        "reach a score.",
    ] + [f"note: {n}" for n in report["notes"]]


def render_efficiency_markdown(report: dict[str, Any], level: int = 2) -> str:
    """The efficiency section: verdicts, curve table, reach table, measured vs reported cost."""
    h = "#" * level
    lines = [f"{h} Efficiency: {report['metric_key'] or report['metric']} on {report['benchmark']} against training device-seconds", ""]
    lines += [f"{h}# Verdicts", ""]
    lines += [f"- {verdict_markdown(v)}" for v in report["verdicts"]] + [""]
    lines += [f"{h}# Quality against training device-seconds", ""] + _md(*curve_table(report)) + [""]
    lines += [f"{h}# Device-seconds to reach a target", ""] + _md(*reach_table(report)) + [""]
    lines += [f"{h}# Training cost: measured here vs published (reported)", ""] + _md(*cost_table(report)) + [""]
    lines += [f"- {n}" for n in efficiency_notes(report)]
    return "\n".join(lines) + "\n"
