"""The bench report's reward-model section: accuracy by timestep, bands, noise ensembles,
what the reward models and the policies learned from, and the reward kit they came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lpo.bench.report_doc import REPORT_DIR, ReportDoc, fmt_interval, read_json_noted


def reward_eval_section(doc: ReportDoc, bench: Path, notes: list[str]) -> None:
    from lpo.reward.jobs import LOW_T, TARGET_TITLES, accuracy_bands, binomial_half_width, plot_accuracy

    doc.heading(2, "Step reward models: held-out accuracy by timestep")
    folder = bench / "reward-eval"
    data = read_json_noted(folder / "accuracy_by_timestep.json", notes) if (folder / "accuracy_by_timestep.json").is_file() else None
    png_path = folder / "accuracy_by_timestep.png"
    if data is None and not png_path.is_file():
        doc.skip(f"no {folder}/accuracy_by_timestep.json (run `lpo lrm eval`)")
        return
    tables = {} if data is None else {key: _accuracy_table(data, key) for key in TARGET_TITLES if data.get(key)}
    png = png_path.read_bytes() if png_path.is_file() else None
    if png is None and "accuracy" in tables:  # draw it from the JSON
        png = plot_accuracy(tables["accuracy"], bench / REPORT_DIR / "accuracy_by_timestep.png",
                            tables.get("accuracy_true_order")).read_bytes()
    if png is not None:
        link = "../reward-eval/accuracy_by_timestep.png" if png_path.is_file() else "accuracy_by_timestep.png"
        doc.image(png, "held-out accuracy by timestep", link)
    if data is None:
        return
    bands_from_table = []
    for key, table in tables.items():
        # older JSON (before the bands were written): the same bands from its own table
        bands = (data.get("bands") or {}).get(key) or accuracy_bands(table)
        if not (data.get("bands") or {}).get(key):
            bands_from_table.append(TARGET_TITLES[key])
        names = list(table)
        ts = sorted({t for by_t in table.values() for t in by_t}, reverse=True)
        rows = [[str(t)] + [f"{table[n][t][0]:.3f}" if t in table[n] else "—" for n in names] for t in ts]
        for band, label in ((f"t<={LOW_T}", f"mean t≤{LOW_T}"), ("all", "mean all t")):
            cells = [bands.get(n, {}).get(band) for n in names]
            rows.append([label] + ["—" if c is None else fmt_interval(c[0], c[1]) for c in cells])
        ensembles = (data.get("ensembles") or {}).get(key) or {}
        for band, label in ((f"t<={LOW_T}", f"ensemble t≤{LOW_T}"), ("all", "ensemble all t")):
            cells = [ensembles.get(n, {}).get(band) for n in names]
            if any(c is not None for c in cells):
                rows.append([label] + ["—" if c is None else fmt_interval(c[0], binomial_half_width(*c)) for c in cells])
        n = next((cell[1] for by_t in table.values() for cell in by_t.values()), None)
        doc.para(f"Against the {TARGET_TITLES[key]} (n = {n} decisive pairs per cell):")
        doc.table(["t"] + names, rows)
    lines = [f"held-out pairs: {data.get('pairs')}; noise: {data.get('noise')}, seed {data.get('seed')}; the same noise "
             "for every model at each t; ± is a 95% binomial half-width over the decisive pairs (pairs are shared across "
             "t, so averaging over t does not narrow it)"]
    agreement = data.get("label_agreement") or [None, None]
    if agreement[0] is not None:
        lines.append(f"the annotators' labels agree with the true-utility order on {agreement[0]:.3f} of {agreement[1]} "
                     "pairs decisive under both")
    if bands_from_table:
        lines.append(f"band rows computed here from the table ({', '.join(bands_from_table)}): the JSON predates them")
    if any((data.get("ensembles") or {}).values()):
        lines.append("ensemble rows: each image's score averaged over its noised copies at every t of the band, then "
                     "the pair judged once (test-time noise ensembling, as DiNa-LRM)")
    training = _reward_data_note(bench, notes)
    if training:
        lines.append(training)
    kit = _kit_note(bench, notes)
    if kit:
        lines.append(kit)
    doc.bullets(lines)


def _reward_data_note(bench: Path, notes: list[str]) -> str | None:
    """What the reward models and the policies learned from (the bench's MPCF stage)."""
    marker = bench / "stages" / "mpcf.json"
    output = (read_json_noted(marker, notes) or {}).get("output") if marker.is_file() else None
    if not output or "kept" not in output:
        return None
    line = f"the reward models learned from {output['kept']:,} MPCF-kept pairs of {output.get('of', 0):,} generated"
    policy = output.get("policy")
    if policy:
        line += (f"; the policies from the {policy['kept']:,} of them that belong to the pool's first "
                 f"{policy['prompts']:,} prompts (Diffusion-DPO's pairs, LPO's and SPO's prompts)")
    return line


def _kit_note(bench: Path, notes: list[str]) -> str | None:
    """Where the reward models came from, when a reward kit supplied them (lpo.bench.kit)."""
    marker = bench / "stages" / "reward-eval.json"
    kit = (read_json_noted(marker, notes) or {}).get("kit") if marker.is_file() else None
    if not kit:
        return None
    git = kit.get("git") or {}
    return (f"the pairs, the reward models and this table come from the reward kit {kit.get('folder')} (built at commit "
            f"{str(git.get('commit'))[:7]} on {kit.get('built_on')}; rebuild: {kit.get('command')}); their measured "
            "seconds are booked in the efficiency section as if this bench had run them")


def _accuracy_table(data: dict[str, Any], key: str = "accuracy") -> dict[str, dict[int, list]]:
    return {name: {int(t): cell for t, cell in by_t.items()} for name, by_t in data.get(key, {}).items()}
