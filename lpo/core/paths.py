"""Where lpo keeps its caches: one root, ``$LPO_HOME`` (default ``~/.cache/lpo``).

Below it: ``world/`` (pretrained world models), ``eval-images/`` (the image cache),
``checkpoints.json`` (the user's checkpoint registry), ``file-hashes.json``, and the
downloaded benchmark prompt sets (``geneval/``, ``t2i-compbench/``).
"""

from __future__ import annotations

import os
from pathlib import Path


def lpo_home() -> Path:
    """Root of lpo's caches: $LPO_HOME, else ~/.cache/lpo."""
    return Path(os.environ.get("LPO_HOME", Path.home() / ".cache" / "lpo"))
