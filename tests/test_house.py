"""The import graph keeps the house's shape: no cycles, and the world stays a leaf.

Reads the graph with ``scripts/house_check.py`` (stdlib ``ast``, nothing imported). The
allow-lists below are what is still left to fix; they only shrink. A new cycle, or a new
real-mode module that imports ``lpo.world``, fails here; so does an entry that is fixed
but still listed (remove it).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from lpo.core.errors import LpoError

ROOT = Path(__file__).resolve().parent.parent


def _load_checker():
    spec = importlib.util.spec_from_file_location("house_check", ROOT / "scripts" / "house_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["house_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


house_check = _load_checker()

# Cycles still to break, each as its sorted members.
ALLOWED_CYCLES: set[tuple[str, ...]] = set()

# Real-mode modules (outside lpo/world/, not the CLI or the bench runner) that still
# import lpo.world. The world is a leaf: this list only shrinks.
ALLOWED_WORLD_IMPORTERS: set[str] = set()

# The CLI and the bench runner may hand a `world` choice to the world; listed so that a
# new dispatcher is a visible decision.
ALLOWED_WORLD_DISPATCH = {
    "lpo.cli.common",  # lpo.world.install() before every command: the composition root
    "lpo.cli.generate",  # lpo pairs: world image pairs
    "lpo.cli.world",  # lpo world ...
    "lpo.bench.config",
    "lpo.bench.runner",
}


@pytest.fixture(scope="module")
def report():
    return house_check.analyse(ROOT)


def test_checker_sees_the_package(report):
    # The mapping follows pyproject.toml: evals/ is lpo.evals, baselines/ lpo.baselines,
    # lpo/cli/ is lpo.cli; the root cli.py only launches it.
    assert {"lpo.cli", "lpo.cli.root", "lpo.evals.harness", "lpo.baselines", "lpo.world.grammar"} <= set(report.modules)
    assert report.modules["lpo.cli"] == ROOT / "lpo" / "cli" / "__init__.py"
    assert report.modules["cli"] == ROOT / "cli.py"
    assert {e.target for e in report.edges if e.source == "cli"} == {"lpo.cli"}
    assert not any(m.startswith("evals") or m.startswith("baselines") for m in report.modules)
    # Function-level imports count (the CLI's world commands import the world lazily).
    scopes = {e.scope for e in report.edges}
    assert {"module", "function"} <= scopes


def test_checker_finds_a_function_level_cycle(tmp_path):
    # A cycle hidden by a lazy import is still a cycle.
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools]\npackage-dir = { "pkg" = "pkg" }\n')
    pkg = tmp_path / "pkg"
    (pkg / "world").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "world" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (pkg / "b.py").write_text("from pkg import a\n")
    found = house_check.analyse(tmp_path)
    assert found.cycles == [["pkg.a", "pkg.b"]]
    assert [e.scope for e in house_check.cycle_edges(found, found.cycles[0])] == ["function", "module"]


def test_no_new_import_cycles(report):
    cycles = {tuple(c) for c in report.cycles}
    new = cycles - ALLOWED_CYCLES
    assert not new, "new import cycles:\n" + "\n".join(
        " <-> ".join(c) + "\n  " + "\n  ".join(
            f"{e.source} -> {e.target} (line {e.line}, {e.scope})"
            for e in house_check.cycle_edges(report, list(c))
        )
        for c in sorted(new)
    )
    fixed = ALLOWED_CYCLES - cycles
    assert not fixed, f"these cycles are gone; remove them from ALLOWED_CYCLES: {sorted(fixed)}"


def test_world_is_a_leaf(report):
    importers = set(report.world_real)
    new = importers - ALLOWED_WORLD_IMPORTERS
    assert not new, "real-mode modules importing lpo.world (the world is a leaf; invert the " \
        "dependency or register from the world's side):\n" + "\n".join(
            f"  {m}: " + ", ".join(f"{e.target} (line {e.line})" for e in report.world_real[m])
            for m in sorted(new)
        )
    fixed = ALLOWED_WORLD_IMPORTERS - importers
    assert not fixed, f"no longer import lpo.world; remove them from ALLOWED_WORLD_IMPORTERS: {sorted(fixed)}"


def test_world_dispatch_stays_in_the_cli_and_bench(report):
    assert set(report.world_dispatch) <= ALLOWED_WORLD_DISPATCH


def test_the_world_plugs_in_through_registries():
    # Real-mode code resolves `world` and the world's gap scorers through registries that
    # lpo.world.install() fills (the conftest calls it, as the CLI does); twice is harmless.
    from lpo.sampling.generate import resolve_model_name
    from lpo.models.families import MODEL_FAMILIES, is_model_alias
    from lpo.pairs.gap_scores import GAP_SCORERS
    from lpo.world import install
    from lpo.world.pretrain import resolve_world_alias

    install()
    assert "world" in MODEL_FAMILIES and is_model_alias("world:quick") and not is_model_alias("runs/x")
    assert resolve_model_name("world") == str(resolve_world_alias("world"))
    assert resolve_model_name("some/hub-id") == "some/hub-id"
    assert {"world-aesthetic", "world-clip", "world-vqa"} <= set(GAP_SCORERS.names())


def test_the_world_plugs_into_evaluation_and_training():
    # Benchmarks and metrics through load hooks (lpo.core.plugins), training prompts, the reward
    # ceiling and the perf tokenizer through the world's model family.
    from lpo.evals.benchmarks import BENCHMARKS
    from lpo.evals.metrics import METRICS
    from lpo.models.families import kind_family, offline_tokenizer_builder
    from lpo.trainers.jobs import load_prompts
    from lpo.world.grammar import make_splits

    assert {"world", "world-heldout"} <= set(BENCHMARKS.names())
    assert {"world_alignment", "world_utility", "world_diversity"} <= set(METRICS.names())
    assert BENCHMARKS.get("world")(None).diversity_metric == "world_diversity"
    assert load_prompts("world:train") == [s.text() for s in make_splits().get("train")]
    with pytest.raises(LpoError, match="unknown world prompt split 'nope'"):
        load_prompts("world:nope")
    family = kind_family("world")
    assert family.true_utility is not None and family.true_order_labels is not None
    assert offline_tokenizer_builder() is family.build_tokenizer
