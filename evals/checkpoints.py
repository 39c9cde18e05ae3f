"""What ``lpo eval CHECKPOINT`` evaluates: resolve the argument, hash its content, read its run.

Accepted, in this order:

1. a reference image source offered by the benchmark (the world's ``ground-truth``,
   ``shuffled``, ``noise``), hashed by its name and the world version;
2. ``world`` / ``world:PRESET`` (the world base model's folder);
3. a diffusers pipeline folder (``model_index.json``); when it sits inside a run folder
   (``run.json`` in it or its parent) the run's id, method, base model and training cost
   come along;
4. a run folder: its exported pipeline (``pipeline/`` or ``final/``). Trainers save U-Net
   LoRA checkpoints under ``checkpoints/``; evaluating those directly is the hook
   :func:`_run_folder_pipeline` (build the pipeline from the run's base model + adapter)
   and lands with the trainers;
5. a hub id ``owner/name`` (real mode).

The checkpoint hash keys the image cache and goes into every record: two records with
the same hash were produced by byte-identical weights. A folder's hash covers every file
(path and content); file hashes are memoised by (path, size, mtime) so re-evaluating a
multi-GB pipeline does not re-read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpo.errors import LpoError

RUN_PIPELINE_SUBFOLDERS = ("pipeline", "final")


@dataclass
class Checkpoint:
    """A resolved checkpoint. ``path`` is None for reference sources; ``hub_id`` for hub models."""

    spec: str
    label: str
    content_hash: str
    kind: str  # "pipeline" | "reference"
    path: str | None = None
    hub_id: str | None = None
    method: str = "base"
    base_model: str | None = None
    run_id: str | None = None
    run_path: str | None = None
    training_cost: dict[str, Any] | None = None
    optimised_reward: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "label": self.label,
            "hash": self.content_hash,
            "kind": self.kind,
            "path": self.path,
            "hub_id": self.hub_id,
        }

    @property
    def model(self) -> str:
        """What :func:`lpo.generate.load_pipeline` takes."""
        if self.kind != "pipeline":
            raise ValueError(f"{self.spec} is a reference source, not a pipeline")
        return self.path or self.hub_id  # type: ignore[return-value]


# --------------------------------------------------------------------------- hashing


def _memo_path() -> Path:
    from lpo.world.pretrain import lpo_home

    return lpo_home() / "file-hashes.json"


def _file_sha256(path: Path, memo: dict[str, str]) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in memo:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        memo[key] = digest.hexdigest()
    return memo[key]


def folder_hash(folder: Path) -> str:
    """sha256 (first 16 hex) over the sorted (relative path, file sha256) of every non-hidden file."""
    folder = Path(folder)
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text()) if memo_file.is_file() else {}
    except (OSError, ValueError):
        memo = {}  # a damaged memo only costs re-hashing
    size_before = len(memo)
    digest = hashlib.sha256()
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{_file_sha256(path, memo)}\n".encode())
    if len(memo) != size_before:
        from lpo.io import atomic_write_json

        try:
            atomic_write_json(memo_file, memo)
        except OSError:
            pass  # read-only home: the hash is still right, only slower next time
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- resolution


def resolve_checkpoint(spec: str, benchmark=None, prompts=None) -> Checkpoint:
    """The :class:`Checkpoint` named by ``spec`` (see the module docstring for the rules)."""
    # 1. A reference source of the benchmark.
    if benchmark is not None and benchmark.reference_source(spec, prompts or []) is not None:
        from lpo.world.grammar import WORLD_VERSION

        digest = hashlib.sha256(f"reference|{spec}|world{WORLD_VERSION}".encode()).hexdigest()[:16]
        return Checkpoint(spec=spec, label=spec, content_hash=digest, kind="reference", method="reference", base_model=None)

    # 2. World aliases.
    from lpo.world.pretrain import is_world_alias, resolve_world_alias

    if is_world_alias(spec):
        folder = resolve_world_alias(spec)
        return Checkpoint(
            spec=spec, label=spec, content_hash=folder_hash(folder), kind="pipeline", path=str(folder), base_model=spec
        )

    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LpoError(f"{spec} is a file, not a pipeline; pass a diffusers pipeline folder (with model_index.json), world, or a run folder")
        if (path / "model_index.json").is_file():
            return _pipeline_folder(spec, path)
        if (path / "run.json").is_file():
            return _pipeline_folder(spec, _run_folder_pipeline(path))
        raise LpoError(
            f"{spec} is not a diffusers pipeline (no model_index.json); pass a folder saved with save_pretrained, "
            "world, a run folder, or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5"
        )

    from lpo.models import _HUB_ID  # the same shape test the loader applies

    if _HUB_ID.match(spec):
        digest, commit = _hub_hash(spec)
        return Checkpoint(
            spec=spec, label=spec, content_hash=digest, kind="pipeline", hub_id=spec, base_model=spec,
            extra={"hub_commit": commit},
        )
    raise LpoError(
        f"no checkpoint {spec!r}: not a folder, not world, not a hub id; pass a diffusers pipeline folder, world, or owner/name"
    )


def _pipeline_folder(spec: str, folder: Path) -> Checkpoint:
    ckpt = Checkpoint(spec=spec, label=spec, content_hash=folder_hash(folder), kind="pipeline", path=str(folder.resolve()))
    run_dir = next((d for d in (folder, folder.parent, folder.parent.parent) if (d / "run.json").is_file()), None)
    if run_dir is not None:
        _read_run(ckpt, run_dir)
    return ckpt


def _run_folder_pipeline(run_dir: Path) -> Path:
    """The pipeline folder a run exported. Hook: U-Net / LoRA checkpoints of a run
    (``checkpoints/step-N``) will be turned into a pipeline here once trainers save them."""
    for name in RUN_PIPELINE_SUBFOLDERS:
        if (run_dir / name / "model_index.json").is_file():
            return run_dir / name
    looked = ", ".join(f"{run_dir / n}/" for n in RUN_PIPELINE_SUBFOLDERS)
    raise LpoError(
        f"run folder {run_dir} has no exported pipeline (looked for {looked}); "
        "pass the pipeline folder the trainer saved (evaluating U-Net/LoRA checkpoints directly is not supported yet)"
    )


def _read_run(ckpt: Checkpoint, run_dir: Path) -> None:
    """Fill run id, method, base model, optimised reward and training cost from a run folder."""
    from lpo.runs import RunFolder, read_cost

    run = RunFolder.open(run_dir)
    meta = run.read_run()
    try:
        config = run.read_config()
    except LpoError:
        config = {}
    ckpt.run_id = str(meta.get("name") or run_dir.name)
    ckpt.run_path = str(run_dir.resolve())
    ckpt.method = str(meta.get("method") or config.get("method") or config.get("trainer") or ckpt.method)
    model = meta.get("base_model") or config.get("base_model") or config.get("model")
    if isinstance(model, dict):  # nested model config
        model = model.get("name") or model.get("model")
    ckpt.base_model = str(model) if model else ckpt.base_model
    reward = meta.get("reward") or config.get("reward")
    ckpt.optimised_reward = str(reward) if reward else None
    try:
        ckpt.training_cost = read_cost(run_dir)
    except LpoError:
        ckpt.training_cost = None


def _hub_hash(hub_id: str) -> tuple[str, str]:
    """(hash, commit) of a hub model: the hash of id + the repository commit it resolves to
    now (asked from the hub, or read from the local snapshot when offline)."""
    commit = None
    try:
        from huggingface_hub import HfApi

        commit = HfApi().model_info(hub_id).sha
    except Exception:  # offline, private or unknown: try the local cache
        try:
            from huggingface_hub import snapshot_download

            commit = Path(snapshot_download(hub_id, local_files_only=True)).name
        except Exception:
            commit = None
    if not commit:
        raise LpoError(
            f"could not resolve hub model {hub_id!r} (no network answer and not in the local cache); "
            "check the id and network, or pass a local pipeline folder"
        )
    return hashlib.sha256(f"hub|{hub_id}|{commit}".encode()).hexdigest()[:16], commit
