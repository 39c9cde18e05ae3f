"""The results store: immutable result records, one metric on one checkpoint on one benchmark.

Files (``RESULTS`` is ``results/`` by default)::

    RESULTS/<benchmark>/records-v<schema>.jsonl     one JSON record per line, append-only
    RESULTS/<benchmark>/per-prompt/<eval id>.json   per-image scores of one evaluation

Why one JSONL file per benchmark, rewritten whole: a single file is what people diff,
commit and load with one line of pandas, and replacing it through a temporary file and
one rename (:func:`lpo.core.io.atomic_write_text`) means a reader never sees half a line and a
crash leaves the old file intact. The read-modify-rename runs under an exclusive
``flock`` on the benchmark's folder so two concurrent ``lpo eval`` runs cannot drop each
other's records. Appending with ``open("a")`` would be cheaper but can leave a torn last
line after a crash; one file per record would need no lock but makes thousands of files.
Records are never edited: the whole old content is kept byte for byte and new lines go
after it. All records of one evaluation land in one write, so an interrupted evaluation
leaves none.

The per-image scores live in a side file (written first, so a record never points at a
missing file) and the record carries its sha256; records stay small enough to read by
eye. The schema version is in the file name and in every record; readers refuse records
from a newer schema rather than misread them.
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from lpo.core.errors import LpoError
from lpo.core.io import atomic_write_text

SCHEMA_VERSION = 1
DEFAULT_RESULTS_DIR = Path("results")
PER_PROMPT_DIR = "per-prompt"


def records_path(results_dir: Path, benchmark: str, schema_version: int = SCHEMA_VERSION) -> Path:
    return Path(results_dir) / benchmark / f"records-v{schema_version}.jsonl"


@dataclass(frozen=True)
class ResultRecord:
    """One metric on one checkpoint on one benchmark (SPEC §6.3).

    ``value`` is the mean over prompts of the per-prompt mean score (images of a prompt
    averaged first); ``stderr`` and ``ci95`` (low, high; 1.96 standard errors) are over
    prompts, None with a single prompt. ``breakdown`` lists, per benchmark category in
    the benchmark's order, ``{"category": ..., value, stderr, ci95, n_prompts, n_images}``. ``per_prompt`` is the side file (relative to the
    results folder) with every image's score, ``per_prompt_sha256`` its content hash.
    ``metric_weights`` are the weights the metric reported loading (or were asked for),
    ``metric_formula`` its formula when it states one (CLIP-score variants do).

    ``aggregation`` says how ``value`` was formed: ``prompt_mean`` (as above) or
    ``category_mean`` (the unweighted mean of the breakdown's category values, GenEval's
    official overall; stderr sqrt(Σ se_c²)/C); None in records written before it was
    recorded (those are prompt means). ``training_signals`` lists the signals the
    checkpoint was trained or filtered with (:mod:`lpo.evals.signals`): ``[]`` for a model
    no preference signal touched, None when unknown; each names the metrics it optimised
    and those it is related to, which the leaderboard marks per cell.
    """

    eval_id: str
    created: str
    benchmark: str
    benchmark_version: str
    prompt_set_hash: str
    prompt_source: str
    metric: str
    metric_version: str
    higher_is_better: bool
    value: float
    stderr: float | None
    ci95: tuple[float, float] | None
    n_prompts: int
    n_images: int
    checkpoint: dict[str, Any]
    method: str
    protocol: dict[str, Any]
    protocol_hash: str
    metric_weights: str | None = None
    metric_formula: str | None = None
    base_model: str | None = None
    run_id: str | None = None
    optimised_reward: str | None = None
    breakdown: list[dict[str, Any]] | None = None
    aggregation: str | None = None
    training_signals: list[dict[str, Any]] | None = None
    per_prompt: str | None = None
    per_prompt_sha256: str | None = None
    image_cache: str | None = None  # the image cache folder on the machine that evaluated
    training_cost: dict[str, Any] | None = None
    eval_cost: dict[str, Any] | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    record_id: str = ""

    def __post_init__(self) -> None:
        if not self.record_id:
            object.__setattr__(self, "record_id", self.content_id())

    @property
    def metric_key(self) -> str:
        """``name@version``: the leaderboard column. Two versions never share one."""
        return f"{self.metric}@{self.metric_version}"

    @property
    def benchmark_key(self) -> str:
        return f"{self.benchmark}@{self.benchmark_version}"

    def content_id(self) -> str:
        return content_id(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["ci95"] is not None:
            data["ci95"] = list(data["ci95"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "record") -> "ResultRecord":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LpoError(f"{where} has fields this lpo does not know ({', '.join(unknown)}); upgrade lpo to read it")
        data = dict(data)
        if data.get("ci95") is not None:
            data["ci95"] = tuple(data["ci95"])
        try:
            record = cls(**data)
        except TypeError as err:
            raise LpoError(f"{where} is not a result record ({err}); the file is damaged") from None
        # Checked on the stored fields, so records written before an optional field was
        # added keep their ids.
        if content_id(data) != record.record_id:
            raise LpoError(f"{where}: record {record.record_id} does not match its content; records must not be edited")
        return record


def content_id(data: dict[str, Any]) -> str:
    """16 hex of the sha256 of a record's JSON without its id: the record id."""
    body = {k: v for k, v in data.items() if k != "record_id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def summary_fields(summary) -> dict[str, Any]:
    """value / stderr / ci95 / n of a :class:`lpo.evals.statistics.PromptUnitSummary`, NaN as None."""
    finite = summary.stderr is not None and math.isfinite(summary.stderr)
    return {
        "value": summary.mean,
        "stderr": summary.stderr if finite else None,
        "ci95": (summary.mean - summary.ci95, summary.mean + summary.ci95) if finite else None,
        "n_prompts": summary.n_prompts,
        "n_images": summary.n_images,
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- writing


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on the benchmark's folder itself (no lock file left behind)."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename is still atomic, only concurrency is unguarded
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_per_prompt(results_dir: Path, benchmark: str, eval_id: str, data: dict[str, Any]) -> tuple[str, str]:
    """Write an evaluation's per-image scores; (path relative to ``results_dir``, sha256)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"
    relative = Path(benchmark) / PER_PROMPT_DIR / f"{eval_id}.json"
    atomic_write_text(Path(results_dir) / relative, text)
    return relative.as_posix(), hashlib.sha256(text.encode()).hexdigest()


def append_records(results_dir: Path, records: Sequence[ResultRecord], companion: str | None = None) -> list[Path]:
    """Append ``records`` (grouped by benchmark) in one atomic rewrite per records file.

    ``companion``: a file under ``results_dir`` the records point at (the per-prompt scores),
    removed when the append fails, so a failed write leaves no orphan behind."""
    try:
        return _append_records(results_dir, records)
    except BaseException:
        if companion is not None:
            (Path(results_dir) / companion).unlink(missing_ok=True)
        raise


def evaluation_key(record: ResultRecord) -> tuple | None:
    """What makes two records the same measurement: benchmark@version, prompt set, protocol
    (pixel hash and images per prompt), checkpoint content hash, metric@version and its
    weights. None for a checkpoint without a content hash (nothing can be said to repeat)."""
    checkpoint_hash = (record.checkpoint or {}).get("hash")
    if not checkpoint_hash:
        return None
    return (record.benchmark_key, record.prompt_set_hash, record.protocol_hash,
            (record.protocol or {}).get("images_per_prompt"), checkpoint_hash, record.metric_key, record.metric_weights)


def append_new_records(
    results_dir: Path, records: Sequence[ResultRecord], companion: str | None = None
) -> tuple[list[ResultRecord], list[ResultRecord]]:
    """Append the records the store does not hold yet (by :func:`evaluation_key`), under the
    store's lock; returns (appended, already stored: the stored record for each repeat).

    A re-run of an evaluation (the same checkpoint, protocol and metric; e.g. after a kill
    between writing and reporting) so adds nothing. ``companion`` (the per-prompt file of
    ``records``) is removed when nothing is appended or the append fails."""
    try:
        appended, repeated = [], []
        for benchmark, group in _by_benchmark(records).items():
            path = records_path(results_dir, benchmark)
            with _locked(path.parent):
                stored: dict[tuple | None, ResultRecord] = {}
                for old in _read_records_file(path) if path.is_file() else []:
                    stored.setdefault(evaluation_key(old), old)
                fresh = []
                for record in group:
                    key = evaluation_key(record)
                    (repeated.append(stored[key]) if key is not None and key in stored else fresh.append(record))
                if fresh:
                    _append_group(path, fresh)
                appended += fresh
        if not appended and companion is not None:
            (Path(results_dir) / companion).unlink(missing_ok=True)
        return appended, repeated
    except BaseException:
        if companion is not None:
            (Path(results_dir) / companion).unlink(missing_ok=True)
        raise


def _append_group(path: Path, group: Sequence[ResultRecord]) -> None:
    """Rewrite ``path`` atomically with ``group`` appended (the caller holds the lock)."""
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        raise LpoError(f"{path} does not end with a newline: it was edited by hand; restore it from version control")
    new = "".join(json.dumps(r.as_dict(), sort_keys=True, default=str) + "\n" for r in group)
    atomic_write_text(path, old + new)


def _by_benchmark(records: Sequence[ResultRecord]) -> dict[str, list[ResultRecord]]:
    out: dict[str, list[ResultRecord]] = {}
    for record in records:
        out.setdefault(record.benchmark, []).append(record)
    return out


def _append_records(results_dir: Path, records: Sequence[ResultRecord]) -> list[Path]:
    written = []
    for benchmark, group in _by_benchmark(records).items():
        path = records_path(results_dir, benchmark)
        with _locked(path.parent):
            _append_group(path, group)
        written.append(path)
    return written


# --------------------------------------------------------------------------- reading


def load_records(results_dir: Path = DEFAULT_RESULTS_DIR, benchmarks: Sequence[str] | None = None) -> list[ResultRecord]:
    """Every record under ``results_dir`` (optionally of some benchmarks), in file order."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise LpoError(f"results folder {results_dir} does not exist; run `lpo eval` first or pass --results-dir")
    out: list[ResultRecord] = []
    for path in sorted(results_dir.glob("*/records-v*.jsonl")):
        if benchmarks and path.parent.name not in benchmarks:
            continue
        try:
            version = int(path.stem.split("-v")[-1])
        except ValueError:
            raise LpoError(f"{path}: cannot read the schema version from the file name (records-v<N>.jsonl)") from None
        if version > SCHEMA_VERSION:
            raise LpoError(f"{path} uses results schema v{version}, newer than this lpo (v{SCHEMA_VERSION}); upgrade lpo")
        out += _read_records_file(path)
    return out


def _read_records_file(path: Path) -> list[ResultRecord]:
    """The records of one records file, each checked against its content id."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except ValueError as err:
            raise LpoError(f"{where} is not valid JSON ({err}); restore the file from version control") from None
        out.append(ResultRecord.from_dict(data, where))
    return out
