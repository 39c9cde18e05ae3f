"""`lpo data pickapic`: Pick-a-Pic into the pairs format by streaming, every drop counted."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from lpo.cli import app
from lpo.core.errors import LpoError
from lpo.pairs.format import SKIP_IDENTICAL, SKIP_UNDECODABLE, load_pairs
from lpo.pairs.pickapic import SKIP_DUPLICATE, SKIP_TIE, convert_pickapic
from test_pairs import _jpeg, _pickapic_rows


def _shards(folder):
    """Two train shards in the hub layout: the six rows of test_pairs, then the first pair again
    with its images swapped (a repeat), and a new decisive pair."""
    folder.mkdir()
    rows = _pickapic_rows()
    pq.write_table(pa.table(rows), folder / "train-00000-of-00002.parquet")
    new = _jpeg(np.full((24, 24, 3), 200, dtype=np.uint8))
    more = {key: [] for key in rows}
    for values in ({"caption": rows["caption"][0], "jpg_0": rows["jpg_1"][0], "jpg_1": rows["jpg_0"][0], "label_0": 0.0,
                    "label_1": 1.0, "are_different": True, "user_id": 1},
                   {"caption": "a green star", "jpg_0": new, "jpg_1": rows["jpg_0"][0], "label_0": 1.0, "label_1": 0.0,
                    "are_different": True, "user_id": 2}):
        for key, value in values.items():
            more[key].append(value)
    pq.write_table(pa.table(more), folder / "train-00001-of-00002.parquet")
    pq.write_table(pa.table(rows), folder / "validation_unique-00000-of-00001.parquet")
    return folder


def test_a_local_mirror_converts_with_every_drop_counted(tmp_path):
    source = _shards(tmp_path / "mirror")
    sidecar = convert_pickapic("v2", tmp_path / "v2.parquet", source=str(source))
    counts = sidecar["counts"]
    assert counts["rows"] == 8 and counts["pairs"] == 3
    assert counts["skipped"] == {SKIP_UNDECODABLE: 2, SKIP_IDENTICAL: 1, SKIP_TIE: 1, SKIP_DUPLICATE: 1}
    assert counts["pairs"] + sum(counts["skipped"].values()) == counts["rows"]
    assert (counts["image_0_wins"], counts["image_1_wins"], counts["ties"]) == (2, 1, 0)
    assert sidecar["published_check"] == "differs: 3 decisive pairs found, 851,293 published"
    loaded = load_pairs(tmp_path / "v2.parquet")
    assert [p.pair_id for p in loaded.pairs] == ["pickapic_v2/train/0", "pickapic_v2/train/1", "pickapic_v2/train/7"]
    table = pq.read_table(tmp_path / "v2.parquet")
    rows = _pickapic_rows()
    assert table.column("jpg_0")[0].as_py() == rows["jpg_0"][0]  # the original JPEG bytes, not re-encoded
    assert json.loads((tmp_path / "v2.parquet.json").read_text()) == sidecar
    # ties kept on request; another split picks its shards; a limit is said in the check
    tied = convert_pickapic("v2", tmp_path / "tied.parquet", source=str(source), keep_ties=True, limit=6)
    assert tied["counts"]["ties"] == 1 and tied["counts"]["rows"] == 6
    assert tied["published_check"].startswith("not checked: --limit")
    val = convert_pickapic("v1", tmp_path / "val.parquet", source=str(source), split="val")
    assert val["counts"]["rows"] == 6 and val["published_check"] is None


def test_v2_without_a_source_and_bad_requests_are_one_line(tmp_path):
    with pytest.raises(LpoError, match=r"original \(yuvalkirstain/pickapic_v2\) was removed .* pass --source HUB_ID"):
        convert_pickapic("v2", tmp_path / "x.parquet")
    source = _shards(tmp_path / "mirror")
    with pytest.raises(LpoError, match="unknown split 'dev'; use one of train, val, test"):
        convert_pickapic("v1", tmp_path / "x.parquet", source=str(source), split="dev")
    with pytest.raises(LpoError, match="must end in .parquet"):
        convert_pickapic("v1", tmp_path / "x.txt", source=str(source))
    assert not (tmp_path / "x.parquet").exists()


def test_the_command_prints_what_it_kept_and_dropped(tmp_path):
    source = _shards(tmp_path / "mirror")
    result = CliRunner().invoke(app, ["data", "pickapic", "--version", "v2", "--source", str(source),
                                      "--out", str(tmp_path / "v2.parquet")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the console wraps lines
    assert "3 pairs (2 prompts) of 8 rows" in text and "1 repeated pair" in text and "8/8" in text
    assert "published count: differs" in text
    bad = CliRunner().invoke(app, ["data", "pickapic", "--version", "v3", "--out", str(tmp_path / "y.parquet")])
    assert bad.exit_code == 2 and "unknown Pick-a-Pic version 'v3'; use v1 or v2" in bad.output
