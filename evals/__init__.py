"""Evaluation: metrics, benchmarks, the generate-once harness and the results store.

Installed as ``lpo.evals``.
"""
