"""Metric registry: ``METRICS.get(name)(MetricSpec(...))`` builds a metric."""

from lpo.evals.metrics.base import METRICS, Metric, MetricFactory, MetricSpec

__all__ = ["METRICS", "Metric", "MetricFactory", "MetricSpec"]
