"""Metrics built from several models: which weights fill which role.

A metric such as the T2I-CompBench++ scorer needs a VQA model, a detector, a depth model
and a CLIP. One ``--metric-weights NAME=REF`` names them all at once:

- no reference: every role's official default;
- a local folder holding subfolders named after roles (``blip/``, ``detector/``, ...):
  each present subfolder fills its role, the others keep their defaults;
- anything else (a hub id, or a local model folder): the metric's primary role.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from lpo.core.errors import LpoError
from lpo.evals.metrics.weights import looks_local


def no_processor(processor: str | None, metric: str) -> None:
    """These metrics read each model's tokenizer from its own folder and preprocess images
    as their upstream scorers do: a separate processor would be ignored, so it is refused."""
    if processor is not None:
        raise LpoError(
            f"{metric} takes no processor (each of its models brings its tokenizer); drop --metric-processor {metric}=..."
        )


def role_refs(weights: str | None, defaults: Mapping[str, str], primary: str) -> dict[str, str]:
    """{role: weights reference} for a metric whose roles default to ``defaults``."""
    refs = dict(defaults)
    if weights is None:
        return refs
    folder = Path(weights).expanduser()
    if looks_local(weights) and folder.is_dir() and any((folder / role).is_dir() for role in defaults):
        for role in defaults:
            if (folder / role).is_dir():
                refs[role] = str(folder / role)
        return refs
    refs[primary] = weights
    return refs
