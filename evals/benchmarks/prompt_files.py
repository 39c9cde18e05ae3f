"""Real-mode prompt benchmarks: Pick-a-Pic v1, HPSv2's benchmark prompts, PartiPrompts, any file.

Each takes ``source``: a local file or folder, or (for the published sets) a dataset id
read at run time through ``datasets`` / ``huggingface_hub``; None means the default
below. Nothing is downloaded until a benchmark's prompts are asked for.

=================  =========================================================  ==============
benchmark          default source                                             categories
=================  =========================================================  ==============
``pickapic``       ``pickapic-anonymous/pickapic_v1`` split                   none
                   ``validation_unique``, column ``caption`` (SPEC §6.2)
``hpsv2``          ``zhwang/HPDv2`` files ``benchmark/{anime,concept-art,     the style
                   paintings,photo}.json`` (800 prompts each)
``hpdv3``          ``MizzenAI/HPDv3`` files ``benchmark/benchmark_{Category}.   the category
                   json`` (12 categories, field ``caption``; HPSv3's test set)
``partiprompts``   ``nateraw/parti-prompts`` (the ``PartiPrompts.tsv`` of     ``Category``
                   google-research/parti, 1,632 prompts)
``prompts-file``   (required) a .txt (one prompt per line), .tsv/.csv/.parquet/.json file
=================  =========================================================  ==============

Local files: ``.txt`` one prompt per line; ``.tsv`` / ``.csv`` / ``.parquet`` with a
``prompt`` / ``Prompt`` / ``caption`` column and optionally ``category`` / ``Category``;
``.json`` a list of prompts or of ``{"prompt": ..., "category": ...}`` (or JSON lines of such
objects, ``.jsonl``). A folder holds one such file per category (its stem is the category,
less a ``benchmark_`` prefix), HPSv2's and HPDv3's layouts.

The published sets are read as they are, except that a prompt repeated in them is kept
once (seeds derive from the prompt text, so a repeat would count the same images twice);
the source description records how many were dropped. A user's own prompt file with a
repeat is an error instead.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lpo.core.errors import LpoError
from lpo.evals.benchmarks.base import BENCHMARKS, PromptSet

REAL_METRICS = ("pickscore", "hpsv2", "hpsv21", "image_reward", "laion_aesthetic", "clip_score")
PICKAPIC_DATASET = "pickapic-anonymous/pickapic_v1"
PICKAPIC_SPLIT = "validation_unique"
HPSV2_DATASET = "zhwang/HPDv2"
HPSV2_STYLES = ("anime", "concept-art", "paintings", "photo")
HPDV3_DATASET = "MizzenAI/HPDv3"
HPDV3_CATEGORIES = ("Characters", "Arts", "Design", "Architecture", "Animals", "Natural Scenery", "Transportation",
                    "Products", "Others", "Plants", "Food", "Science")
HPDV3_METRICS = ("hpsv3", "hpsv21", "pickscore")
PARTI_DATASET = "nateraw/parti-prompts"
PROMPT_COLUMNS = ("prompt", "Prompt", "caption", "text")
CATEGORY_COLUMNS = ("category", "Category")
FILE_SUFFIXES = (".txt", ".tsv", ".csv", ".parquet", ".json", ".jsonl")


# --------------------------------------------------------------------------- readers


def read_prompt_file(path: Path) -> tuple[list[str], list[str] | None]:
    """(prompts, categories or None) of one local prompt file, by its suffix."""
    path = Path(path)
    if not path.is_file():
        raise LpoError(f"prompt file {path} does not exist; pass a file with one prompt per line (or a .tsv/.csv/.parquet/.json)")
    suffix = path.suffix.lower()
    if suffix == ".txt" or suffix not in FILE_SUFFIXES:
        from lpo.sampling.generate import read_prompts_file

        return read_prompts_file(path), None
    if suffix in (".tsv", ".csv"):
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
        return _columns(rows, list(rows[0]) if rows else [], str(path))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise LpoError(f"could not read {path} as parquet ({type(err).__name__}); pass a valid .parquet file") from None
        names = table.column_names
        wanted = [c for c in names if c in PROMPT_COLUMNS + CATEGORY_COLUMNS]
        return _columns(table.select(wanted).to_pylist(), names, str(path))
    data = _read_json(path)
    if not isinstance(data, list):
        raise LpoError(f"{path} holds a JSON {type(data).__name__}; it must be a list of prompts or of {{'prompt': ...}} objects")
    if all(isinstance(x, str) for x in data):
        return _clean(data, str(path)), None
    if all(isinstance(x, dict) for x in data):
        return _columns(data, list(data[0]) if data else [], str(path))
    raise LpoError(f"{path} mixes prompt strings and objects; use one form")


def _read_json(path: Path):
    """A JSON document, or the list of objects of a JSON-lines file (datasets' json loader reads both)."""
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError as err:
        lines = [line for line in text.splitlines() if line.strip()]
        try:
            rows = [json.loads(line) for line in lines]
        except ValueError:
            raise LpoError(f"{path} is not valid JSON or JSON lines ({err}); pass a JSON list of prompts") from None
        if len(rows) > 1 or path.suffix.lower() == ".jsonl":
            return rows
        raise LpoError(f"{path} is not valid JSON ({err}); pass a JSON list of prompts") from None


def _columns(rows: list[dict], names: Sequence[str], where: str) -> tuple[list[str], list[str] | None]:
    prompt_col = next((c for c in PROMPT_COLUMNS if c in names), None)
    if prompt_col is None:
        raise LpoError(f"{where} has no prompt column (columns: {', '.join(names) or 'none'}); name it one of {', '.join(PROMPT_COLUMNS)}")
    category_col = next((c for c in CATEGORY_COLUMNS if c in names), None)
    kept = [r for r in rows if isinstance(r.get(prompt_col), str) and r[prompt_col].strip()]
    prompts = [r[prompt_col].strip() for r in kept]
    categories = [str(r.get(category_col) or "") for r in kept] if category_col else None
    if not prompts:
        raise LpoError(f"{where} has no prompts in column {prompt_col!r}")
    return prompts, categories


def _clean(prompts: Sequence[str], where: str) -> list[str]:
    out = [p.strip() for p in prompts if p and p.strip()]
    if not out:
        raise LpoError(f"{where} has no prompts")
    return out


def read_prompt_folder(folder: Path) -> tuple[list[str], list[str]]:
    """Every prompt file in ``folder`` (sorted by name); the file's stem is the category."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in FILE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise LpoError(f"{folder} holds no prompt files ({', '.join(FILE_SUFFIXES)}); pass a folder of prompt files or one file")
    prompts: list[str] = []
    categories: list[str] = []
    for file in files:
        ps, _ = read_prompt_file(file)
        prompts += ps
        categories += [file.stem.removeprefix("benchmark_")] * len(ps)
    return prompts, categories


def read_local(path: Path) -> tuple[list[str], list[str] | None]:
    path = Path(path)
    if path.is_dir():
        return read_prompt_folder(path)
    return read_prompt_file(path)


def unique_prompts(prompts: Sequence[str], categories: Sequence[str] | None, source: str) -> PromptSet:
    """A published prompt set with repeats kept once (first occurrence), the count noted in its source."""
    seen: set[str] = set()
    keep = []
    for i, p in enumerate(prompts):
        if p not in seen:
            seen.add(p)
            keep.append(i)
    dropped = len(prompts) - len(keep)
    if dropped:
        source = f"{source}; {dropped} repeated prompts kept once"
    return PromptSet(
        tuple(prompts[i] for i in keep), source, tuple(categories[i] for i in keep) if categories is not None else None
    )


def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists() or Path(source).suffix.lower() in FILE_SUFFIXES


def _dataset_column(dataset_id: str, split: str, prompt_column: str, category_column: str | None) -> tuple[list[str], list[str] | None]:
    """Prompt (and category) columns of a hub dataset split, streamed so images are not kept."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split, streaming=True)
        columns = [prompt_column] + ([category_column] if category_column else [])
        ds = ds.select_columns(columns)
        rows = list(ds)
    except Exception as err:  # offline, unknown id, split or column: all user-fixable
        from lpo.core.io import one_line

        raise LpoError(
            f"could not read prompts from dataset {dataset_id!r} split {split!r} ({one_line(err)}); "
            "check the id and network, or pass a local prompt file with --prompts"
        ) from None
    prompts = [str(r[prompt_column]).strip() for r in rows if r.get(prompt_column) and str(r[prompt_column]).strip()]
    categories = (
        [str(r.get(category_column) or "") for r in rows if r.get(prompt_column) and str(r[prompt_column]).strip()]
        if category_column
        else None
    )
    return prompts, categories


# --------------------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class PromptBenchmark:
    """A benchmark whose prompts come from a loader; ``load`` returns the full prompt set."""

    name: str
    version: str
    description: str
    source: str | None
    default_metrics: tuple[str, ...] = REAL_METRICS

    def load(self) -> PromptSet:  # pragma: no cover - replaced per benchmark
        raise NotImplementedError

    def prompt_set(self, max_prompts: int | None = None) -> PromptSet:
        return self.load().take(max_prompts)

    def reference_source(self, name: str, prompts: Sequence[str]):
        return None


@dataclass(frozen=True)
class PickAPic(PromptBenchmark):
    def load(self) -> PromptSet:
        source = self.source or PICKAPIC_DATASET
        if _is_local(source):
            prompts, _ = read_local(Path(source).expanduser())
            return unique_prompts(prompts, None, f"Pick-a-Pic captions from {source}")
        prompts, _ = _dataset_column(source, PICKAPIC_SPLIT, "caption", None)
        return unique_prompts(prompts, None, f"{source} {PICKAPIC_SPLIT} captions")


@dataclass(frozen=True)
class HPSv2Prompts(PromptBenchmark):
    def load(self) -> PromptSet:
        if self.source is not None:
            path = Path(self.source).expanduser()
            if not path.exists():
                raise LpoError(
                    f"HPSv2 prompt source {self.source} does not exist; pass the folder holding "
                    f"{', '.join(s + '.json' for s in HPSV2_STYLES)}, or omit --prompts to download them"
                )
            prompts, categories = read_local(path)
            return unique_prompts(prompts, categories, f"HPSv2 benchmark prompts from {path}")
        folder = _download_hpsv2()
        prompts, categories = read_prompt_folder(folder)
        return unique_prompts(prompts, categories, f"{HPSV2_DATASET} benchmark/*.json")


def _download_hpsv2() -> Path:
    return _download_files(HPSV2_DATASET, [f"{style}.json" for style in HPSV2_STYLES], "HPSv2 benchmark prompts")


def _download_files(dataset: str, names: Sequence[str], what: str) -> Path:
    """Files of ``dataset``'s ``benchmark/`` folder from the hub (huggingface_hub's own cache); their folder."""
    try:
        from huggingface_hub import hf_hub_download

        paths = [Path(hf_hub_download(dataset, name, subfolder="benchmark", repo_type="dataset")) for name in names]
    except Exception as err:  # offline or moved files: user-fixable
        from lpo.core.io import one_line

        raise LpoError(
            f"could not download the {what} from {dataset} ({one_line(err)}); "
            f"pass a local folder with {', '.join(names[:2])}, ... via --prompts"
        ) from None
    return paths[0].parent


@dataclass(frozen=True)
class HPDv3Prompts(PromptBenchmark):
    """HPSv3's benchmark prompts: one file per category, its objects' ``caption``."""

    def load(self) -> PromptSet:
        if self.source is not None:
            path = Path(self.source).expanduser()
            if not path.exists():
                raise LpoError(f"HPDv3 prompt source {self.source} does not exist; pass the folder holding "
                               "benchmark_Characters.json, ... (12 files), or omit --prompts to download them")
            prompts, categories = read_local(path)
            return unique_prompts(prompts, categories, f"HPDv3 benchmark prompts from {path}")
        names = [f"benchmark_{category}.json" for category in HPDV3_CATEGORIES]
        folder = _download_files(HPDV3_DATASET, names, "HPDv3 benchmark prompts")
        prompts, categories = [], []
        for name, category in zip(names, HPDV3_CATEGORIES):  # the published order, not the sorted one
            file_prompts, _ = read_prompt_file(folder / name)
            prompts += file_prompts
            categories += [category] * len(file_prompts)
        return unique_prompts(prompts, categories, f"{HPDV3_DATASET} benchmark/benchmark_*.json")


@dataclass(frozen=True)
class PartiPrompts(PromptBenchmark):
    def load(self) -> PromptSet:
        source = self.source or PARTI_DATASET
        if _is_local(source):
            prompts, categories = read_local(Path(source).expanduser())
            return unique_prompts(prompts, categories, f"PartiPrompts from {source}")
        prompts, categories = _dataset_column(source, "train", "Prompt", "Category")
        return unique_prompts(prompts, categories, f"{source} (train)")


@dataclass(frozen=True)
class PromptsFile(PromptBenchmark):
    def load(self) -> PromptSet:
        if self.source is None:
            raise LpoError("benchmark 'prompts-file' needs a prompt file: pass --prompts PATH (one prompt per line)")
        path = Path(self.source).expanduser()
        prompts, categories = read_local(path)
        return PromptSet(tuple(prompts), str(path), tuple(categories) if categories is not None else None)


# Versions: bump on any change of the default source or of how prompts are read/selected.
BENCHMARKS.add("pickapic", lambda source: PickAPic("pickapic", "1", "Pick-a-Pic v1 validation_unique captions (500)", source))
BENCHMARKS.add("hpsv2", lambda source: HPSv2Prompts("hpsv2", "1", "HPSv2 benchmark prompts, 4 styles × 800", source))
BENCHMARKS.add("hpdv3", lambda source: HPDv3Prompts("hpdv3", "1", "HPDv3 benchmark prompts (HPSv3's test set), 12 categories", source, HPDV3_METRICS))
BENCHMARKS.add("partiprompts", lambda source: PartiPrompts("partiprompts", "1", "PartiPrompts (1,632 prompts, 12 categories)", source))
BENCHMARKS.add("prompts-file", lambda source: PromptsFile("prompts-file", "1", "any prompt file (--prompts PATH)", source))
