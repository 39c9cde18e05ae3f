"""lpo doctor's published-row check: which row, which checkpoint, and the comparison rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lpo.core.errors import LpoError
from lpo.evals.published_check import compare_with_published, published_checkpoint
from lpo.evals.reported import published_row


def _record(metric, value, half):
    return SimpleNamespace(metric=metric, value=value, ci95=(value - half, value + half))


def test_rows_map_to_the_checkpoints_the_paper_evaluated():
    row, checkpoint = published_checkpoint("SD1.5")
    assert checkpoint == "sd15" and row.benchmark == "pickapic" and row.values["pickscore"] == 20.56
    assert published_checkpoint("SDXL Diffusion-DPO")[1] == "dpo-sdxl"
    with pytest.raises(LpoError, match="no published row named 'SD2'; use one of: .*SD1.5"):
        published_checkpoint("SD2")


def test_a_metric_reproduces_within_its_interval_plus_one_percent():
    row = published_row("pickapic", "SD1.5")
    records = [
        _record("pickscore", 20.56 + 0.15, 0.10),  # 0.15 <= 0.10 + 0.2056
        _record("image_reward", 0.0076 + 0.05, 0.04),  # 0.05 > 0.04 + 0.000076
        _record("hpsv2", 26.46 - 0.30, 0.02),  # 0.30 > 0.02 + 0.2646
        _record("laion_aesthetic", 5.468, 0.0),
    ]
    checks = {c.metric: c for c in compare_with_published(records, row)}
    assert checks["pickscore"].reproduces and checks["pickscore"].delta == pytest.approx(0.15)
    assert checks["image_reward"].reproduces is False and checks["hpsv2"].reproduces is False
    assert checks["laion_aesthetic"].reproduces
    assert checks["hpsv21"].measured is None and checks["hpsv21"].reproduces is None  # not evaluated


def test_cli_names_the_known_rows_in_one_line():
    from typer.testing import CliRunner

    from lpo.cli import app

    result = CliRunner().invoke(app, ["doctor", "--published-row", "SD2"])
    assert result.exit_code == 2 and "no published row named 'SD2'" in result.output
    assert "Traceback" not in result.output
