"""T2I-CompBench++ (Huang et al.): 8 categories × 300 validation prompts, 10 images each.

Prompts are the official ``examples/dataset/{category}_val.txt`` files of
github.com/Karine-Huang/T2I-CompBench: from a local copy of that folder, or downloaded at
run time into ``$LPO_HOME/t2i-compbench/`` (nothing is shipped with lpo). The complex
category also reads ``complex_val_spatial.txt`` and ``complex_val_action.txt``, which say
how its 3-in-1 score combines the partial scores.

``--prompts`` selects the source and categories: ``color,shape`` (those categories,
downloaded), ``PATH`` (all eight from a folder), ``color@PATH`` (some from a folder); no
``--prompts`` means all eight, downloaded. Categories are the official file stems:
``color shape texture spatial 3d_spatial numeracy non_spatial complex``.

Every prompt is scored by its category's official rule through the ``t2i_compbench``
metric, and results break down by category: the paper's table row. Each category's rule
is also its own metric (``compbench_blip_vqa`` ...; :mod:`lpo.evals.metrics.compbench`).
The official protocol makes 10 images per prompt (``default_images_per_prompt``). A
prompt that occurs twice is kept once, in its first category (the source description
counts them).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lpo.core.errors import LpoError
from lpo.evals.benchmarks.base import BENCHMARKS, PromptSet
from lpo.evals.benchmarks.prompt_files import unique_prompts
from lpo.evals.metrics.compbench import CATEGORIES, NAMESPACE
from lpo.evals.metrics.prompt_info import annotate

REPOSITORY = "Karine-Huang/T2I-CompBench"
RAW_URL = "https://raw.githubusercontent.com/Karine-Huang/T2I-CompBench/main/examples/dataset/"
COMPLEX_KIND_FILES = {"spatial": "complex_val_spatial.txt", "action": "complex_val_action.txt"}
IMAGES_PER_PROMPT = 10
VERSION = "1"  # bump on any change of prompt selection or reading


def category_file(category: str) -> str:
    return f"{category}_val.txt"


def parse_source(source: str | None) -> tuple[tuple[str, ...], Path | None]:
    """(categories, local folder or None for the download) of a ``--prompts`` value."""
    if source is None or not source.strip():
        return CATEGORIES, None
    spec, folder = source, None
    if "@" in source:
        spec, location = source.split("@", 1)
        folder = Path(location).expanduser()
    elif not all(part.strip() in CATEGORIES for part in source.split(",")):
        return CATEGORIES, Path(source).expanduser()
    categories = tuple(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        raise LpoError(
            f"unknown T2I-CompBench++ category {(unknown or [spec])[0]!r}; use some of {', '.join(CATEGORIES)} "
            "(comma-separated), optionally followed by @FOLDER"
        )
    return categories, folder


def read_lines(path: Path) -> list[str]:
    """The prompts of one official file: one per line, stripped, blank lines skipped."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def complex_key(prompt: str) -> str:
    """How the official 3-in-1 script matches complex prompts across its files."""
    return prompt.split(".")[0].lower()


def download_files(names: Sequence[str], cache: Path | None = None) -> Path:
    """Fetch the official files into the cache (once); their folder."""
    from lpo.core.io import atomic_write_bytes, one_line
    from lpo.core.paths import lpo_home

    folder = cache or lpo_home() / "t2i-compbench" / "main"
    for name in names:
        target = folder / name
        if target.is_file():
            continue
        try:
            with urllib.request.urlopen(RAW_URL + name, timeout=60) as response:
                data = response.read()
        except Exception as err:  # offline, moved file: user-fixable
            raise LpoError(
                f"could not download {name} of {REPOSITORY} ({one_line(err)}); pass the official examples/dataset "
                "folder with --prompts FOLDER (or CATEGORIES@FOLDER)"
            ) from None
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
    return folder


@dataclass(frozen=True)
class T2ICompBenchPlusPlus:
    categories: tuple[str, ...] = CATEGORIES
    folder: Path | None = None  # None: the official files, downloaded
    name: str = "t2i-compbench"
    version: str = VERSION
    description: str = "T2I-CompBench++ validation prompts (8 categories × 300), official rules per category"
    default_metrics: tuple[str, ...] = ("t2i_compbench",)
    default_images_per_prompt: int = IMAGES_PER_PROMPT

    def files(self) -> list[str]:
        names = [category_file(c) for c in self.categories]
        return names + (list(COMPLEX_KIND_FILES.values()) if "complex" in self.categories else [])

    def _folder(self) -> Path:
        if self.folder is None:
            return download_files(self.files())
        missing = [name for name in self.files() if not (self.folder / name).is_file()]
        if missing:
            raise LpoError(
                f"{self.folder} has no {missing[0]}; pass the official T2I-CompBench examples/dataset folder "
                f"(holding {', '.join(self.files())})"
            )
        return self.folder

    def load(self) -> PromptSet:
        folder = self._folder()
        prompts: list[str] = []
        categories: list[str] = []
        for category in self.categories:
            lines = read_lines(folder / category_file(category))
            prompts += lines
            categories += [category] * len(lines)
        where = "downloaded from " + REPOSITORY if self.folder is None else str(self.folder)
        prompt_set = unique_prompts(prompts, categories, f"T2I-CompBench++ {'/'.join(self.categories)} ({where})")
        kinds: dict[str, str] = {}
        if "complex" in self.categories:
            for kind, name in COMPLEX_KIND_FILES.items():
                for line in read_lines(folder / name):
                    kinds.setdefault(complex_key(line), kind)
        for prompt, category in zip(prompt_set.prompts, prompt_set.categories or ()):
            info = {"category": category}
            if category == "complex":
                info["complex_kind"] = kinds.get(complex_key(prompt), "both")
            annotate(NAMESPACE, prompt, info)
        return prompt_set

    def prompt_set(self, max_prompts: int | None = None) -> PromptSet:
        return self.load().take(max_prompts)

    def reference_source(self, name: str, prompts: Sequence[str]):
        return None


def build(source: str | None) -> T2ICompBenchPlusPlus:
    categories, folder = parse_source(source)
    return T2ICompBenchPlusPlus(categories=categories, folder=folder)


BENCHMARKS.add("t2i-compbench", build)
