"""Published numbers (SPEC §7), for leaderboard rows marked "reported".

These are other people's measurements with their own scorer code, so they are never
mixed into a measured cell: the leaderboard puts each published number in a column of
its own right beside the measured column it corresponds to (for a measured row whose
checkpoint the paper evaluated: a registry entry's ``published_as``), and lists every
published row in a table of its own, with the same metric names, categories and units.

Keys are lpo's: metric names (``pickscore`` …, ``geneval``), and for T2I-CompBench++ the
``t2i_compbench`` metric's per-category breakdown under the benchmark's official category
stems (``color spatial 3d_spatial non_spatial`` …). Units are lpo's metrics' units:
HPSv2 / HPSv2.1 are 100·cosine as in the papers' tables and lpo's ``hpsv2`` / ``hpsv21``;
GenEval is a fraction in [0, 1] (the paper prints percent: 42.56 → 0.4256), as lpo's
``geneval`` metric reports it. The GenEval numbers sit in the LPO paper's Table 2 beside
the Pick-a-Pic scores but were measured on GenEval's own 553 prompts, so they belong to
the ``geneval`` benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LPO_PAPER = "LPO paper (arXiv 2502.01051), Table 2"
LPO_PAPER_COMPBENCH = "LPO paper (arXiv 2502.01051), T2I-CompBench++ table"
LPO_PAPER_COST = "LPO paper (arXiv 2502.01051), training cost table"
PICKAPIC_PROTOCOL = "Pick-a-Pic v1 validation_unique, 500 prompts, DDIM 20 steps"


@dataclass(frozen=True)
class ReportedRow:
    """One published row: a model on a benchmark, values keyed by lpo metric name."""

    benchmark: str
    model: str  # as the paper names it
    method: str  # base | diffusion-dpo | spo | lpo
    base_model: str  # sd15 | sdxl
    values: dict[str, float]
    source: str
    protocol: str
    # Training cost in A100-hours: (reward model, optimisation); None for base models.
    a100_hours: tuple[float, float] | None = None
    notes: dict[str, str] = field(default_factory=dict)
    # Per-category values of a metric, in the benchmark's category keys: metric -> category -> value.
    categories: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def total_a100_hours(self) -> float | None:
        return None if self.a100_hours is None else sum(self.a100_hours)


# Training cost, A100-hours (reward model + optimisation).
A100_HOURS: dict[tuple[str, str], tuple[float, float]] = {
    ("sd15", "diffusion-dpo"): (0, 240),
    ("sd15", "spo"): (32, 48),
    ("sd15", "lpo"): (15, 8),
    ("sdxl", "diffusion-dpo"): (0, 2560),
    ("sdxl", "spo"): (116, 118),
    ("sdxl", "lpo"): (52, 40),
}

_TABLE2 = (
    # model, method, base, PickScore, ImageReward, HPSv2, HPSv2.1, Aesthetic, GenEval
    ("SD1.5", "base", "sd15", 20.56, 0.0076, 26.46, 24.05, 5.468, 42.56),
    ("SD1.5 Diffusion-DPO", "diffusion-dpo", "sd15", 20.99, 0.302, 27.03, 25.54, 5.595, 43.79),
    ("SD1.5 SPO", "spo", "sd15", 21.22, 0.1678, 26.73, 25.83, 5.927, 40.46),
    ("SD1.5 LPO", "lpo", "sd15", 21.69, 0.6588, 27.64, 27.86, 5.945, 48.39),
    ("SDXL", "base", "sdxl", 21.65, 0.478, 27.06, 26.05, 5.92, 49.40),
    ("SDXL Diffusion-DPO", "diffusion-dpo", "sdxl", 22.22, 0.8527, 28.10, 28.47, 5.939, 57.78),
    ("SDXL SPO", "spo", "sdxl", 22.70, 0.9951, 28.42, 31.15, 6.343, 50.52),
    ("SDXL LPO", "lpo", "sdxl", 22.86, 1.2166, 28.96, 31.89, 6.36, 59.27),
)

# The paper's column order (colour, shape, texture, 2D-spatial, 3D-spatial, numeracy,
# non-spatial, complex) under the benchmark's official category stems
# (lpo.evals.metrics.compbench.CATEGORIES).
COMPBENCH_CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "numeracy", "non_spatial", "complex")
COMPBENCH_METRIC = "t2i_compbench"
_COMPBENCH = (
    ("SD1.5", "base", "sd15", (0.3783, 0.3616, 0.4172, 0.1230, 0.2967, 0.4485, 0.3104, 0.2999)),
    ("SD1.5 Diffusion-DPO", "diffusion-dpo", "sd15", (0.4090, 0.3664, 0.4253, 0.1336, 0.3124, 0.4543, 0.3115, 0.3042)),
    ("SD1.5 SPO", "spo", "sd15", (0.4112, 0.4019, 0.4044, 0.1301, 0.2909, 0.4372, 0.3008, 0.2988)),
    ("SD1.5 LPO", "lpo", "sd15", (0.5042, 0.4522, 0.5259, 0.1928, 0.3562, 0.4845, 0.3110, 0.3308)),
    ("SDXL", "base", "sdxl", (0.5833, 0.4782, 0.5211, 0.1936, 0.3319, 0.4874, 0.3137, 0.3327)),
    ("SDXL Diffusion-DPO", "diffusion-dpo", "sdxl", (0.6941, 0.5311, 0.6127, 0.2153, 0.3686, 0.5304, 0.3178, 0.3525)),
    ("SDXL SPO", "spo", "sdxl", (0.6410, 0.4999, 0.5551, 0.2096, 0.3629, 0.4931, 0.3098, 0.3467)),
    ("SDXL LPO", "lpo", "sdxl", (0.7351, 0.5463, 0.6606, 0.2414, 0.4075, 0.5493, 0.3152, 0.3801)),
)

REPORTED: tuple[ReportedRow, ...] = tuple(
    ReportedRow(
        benchmark="pickapic",
        model=model,
        method=method,
        base_model=base,
        values={"pickscore": pick, "image_reward": ir, "hpsv2": hps, "hpsv21": hps21, "laion_aesthetic": aes},
        source=LPO_PAPER,
        protocol=PICKAPIC_PROTOCOL,
        a100_hours=A100_HOURS.get((base, method)),
    )
    for model, method, base, pick, ir, hps, hps21, aes, _ in _TABLE2
) + tuple(
    ReportedRow(
        benchmark="geneval",
        model=model,
        method=method,
        base_model=base,
        values={"geneval": round(geneval / 100, 6)},
        source=LPO_PAPER,
        protocol="GenEval, 553 prompts, 4 images each, overall = mean of the 6 task scores",
        a100_hours=A100_HOURS.get((base, method)),
        notes={"geneval": f"the paper prints {geneval:g} (percent)"},
    )
    for model, method, base, *_, geneval in _TABLE2
) + tuple(
    ReportedRow(
        benchmark="t2i-compbench",
        model=model,
        method=method,
        base_model=base,
        values={},
        categories={COMPBENCH_METRIC: dict(zip(COMPBENCH_CATEGORIES, scores))},
        source=LPO_PAPER_COMPBENCH,
        protocol="T2I-CompBench++, 20 steps",
        a100_hours=A100_HOURS.get((base, method)),
    )
    for model, method, base, scores in _COMPBENCH
)


def reported_rows(benchmark: str) -> list[ReportedRow]:
    return [r for r in REPORTED if r.benchmark == benchmark]


def published_row(benchmark: str, model: str | None) -> ReportedRow | None:
    """The published row of ``model`` (its name in the paper) on ``benchmark``, if any."""
    if model is None:
        return None
    return next((r for r in REPORTED if r.benchmark == benchmark and r.model == model), None)
