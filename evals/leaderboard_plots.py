"""The leaderboard's HTML plots, as base64 PNG: scores with intervals, quality against
training cost (small multiples), and a strip of a row's first images.

Each takes a :class:`lpo.evals.leaderboard.Table` (its ``columns`` and ``sorted_rows()``)
and returns the PNG's base64 text, or None when there is nothing to draw. Panels are
sized to be read at the report's width (about 1250 px): at most two side by side, axis
text at 10 pt.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

from lpo.evals.store import ResultRecord

PANELS_PER_ROW = 2
PANEL_SIZE = (6.2, 4.0)  # inches at 110 dpi: about 680 × 440 px, two fit the report's width
DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_base64(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _half(record: ResultRecord) -> float:
    return 0.0 if record.ci95 is None else (record.ci95[1] - record.ci95[0]) / 2


def scores_figure(table: Any) -> str:
    """One panel per metric column: each row's mean with its 95% interval."""
    plt = _pyplot()
    columns = list(table.columns.values())
    rows = table.sorted_rows()
    n = len(columns)
    cols = min(n, PANELS_PER_ROW)
    lines = math.ceil(n / cols)
    height = max(2.2, 0.6 + 0.32 * len(rows))
    fig, axes = plt.subplots(lines, cols, figsize=(PANEL_SIZE[0] * cols, height * lines), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        ys, xs, errs = [], [], []
        for y, row in enumerate(rows):
            record = row.cells.get(column.key)
            if record is None:
                continue
            ys.append(y)
            xs.append(record.value)
            errs.append(_half(record))
        ax.errorbar(xs, ys, xerr=errs, fmt="o", capsize=3)
        ax.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=9)
        ax.set_ylim(-0.5, len(rows) - 0.5)
        ax.invert_yaxis()
        ax.set_title(column.header, fontsize=10)
        ax.tick_params(axis="x", labelsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    data = _png_base64(fig)
    plt.close(fig)
    return data


def cost_figure(table: Any) -> str | None:
    """Quality against training device-hours (SPEC §8): one readable panel per metric, two per line."""
    rows = [r for r in table.sorted_rows() if r.training_hours()]
    if not rows:
        return None
    plt = _pyplot()
    device_types = sorted({t for r in rows for t in r.training_hours()})
    columns = list(table.columns.values())
    cols = min(len(columns), PANELS_PER_ROW)
    lines = math.ceil(len(columns) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * lines), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        for device_type in device_types:
            points = [(r.training_hours()[device_type], r.cells[column.key], r.label) for r in rows
                      if device_type in r.training_hours() and column.key in r.cells]
            if not points:
                continue
            ax.errorbar([p[0] for p in points], [p[1].value for p in points], yerr=[_half(p[1]) for p in points],
                        fmt="o", ms=6, capsize=4, label=device_type)
            for x, rec, label in points:
                ax.annotate(label, (x, rec.value), fontsize=9, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("training device-hours", fontsize=10)
        ax.set_title(column.header, fontsize=11)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
        ax.margins(x=0.15)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=9)
    fig.tight_layout()
    data = _png_base64(fig)
    plt.close(fig)
    return data


def sample_strip(record: ResultRecord, results_dir: Path | None, count: int = 8) -> str | None:
    """The first images of a row, from the image cache, when it is on this machine."""
    if not record.image_cache or not record.per_prompt or results_dir is None:
        return None
    folder, side = Path(record.image_cache), Path(results_dir) / record.per_prompt
    if not folder.is_dir() or not side.is_file():
        return None
    import numpy as np
    from PIL import Image

    from lpo.evals.benchmarks.base import prompt_hash
    from lpo.core.grid import make_grid

    prompts = json.loads(side.read_text())["prompts"][:count]
    images, captions = [], []
    for prompt in prompts:
        path = folder / prompt_hash(prompt) / "0000.png"
        if path.is_file():
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            captions.append(prompt)
    if not images or len({i.shape for i in images}) != 1:
        return None
    grid = make_grid(np.stack(images), captions, columns=len(images), cell=96 if images[0].shape[0] <= 128 else 160)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
