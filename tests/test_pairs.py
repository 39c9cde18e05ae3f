"""Preference pairs: the one format, its Parquet round trip, Pick-a-Pic-style readers
(local and hub, never contacted here) and world pair generation."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lpo.core.errors import LpoError
from lpo.pairs.format import (
    PICKAPIC_ID,
    SKIP_IDENTICAL,
    SKIP_NO_LABEL,
    SKIP_UNDECODABLE,
    PreferencePair,
    load_pairs,
    save_pairs,
    sidecar_path,
)



def _image(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _pickapic_rows() -> dict[str, list]:
    """Six Pick-a-Pic-style rows: wins both ways, a tie, a corrupt and a truncated image,
    and one row flagged as identical images. Extra columns as in the real dataset."""
    good = [_jpeg(np.full((24, 24, 3), 40 * i, dtype=np.uint8)) for i in range(6)]
    return {
        "caption": ["a red circle", "a red circle", "two blue squares", "a cat", "a dog", "a cow"],
        "jpg_0": [good[0], good[1], good[2], b"definitely not a jpeg", good[4], good[5]],
        "jpg_1": [good[1], good[2], good[3], good[4], good[5][: len(good[5]) // 2], good[0]],
        "label_0": [1.0, 0.0, 0.5, 1.0, 0.0, 1.0],
        "label_1": [0.0, 1.0, 0.5, 0.0, 1.0, 0.0],
        "are_different": [True, True, True, True, True, False],
        "user_id": [7, 8, 9, 10, 11, 12],
    }


def _write_pickapic_parquet(path, rows=None):
    pq.write_table(pa.table(rows or _pickapic_rows()), path)
    return path


# ------------------------------------------------------------------- the format


@pytest.mark.parametrize("label_0, winner, loser", [(1.0, 0, 1), (0.0, 1, 0), (0.5, 0, 1)])
def test_winner_and_loser_follow_label_0(label_0, winner, loser):
    images = [_image(0), _image(1)]
    pair = PreferencePair("p", "a red circle", images[0], images[1], label_0, "test")
    assert pair.winner is images[winner] and pair.loser is images[loser]
    assert pair.is_tie == (label_0 == 0.5)


def test_save_load_round_trip_keeps_images_labels_ties_weights_ids(tmp_path):
    pairs = [
        PreferencePair("w-0", "a red circle", _image(0), _image(1), 1.0, "world", 0.5, "balanced"),
        PreferencePair("w-1", "a red circle", _image(2), _image(3), 0.0, "world", 0.5, "looks"),
        PreferencePair("w-2", "two blue squares", _image(4, 8), _image(5, 8), 0.5, "world", 1.0, None),
    ]
    path = tmp_path / "out" / "pairs.parquet"
    sidecar = save_pairs(pairs, path, provenance={"generator": "test", "steps": 2})
    assert sorted(p.name for p in path.parent.iterdir()) == ["pairs.parquet", "pairs.parquet.json"]  # no temp files
    assert json.loads(sidecar_path(path).read_text()) == json.loads(json.dumps(sidecar))
    assert sidecar["counts"] == {
        "pairs": 3,
        "prompts": 2,
        "image_0_wins": 1,
        "image_1_wins": 1,
        "ties": 1,
        "by_source": {"world": 3},
        "by_annotator_kind": {"balanced": 1, "looks": 1},
    }
    assert sidecar["provenance"] == {"generator": "test", "steps": 2}

    result = load_pairs(path)
    assert result.n_rows == 3 and result.skipped == {} and result.sidecar["counts"]["pairs"] == 3
    for want, got in zip(pairs, result.pairs):
        assert (got.pair_id, got.prompt, got.label_0, got.source, got.weight, got.annotator_kind) == (
            want.pair_id, want.prompt, want.label_0, want.source, want.weight, want.annotator_kind
        )
        np.testing.assert_array_equal(got.image_0, want.image_0)  # PNG: lossless
        np.testing.assert_array_equal(got.image_1, want.image_1)
    assert pq.read_table(path).column("label_1").to_pylist() == [0.0, 1.0, 0.5]  # Pick-a-Pic's columns


def test_save_rejects_what_a_reader_could_not_trust(tmp_path):
    a, b = _image(0), _image(1)
    with pytest.raises(ValueError, match="label_0=0.7"):
        save_pairs([PreferencePair("x", "p", a, b, 0.7, "t")], tmp_path / "p.parquet")
    with pytest.raises(ValueError, match="duplicate pair ids"):
        save_pairs([PreferencePair("x", "p", a, b, 1.0, "t")] * 2, tmp_path / "p.parquet")
    with pytest.raises(LpoError, match=r"must end in \.parquet"):
        save_pairs([PreferencePair("x", "p", a, b, 1.0, "t")], tmp_path / "p.csv")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------- readers


def test_pickapic_style_parquet_skips_and_counts_bad_rows_and_keeps_ties(tmp_path):
    path = _write_pickapic_parquet(tmp_path / "pickapic_style.parquet")
    result = load_pairs(path)
    assert result.n_rows == 6
    assert result.skipped == {SKIP_UNDECODABLE: 2, SKIP_IDENTICAL: 1}
    assert (result.n_skipped_undecodable, result.n_skipped_other) == (2, 1)
    assert len(result.pairs) + sum(result.skipped.values()) == result.n_rows
    assert result.undecodable_ids == ["pickapic_style/3", "pickapic_style/4"]
    assert [p.pair_id for p in result.pairs] == ["pickapic_style/0", "pickapic_style/1", "pickapic_style/2"]
    assert [p.label_0 for p in result.pairs] == [1.0, 0.0, 0.5]
    assert result.pairs[2].is_tie and all(p.source == "pickapic_style" and p.weight == 1.0 for p in result.pairs)
    tie = result.pairs[2]
    assert tie.image_0.shape == (24, 24, 3) and tie.image_0.dtype == np.uint8
    assert abs(int(tie.image_0.mean()) - 80) <= 2  # JPEG-decoded flat grey
    assert "2 undecodable image" in result.summary() and "6 rows" in result.summary()


def test_has_label_false_rows_are_counted_and_limit_counts_rows(tmp_path):
    rows = _pickapic_rows()
    rows["has_label"] = [True, False, True, True, True, True]
    path = _write_pickapic_parquet(tmp_path / "p.parquet", rows)
    result = load_pairs(path, limit=3, source="pickapic_v1")
    assert result.n_rows == 3 and result.skipped == {SKIP_NO_LABEL: 1}
    assert [p.pair_id for p in result.pairs] == ["pickapic_v1/0", "pickapic_v1/2"]


def test_missing_columns_is_one_line_error_naming_them(tmp_path):
    rows = _pickapic_rows()
    del rows["jpg_1"], rows["label_1"]
    path = _write_pickapic_parquet(tmp_path / "broken.parquet", rows)
    with pytest.raises(LpoError) as err:
        load_pairs(path)
    message = str(err.value)
    assert "\n" not in message and "broken.parquet" in message
    assert "missing column(s) jpg_1, label_1" in message and "caption, jpg_0, jpg_1, label_0, label_1" in message


def test_not_a_parquet_and_missing_path_are_user_errors(tmp_path):
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(LpoError, match="not a readable Parquet file"):
        load_pairs(tmp_path / "junk.parquet")
    with pytest.raises(LpoError, match="does not exist"):
        load_pairs(tmp_path / "nope.parquet")


def test_weight_by_prompt_is_one_over_pairs_per_prompt(tmp_path):
    a, b = _image(0), _image(1)
    prompts = ["a red circle"] * 3 + ["two blue squares"]
    pairs = [PreferencePair(f"p{i}", p, a, b, 1.0, "t", weight=9.0) for i, p in enumerate(prompts)]
    save_pairs(pairs, tmp_path / "p.parquet")
    assert [p.weight for p in load_pairs(tmp_path / "p.parquet").pairs] == [9.0] * 4
    weights = [p.weight for p in load_pairs(tmp_path / "p.parquet", weight_by_prompt=True).pairs]
    assert weights == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])


def test_folder_split_picks_its_shards(tmp_path):
    data = tmp_path / "pickapic" / "data"
    data.mkdir(parents=True)
    rows = _pickapic_rows()
    shards = {"train-00000-of-00002": slice(0, 2), "train-00001-of-00002": slice(2, 3), "validation_unique-00000-of-00001": slice(3, 6)}
    for name, sl in shards.items():
        _write_pickapic_parquet(data / f"{name}.parquet", {k: v[sl] for k, v in rows.items()})
    train = load_pairs(tmp_path / "pickapic", split="train")
    assert train.n_rows == 3 and [p.label_0 for p in train.pairs] == [1.0, 0.0, 0.5]
    assert [p.pair_id for p in train.pairs] == ["pickapic/train/0", "pickapic/train/1", "pickapic/train/2"]
    assert load_pairs(tmp_path / "pickapic", split="validation_unique").n_rows == 3
    assert load_pairs(tmp_path / "pickapic").n_rows == 6
    with pytest.raises(LpoError, match="no .parquet files"):
        load_pairs(tmp_path / "pickapic", split="validation")


def test_hub_ids_go_through_datasets_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, split=None, streaming=False, **kwargs):
        calls.append((path, split, streaming))
        return datasets.Dataset.from_dict(_pickapic_rows())

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = load_pairs()
    assert calls == [(PICKAPIC_ID, "train", False)]
    assert result.n_rows == 6 and len(result.pairs) == 3 and result.n_skipped_undecodable == 2
    assert result.pairs[0].source == "pickapic_v1" and result.pairs[0].pair_id == "pickapic_v1/train/0"
    assert result.origin == f"{PICKAPIC_ID} [train]"

    load_pairs("someone/mirror", split="validation_unique", limit=2)
    assert calls[-1] == ("someone/mirror", "validation_unique", True)  # a limit streams


def test_hub_failures_and_missing_columns_are_one_line_errors(monkeypatch):
    import datasets

    def offline(path, split=None, streaming=False, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nlong traceback-ish detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(LpoError) as err:
        load_pairs("someone/mirror")
    assert "\n" not in str(err.value) and "someone/mirror" in str(err.value)

    rows = _pickapic_rows()
    del rows["label_0"]
    monkeypatch.setattr(datasets, "load_dataset", lambda path, split=None, streaming=False: datasets.Dataset.from_dict(rows))
    with pytest.raises(LpoError, match="missing column\\(s\\) label_0;"):
        load_pairs("someone/mirror")


# ------------------------------------------------------------------ world pairs


def test_world_pairs_are_valid_and_deterministic(request, tmp_path):
    from lpo.sampling.generate import load_pipeline
    from lpo.world.pairs import WorldPairsConfig, generate_world_pairs, run_pairs

    # Requested here, not as an argument, so that a first build of the session fixture
    # runs under this module's one-thread setting (4x faster on 2 shared cores).
    tiny_world_dir = request.getfixturevalue("tiny_world_dir")
    pipe, _ = load_pipeline(str(tiny_world_dir), device="cpu")
    config = WorldPairsConfig(num_prompts=2, pairs_per_prompt=2, seed=3, sources=((5.0, 2),))
    first = generate_world_pairs(str(tiny_world_dir), config, pipeline=pipe)
    again = generate_world_pairs(str(tiny_world_dir), config, pipeline=pipe)

    assert len(first.pairs) == 4 and len({p.prompt for p in first.pairs}) == 2
    assert len({p.pair_id for p in first.pairs}) == 4
    for pair in first.pairs:
        assert pair.label_0 in (0.0, 0.5, 1.0) and pair.source == "world"
        assert pair.annotator_kind in ("balanced", "looks", "literal")
        assert pair.image_0.shape == (32, 32, 3) and pair.image_0.dtype == np.uint8
        assert not np.array_equal(pair.image_0, pair.image_1)  # different seeds per image
    for a, b in zip(first.pairs, again.pairs):
        assert (a.pair_id, a.prompt, a.label_0, a.annotator_kind) == (b.pair_id, b.prompt, b.label_0, b.annotator_kind)
        np.testing.assert_array_equal(a.image_0, b.image_0)
        np.testing.assert_array_equal(a.image_1, b.image_1)
    agreement = first.label_agreement()
    assert agreement["scored"] + agreement["ties"] + agreement["equal_utility"] == 4

    out = tmp_path / "pairs.parquet"
    summary = run_pairs(str(tiny_world_dir), out, num_prompts=2, pairs_per_prompt=2, seed=3, steps=2, device="cpu")
    assert summary["pairs"] == 4 and summary["out"] == str(out)
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["provenance"]["config"]["sources"] == [[5.0, 2]]
    assert sidecar["provenance"]["label_agreement"] == agreement
    loaded = load_pairs(out)
    assert [p.label_0 for p in loaded.pairs] == [p.label_0 for p in first.pairs]
    np.testing.assert_array_equal(loaded.pairs[3].image_1, first.pairs[3].image_1)


def test_world_pairs_mix_sources_per_image(request):
    from lpo.sampling.generate import load_pipeline
    from lpo.world.pairs import WorldPairsConfig, generate_world_pairs

    tiny_world_dir = request.getfixturevalue("tiny_world_dir")
    pipe, _ = load_pipeline(str(tiny_world_dir), device="cpu")
    sources = ((1.5, 2), (7.5, 3))
    config = WorldPairsConfig(num_prompts=3, pairs_per_prompt=4, seed=5, sources=sources)
    mixed = generate_world_pairs(str(tiny_world_dir), config, pipeline=pipe)
    assert mixed.sources.shape == (12, 2) and set(mixed.sources.ravel().tolist()) == {0, 1}
    counts = mixed.provenance()["images_per_source"]
    assert counts == {"cfg1.5-steps2": int((mixed.sources == 0).sum()), "cfg7.5-steps3": int((mixed.sources == 1).sum())}
    # An image is exactly what its own source makes: regenerate one image of each source alone.
    for source in (0, 1):
        n, side = map(int, np.argwhere(mixed.sources == source)[0])
        single = WorldPairsConfig(num_prompts=3, pairs_per_prompt=4, seed=5, sources=(sources[source],))
        alone = generate_world_pairs(str(tiny_world_dir), single, pipeline=pipe)
        np.testing.assert_array_equal(getattr(mixed.pairs[n], f"image_{side}"), getattr(alone.pairs[n], f"image_{side}"))
    with pytest.raises(LpoError, match="sources must be"):
        WorldPairsConfig(sources=((0.5, 20),))


def test_run_pairs_checks_its_inputs_before_generating(tmp_path):
    from lpo.world.pairs import WorldPairsConfig, run_pairs

    with pytest.raises(LpoError, match=r"must end in \.parquet"):
        run_pairs("no-such-model", tmp_path / "pairs.txt", 2, 2, 0)
    with pytest.raises(LpoError, match="pairs_per_prompt must be >= 1"):
        WorldPairsConfig(pairs_per_prompt=0)
    with pytest.raises(LpoError, match="train split has"):
        from lpo.world.pairs import draw_prompts

        draw_prompts(WorldPairsConfig(num_prompts=10**6))
