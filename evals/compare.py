"""``lpo compare``: several checkpoints × several benchmarks under one pinned protocol.

Every cell is one :func:`lpo.evals.harness.run_eval` (records appended to the results
store as usual), so images come from the image cache when they exist: a checkpoint
already evaluated under the same pixel settings generates nothing, and one compared
again generates nothing. What is pinned: the prompts (each benchmark's prompt set, the
same ``--max-prompts`` selection), the seeds (image ``k`` of a prompt has
``image_seed(seed, prompt, k)`` for every checkpoint), the sampler, steps, η,
resolution, precision and images per prompt. CFG is either each checkpoint's own (a
registry entry's original-evaluation CFG, else 5.0) or one common value; the table says
which, and each row shows its CFG.

Beside the metric columns (cells marked optimised / related / held out for trained
checkpoints, :mod:`lpo.evals.signals`) each row has the win-rate against the reference
checkpoint on the win metrics (PickScore where evaluated, the world's utility in the
world), per image on identical prompts and seeds, ties ½, with a 95% interval over
prompts (:mod:`lpo.evals.winrate`), and the paired difference on the same metrics: per
prompt the checkpoint's mean minus the reference's, its mean with a 95% Student-t interval
over prompts and a word (better / worse / no detectable difference;
:func:`lpo.evals.paired.paired_difference`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from lpo.core.errors import LpoError
from lpo.evals.harness import EvalConfig, EvalOutput, run_eval
from lpo.evals.protocol import EvalProtocol
from lpo.evals.paired import INTERVAL_METHOD, PRIMARY_METRICS, PairedDifference, paired_difference
from lpo.evals.store import DEFAULT_RESULTS_DIR
from lpo.evals.winrate import WinRate, paired_win_rate

# The win metric of a benchmark: the first of these it evaluated, else its first per-image metric.
WIN_METRIC_PREFERENCE = PRIMARY_METRICS


@dataclass
class CompareConfig:
    checkpoints: tuple[str, ...]
    benchmarks: tuple[str, ...] = ("world",)
    reference: str | None = None  # None: the first checkpoint
    prompts: dict[str, str] = field(default_factory=dict)  # benchmark -> prompt source
    metrics: tuple[str, ...] = ()  # empty: each benchmark's defaults (with its diversity measure)
    win_metrics: tuple[str, ...] = ()  # empty: WIN_METRIC_PREFERENCE
    max_prompts: int | None = None
    # One protocol for every checkpoint: guidance_scale None = each checkpoint's own CFG,
    # images_per_prompt None = each benchmark's default
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    tie_tolerance: float = 0.0
    metric_weights: dict[str, str] = field(default_factory=dict)
    metric_processors: dict[str, str] = field(default_factory=dict)
    metric_dtype: str = "float32"
    metric_batch_size: int = 16
    device: str = "auto"
    cache_dir: Path | None = None
    results_dir: Path | None = DEFAULT_RESULTS_DIR
    registry: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)  # checkpoint spec -> row label

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise LpoError("compare needs at least one checkpoint; name two or more (e.g. sd15 dpo-sd15 lpo-sd15)")
        repeated = [c for c in dict.fromkeys(self.checkpoints) if self.checkpoints.count(c) > 1]
        if repeated:
            raise LpoError(f"checkpoint {repeated[0]!r} is listed twice; list each once")
        if not self.benchmarks:
            raise LpoError("compare needs at least one benchmark")
        if self.tie_tolerance < 0:
            raise LpoError(f"tie tolerance must be >= 0, got {self.tie_tolerance}")
        unknown = sorted(set(self.prompts) - set(self.benchmarks))
        if unknown:
            raise LpoError(f"prompt source given for {unknown[0]!r}, which is not compared; use BENCHMARK=SOURCE for one of {', '.join(self.benchmarks)}")

    @property
    def reference_spec(self) -> str:
        return self.reference or self.checkpoints[0]

    @property
    def all_checkpoints(self) -> tuple[str, ...]:
        """The checkpoints, the reference first when it is not among them."""
        ref = self.reference_spec
        return self.checkpoints if ref in self.checkpoints else (ref, *self.checkpoints)

    def eval_config(self, checkpoint: str, benchmark: str) -> EvalConfig:
        return EvalConfig(
            checkpoint=checkpoint, benchmark=benchmark, prompts=self.prompts.get(benchmark), metrics=tuple(self.metrics),
            max_prompts=self.max_prompts, protocol=self.protocol, metric_weights=dict(self.metric_weights),
            metric_processors=dict(self.metric_processors), metric_dtype=self.metric_dtype,
            metric_batch_size=self.metric_batch_size, device=self.device, label=self.labels.get(checkpoint),
            cache_dir=self.cache_dir, results_dir=self.results_dir, registry=self.registry,
        )

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class CompareResult:
    config: CompareConfig
    outputs: dict[str, dict[str, EvalOutput]]  # benchmark -> checkpoint spec -> evaluation
    win_rates: dict[str, dict[str, dict[str, WinRate]]]  # benchmark -> checkpoint spec -> metric key -> win-rate
    win_metrics: dict[str, list[str]]  # benchmark -> metric keys
    differences: dict[str, dict[str, dict[str, PairedDifference]]] = field(default_factory=dict)  # like win_rates

    @property
    def images_generated(self) -> int:
        return sum(o.images_generated for by in self.outputs.values() for o in by.values())

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"config": self.config.as_dict(), "reference": self.config.reference_spec, "benchmarks": {}}
        for benchmark, by in self.outputs.items():
            first = next(iter(by.values()))
            rows = []
            for spec, output in by.items():
                rows.append({
                    "checkpoint": spec,
                    "label": output.checkpoint.label,
                    "hash": output.checkpoint.content_hash,
                    "method": output.checkpoint.method,
                    "guidance_scale": output.protocol.guidance_scale,
                    "guidance_scale_from": output.protocol_sources.get("guidance_scale"),
                    "training_signals": output.records[0].training_signals if output.records else None,
                    "metrics": {r.metric_key: {"value": r.value, "ci95": list(r.ci95) if r.ci95 else None, "record_id": r.record_id}
                                for r in output.records},
                    "win_rates": {k: w.as_dict() for k, w in self.win_rates[benchmark].get(spec, {}).items()},
                    "differences": {k: d.as_dict() for k, d in self.differences.get(benchmark, {}).get(spec, {}).items()},
                    "images_generated": output.images_generated,
                })
            out["benchmarks"][benchmark] = {
                "prompt_set_hash": first.prompt_set.hash, "n_prompts": len(first.prompt_set),
                "images_per_prompt": first.protocol.images_per_prompt, "win_metrics": self.win_metrics[benchmark], "rows": rows,
            }
        return out


def _win_metrics(config: CompareConfig, output: EvalOutput) -> list[str]:
    # a set metric (diversity) holds one value per prompt; images_per_prompt >= 2 whenever one is evaluated
    per_image = [r for r in output.records if len(output.scores[r.metric_key][0]) == output.protocol.images_per_prompt]
    names = {r.metric: r.metric_key for r in per_image}
    if config.win_metrics:
        missing = [m for m in config.win_metrics if m not in names]
        if missing:
            raise LpoError(f"win metric {missing[0]!r} is not a per-image metric of this comparison ({', '.join(names) or 'none'})")
        return [names[m] for m in config.win_metrics]
    preferred = next((names[m] for m in WIN_METRIC_PREFERENCE if m in names), None)
    if preferred:
        return [preferred]
    return [per_image[0].metric_key] if per_image else []


def distinct_labels(checkpoints: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """Row labels for checkpoints whose labels would collide (two runs of one method are both
    "lpo"): the label with the run id, or with the spec when that is not enough. Labels the
    user gave stay as given."""
    labels = {spec: given.get(spec, ckpt.label) for spec, ckpt in checkpoints.items()}
    out: dict[str, str] = {}
    for spec, ckpt in checkpoints.items():
        if spec in given or list(labels.values()).count(labels[spec]) == 1:
            continue
        out[spec] = f"{labels[spec]} ({ckpt.run_id})" if ckpt.run_id else f"{labels[spec]} ({spec})"
    renamed = {**labels, **out}
    for spec in out:
        if list(renamed.values()).count(renamed[spec]) > 1:  # the same run id twice: the spec tells them apart
            out[spec] = f"{labels[spec]} ({spec})"
    return out


def run_compare(config: CompareConfig, console=None) -> CompareResult:
    """Evaluate every checkpoint on every benchmark (cached images reused), then win-rates."""
    from lpo.evals.benchmarks import BENCHMARKS
    from lpo.evals.checkpoints import resolve_checkpoint

    # 1. Everything that can be wrong, before any image is made.
    resolved = {}
    for benchmark in config.benchmarks:
        bench = BENCHMARKS.get(benchmark)(config.prompts.get(benchmark))
        prompts = list(bench.prompt_set(config.max_prompts).prompts)
        for spec in config.all_checkpoints:
            resolved[spec] = resolve_checkpoint(spec, bench, prompts, registry=config.registry)
    config = replace(config, labels={**distinct_labels(resolved, config.labels), **config.labels})
    if config.win_metrics and config.metrics:
        absent = [m for m in config.win_metrics if m not in config.metrics]
        if absent:
            raise LpoError(f"win metric {absent[0]!r} is not among --metric ({', '.join(config.metrics)}); add it")

    # 2. One evaluation per cell; the harness's cache skips every image made before.
    outputs: dict[str, dict[str, EvalOutput]] = {}
    for benchmark in config.benchmarks:
        outputs[benchmark] = {}
        for spec in config.all_checkpoints:
            if console is not None:
                console.print(f"[bold]{benchmark}[/] · {spec}")
            outputs[benchmark][spec] = run_eval(config.eval_config(spec, benchmark), console=console)

    # 3. Win-rates and paired differences against the reference, on identical prompts and seeds.
    win_rates: dict[str, dict[str, dict[str, WinRate]]] = {}
    differences: dict[str, dict[str, dict[str, PairedDifference]]] = {}
    win_metrics: dict[str, list[str]] = {}
    ref = config.reference_spec
    for benchmark, by in outputs.items():
        reference = by[ref]
        keys = _win_metrics(config, reference)
        win_metrics[benchmark] = keys
        win_rates[benchmark], differences[benchmark] = {}, {}
        for spec, output in by.items():
            if spec == ref:
                continue
            if output.prompt_set.prompts != reference.prompt_set.prompts:
                raise RuntimeError("compared evaluations ran on different prompts")  # the pinned protocol was broken
            higher = {r.metric_key: r.higher_is_better for r in output.records}
            win_rates[benchmark][spec] = {
                key: paired_win_rate(output.scores[key], reference.scores[key], higher.get(key, True), config.tie_tolerance)
                for key in keys if key in output.scores
            }
            differences[benchmark][spec] = {
                key: paired_difference(output.scores[key], reference.scores[key], higher.get(key, True),
                                       a=output.checkpoint.label, b=reference.checkpoint.label, metric=key)
                for key in keys if key in output.scores
            }
    return CompareResult(config, outputs, win_rates, win_metrics, differences)


# --------------------------------------------------------------------------- rendering


def _cfg_line(result: CompareResult, benchmark: str) -> str:
    by = result.outputs[benchmark]
    common = result.config.protocol.guidance_scale
    if common is not None:
        return f"CFG: one common value, {common:g}, for every checkpoint"
    values = ", ".join(f"{o.checkpoint.label} {o.protocol.guidance_scale:g} ({o.protocol_sources.get('guidance_scale')})" for o in by.values())
    return f"CFG: each checkpoint's own ({values})"


def render_markdown(result: CompareResult, command: str | None = None) -> str:
    from lpo.core.tables import markdown_table
    from lpo.evals.leaderboard import Column, format_cell
    from lpo.evals.signals import describe, mark

    config = result.config
    ref = config.reference_spec
    lines = ["# lpo compare", ""]
    if command:
        lines += ["```", command, "```", ""]
    for benchmark, by in result.outputs.items():
        first = next(iter(by.values()))
        p = first.protocol
        ps = first.prompt_set
        ref_label = by[ref].checkpoint.label
        lines += [f"## {benchmark} · prompt set {ps.hash} ({len(ps)} prompts, {ps.source})", ""]
        lines += [
            f"- pinned for every row: the same {len(ps)} prompts; seeds image_seed({p.seed}, prompt, k) for image k < "
            f"{p.images_per_prompt} ({first.protocol_sources.get('images_per_prompt')}); {p.sampler.upper()} {p.steps} steps, "
            f"η {p.eta:g}, {'native size' if p.resolution is None else f'{p.resolution}px'}, {p.dtype}",
            f"- {_cfg_line(result, benchmark)}",
            f"- win-rate: against {ref_label}, image k against image k (same prompt, same seed), ties ½, "
            "95% interval over prompts",
            f"- Δ vs {ref_label}: {INTERVAL_METHOD}; the word says whether the interval excludes 0",
            "",
        ]
        columns: list[Column] = []
        for output in by.values():
            for r in output.records:
                if all(c.key != r.metric_key for c in columns):
                    columns.append(Column.of(r))
        keys = result.win_metrics[benchmark]
        header = ["checkpoint", "method", "CFG", "trained on"] + [c.header for c in columns]
        header += [f"win-rate vs {ref_label} ({k.split('@')[0]})" for k in keys]
        header += [f"Δ {k.split('@')[0]} vs {ref_label} (paired, 95% t)" for k in keys]
        rows = []
        for spec, output in by.items():
            cells = {r.metric_key: r for r in output.records}
            signals = output.records[0].training_signals if output.records else None
            row = [output.checkpoint.label, output.checkpoint.method, f"{output.protocol.guidance_scale:g}", describe(signals)]
            for c in columns:
                m = mark(c.metric, c.version, signals) if signals else None
                row.append(format_cell(cells.get(c.key), m))
            for k in keys:
                row.append("reference" if spec == ref else (result.win_rates[benchmark][spec][k].format() if k in result.win_rates[benchmark][spec] else "—"))
            for k in keys:
                d = result.differences.get(benchmark, {}).get(spec, {}).get(k)
                row.append("reference" if spec == ref else ("—" if d is None else f"{d.format()} ({d.word})"))
            rows.append(row)
        lines += markdown_table(header, rows, 4) + [""]
        lines += [
            "- cells: mean over prompts ± half-width of the 95% interval; (optimised) / (related) / (held out): whether the "
            "row's training signals touched the metric (lpo.evals.signals); diversity columns compare a prompt's images "
            "with each other (higher = more varied).",
            "",
        ]
    generated = result.images_generated
    lines.append(f"{generated} images generated by this comparison; every other image came from the image cache.")
    return "\n".join(lines).rstrip() + "\n"


def write_compare(result: CompareResult, out: Path, command: str | None = None) -> tuple[Path, Path]:
    """``out`` (Markdown) and ``out`` with suffix .json, atomically."""
    from lpo.core.io import atomic_write_json, atomic_write_text

    out = Path(out)
    atomic_write_text(out, render_markdown(result, command))
    data = out.with_suffix(".json")
    atomic_write_json(data, {**result.as_dict(), "command": command})
    return out, data


def parse_prompt_sources(values: Sequence[str]) -> dict[str, str]:
    """``["t2i-compbench=/data/compbench", ...]`` -> {benchmark: source}."""
    from lpo.evals.harness import named_refs

    return named_refs(values, "--prompts")
