"""The one preference-pair format, shared by LRM training, MPCF, SPO's step model and
Diffusion-DPO, and its readers and writer.

A pair is a prompt, two images and ``label_0`` = P(image 0 is preferred): 1.0 (image 0
wins), 0.0 (image 1 wins) or 0.5 (tie) — Pick-a-Pic's convention, so that Pick-a-Pic
rows need no conversion. On disk a pair set is a Parquet file in Pick-a-Pic's columns
(``caption``, ``jpg_0``, ``jpg_1``, ``label_0``, ``label_1``; images as encoded bytes:
PNG for pairs we write, JPEG in Pick-a-Pic) plus our optional ``pair_id``, ``source``,
``weight`` and ``annotator_kind``, next to a small JSON sidecar (``<file>.json``) with
counts and provenance.

Readers (``load_pairs``): a local ``.parquet`` file, a folder of them, or anything else
as a Hugging Face dataset id through ``datasets.load_dataset`` (default: the Pick-a-Pic
v1 mirror). Rows that cannot be used are skipped and counted by reason — undecodable
images separately — never silently lost: ``n_rows == len(pairs) + skipped``.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from lpo.core.errors import LpoError

TIE = 0.5

PICKAPIC_ID = "pickapic-anonymous/pickapic_v1"
# Pick-a-Pic v1's split names; the ``*_unique`` splits keep one row per image pair.
PICKAPIC_SPLITS = {"train": "train", "val": "validation_unique", "test": "test_unique"}

REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")
OPTIONAL_COLUMNS = ("pair_id", "source", "weight", "annotator_kind")
PAIR_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
# Pick-a-Pic's row flags, honoured when present (some versions have them).
FLAG_COLUMNS = ("has_label", "are_different")

PAIRS_SCHEMA_VERSION = 1

# Skip reasons (keys of ``PairLoadResult.skipped``).
SKIP_UNDECODABLE = "undecodable image"
SKIP_NO_LABEL = "has_label is false"
SKIP_IDENTICAL = "identical images (are_different is false)"
SKIP_BAD_LABEL = "labels not (1, 0), (0, 1) or (0.5, 0.5)"
SKIP_NO_CAPTION = "empty caption"
SKIP_BAD_WEIGHT = "weight not a finite number >= 0"


@dataclass
class PreferencePair:
    """One labelled pair.

    images: (H, W, 3) uint8 arrays.
    label_0: P(image_0 ≻ image_1) ∈ {1.0, 0.0, 0.5}.
    weight: per-pair loss weight (e.g. 1 / pairs of the same prompt).
    source: where the pair came from ("world", "pickapic_v1", ...).
    annotator_kind: the world annotator's bias ("balanced", "looks", "literal") that gave
        the label; None where unknown (Pick-a-Pic).
    """

    pair_id: str
    prompt: str
    image_0: np.ndarray
    image_1: np.ndarray
    label_0: float
    source: str
    weight: float = 1.0
    annotator_kind: str | None = None

    @property
    def is_tie(self) -> bool:
        return self.label_0 == TIE

    @property
    def winner(self) -> np.ndarray:
        """The preferred image (image_0 for a tie)."""
        return self.image_1 if self.label_0 == 0.0 else self.image_0

    @property
    def loser(self) -> np.ndarray:
        return self.image_0 if self.label_0 == 0.0 else self.image_1


@dataclass
class PairLoadResult:
    """What ``load_pairs`` read.

    n_rows: rows read (after ``limit``); every row is either in ``pairs`` or counted in
    ``skipped`` (reason -> rows). undecodable_ids: the pair ids of the rows skipped for
    an undecodable image. sidecar: the JSON written next to a local file by
    ``save_pairs``, if any.
    """

    pairs: list[PreferencePair]
    n_rows: int
    skipped: dict[str, int] = field(default_factory=dict)
    undecodable_ids: list[str] = field(default_factory=list)
    origin: str = ""
    sidecar: dict[str, Any] | None = None

    @property
    def n_skipped_undecodable(self) -> int:
        return self.skipped.get(SKIP_UNDECODABLE, 0)

    @property
    def n_skipped_other(self) -> int:
        return sum(n for reason, n in self.skipped.items() if reason != SKIP_UNDECODABLE)

    def summary(self) -> str:
        """One line for the user, e.g. "loaded 998 pairs from x (1000 rows; skipped 2: ...)"."""
        line = f"loaded {len(self.pairs)} pairs from {self.origin} ({self.n_rows} rows"
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            line += f"; skipped {sum(self.skipped.values())}: {reasons}"
        return line + ")"


# ------------------------------------------------------------------------- images


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def decode_image(value: Any) -> np.ndarray | None:
    """(H, W, 3) uint8 from encoded bytes, a ``datasets`` image dict or a PIL image;
    None when it cannot be decoded (corrupt or truncated bytes, missing value)."""
    from PIL import Image

    try:
        if isinstance(value, dict):  # datasets' Image feature with decode=False
            value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
        if isinstance(value, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(value)))
        elif isinstance(value, str):
            image = Image.open(value)
        elif isinstance(value, Image.Image):
            image = value
        else:
            return None
        return np.asarray(image.convert("RGB"))  # convert() forces the full decode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


# ---------------------------------------------------------------------- writing


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def check_pairs_path(path: str | Path) -> Path:
    """The output path of a pairs file, checked before any expensive work."""
    path = Path(path)
    if path.suffix != ".parquet":
        raise LpoError(f"a pairs file must end in .parquet, got {str(path)!r}; e.g. {path.with_suffix('.parquet')}")
    if path.is_dir():
        raise LpoError(f"{path} is a folder; pass a file path such as {path / 'pairs.parquet'}")
    return path


def pair_counts(pairs: Sequence[PreferencePair]) -> dict[str, Any]:
    labels = Counter(p.label_0 for p in pairs)
    counts: dict[str, Any] = {
        "pairs": len(pairs),
        "prompts": len({p.prompt for p in pairs}),
        "image_0_wins": labels.get(1.0, 0),
        "image_1_wins": labels.get(0.0, 0),
        "ties": labels.get(TIE, 0),
        "by_source": dict(sorted(Counter(p.source for p in pairs).items())),
    }
    kinds = Counter(p.annotator_kind for p in pairs if p.annotator_kind is not None)
    if kinds:
        counts["by_annotator_kind"] = dict(sorted(kinds.items()))
    return counts


def save_pairs(pairs: Sequence[PreferencePair], path: str | Path, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``pairs`` as one Parquet file (atomically) plus ``<path>.json``; returns the sidecar.

    Images are stored as PNG bytes (lossless). ``provenance`` (generation config, model,
    label statistics) goes into the sidecar as given.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lpo.core.io import atomic_write_file, atomic_write_json, git_state, package_versions

    path = check_pairs_path(path)
    pairs = list(pairs)
    # 1. Check what a reader relies on: known labels, unique ids, RGB uint8 images.
    for p in pairs:
        if p.label_0 not in (0.0, TIE, 1.0):
            raise ValueError(f"pair {p.pair_id!r} has label_0={p.label_0}; allowed: 1.0, 0.0, 0.5")
        for name, image in (("image_0", p.image_0), ("image_1", p.image_1)):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"pair {p.pair_id!r} {name} must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    duplicates = [i for i, n in Counter(p.pair_id for p in pairs).items() if n > 1]
    if duplicates:
        raise ValueError(f"{len(duplicates)} duplicate pair ids (first: {duplicates[0]!r}); pair ids must be unique")

    # 2. One table in Pick-a-Pic's columns plus ours.
    schema = pa.schema(
        [
            ("pair_id", pa.string()),
            ("caption", pa.string()),
            ("jpg_0", pa.binary()),
            ("jpg_1", pa.binary()),
            ("label_0", pa.float64()),
            ("label_1", pa.float64()),
            ("source", pa.string()),
            ("weight", pa.float64()),
            ("annotator_kind", pa.string()),
        ]
    )
    table = pa.table(
        {
            "pair_id": [p.pair_id for p in pairs],
            "caption": [p.prompt for p in pairs],
            "jpg_0": [encode_png(p.image_0) for p in pairs],
            "jpg_1": [encode_png(p.image_1) for p in pairs],
            "label_0": [float(p.label_0) for p in pairs],
            "label_1": [1.0 - float(p.label_0) for p in pairs],
            "source": [p.source for p in pairs],
            "weight": [float(p.weight) for p in pairs],
            "annotator_kind": [p.annotator_kind for p in pairs],
        },
        schema=schema,
    )
    atomic_write_file(path, lambda tmp: pq.write_table(table, tmp))

    # 3. The sidecar: counts, provenance, and a hash that tells a stale sidecar apart.
    sidecar = {
        "schema_version": PAIRS_SCHEMA_VERSION,
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "columns": schema.names,
        "counts": pair_counts(pairs),
        "provenance": provenance or {},
        "written_by": {"git": git_state(), "versions": package_versions()},
    }
    atomic_write_json(sidecar_path(path), sidecar)
    return sidecar


# ---------------------------------------------------------------------- reading


def _missing_columns_error(where: str, names: Iterable[str]) -> LpoError | None:
    missing = [c for c in REQUIRED_COLUMNS if c not in set(names)]
    if not missing:
        return None
    return LpoError(
        f"{where} is missing column(s) {', '.join(missing)}; a pairs file needs {', '.join(REQUIRED_COLUMNS)}"
        f" (optional: {', '.join(OPTIONAL_COLUMNS + FLAG_COLUMNS)})"
    )


def _parquet_files(path: Path, split: str | None) -> list[Path]:
    if path.is_file():
        if split is not None:
            raise LpoError(f"split {split!r} given for the single file {path}; splits select shards of a folder or a hub dataset")
        return [path]
    files = sorted(f for f in path.rglob("*.parquet") if not f.name.startswith("."))
    if split is not None:
        # Hub layout: data/<split>-00000-of-00012.parquet, <split>.parquet or <split>/...
        files = [
            f
            for f in files
            if f.name == f"{split}.parquet" or f.name.startswith(f"{split}-") or split in f.relative_to(path).parts[:-1]
        ]
    if not files:
        where = f"{path}" + (f" for split {split!r}" if split else "")
        raise LpoError(f"no .parquet files in {where}; pass a pairs .parquet file or a folder of <split>-*.parquet shards")
    return files


def _parquet_rows(files: list[Path], batch_rows: int = 256) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    wanted = PAIR_COLUMNS + FLAG_COLUMNS
    handles = []
    for f in files:  # check every file's columns before reading any rows
        try:
            handle = pq.ParquetFile(f)
        except Exception as err:  # pyarrow raises ArrowInvalid / OSError for non-Parquet files
            raise LpoError(f"{f} is not a readable Parquet file ({type(err).__name__}: {str(err).splitlines()[0]})") from None
        names = handle.schema_arrow.names
        error = _missing_columns_error(str(f), names)
        if error:
            raise error
        handles.append((handle, [c for c in wanted if c in names]))
    for handle, columns in handles:
        for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
            yield from batch.to_pylist()


def _hub_rows(dataset_id: str, split: str, streaming: bool) -> Iterator[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split, streaming=streaming)
    except Exception as err:  # offline, unknown id or split: all user-fixable
        first = str(err).splitlines()[0] if str(err) else ""
        raise LpoError(
            f"could not load dataset {dataset_id!r} split {split!r} ({type(err).__name__}: {first}); "
            "check the id, split and network, or pass a local .parquet file or folder"
        ) from None
    names = ds.column_names
    if names is None:  # a streamed dataset without declared features: look at the first row
        first_row = next(iter(ds), None)
        names = list(first_row) if first_row is not None else list(REQUIRED_COLUMNS)
    error = _missing_columns_error(f"dataset {dataset_id!r} split {split!r}", names)
    if error:
        raise error
    ds = ds.select_columns([c for c in PAIR_COLUMNS + FLAG_COLUMNS if c in names])
    yield from ds


def _row_to_pair(row: dict[str, Any], default_id: str, default_source: str) -> tuple[PreferencePair | None, str | None]:
    """(pair, None) or (None, skip reason). Cheap checks first; images are decoded last."""
    if row.get("has_label") is not None and not row["has_label"]:
        return None, SKIP_NO_LABEL
    if row.get("are_different") is not None and not row["are_different"]:
        return None, SKIP_IDENTICAL
    try:
        label_0, label_1 = float(row["label_0"]), float(row["label_1"])
    except (TypeError, ValueError):
        return None, SKIP_BAD_LABEL
    if label_0 not in (0.0, TIE, 1.0) or label_0 + label_1 != 1.0:  # NaN fails both
        return None, SKIP_BAD_LABEL
    caption = row["caption"]
    if not isinstance(caption, str) or not caption.strip():
        return None, SKIP_NO_CAPTION
    weight = row.get("weight")
    weight = 1.0 if weight is None else float(weight)
    if not (math.isfinite(weight) and weight >= 0):
        return None, SKIP_BAD_WEIGHT
    image_0, image_1 = decode_image(row["jpg_0"]), decode_image(row["jpg_1"])
    if image_0 is None or image_1 is None:
        return None, SKIP_UNDECODABLE
    pair = PreferencePair(
        pair_id=str(row["pair_id"]) if row.get("pair_id") is not None else default_id,
        prompt=caption,
        image_0=image_0,
        image_1=image_1,
        label_0=label_0,
        source=row.get("source") or default_source,
        weight=weight,
        annotator_kind=row.get("annotator_kind"),
    )
    return pair, None


def image_bytes(value: Any) -> bytes:
    """A row's image as its encoded bytes (a ``datasets`` Image feature stored with decode=False, or bytes)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value)


class RowChecker:
    """The row checks of :func:`load_pairs` over a stream of rows, every skip counted by reason.

    ``pairs(rows, limit)`` yields (row, pair) for each usable row; ``n_rows``, ``skipped`` and
    ``undecodable_ids`` count what it read and dropped. Rows without a ``pair_id`` get
    ``id_prefix + row index``. With ``unique_ids``, :meth:`check_unique` refuses repeated ids.
    """

    def __init__(self, id_prefix: str, default_source: str, unique_ids: bool = True) -> None:
        self.id_prefix, self.default_source = id_prefix, default_source
        self.n_rows = 0
        self.skipped: Counter[str] = Counter()
        self.undecodable_ids: list[str] = []
        self._seen: dict[str, None] | None = {} if unique_ids else None  # ids in order of first appearance
        self._repeated: set[str] = set()

    def pairs(self, rows: Iterable[dict[str, Any]], limit: int | None = None) -> Iterator[tuple[dict[str, Any], PreferencePair]]:
        for index, row in enumerate(rows):
            if limit is not None and index >= limit:
                break
            self.n_rows += 1
            default_id = f"{self.id_prefix}{index}"
            pair, reason = _row_to_pair(row, default_id, self.default_source)  # decodes both images: the check
            if pair is None:
                self.skipped[reason] += 1
                if reason == SKIP_UNDECODABLE:
                    self.undecodable_ids.append(str(row.get("pair_id") or default_id))
                continue
            if self._seen is not None:
                if pair.pair_id in self._seen:
                    self._repeated.add(pair.pair_id)
                self._seen[pair.pair_id] = None
            yield row, pair

    def check_unique(self, origin: str) -> None:
        if self._repeated:
            first = next(pair_id for pair_id in self._seen if pair_id in self._repeated)
            raise LpoError(
                f"{origin} has {len(self._repeated)} duplicate pair_id values (first: {first!r}); pair ids must be unique"
            )


class ColumnBuffer:
    """Rows gathered as columns and handed to a pyarrow writer (Parquet or Arrow IPC, both take
    ``write_table``) every ``size`` rows, so a stream of pairs is written in bounded memory."""

    def __init__(self, writer: Any, schema: Any, size: int = 256) -> None:
        self.writer, self.schema, self.size = writer, schema, size
        self.columns: dict[str, list[Any]] = {name: [] for name in schema.names}

    def append(self, **values: Any) -> None:
        for name, column in self.columns.items():
            column.append(values[name])
        if len(self.columns[self.schema.names[0]]) >= self.size:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.columns[self.schema.names[0]]:
            self.writer.write_table(pa.table(self.columns, schema=self.schema))
            for column in self.columns.values():
                column.clear()


def prompt_weights(pairs: Sequence[PreferencePair]) -> list[float]:
    """1 / (number of pairs with the same prompt), per pair."""
    counts = Counter(p.prompt for p in pairs)
    return [1.0 / counts[p.prompt] for p in pairs]


def load_pairs(
    path_or_id: str | Path = PICKAPIC_ID,
    split: str | None = None,
    limit: int | None = None,
    *,
    weight_by_prompt: bool = False,
    streaming: bool | None = None,
    source: str | None = None,
) -> PairLoadResult:
    """Read preference pairs from a local Parquet file or folder, or a hub dataset.

    path_or_id: an existing ``.parquet`` file or a folder of them (``split`` then picks
        the ``<split>-*.parquet`` shards); anything else is a hub dataset id, read with
        ``datasets.load_dataset(id, split=split or "train")`` (Pick-a-Pic's validation
        split is ``validation_unique``; see ``PICKAPIC_SPLITS``).
    limit: read at most this many rows (kept + skipped).
    weight_by_prompt: set each pair's weight to 1 / (pairs of its prompt among the pairs
        loaded), replacing any stored weight.
    streaming: stream a hub dataset instead of downloading it whole; default: stream
        when ``limit`` is given.
    source: the source name of rows without a ``source`` column (default: the dataset's
        name, e.g. ``pickapic_v1``, or the file's stem).
    """
    if limit is not None and limit < 0:
        raise LpoError(f"limit must be >= 0, got {limit}")
    # 1. Where the rows come from.
    path = Path(path_or_id).expanduser()
    text = str(path_or_id)
    if path.exists():
        files = _parquet_files(path, split)
        default_source = source or (path.stem if path.is_file() else path.name)
        origin = str(path) + (f" [{split}]" if split else "")
        row_iter = _parquet_rows(files)
        sidecar = _read_sidecar(path) if path.is_file() else None
    elif text.endswith(".parquet") or text.startswith(("/", "./", "../", "~")):
        raise LpoError(f"pairs file {text} does not exist; pass an existing .parquet file or folder, or a hub dataset id")
    else:
        split = split or "train"
        default_source = source or text.rstrip("/").split("/")[-1]
        origin = f"{text} [{split}]"
        row_iter = _hub_rows(text, split, streaming if streaming is not None else limit is not None)
        sidecar = None
    # 2. Convert row by row; every row is kept or counted.
    checker = RowChecker(f"{default_source}/{split}/" if split else f"{default_source}/", default_source)
    pairs = [pair for _, pair in checker.pairs(row_iter, limit)]
    checker.check_unique(origin)
    if weight_by_prompt:
        for pair, weight in zip(pairs, prompt_weights(pairs)):
            pair.weight = weight
    return PairLoadResult(pairs, checker.n_rows, dict(checker.skipped), checker.undecodable_ids, origin, sidecar)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    import json

    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError):
        return None
