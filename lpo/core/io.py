"""Atomic writes and run metadata (argv, git commit, package versions, hardware)."""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from lpo.core.errors import LpoError


# OSErrors of a write that the user fixes on the machine, not in lpo: why, and what to do.
DISK_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free space there or write to another folder"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space there or write to another folder"),
    errno.EROFS: ("the file system is read-only", "write to a writable folder"),
    errno.EACCES: ("permission denied", "make it writable for this user or write to another folder"),
    errno.EPERM: ("operation not permitted", "make it writable for this user or write to another folder"),
}


# torch.save and safetensors (Rust) report a full or read-only disk as RuntimeError / SafetensorError
# ("PytorchStreamWriter failed writing file ...", "unexpected pos", "os error 28"), not as OSError.
_WRAPPED_ERRNO = ((re.compile(r"No space left|StorageFull|os error 28|file write failed|unexpected pos"), errno.ENOSPC),
                  (re.compile(r"Read-only file system|os error 30"), errno.EROFS))


def _errno_of(err: BaseException) -> int | None:
    if isinstance(err, OSError):
        return err.errno
    if isinstance(err, RuntimeError) or type(err).__name__ == "SafetensorError":
        text = str(err)
        return next((code for pattern, code in _WRAPPED_ERRNO if pattern.search(text)), None)
    return None


def disk_error(path: Path, err: BaseException, what: str = "") -> LpoError | None:
    """The one-line error for a disk-level write failure (full, read-only, no permission), else None."""
    code = _errno_of(err)
    if code not in DISK_ERRORS:
        return None
    why, fix = DISK_ERRORS[code]
    return LpoError(f"could not write {what or path} ({path}): {why}; {fix}")


@contextmanager
def disk_errors(path: Path, what: str = "") -> Iterator[None]:
    """Turn a disk-level failure raised inside the block into a one-line LpoError naming ``path``."""
    try:
        yield
    except Exception as err:
        mapped = disk_error(Path(path), err, what)
        if mapped is None:
            raise
        raise mapped from err


def check_writable(folder: Path, what: str) -> None:
    """Fail now, before expensive work, when ``folder`` cannot be created or written to."""
    folder = Path(folder)
    # probe the folder, or the nearest folder above it that exists: a check that fails
    # (or work that fails after it) must not leave empty result folders behind
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        mapped = disk_error(folder, err, what)
        raise (mapped or LpoError(f"cannot write {what} ({folder}): {err.strerror or err}; pass a writable folder")) from err


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (no half-written files)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with disk_errors(path):
        _atomic_write_bytes(Path(path), data)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary sibling file, then rename it to ``path``.

    For writers that want a path rather than bytes (pyarrow, torch.save, PIL).
    """
    with disk_errors(path):
        _atomic_write_file(Path(path), write)


def _atomic_write_file(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _readable_by_all(folder: Path) -> None:
    """Give group and others read access to everything under ``folder``: some writers
    (safetensors through diffusers' LoRA saver) create 0600 files, and a run folder's files
    should all share one mode (0644 under the usual umask)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, (path.stat().st_mode & 0o777) | 0o044)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` in one rename.
    A disk-level failure inside (full, read-only) is one line naming ``final``; the
    temporary folder is removed whatever fails."""
    final = Path(final)
    with disk_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
    try:
        with disk_errors(final):
            yield tmp
        _readable_by_all(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def git_state(repo: Path | None = None) -> dict[str, Any]:
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("lpo", "torch", "diffusers", "transformers", "accelerate", "peft", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def hardware() -> dict[str, Any]:
    """Platform, CPU model, threads, and the CPU kernels torch dispatches to (:mod:`lpo.core.cpu_dispatch`)."""
    import torch

    from lpo.core.cpu_dispatch import dispatch_info

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "cpu_dispatch": dispatch_info()}
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def run_metadata() -> dict[str, Any]:
    return {"argv": sys.argv, "git": git_state(), "versions": package_versions(), "hardware": hardware()}


def one_line(err: BaseException) -> str:
    """An exception as ``Type: first line`` (at most 200 characters) for one-line errors."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {(lines[0] if lines else '')[:200]}"


def load_safetensors_strict(module, path: Path, *, what: str, config_name: str, fix: str) -> None:
    """Load ``path`` into ``module`` (whose weights may be meta) strictly.

    Every failure is an ``LpoError`` naming the path: unreadable file, missing or
    unexpected tensors, shape mismatch. ``what`` names the model ("LRM weights"),
    ``config_name`` the file that described its architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise LpoError(f"could not read {what} {path} ({one_line(err)}); {fix}") from err
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        raise LpoError(f"{what} {path} do not match its {config_name}: {', '.join(parts)} tensors; {fix}")
    try:
        # assign=True adopts the loaded tensors in place of the meta placeholders
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # shape mismatches
        raise LpoError(f"{what} {path} do not match its {config_name} ({one_line(err)}); {fix}") from err
