"""Where a metric's weights come from, and loading them strictly.

A weights reference is either a local path (a file, or a folder holding the official
file name) or a Hugging Face hub id: ``owner/name`` (the metric's official file in that
repository) or ``owner/name/path/in/repo.ext``. Hub files are fetched with
``huggingface_hub`` only when a metric is built, never at import. Every failure (no such
file, no network, unreadable pickle, a tensor too many or too few, a shape mismatch) is
an ``LpoError`` naming the metric and the fix, in one line.

Official checkpoints that are pickles are read with ``torch.load(weights_only=True)``:
tensors and plain containers only, no code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from lpo.core.errors import LpoError
from lpo.core.io import one_line

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def weights_fix(metric: str, what: str) -> str:
    """The fix named by every loading error: point the metric at a local copy."""
    return f"pass --metric-weights {metric}=PATH to a local copy of {what}"


def torch_dtype(name: str, metric: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise LpoError(f"{metric}: unknown dtype {name!r}; use one of {', '.join(_DTYPES)}") from None


def looks_local(ref: str) -> bool:
    """A reference names a local path if it exists or is spelled like a path (/, ., ~)."""
    return ref.startswith(("/", ".", "~")) or Path(ref).expanduser().exists()


def resolve_file(ref: str, filename: str, *, metric: str, fix: str) -> Path:
    """The local path of the checkpoint file that ``ref`` names (downloading a hub file).

    ``filename`` is the official file name, used when ``ref`` is a folder or a bare
    ``owner/name`` hub id.
    """
    if looks_local(ref):
        path = Path(ref).expanduser()
        if path.is_dir():
            path = path / filename
        if not path.is_file():
            raise LpoError(f"{metric}: no weights file at {path}; {fix}")
        return path
    parts = ref.split("/")
    if len(parts) < 2 or not all(parts):
        raise LpoError(f"{metric}: {ref!r} is neither a local path nor a hub id (owner/name); {fix}")
    repo_id, in_repo = "/".join(parts[:2]), "/".join(parts[2:]) or filename
    try:
        return Path(hub_download(repo_id, in_repo))
    except Exception as err:  # network, auth, missing repo or file: all one message
        raise LpoError(f"{metric}: could not download {in_repo} from hub repo {repo_id} ({one_line(err)}); {fix}") from err


def provenance(ref: str, path: Path, filename: str) -> str:
    """What a result row records for loaded weights: the local path, or hub id + file."""
    if looks_local(ref):
        return str(path)
    return ref if ref.count("/") >= 2 else f"{ref}/{filename}"


def hub_download(repo_id: str, filename: str) -> str:
    """``huggingface_hub.hf_hub_download`` (a seam: tests replace it, nothing is fetched)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename)


def from_pretrained(load: Callable[..., Any], ref: str, *, metric: str, what: str, fix: str, **kwargs) -> Any:
    """``load(ref, **kwargs)`` (a transformers ``from_pretrained``), errors as ``LpoError``."""
    if looks_local(ref) and not Path(ref).expanduser().is_dir():
        raise LpoError(f"{metric}: no {what} folder at {ref}; {fix}")
    try:
        return load(str(Path(ref).expanduser()) if looks_local(ref) else ref, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise LpoError(f"{metric}: could not load {what} from {ref!r} ({one_line(err)}); {fix}") from err


def model_from_pretrained(model_class, ref: str, *, metric: str, what: str, fix: str, **kwargs) -> Any:
    """``model_class.from_pretrained`` that fails on weights the checkpoint lacks.

    transformers would initialise them randomly with a warning, and a metric would then
    score with noise. Tensors the model does not use (e.g. the text tower when only the
    image tower is built) are fine; its load report is silenced in favour of this check.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = from_pretrained(
            model_class.from_pretrained, ref, metric=metric, what=what, fix=fix, output_loading_info=True, **kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise LpoError(f"{metric}: the {what} at {ref!r} lacks {len(missing)} tensors (e.g. {missing[0]}); {fix}")
    return model


def load_checkpoint(path: Path, *, metric: str, fix: str) -> dict[str, torch.Tensor]:
    """The state dict in a ``torch.save`` file.

    Accepts a bare state dict or a training checkpoint holding one under ``state_dict``
    (HPSv2's files) or ``model`` (BLIP's), and drops a ``module.`` prefix left by DistributedDataParallel.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors have no common base class
        raise LpoError(f"{metric}: could not read {path} ({one_line(err)}); {fix}") from err
    for wrapper in ("state_dict", "model"):  # HPSv2's training checkpoints; BLIP's {"model": ...}
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise LpoError(f"{metric}: {path} holds no state dict; {fix}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise LpoError(f"{metric}: {path} is not a state dict (entry {bad[0]!r} is not a tensor); {fix}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def check_keys(
    expected: Iterable[str], found: Iterable[str], *, metric: str, source: str, layout: str, fix: str
) -> None:
    """Fail unless ``found`` holds exactly the ``expected`` tensor names."""
    expected, found = set(expected), set(found)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        raise LpoError(f"{metric}: {source} is not {layout}: {', '.join(parts)} tensors; {fix}")


def load_into(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, metric: str, source: str, layout: str, fix: str
) -> None:
    """Load a converted state dict into ``module`` (built on the meta device) strictly.

    Every name must match and every shape must agree; ``assign`` adopts the tensors in
    place of the meta placeholders.
    """
    own = module.state_dict()
    check_keys(own, state, metric=metric, source=source, layout=layout, fix=fix)
    for name, tensor in state.items():
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise LpoError(
                f"{metric}: {source} does not match {layout}: {name} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(own[name].shape)}; {fix}"
            )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True, assign=True)
