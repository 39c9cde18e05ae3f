"""One spelling of a precision for users: ``fp32``, ``fp16``, ``bf16`` (torch's names are aliases).

Kept free of torch so that configs can canonicalise a dtype without importing it.
"""

from __future__ import annotations

from lpo.core.errors import LpoError

DTYPE_NAMES = ("fp32", "fp16", "bf16")
DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def canonical_dtype(name: str) -> str:
    """``fp32`` / ``fp16`` / ``bf16`` for either spelling; a one-line error otherwise."""
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_NAMES:
        raise LpoError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return name
