"""Reward kits: a bench's preference data and reward models, built once and shipped.

The quick preset cannot make 4,688 pair images, train the LRM and the pixel step model
and table their accuracy by timestep inside its ten-minute budget on two CPU cores
(those stages took 18 min of the 38.7 of the first quick bench here). A kit holds what
they produce, so a bench can start from it the way a real-mode user starts from
Pick-a-Pic and a released reward model:

======================  =================================================================
``pairs/``              the MPCF-filtered training pairs every method trains on, and the
                        validation pairs of the accuracy table (the unfiltered training
                        pairs stay out: 8 MB that only the ``mpcf`` ablation reads; so do
                        the reward models' own pairs when they learn from a larger pool,
                        ``reward_train_prompts``: they are the trained models' input, not
                        the bench's)
``rewards/lrm|pixel/``  the trained LRM and pixel model, each with its cost record
``reward-eval/``        their accuracy by timestep on the validation pairs
``stages/``             the stage markers: outputs and measured wall seconds
``kit.json``            the bench values the kit depends on, the command that rebuilds it,
                        where it was built, and a SHA-256 per file
======================  =================================================================

The cost of building a kit is not hidden: its stage markers go into the bench with the
seconds they took where the kit was built, so the efficiency view books the reward
models' training to LPO and SPO and the pair data to every method as if the bench had
run them (and says the kit's machine in the report).

A kit is used only by a bench whose values it was built with (:data:`KIT_FIELDS`); any
other bench, or ``reward_kit=none``, makes everything itself.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lpo.core.errors import LpoError
from lpo.core.hashing import file_sha256
from lpo.core.io import atomic_write_json, run_metadata

KIT_VERSION = 1
KIT_FILE = "kit.json"
SHIPPED_KITS = Path(__file__).resolve().parents[1] / "world" / "assets" / "kits"
# The stages a kit replaces, in bench order.
KIT_STAGES = ("pairs", "mpcf", "reward-lrm", "reward-pixel", "reward-eval")
# The bench values that decide what those stages produce.
KIT_FIELDS = ("model", "pair_model", "seed", "train_prompts", "pairs_per_prompt", "reward_train_prompts", "val_prompts",
              "val_pairs_per_prompt", "pair_sources", "mpcf_strategy", "lrm_preset", "lrm_overrides", "pixel_preset",
              "pixel_overrides")
# Values of kit fields added after a kit was built: a kit without the field was built with this.
KIT_FIELD_DEFAULTS = {"pair_model": ""}
KIT_PATHS = ("pairs/train-mpcf.parquet", "pairs/train-mpcf.parquet.json", "pairs/val.parquet",
             "pairs/val.parquet.json", "rewards/lrm", "rewards/pixel", "reward-eval")
_REWARD_RUN_SKIP = ("checkpoints",)  # resumable training state: not needed to use the model
_BENCH_TOKEN = "{bench}"


def kit_fields(config: Any) -> dict[str, Any]:
    """The kit-deciding values of a BenchConfig, JSON-normalised (tuples as lists)."""
    data = json.loads(json.dumps(asdict(config)))
    return {name: data[name] for name in KIT_FIELDS}


def resolve_kit(name: str) -> Path | None:
    """``none`` -> None; a shipped kit's name or a kit folder -> its folder (LpoError if neither)."""
    if name == "none":
        return None
    shipped = SHIPPED_KITS / name
    for folder in (shipped, Path(name)):
        if (folder / KIT_FILE).is_file():
            return folder
    known = sorted(p.name for p in SHIPPED_KITS.iterdir() if (p / KIT_FILE).is_file()) if SHIPPED_KITS.is_dir() else []
    raise LpoError(f"reward kit {name!r} is neither a shipped kit ({', '.join(known) or 'none shipped'}) nor a folder "
                   f"with {KIT_FILE}; use --set reward_kit=none to build the pairs and reward models in the bench")


def read_kit(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / KIT_FILE).read_text())
    except (OSError, ValueError) as err:
        raise LpoError(f"cannot read the reward kit {folder / KIT_FILE} ({err}); rebuild it with `lpo bench --build-kit`") from None
    if data.get("kit_version") != KIT_VERSION:
        raise LpoError(f"reward kit {folder} has version {data.get('kit_version')!r}, this lpo reads {KIT_VERSION}; "
                       "rebuild it with `lpo bench --build-kit`")
    return data


def check_kit_matches(kit: dict[str, Any], config: Any, folder: Path, world_version: str) -> None:
    """LpoError when the kit was built in another world, or naming the first bench value that differs from the kit's."""
    built_in = str(kit.get("world_version", "1"))  # kits built before the field were built in world 1
    if built_in != world_version:
        raise LpoError(f"reward kit {folder} was built in world {built_in}, this lpo's world is {world_version}; "
                       "rebuild it with `lpo bench --build-kit` or use --set reward_kit=none")
    wanted = kit_fields(config)
    for name in KIT_FIELDS:
        built = kit["fields"].get(name, KIT_FIELD_DEFAULTS.get(name))
        if built != wanted[name]:
            raise LpoError(
                f"reward kit {folder} was built with {name}={built!r}, this bench has "
                f"{wanted[name]!r}; use --set reward_kit=none to build the pairs and reward models in the bench"
            )


def _files(root: Path, relative: str) -> list[Path]:
    path = root / relative
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not any(s in p.relative_to(root).parts for s in _REWARD_RUN_SKIP))


def relocate_paths(value: Any, old: str, new: str) -> Any:
    """``value`` with every string path under ``old`` moved under ``new`` (stage outputs hold absolute paths)."""
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + "/") else value
    if isinstance(value, dict):
        return {k: relocate_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate_paths(v, old, new) for v in value]
    return value


def _bench_meta(bench_folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((bench_folder / "bench.json").read_text()).get("meta")
    except (OSError, ValueError, AttributeError):
        return None


def export_kit(bench_folder: Path, config: Any, out: Path, command: str, world_version: str) -> Path:
    """Write the kit of a bench whose kit stages are done to ``out`` (replaced whole, atomically)."""
    bench_folder, out = Path(bench_folder).resolve(), Path(out)
    stages = [s for s in KIT_STAGES if s != "reward-pixel" or "spo" in config.methods]
    missing = [s for s in stages if not (bench_folder / "stages" / f"{s}.json").is_file()]
    if missing:
        raise LpoError(f"{bench_folder} has not finished {', '.join(missing)}; run the bench's kit stages first")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    files: dict[str, str] = {}
    for relative in KIT_PATHS:
        if not (bench_folder / relative).exists():
            continue
        for path in _files(bench_folder, relative):
            rel = path.relative_to(bench_folder).as_posix()
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / rel)
            files[rel] = file_sha256(path)
    seconds = {}
    for stage in stages:
        marker = json.loads((bench_folder / "stages" / f"{stage}.json").read_text())
        marker = relocate_paths(marker, str(bench_folder), _BENCH_TOKEN)
        atomic_write_json(tmp / "stages" / f"{stage}.json", marker)
        seconds[stage] = marker.get("timing", {}).get("seconds")
    meta = run_metadata()
    # where the stages ran: the first kit stage's own record (benches since this field), else the
    # bench's meta (which a later rerun of the finished bench rewrites), else this export
    first = json.loads((bench_folder / "stages" / f"{stages[0]}.json").read_text()).get("ran")
    built = first or _bench_meta(bench_folder) or meta
    atomic_write_json(tmp / KIT_FILE, {
        "kit_version": KIT_VERSION, "world_version": world_version, "fields": kit_fields(config), "stages": stages, "stage_seconds": seconds,
        "command": command, "built_from": str(bench_folder), "git": built.get("git"), "hardware": built.get("hardware"),
        "exported_with": meta["git"], "files": files,
    })
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def install_kit(kit_folder: Path, bench_folder: Path, config: Any, world_version: str) -> tuple[list[str], dict[str, Any]]:
    """Copy a matching kit into a bench folder and mark its stages done; returns the stages
    installed and the kit's ``kit.json``.

    Every file is checked against its SHA-256 before anything is installed, so a damaged
    kit (or a Git LFS pointer in place of a file) fails with one line instead of training
    on it. Stages the bench finished itself are left alone; a bench that has them all (a
    rerun) reads no kit file but ``kit.json``.
    """
    kit = read_kit(kit_folder)
    check_kit_matches(kit, config, kit_folder, world_version)
    bench_folder = Path(bench_folder)
    installed = [stage for stage in kit["stages"] if not (bench_folder / "stages" / f"{stage}.json").is_file()]
    if not installed:
        return [], kit
    for rel, digest in kit["files"].items():
        path = kit_folder / rel
        if not path.is_file() or file_sha256(path) != digest:
            raise LpoError(f"reward kit file {path} is missing or damaged (SHA-256 differs from {KIT_FILE}); "
                           "reinstall lpo or rebuild the kit with `lpo bench --build-kit`")
    for rel in kit["files"]:
        target = bench_folder / rel
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kit_folder / rel, target)
    for stage in installed:  # markers last: a stage is done only once its files are in place
        marker = json.loads((kit_folder / "stages" / f"{stage}.json").read_text())
        marker = relocate_paths(marker, _BENCH_TOKEN, str(bench_folder.resolve()))
        marker["kit"] = {"folder": str(kit_folder), "built_on": kit.get("hardware", {}).get("cpu_dispatch", {}).get("cpu_model"),
                         "command": kit.get("command"), "git": kit.get("git")}
        atomic_write_json(bench_folder / "stages" / f"{stage}.json", marker)
    return installed, kit
