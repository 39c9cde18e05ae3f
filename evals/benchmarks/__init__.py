"""Benchmark registry: ``BENCHMARKS.get(name)(source)`` builds a benchmark.

Registered here: ``world``, ``world-heldout`` (:mod:`.world`), ``pickapic``, ``hpsv2``,
``partiprompts``, ``prompts-file`` (:mod:`.prompt_files`). T2I-CompBench++ and GenEval
register the same way, each in its own file imported below.
"""

from lpo.evals.benchmarks import prompt_files, world  # noqa: F401  (registration)
from lpo.evals.benchmarks.base import BENCHMARKS, Benchmark, BenchmarkFactory, PromptSet, prompt_hash

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkFactory", "PromptSet", "prompt_hash"]
