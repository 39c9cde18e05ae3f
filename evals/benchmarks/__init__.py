"""Benchmark registry: ``BENCHMARKS.get(name)(source)`` builds a benchmark.

Registered here: ``world``, ``world-heldout`` (:mod:`.world`), ``pickapic``, ``hpsv2``,
``partiprompts``, ``prompts-file`` (:mod:`.prompt_files`), ``t2i-compbench``
(:mod:`.t2i_compbench`) and ``geneval`` (:mod:`.geneval`).
"""

from lpo.evals.benchmarks import geneval, prompt_files, t2i_compbench, world  # noqa: F401  (registration)
from lpo.evals.benchmarks.base import BENCHMARKS, Benchmark, BenchmarkFactory, PromptSet, prompt_hash

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkFactory", "PromptSet", "prompt_hash"]
