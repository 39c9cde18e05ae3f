"""Short stable hashes that result records carry to say what was evaluated."""

from __future__ import annotations

import hashlib


def prompt_set_hash(prompts: list[str]) -> str:
    """Short stable hash of an ordered prompt list (recorded with results): 12 hex of the
    sha256 of the prompts joined by newlines, so order and content both count."""
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:12]
