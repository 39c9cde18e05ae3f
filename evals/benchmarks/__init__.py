"""Benchmark registry: ``BENCHMARKS.get(name)(source)`` builds a benchmark.

Registered here: ``pickapic``, ``hpsv2``, ``partiprompts``, ``prompts-file``
(:mod:`.prompt_files`), ``t2i-compbench`` (:mod:`.t2i_compbench`) and ``geneval``
(:mod:`.geneval`). Then the load hooks of :data:`lpo.core.plugins.BENCHMARK_HOOKS` run: the
world's ``world`` and ``world-heldout`` (lpo.world.eval_benchmarks), when
``lpo.world.install()`` ran.
"""

from lpo.evals.benchmarks import geneval, prompt_files, t2i_compbench  # noqa: F401  (registration)
from lpo.evals.benchmarks.base import BENCHMARKS, Benchmark, BenchmarkFactory, PromptSet, prompt_hash
from lpo.core.plugins import BENCHMARK_HOOKS

BENCHMARK_HOOKS.run()

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkFactory", "PromptSet", "prompt_hash"]
