"""CLI help generated from the registries, without slowing ``lpo --help`` down.

The benchmark registry imports the metric code (torch, transformers) when it loads, so
the option help that lists its names cannot be computed at import time. A command built
with :class:`RegistryHelpCommand` fills the placeholders ``{benchmarks}``,
``{checkpoints}`` and ``{metrics}`` in its options' help only when that help is shown.
"""

from __future__ import annotations

from typer.core import TyperCommand

PLACEHOLDERS = ("{benchmarks}", "{checkpoints}", "{metrics}")


def benchmark_names() -> list[str]:
    from lpo.evals.benchmarks import BENCHMARKS

    return BENCHMARKS.names()


def checkpoint_names() -> list[str]:
    from lpo.core.errors import LpoError
    from lpo.evals.checkpoint_registry import BUILTIN, load_registry

    try:
        return sorted(load_registry())
    except LpoError:  # a broken user file must not break --help; the command itself reports it
        return sorted(e.name for e in BUILTIN)


def metric_names() -> list[str]:
    from lpo.evals.metrics import METRICS, load_metrics

    load_metrics()
    return METRICS.names()


def fill(text: str | None) -> str | None:
    if not text or not any(p in text for p in PLACEHOLDERS):
        return text
    for placeholder, names in (("{benchmarks}", benchmark_names), ("{checkpoints}", checkpoint_names), ("{metrics}", metric_names)):
        if placeholder in text:
            text = text.replace(placeholder, ", ".join(names()))
    return text


class RegistryHelpCommand(TyperCommand):
    """A Typer command whose option help may name registry entries (filled when shown)."""

    def format_help(self, ctx, formatter) -> None:
        for param in self.params:
            if getattr(param, "help", None):
                param.help = fill(param.help)
        return super().format_help(ctx, formatter)
