"""A bench's preference pairs copied from another bench instead of made again.

A reward model learns from pairs of images that other models made: LRM-SD3 learns from
Pick-a-Pic, whose images come from SD1.5/SDXL-era models. The flow bench does the same
with the U-Net world's pairs (``pair_model=world``), and making the 17,844 pairs of the
full pool again takes half an hour here, so a bench with ``pairs_from=FOLDER`` copies
the finished ``pairs`` and ``mpcf`` stages of a bench whose pair values equal its own.
The copied stage markers keep the seconds measured where the pairs were made, so the
efficiency view books them as this bench's, as it does a reward kit's.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lpo.bench.kit import relocate_paths
from lpo.core.errors import LpoError
from lpo.core.io import atomic_write_json

PAIR_STAGES = ("pairs", "mpcf")
# The bench values that decide the pairs and which of them MPCF keeps (besides the images' model).
PAIR_FIELDS = ("seed", "train_prompts", "pairs_per_prompt", "reward_train_prompts", "val_prompts",
               "val_pairs_per_prompt", "pair_sources", "mpcf_strategy")


def check_same_pairs(source_config: dict[str, Any], config: Any, source: Path) -> None:
    """LpoError naming the first pair value in which the bench saved in ``source`` differs."""
    theirs = source_config.get("pair_model") or source_config.get("model")
    if theirs != config.images_model:
        raise LpoError(f"pairs_from {source}: its pairs are images of {theirs!r}, this bench's of {config.images_model!r}; "
                       f"set pair_model={theirs} or make the pairs here (pairs_from=none)")
    for name in PAIR_FIELDS:
        ours = json.loads(json.dumps(getattr(config, name)))
        if source_config.get(name) != ours:
            raise LpoError(f"pairs_from {source} was made with {name}={source_config.get(name)!r}, this bench has "
                           f"{ours!r}; use the same --set values or make the pairs here (pairs_from=none)")


def copy_pair_stages(source: Path, bench_folder: Path, config: Any) -> list[str]:
    """Copy the pairs and their MPCF stage of the finished bench ``source`` into ``bench_folder``
    (files hard-linked where the file system allows, markers last); returns the stages copied."""
    source, bench_folder = Path(source).expanduser().resolve(), Path(bench_folder).resolve()
    saved = source / "bench.json"
    if not saved.is_file():
        raise LpoError(f"pairs_from {source} is not a bench folder (no bench.json); pass the --out folder of an `lpo bench` "
                       "that finished its pairs and mpcf stages")
    check_same_pairs(json.loads(saved.read_text()).get("config", {}), config, source)
    missing = [s for s in PAIR_STAGES if not (source / "stages" / f"{s}.json").is_file()]
    if missing:
        raise LpoError(f"pairs_from {source} has not finished its {', '.join(missing)} stage; finish that bench first")
    todo = [s for s in PAIR_STAGES if not (bench_folder / "stages" / f"{s}.json").is_file()]
    if not todo:
        return []
    target = bench_folder / "pairs"
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted((source / "pairs").iterdir()):
        if path.is_file() and not path.name.startswith(".") and not (target / path.name).is_file():
            _link_or_copy(path, target / path.name)
    for stage in todo:  # markers last: a stage is done only once its files are in place
        marker = relocate_paths(json.loads((source / "stages" / f"{stage}.json").read_text()), str(source), str(bench_folder))
        marker["copied_from"] = {"folder": str(source), "ran": marker.get("ran")}
        atomic_write_json(bench_folder / "stages" / f"{stage}.json", marker)
    return todo


def _link_or_copy(path: Path, target: Path) -> None:
    """``target`` as a hard link of ``path`` (a copy across file systems), appearing whole or not at all."""
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(path, partial)
    except OSError:
        shutil.copy2(path, partial)
    os.replace(partial, target)
