"""GenEval (Ghosh et al., 2023): 553 prompts in six tasks, 4 images each.

Prompts and their metadata are the official ``prompts/evaluation_metadata.jsonl`` of
github.com/djghosh13/geneval (one JSON object per line: ``tag``, ``include``, optional
``exclude``, ``prompt``): a local copy (``--prompts FILE`` or a folder holding it), or
downloaded at run time into ``$LPO_HOME/geneval/`` (nothing is shipped with lpo). The
``geneval`` metric checks each image against its prompt's metadata; results break down
by task (the ``tag``), and GenEval's overall score is the mean of the six task scores
(``overall = "category_mean"``; :func:`lpo.evals.metrics.geneval_rules.overall_score`),
not the mean over all images.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lpo.core.errors import LpoError
from lpo.evals.benchmarks.base import BENCHMARKS, PromptSet
from lpo.evals.benchmarks.prompt_files import unique_prompts
from lpo.evals.metrics.geneval import NAMESPACE
from lpo.evals.metrics.prompt_info import annotate

REPOSITORY = "djghosh13/geneval"
METADATA_FILE = "evaluation_metadata.jsonl"
RAW_URL = "https://raw.githubusercontent.com/djghosh13/geneval/main/prompts/evaluation_metadata.jsonl"
IMAGES_PER_PROMPT = 4
VERSION = "1"  # bump on any change of prompt selection or reading


def read_metadata(path: Path) -> list[dict]:
    """The metadata records of an ``evaluation_metadata.jsonl`` file, checked."""
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise LpoError(f"{path} line {number} is not JSON ({err}); pass GenEval's {METADATA_FILE}") from None
        if not isinstance(record, dict) or not all(k in record for k in ("tag", "include", "prompt")):
            raise LpoError(f"{path} line {number} lacks tag/include/prompt; pass GenEval's {METADATA_FILE}")
        bad = [r for r in list(record["include"]) + list(record.get("exclude", [])) if not {"class", "count"} <= set(r)]
        if bad:
            raise LpoError(f"{path} line {number}: a clause lacks class/count ({bad[0]}); pass GenEval's {METADATA_FILE}")
        records.append(record)
    if not records:
        raise LpoError(f"{path} holds no metadata records; pass GenEval's {METADATA_FILE}")
    return records


def download_metadata(cache: Path | None = None) -> Path:
    from lpo.core.io import atomic_write_bytes, one_line
    from lpo.core.paths import lpo_home

    target = (cache or lpo_home() / "geneval" / "main") / METADATA_FILE
    if not target.is_file():
        try:
            with urllib.request.urlopen(RAW_URL, timeout=60) as response:
                data = response.read()
        except Exception as err:  # offline, moved file: user-fixable
            raise LpoError(
                f"could not download {METADATA_FILE} of {REPOSITORY} ({one_line(err)}); pass a local copy with --prompts FILE"
            ) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
    return target


@dataclass(frozen=True)
class GenEvalBenchmark:
    source: str | None = None
    name: str = "geneval"
    version: str = VERSION
    description: str = "GenEval (553 prompts, 6 tasks; overall = mean of task scores)"
    default_metrics: tuple[str, ...] = ("geneval",)
    default_images_per_prompt: int = IMAGES_PER_PROMPT
    overall: str = "category_mean"

    def metadata_path(self) -> Path:
        if self.source is None:
            return download_metadata()
        path = Path(self.source).expanduser()
        if path.is_dir():
            path = path / METADATA_FILE
        if not path.is_file():
            raise LpoError(f"no GenEval metadata at {path}; pass GenEval's prompts/{METADATA_FILE} (or its folder)")
        return path

    def load(self) -> PromptSet:
        path = self.metadata_path()
        records = read_metadata(path)
        where = "downloaded from " + REPOSITORY if self.source is None else str(path)
        prompt_set = unique_prompts([r["prompt"] for r in records], [r["tag"] for r in records], f"GenEval ({where})")
        first = {}
        for record in records:
            first.setdefault(record["prompt"], record)
        for prompt in prompt_set.prompts:
            annotate(NAMESPACE, prompt, first[prompt])
        return prompt_set

    def prompt_set(self, max_prompts: int | None = None) -> PromptSet:
        return self.load().take(max_prompts)

    def reference_source(self, name: str, prompts: Sequence[str]):
        return None


BENCHMARKS.add("geneval", lambda source: GenEvalBenchmark(source))
