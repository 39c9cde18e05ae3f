"""Metric registry: ``METRICS.get(name)(MetricSpec(...))`` builds a metric.

Importing this package registers the real scorers (their weights load only when one is
built): ``pickscore``, ``hpsv2``, ``hpsv21``, ``hpsv3``, ``image_reward``, ``laion_aesthetic``,
``clip_score`` and ``clip_cosine_h14``; T2I-CompBench++'s ``t2i_compbench`` and its
per-category ``compbench_*`` scorers; ``geneval``. Then it runs the load hooks of
:data:`lpo.core.plugins.METRIC_HOOKS` (the world's judges, when ``lpo.world.install()`` ran).
"""

from typing import Any

from lpo.evals.metrics.base import METRICS, Metric, MetricFactory, MetricSpec

# Imported for their registrations.
from lpo.evals.metrics import aesthetic, clip_score, hps, hpsv3, image_reward, pickscore  # noqa: E402,F401  isort: skip
from lpo.evals.metrics import compbench, geneval  # noqa: E402,F401  isort: skip
from lpo.core.plugins import METRIC_HOOKS  # noqa: E402  isort: skip

METRIC_HOOKS.run()



def load_metrics() -> None:
    """Register every metric: the package's own (on import, above), the diversity measures
    (:mod:`.diversity`) and the LRM's own score (:mod:`.lrm_score`); the world's come with
    the load hooks. Call it before looking a metric up by name; a second call does nothing."""
    from lpo.evals.metrics import diversity, lrm_score  # noqa: F401  (their registrations)


def declared(name: str) -> Any:
    """What the registered metric ``name`` declares at class level (its class, or a factory's
    ``declares``), read without building it (no weights load); None when unknown."""
    load_metrics()  # the diversity measures and lrm_score register on demand
    if name not in METRICS:
        return None
    factory = METRICS.get(name)
    return factory if isinstance(factory, type) else getattr(factory, "declares", None)


def declared_comparability(name: str, version: str) -> tuple[str | None, str | None]:
    """(comparability, note) of records of ``name@version``: the registered metric's declaration
    when ``version`` is its current version (or it sets its version per instance), else (None, None)."""
    cls = declared(name)
    if cls is None:
        return None, None
    current = getattr(cls, "version", None)
    if isinstance(current, str) and current != version:
        return None, None
    return getattr(cls, "comparability", None), getattr(cls, "comparability_note", None)


__all__ = ["METRICS", "Metric", "MetricFactory", "MetricSpec", "declared", "declared_comparability", "load_metrics"]
