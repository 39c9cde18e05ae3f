"""What a benchmark knows about its prompts that a metric scoring (image, prompt) needs.

Some official scorers read more than the prompt text: T2I-CompBench++ scores a prompt by
its category's rule (and a complex prompt by whether it is listed as spatial or action),
GenEval checks each image against the prompt's metadata (objects, counts, colours,
positions). A benchmark records that information here, keyed by prompt text, when it
loads its prompts; its metrics look it up while scoring. Every process loads the
benchmark before building metrics (``lpo.evals.harness.run_eval``), so each process has
the entries it scores with.
"""

from __future__ import annotations

from typing import Any, Mapping

_ANNOTATIONS: dict[str, dict[str, dict[str, Any]]] = {}


def annotate(namespace: str, prompt: str, info: Mapping[str, Any]) -> None:
    """Record ``info`` for ``prompt`` in ``namespace`` (a benchmark name), replacing what
    an earlier load recorded."""
    _ANNOTATIONS.setdefault(namespace, {})[prompt] = dict(info)


def lookup(namespace: str, prompt: str) -> dict[str, Any] | None:
    """What ``namespace`` recorded for ``prompt``, or None."""
    return _ANNOTATIONS.get(namespace, {}).get(prompt)


def forget(namespace: str) -> None:
    """Drop a namespace (tests)."""
    _ANNOTATIONS.pop(namespace, None)
