"""The bench's answer, first: paired differences of the final models, over training seeds.

From the result records of a bench (and their per-prompt side files) this builds:

- the headline table: each method's final model minus the base model, and each pair of
  methods (LPO − SPO, LPO − Diffusion-DPO, SPO − Diffusion-DPO), on identical prompts
  and seeds: the seed-pooled paired Δ with its 95% Student-t interval over prompts, the
  number of training seeds, the between-seed mean ± SD with its 95% half-width, and the
  word (better / worse / no detectable difference). The rule that word follows, "both
  the pooled paired interval and the seed spread must exclude 0", is
  :func:`lpo.evals.paired.seeded_difference`'s;
- the minimum detectable difference of each method's final models against the base model:
  the paired 95% half-width of the headline's comparison (pooled over the training seeds),
  from the per-prompt difference SD the bench observed, with the widest single seed's beside it;
- the power table: prompts × images needed for the quick and full presets' target
  half-widths (:data:`TARGET_HALF_WIDTHS`), from the largest per-prompt SD observed
  (:func:`lpo.evals.paired.required_eval_size`).

Which run a record belongs to: `lpo bench --seeds N` trains seed 0 in ``runs/METHOD`` and
seed ``i`` in ``runs/METHOD/seed-i``, whose run id is ``seed-i`` (:func:`seed_index`).
Only final models count here; intermediate checkpoints are the efficiency view's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from lpo.core.errors import LpoError
from lpo.evals.paired import (
    INTERVAL_METHOD,
    PairedDifference,
    paired_difference_records,
    required_eval_size,
    seeded_difference,
)

METHOD_ORDER = ("lpo", "spo", "diffusion-dpo")
METHOD_NAMES = {"lpo": "LPO", "spo": "SPO", "diffusion-dpo": "DPO", "base": "base"}
METHOD_PAIRS = (("lpo", "spo"), ("lpo", "diffusion-dpo"), ("spo", "diffusion-dpo"))
TARGET_HALF_WIDTHS = {"quick": 0.02, "full": 0.01}  # issue 11: the presets' paired 95% half-widths
_SEED_RUN = re.compile(r"^seed-(\d+)$")


def seed_index(record) -> int:
    """The training seed index of a record's run: ``i`` for run id ``seed-i``, else 0."""
    match = _SEED_RUN.match(str(record.run_id or ""))
    return int(match.group(1)) if match else 0


def final_records(records: Sequence[Any], benchmark: str, metric: str) -> tuple[Any, dict[str, dict[int, Any]], list[str]]:
    """(base record, {method: {seed: final record}}, notes) on the base model's protocol; latest record wins.

    The base model's protocol is the largest it was evaluated under (prompts × images): a
    bench also evaluates the base and final models on the smaller quality-vs-compute curve
    protocol, and the answer is read at the final one."""
    notes: list[str] = []
    chosen = [r for r in records if r.benchmark == benchmark and r.metric == metric and "step" not in r.checkpoint]
    bases = sorted((r for r in chosen if r.method == "base"), key=lambda r: (_size(r), r.created))
    if not bases:
        return None, {}, [f"no base-model {metric} record on {benchmark}"]
    base = bases[-1]
    protocol = (base.metric_key, *_protocol_key(base))
    finals: dict[str, dict[int, Any]] = {}
    other_protocol = []
    for r in sorted(chosen, key=lambda r: r.created):
        if r.method not in METHOD_ORDER:
            continue
        if (r.metric_key, *_protocol_key(r)) != protocol:
            other_protocol.append(r)
            continue
        finals.setdefault(r.method, {})[seed_index(r)] = r
    # a final model also scored on the smaller curve protocol is expected; one scored only
    # under another protocol than the base model's cannot be paired with it, and is said
    for r in other_protocol:
        if seed_index(r) not in finals.get(r.method, {}):
            notes.append(f"{r.checkpoint.get('label')} ({r.record_id}) is not in the table: it has no evaluation at the "
                         f"base model's {_size_text(base)} on the same protocol, only at {_size_text(r)}")
    ordered = {m: dict(sorted(finals[m].items())) for m in METHOD_ORDER if m in finals}
    return base, ordered, notes


def _size_text(record) -> str:
    return f"{record.n_prompts} prompts × {record.protocol.get('images_per_prompt')} images"


def _protocol_key(record) -> tuple[Any, ...]:
    """What two records must share to be paired: benchmark, prompt set, seed, images per prompt."""
    return (record.benchmark_key, record.prompt_set_hash, record.protocol.get("seed"), record.protocol.get("images_per_prompt"))


def _size(record) -> int:
    return int(record.n_prompts or 0) * int(record.protocol.get("images_per_prompt") or 0)


def final_protocol_records(records: Sequence[Any], benchmark: str = "world", metric: str = "world_utility") -> list[Any]:
    """Every record of a final model (any metric) evaluated under the headline's protocol
    (:func:`final_records`'s base protocol) on ``benchmark``; other benchmarks' finals unchanged."""
    base, _, _ = final_records(records, benchmark, metric)
    finals = [r for r in records if "step" not in r.checkpoint]
    if base is None:
        return finals
    key = _protocol_key(base)
    return [r for r in finals if r.benchmark != benchmark or _protocol_key(r) == key]


def _row(label: str, diff, kind: str) -> dict[str, Any]:
    return {"comparison": label, "kind": kind, **diff.as_dict()}


def headline(records: Sequence[Any], results_dir: Path, benchmark: str = "world", metric: str = "world_utility",
             preset: str | None = None) -> dict[str, Any]:
    """The headline, minimum detectable differences and power of one benchmark, as a JSON-able dict."""
    base, finals, notes = final_records(records, benchmark, metric)
    out: dict[str, Any] = {"benchmark": benchmark, "metric": metric, "method": INTERVAL_METHOD, "rows": [],
                           "mde": [], "power": [], "notes": notes}
    if base is None:
        return out
    out["metric"] = base.metric_key
    out["n_prompts"], out["images_per_prompt"] = base.n_prompts, base.protocol.get("images_per_prompt")
    per_seed: dict[str, list[PairedDifference]] = {}
    for method, by_seed in finals.items():
        diffs = []
        for seed, record in by_seed.items():
            try:
                diffs.append(paired_difference_records(results_dir, record, base))
            except LpoError as err:
                notes.append(f"{METHOD_NAMES[method]} seed {seed}: {err}")
        if diffs:
            per_seed[method] = diffs
    # 1. each method vs base, then each pair of methods
    vs_base = {method: seeded_difference(diffs) for method, diffs in per_seed.items()}
    for method, diff in vs_base.items():
        out["rows"].append(_row(f"{METHOD_NAMES[method]} − base", diff, "vs base"))
    for a, b in METHOD_PAIRS:
        if a in per_seed and b in per_seed:
            diff = seeded_difference(per_seed[a], against=per_seed[b])
            out["rows"].append(_row(f"{METHOD_NAMES[a]} − {METHOD_NAMES[b]}", diff, "methods"))
    # 2. minimum detectable difference of the final models vs base: the half-width of the
    # comparison the headline makes (pooled over seeds), and beside it the widest single seed's
    for method, diffs in per_seed.items():
        halves = [d.half_width for d in diffs if d.half_width is not None]
        pooled = vs_base[method].pooled
        out["mde"].append({
            "method": METHOD_NAMES[method], "seeds": len(diffs), "n_prompts": diffs[0].n_prompts,
            "images_per_prompt": diffs[0].images_per_prompt,
            "per_prompt_sd": pooled.sd or 0.0, "within_sd": diffs[0].within_sd,
            "half_width": pooled.half_width,
            "per_seed_half_width": max(halves) if halves else None,
        })
    # 3. power: the eval size each preset's target needs at the largest per-prompt SD observed
    measured = [d for diffs in per_seed.values() for d in diffs if d.sd is not None]
    if measured:
        worst = max(measured, key=lambda d: d.sd or 0.0)
        for name, target in TARGET_HALF_WIDTHS.items():
            sizes = required_eval_size(worst.sd or 0.0, target, measured_images_per_prompt=worst.images_per_prompt,
                                       within_sd=worst.within_sd)
            out["power"].append({"preset": name, "target_half_width": target, "from": f"{worst.a} − {worst.b}",
                                 "per_prompt_sd": worst.sd, "within_sd": worst.within_sd,
                                 "sizes": [{"prompts": s.prompts, "images_per_prompt": s.images_per_prompt,
                                            "half_width": s.half_width, "assumption": s.assumption} for s in sizes]})
    out["preset"] = preset
    return out


# --------------------------------------------------------------------------- tables


def _pm(mean: float, half: float | None) -> str:
    return f"{mean:+.3f}" if half is None else f"{mean:+.3f} ± {half:.3f}"


def headline_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Comparison, pooled paired Δ ± 95%, seeds, between-seed mean ± SD, verdict."""
    header = ["comparison", f"Δ {data['metric']} (paired, 95% t over prompts)", "training seeds",
              "between seeds: mean ± SD (95% half-width)", "verdict"]
    rows = []
    for row in data["rows"]:
        pooled = row["pooled"]
        seeds = str(row["seeds"][0]) if row["kind"] == "vs base" else f"{row['seeds'][0]} vs {row['seeds'][1]}"
        spread = "— (1 seed)" if row["seed_sd"] is None else (
            f"{row['seed_mean']:+.3f} ± {row['seed_sd']:.3f} ({row['seed_half_width']:.3f})")
        rows.append([row["comparison"], _pm(pooled["mean"], pooled["half_width"]), seeds, spread, row["word"]])
    return header, rows


def mde_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["final model vs base", "prompts × images", "per-prompt Δ SD", "within-prompt image SD",
              "minimum detectable Δ (paired 95% half-width)", "widest single seed"]
    rows = [[m["method"] + (f" ({m['seeds']} seeds, pooled)" if m["seeds"] > 1 else ""),
             f"{m['n_prompts']} × {m['images_per_prompt']}", f"{m['per_prompt_sd']:.3f}",
             "—" if m["within_sd"] is None else f"{m['within_sd']:.3f}",
             "—" if m["half_width"] is None else f"±{m['half_width']:.3f}",
             "—" if m["seeds"] == 1 or m.get("per_seed_half_width") is None else f"±{m['per_seed_half_width']:.3f}"]
            for m in data["mde"]]
    return header, rows


def power_table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    sizes = sorted({s["images_per_prompt"] for p in data["power"] for s in p["sizes"]})
    header = ["preset target (paired 95% half-width)"] + [f"{m} image{'s' if m > 1 else ''} / prompt" for m in sizes]
    rows = []
    for p in data["power"]:
        by = {s["images_per_prompt"]: s for s in p["sizes"]}
        rows.append([f"{p['preset']}: ±{p['target_half_width']:g}"]
                    + [f"{by[m]['prompts']} prompts" if m in by else "—" for m in sizes])
    return header, rows


def power_notes(data: dict[str, Any]) -> list[str]:
    if not data["power"]:
        return []
    p = data["power"][0]
    within = "unknown" if p["within_sd"] is None else f"{p['within_sd']:.3f}"
    return [f"for one training seed (pooling seeds narrows the interval), from the widest observed per-prompt Δ SD ({p['per_prompt_sd']:.3f}, {p['from']}, "
            f"{data['images_per_prompt']} images per prompt; within-prompt image SD {within}); "
            f"model: {p['sizes'][0]['assumption'] if p['sizes'] else '—'}; lpo.evals.paired.required_eval_size"]


def console_lines(data: dict[str, Any]) -> list[str]:
    """Plain lines for the end of `lpo bench`: the headline verdicts and the minimum detectable difference."""
    lines = [f"paired {data['metric']} on {data['benchmark']} ({INTERVAL_METHOD}):"]
    for row in data["rows"]:
        pooled = row["pooled"]
        spread = "" if row["seed_sd"] is None else f"; seeds {row['seed_mean']:+.3f} ± {row['seed_sd']:.3f} SD"
        lines.append(f"  {row['comparison']}: {_pm(pooled['mean'], pooled['half_width'])}{spread} → {row['word']}")
    for m in data["mde"]:
        if m["half_width"] is not None:
            seeds = "" if m["seeds"] == 1 else f", pooled over {m['seeds']} seeds; one seed ±{m['per_seed_half_width']:.3f}"
            lines.append(f"  minimum detectable Δ, {m['method']} vs base: ±{m['half_width']:.3f} "
                         f"({m['n_prompts']} prompts × {m['images_per_prompt']} images, per-prompt SD {m['per_prompt_sd']:.3f}{seeds})")
    for p in data["power"]:
        options = ", ".join(f"{s['prompts']} × {s['images_per_prompt']}" for s in p["sizes"])
        if options:
            lines.append(f"  for ±{p['target_half_width']:g} ({p['preset']} target) one training seed needs prompts × images: {options}")
    return lines
