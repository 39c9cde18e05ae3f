"""Short stable hashes that result records carry to say what was evaluated.

``prompt_set_hash``: the ordered prompt list. ``folder_hash``: a model folder's content
(file sha256s are memoised in ``$LPO_HOME/file-hashes.json`` by path, size and mtime, so
a multi-GB pipeline is read once).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lpo.core.paths import lpo_home


def prompt_set_hash(prompts: list[str]) -> str:
    """Short stable hash of an ordered prompt list (recorded with results): 12 hex of the
    sha256 of the prompts joined by newlines, so order and content both count."""
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:12]


def _memo_path() -> Path:
    return lpo_home() / "file-hashes.json"


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_sha256(path: Path, memo: dict[str, str]) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in memo:
        memo[key] = file_sha256(path)
    return memo[key]


# Bookkeeping written beside the weights that never changes them: the device-hour record of
# the run that made them (its seconds differ on every run), so it is not part of the content.
NOT_CONTENT = frozenset({"cost.json"})


def folder_hash(folder: Path) -> str:
    """sha256 (first 16 hex) over the sorted (relative path, file sha256) of every non-hidden file
    but the bookkeeping in :data:`NOT_CONTENT`: two runs that wrote the same weights hash alike."""
    folder = Path(folder)
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text()) if memo_file.is_file() else {}
    except (OSError, ValueError):
        memo = {}  # a damaged memo only costs re-hashing
    size_before = len(memo)
    digest = hashlib.sha256()
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.name not in NOT_CONTENT and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{_file_sha256(path, memo)}\n".encode())
    if len(memo) != size_before:
        from lpo.core.io import atomic_write_json

        try:
            atomic_write_json(memo_file, memo)
        except OSError:
            pass  # read-only home: the hash is still right, only slower next time
    return digest.hexdigest()[:16]


def base_model_fingerprint(source: str | None) -> str | None:
    """:func:`folder_hash` of a local base pipeline's ``unet/``; None for a hub id or no folder.

    Reward models record it beside the base model's path, so that the same pipeline found
    under another path (a fresh clone, another machine) is recognised by content.
    """
    unet = Path(str(source)).expanduser() / "unet" if source else None
    return folder_hash(unet) if unet is not None and unet.is_dir() else None
