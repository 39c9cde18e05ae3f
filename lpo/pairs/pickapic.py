"""`lpo data pickapic`: Pick-a-Pic v1 / v2 into the project's pairs format, by streaming.

The originals (``yuvalkirstain/pickapic_v1``, ``yuvalkirstain/pickapic_v2``) were removed
from the hub in 2025 (DiffusionDPO issue 22, PickScore issue 36). lpo knows the v1 mirror it
was tested against; for v2 it knows no mirror it could verify, so ``--source`` names one (a
hub id or a local folder of the dataset's parquet shards).

The conversion reads the source row by row (``datasets`` streaming for a hub id, parquet
row batches for a folder), applies the row checks of :func:`lpo.pairs.format.load_pairs`
(each skip counted by reason), drops ties unless asked to keep them (Diffusion-DPO trains
without them), drops repeated pairs (the same caption and the same two images, in either
order: Pick-a-Pic's train split repeats pairs, its ``*_unique`` splits do not), and writes
the kept rows with their original JPEG bytes in row groups as they come. Memory: one row
batch, plus about 100 bytes per kept pair for the duplicate check (a 16-byte digest in a
set). The sidecar holds every count and reason, and the row counts the publications state,
where lpo knows them, beside the counts found.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lpo.core.errors import LpoError
from lpo.core.hashing import file_sha256
from lpo.pairs.format import (
    SKIP_UNDECODABLE,
    TIE,
    ColumnBuffer,
    RowChecker,
    _hub_rows,
    _parquet_files,
    _parquet_rows,
    check_pairs_path,
    image_bytes,
    sidecar_path,
)

SKIP_DUPLICATE = "repeated pair (same caption and images)"
SKIP_TIE = "tie (dropped; --keep-ties keeps them)"
WRITE_ROWS = 256


@dataclass(frozen=True)
class PickapicVersion:
    original: str  # the authors' hub id (removed)
    mirrors: tuple[str, ...]  # hub ids lpo has read; the first is the default source
    splits: dict[str, str]  # lpo's name -> the dataset's split name
    # Decisive (non-tie) pairs of a split as a publication states them; checked when the whole split is read.
    published_decisive: dict[str, int] = field(default_factory=dict)


VERSIONS = {
    "v1": PickapicVersion("yuvalkirstain/pickapic_v1", ("pickapic-anonymous/pickapic_v1",),
                          {"train": "train", "val": "validation_unique", "test": "test_unique"}),
    # SPEC §5.3: Diffusion-DPO trains on Pick-a-Pic v2 without ties, 851,293 pairs (58,960 prompts).
    "v2": PickapicVersion("yuvalkirstain/pickapic_v2", (),
                          {"train": "train", "val": "validation_unique", "test": "test_unique"},
                          {"train": 851_293}),
}


def resolve_source(version: str, source: str | None) -> str:
    if version not in VERSIONS:
        raise LpoError(f"unknown Pick-a-Pic version {version!r}; use v1 or v2")
    if source is not None:
        return source
    known = VERSIONS[version]
    if not known.mirrors:
        raise LpoError(
            f"Pick-a-Pic {version}'s original ({known.original}) was removed from the hub and lpo knows no verified mirror; "
            "pass --source HUB_ID (a mirror you trust) or a local folder of its parquet shards"
        )
    return known.mirrors[0]


def _rows(source: str, split: str) -> Iterator[dict[str, Any]]:
    path = Path(source).expanduser()
    if path.exists():
        return _parquet_rows(_parquet_files(path, split if path.is_dir() else None))
    return _hub_rows(source, split, streaming=True)


def _pair_key(row: dict[str, Any], caption: str) -> bytes:
    """Caption and the two images, in either order: a repeated pair has the same key."""
    images = sorted(hashlib.sha256(image_bytes(row[name])).digest() for name in ("jpg_0", "jpg_1"))
    return hashlib.blake2b(caption.encode() + b"\x00" + images[0] + images[1], digest_size=16).digest()


def convert_pickapic(version: str, out: str | Path, *, source: str | None = None, split: str = "train",
                     limit: int | None = None, keep_ties: bool = False, progress: Any = None) -> dict[str, Any]:
    """Stream a Pick-a-Pic split into ``out`` (parquet, atomic) and ``out.json``; returns the sidecar."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lpo.core.io import atomic_write_file, atomic_write_json, git_state, package_versions

    out = check_pairs_path(out)
    origin = resolve_source(version, source)
    known = VERSIONS[version]
    if split not in known.splits:
        raise LpoError(f"unknown split {split!r}; use one of {', '.join(known.splits)}")
    dataset_split = known.splits[split]
    name = f"pickapic_{version}"
    schema = pa.schema([("pair_id", pa.string()), ("caption", pa.string()), ("jpg_0", pa.binary()),
                        ("jpg_1", pa.binary()), ("label_0", pa.float64()), ("label_1", pa.float64()),
                        ("source", pa.string()), ("weight", pa.float64()), ("annotator_kind", pa.string())])
    checker = RowChecker(f"{name}/{split}/", name, unique_ids=False)  # ids are made unique; pairs are deduped by content
    skipped = checker.skipped  # the row checks' reasons, then ties and repeats
    labels: Counter[float] = Counter()
    seen: set[bytes] = set()
    prompts: set[bytes] = set()
    kept = 0

    def counted(rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for read, row in enumerate(rows, 1):
            if progress is not None and read % 1000 == 0:
                progress(read, kept)
            yield row

    def write(tmp: Path) -> None:
        nonlocal kept
        with pq.ParquetWriter(str(tmp), schema) as writer:
            buffer = ColumnBuffer(writer, schema, WRITE_ROWS)
            for row, pair in checker.pairs(counted(_rows(origin, dataset_split)), limit):
                if pair.label_0 == TIE and not keep_ties:
                    skipped[SKIP_TIE] += 1
                    continue
                key = _pair_key(row, pair.prompt)
                if key in seen:
                    skipped[SKIP_DUPLICATE] += 1
                    continue
                seen.add(key)
                prompts.add(hashlib.blake2b(pair.prompt.encode(), digest_size=8).digest())
                labels[pair.label_0] += 1
                buffer.append(pair_id=pair.pair_id, caption=pair.prompt, jpg_0=image_bytes(row["jpg_0"]),
                              jpg_1=image_bytes(row["jpg_1"]), label_0=pair.label_0, label_1=1.0 - pair.label_0,
                              source=name, weight=pair.weight, annotator_kind=None)
                kept += 1
            buffer.flush()
            if progress is not None:
                progress(checker.n_rows, kept)

    atomic_write_file(out, write)
    if kept == 0:
        out.unlink()
        raise LpoError(f"no usable pairs in {origin} [{dataset_split}] ({checker.n_rows} rows; skipped: "
                       f"{', '.join(f'{n} {r}' for r, n in sorted(skipped.items())) or 'none'}); check the source and split")
    decisive = labels.get(1.0, 0) + labels.get(0.0, 0)
    expected = known.published_decisive.get(split)
    check = None
    if expected is not None:
        if limit is not None:
            check = f"not checked: --limit read part of the split (published: {expected:,} decisive pairs)"
        elif decisive == expected:
            check = f"matches the published {expected:,} decisive pairs"
        else:
            check = f"differs: {decisive:,} decisive pairs found, {expected:,} published"
    sidecar = {
        "schema_version": 1,
        "file": out.name,
        "sha256": file_sha256(out),
        "source": {"version": version, "origin": origin, "split": dataset_split, "limit": limit, "keep_ties": keep_ties},
        "counts": {"rows": checker.n_rows, "pairs": kept, "prompts": len(prompts),
                   "image_0_wins": labels.get(1.0, 0), "image_1_wins": labels.get(0.0, 0), "ties": labels.get(TIE, 0),
                   "skipped": dict(sorted(skipped.items())), "undecodable": skipped.get(SKIP_UNDECODABLE, 0)},
        "published_check": check,
        "written_by": {"git": git_state(), "versions": package_versions()},
    }
    atomic_write_json(sidecar_path(out), sidecar)
    return sidecar
