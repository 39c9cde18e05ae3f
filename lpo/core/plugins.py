"""Load hooks: how an outside package plugs entries into registries that load lazily.

The evaluation registries (``METRICS``, ``BENCHMARKS``) import torch and every scorer when
they load, too slow for the CLI's start, so a plugin such as the embedded world
(:func:`lpo.world.install`) does not import them. It adds a hook here instead; each
registry package runs its hooks once, at the end of its own loading, and a hook added
after that runs at once. A hook must be idempotent (``if name not in REGISTRY``).
"""

from __future__ import annotations

from typing import Callable


class LoadHooks:
    """Functions to run when one registry has loaded."""

    def __init__(self, registry: str) -> None:
        self.registry = registry
        self._hooks: list[Callable[[], None]] = []
        self._loaded = False

    def add(self, hook: Callable[[], None]) -> None:
        if hook in self._hooks:
            return
        self._hooks.append(hook)
        if self._loaded:
            hook()

    def run(self) -> None:
        """Called by the registry's package once its own entries are registered."""
        self._loaded = True
        for hook in self._hooks:
            hook()


METRIC_HOOKS = LoadHooks("metric")  # run by lpo.evals.metrics
BENCHMARK_HOOKS = LoadHooks("benchmark")  # run by lpo.evals.benchmarks
