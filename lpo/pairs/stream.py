"""Preference pairs read as a stream: memory that does not grow with the number of pairs.

:func:`load_pairs` decodes every image of a pair set into memory, fine for the world's
thousands of pairs and impossible for Pick-a-Pic v2's million. :func:`open_pairs` reads a
local Parquet pair set once, row batch by row batch, applies the same row checks and skip
reasons as :func:`load_pairs`, and writes the kept rows (images still encoded) into an Arrow
IPC file under ``$LPO_HOME/pair-cache``. That file is memory-mapped: a
:class:`PairTable` decodes a pair's two images only when the pair is taken (one training
batch at a time), so the resident memory is the pages of the batches in use, not the set.
The cache is keyed by the files' paths, sizes and modification times and the reading
options; a second run on the same files reuses it.

A :class:`PairTable` is a ``Sequence[PreferencePair]`` in the order :func:`load_pairs`
gives, with the same pair ids, prompts, labels and image bytes, so a trainer reading it
computes exactly what it computes on a loaded list.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence, overload

import numpy as np

from lpo.core.errors import LpoError
from lpo.pairs.format import (
    TIE,
    ColumnBuffer,
    PairLoadResult,
    PreferencePair,
    RowChecker,
    _parquet_files,
    _parquet_rows,
    _read_sidecar,
    decode_image,
    image_bytes,
)

CACHE_VERSION = 1
WRITE_BATCH = 256  # kept rows per Arrow record batch (the conversion's memory: this many encoded pairs)
META_COLUMNS = ("pair_id", "caption", "label_0", "source", "weight", "annotator_kind")


class PairTable(Sequence[PreferencePair]):
    """Pairs in a memory-mapped Arrow file; ``rows`` selects and orders them (a view)."""

    def __init__(self, path: Path, origin: str, rows: np.ndarray | None = None,
                 weights: np.ndarray | None = None) -> None:
        import pyarrow as pa

        self.path, self.origin = Path(path), origin
        self._table = pa.ipc.open_file(pa.memory_map(str(self.path))).read_all()  # zero-copy: pages load on access
        n = self._table.num_rows
        self.rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self._labels = np.asarray(self._table.column("label_0").to_numpy(), dtype=np.float64)
        # the stored weights, or the ones given (weight_by_prompt)
        self._weights = np.asarray(self._table.column("weight").to_numpy() if weights is None else weights, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> PreferencePair: ...

    @overload
    def __getitem__(self, index: slice) -> "PairTable": ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._view(self.rows[index])
        row = int(self.rows[index])
        image_0 = decode_image(self._table.column("jpg_0")[row].as_py())
        image_1 = decode_image(self._table.column("jpg_1")[row].as_py())
        if image_0 is None or image_1 is None:  # checked when the cache was written: the file changed since
            raise LpoError(f"pair {self.pair_id(index)} in {self.path} no longer decodes; delete the file to rebuild the cache")
        return PreferencePair(
            pair_id=self.pair_id(index), prompt=self.prompt(index), image_0=image_0, image_1=image_1,
            label_0=float(self._labels[row]), source=self._table.column("source")[row].as_py(),
            weight=self.weight(index), annotator_kind=self._table.column("annotator_kind")[row].as_py(),
        )

    def _view(self, rows: np.ndarray) -> "PairTable":
        view = object.__new__(PairTable)
        view.path, view.origin, view._table, view._labels, view._weights = (
            self.path, self.origin, self._table, self._labels, self._weights)
        view.rows = np.asarray(rows, dtype=np.int64)
        return view

    # light accessors: no image is decoded
    def pair_id(self, index: int) -> str:
        return self._table.column("pair_id")[int(self.rows[index])].as_py()

    def prompt(self, index: int) -> str:
        return self._table.column("caption")[int(self.rows[index])].as_py()

    def label(self, index: int) -> float:
        return float(self._labels[int(self.rows[index])])

    def weight(self, index: int) -> float:
        row = int(self.rows[index])
        return float(self._weights[row])

    def labels(self) -> np.ndarray:
        return self._labels[self.rows]

    def weights(self) -> np.ndarray:
        return self._weights[self.rows]

    def iter_meta(self, chunk: int = 4096) -> Iterator[tuple[str, str, float]]:
        """(pair_id, prompt, label_0) of every pair in order, read in chunks of Arrow columns."""
        ids, captions = self._table.column("pair_id"), self._table.column("caption")
        for start in range(0, len(self.rows), chunk):
            rows = self.rows[start:start + chunk]
            yield from zip(ids.take(rows).to_pylist(), captions.take(rows).to_pylist(), self._labels[rows].tolist())

    def select(self, positions: Sequence[int]) -> "PairTable":
        """A view of the pairs at ``positions`` (of this table), in that order."""
        return self._view(self.rows[np.asarray(positions, dtype=np.int64)])

    def decisive(self) -> "PairTable":
        """The pairs with a winner (ties left out), in order."""
        return self._view(self.rows[self._labels[self.rows] != TIE])


def pair_meta(pairs: Sequence[PreferencePair]) -> Iterator[tuple[str, str, float]]:
    """(pair_id, prompt, label_0) per pair, without decoding images of a :class:`PairTable`."""
    if isinstance(pairs, PairTable):
        return pairs.iter_meta()
    return ((p.pair_id, p.prompt, p.label_0) for p in pairs)


def decisive_pairs(pairs: Sequence[PreferencePair]) -> Sequence[PreferencePair]:
    """The pairs with a winner, in order (a view for a :class:`PairTable`)."""
    if isinstance(pairs, PairTable):
        return pairs.decisive()
    return [p for p in pairs if not p.is_tie]


def _cache_key(files: list[Path], split: str | None, limit: int | None, source: str | None) -> str:
    described = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    text = json.dumps({"v": CACHE_VERSION, "files": described, "split": split, "limit": limit, "source": source})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def open_pairs(
    path: str | Path,
    split: str | None = None,
    limit: int | None = None,
    *,
    weight_by_prompt: bool = False,
    source: str | None = None,
    cache_dir: Path | None = None,
    log: Any = None,
) -> PairLoadResult:
    """A local Parquet pair set as a :class:`PairTable` (see the module docstring); the
    result's counts and skip reasons are :func:`lpo.pairs.format.load_pairs`' own."""
    from lpo.core.paths import lpo_home

    path = Path(path).expanduser()
    if not path.exists():
        raise LpoError(f"pairs file {path} does not exist; pass an existing .parquet file or folder")
    if limit is not None and limit < 0:
        raise LpoError(f"limit must be >= 0, got {limit}")
    files = _parquet_files(path, split)
    default_source = source or (path.stem if path.is_file() else path.name)
    origin = str(path) + (f" [{split}]" if split else "")
    cache = Path(cache_dir) if cache_dir is not None else lpo_home() / "pair-cache"
    key = _cache_key(files, split, limit, source)
    arrow, summary_path = cache / f"{key}.arrow", cache / f"{key}.json"
    if not (arrow.is_file() and summary_path.is_file()):
        if log is not None:
            log(f"indexing {origin} into {arrow} (once; images stay encoded)")
        _convert(files, split, limit, default_source, origin, arrow, summary_path)
    summary = json.loads(summary_path.read_text())
    table = PairTable(arrow, origin)
    if weight_by_prompt:  # 1 / (pairs of the same prompt), as load_pairs sets it
        prompts = [prompt for _, prompt, _ in table.iter_meta()]
        counts = Counter(prompts)
        table = PairTable(arrow, origin, weights=np.asarray([1.0 / counts[p] for p in prompts], dtype=np.float64))
    sidecar = _read_sidecar(path) if path.is_file() else None
    return PairLoadResult(table, summary["n_rows"], summary["skipped"], summary["undecodable_ids"], origin, sidecar)


def read_pairs(path: str | Path, split: str | None = None, limit: int | None = None, *, stream: bool = True,
               log: Any = None) -> PairLoadResult:
    """A local parquet set streamed (``stream``: :func:`open_pairs`), else every pair loaded
    (:func:`lpo.pairs.format.load_pairs`: hub datasets, or ``stream=False``)."""
    if stream and Path(str(path)).expanduser().exists():
        return open_pairs(path, split=split, limit=limit, log=log)
    from lpo.pairs.format import load_pairs

    return load_pairs(path, split=split, limit=limit)


def _convert(files: list[Path], split: str | None, limit: int | None, default_source: str, origin: str,
             arrow: Path, summary_path: Path) -> None:
    """One pass over the rows: the same checks as load_pairs, kept rows appended encoded."""
    import pyarrow as pa

    from lpo.core.io import atomic_write_file, atomic_write_json

    schema = pa.schema([("pair_id", pa.string()), ("caption", pa.string()), ("jpg_0", pa.binary()),
                        ("jpg_1", pa.binary()), ("label_0", pa.float64()), ("source", pa.string()),
                        ("weight", pa.float64()), ("annotator_kind", pa.string())])
    checker = RowChecker(f"{default_source}/{split}/" if split else f"{default_source}/", default_source)

    def write(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            buffer = ColumnBuffer(writer, schema, WRITE_BATCH)
            for row, pair in checker.pairs(_parquet_rows(files), limit):
                buffer.append(pair_id=pair.pair_id, caption=pair.prompt, jpg_0=image_bytes(row["jpg_0"]),
                              jpg_1=image_bytes(row["jpg_1"]), label_0=pair.label_0, source=pair.source,
                              weight=pair.weight, annotator_kind=pair.annotator_kind)
            buffer.flush()

    arrow.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_file(arrow, write)
    try:
        checker.check_unique(origin)
    except LpoError:
        arrow.unlink()
        raise
    atomic_write_json(summary_path, {"n_rows": checker.n_rows, "skipped": dict(checker.skipped),
                                     "undecodable_ids": checker.undecodable_ids})
