"""Contracts every registered metric and benchmark keeps, parametrised over the registries:
a new entry gets these checks by being registered, without a new test."""

from __future__ import annotations

import inspect

import pytest

from lpo.core.errors import LpoError


def _metrics():
    import lpo.world

    lpo.world.install()
    from lpo.evals.metrics import METRICS, load_metrics

    load_metrics()
    return METRICS


def _benchmarks():
    import lpo.world

    lpo.world.install()
    from lpo.evals.benchmarks import BENCHMARKS

    return BENCHMARKS


def _own(registry) -> list[str]:
    """lpo's own entries (and the world's): a test module may register a fake for its own tests."""
    return [name for name in registry.names() if getattr(registry.get(name), "__module__", "").startswith("lpo.")]


def _world_image():
    import numpy as np
    from PIL import Image

    from lpo.world.grammar import parse_prompt
    from lpo.world.render import render_prompt

    prompt = "a red circle"
    return prompt, Image.fromarray(render_prompt(parse_prompt(prompt), np.random.default_rng(0)))


@pytest.mark.parametrize("name", _own(_metrics()))
def test_every_registered_metric_declares_its_contract(name):
    """Name, version, direction, formula and per-prompt-ness are declared where the registry
    can read them without loading weights (classes), or on the built metric (world judges,
    built from nothing); the harness checks the same attributes on every metric it builds."""
    from lpo.evals.metrics.base import METRIC_ATTRIBUTES, MetricSpec
    from lpo.evals.metrics.diversity import SetMetric
    from lpo.evals.metrics.scoring import BatchedMetric

    factory = _metrics().get(name)
    if inspect.isclass(factory) and not name.startswith("world_"):
        # real scorers: metadata on the class; weights are set by the base's __init__
        assert issubclass(factory, (BatchedMetric, SetMetric))
        declared = factory
    else:
        declared = factory(MetricSpec())  # world judges and diversity: exact, nothing to download
        assert all(hasattr(declared, attr) for attr in METRIC_ATTRIBUTES)
        assert declared.weights == {}
    assert declared.name == name
    assert isinstance(declared.version, str) and declared.version
    assert isinstance(declared.higher_is_better, bool) and isinstance(declared.per_prompt, bool)
    assert declared.formula is None or (isinstance(declared.formula, str) and declared.formula)
    from lpo.evals.metrics.base import COMPARABILITY

    # every lpo metric says whether its numbers stand beside published ones; a variant says why not
    assert declared.comparability in COMPARABILITY
    if declared.comparability == "variant":
        assert declared.comparability_note
    if declared.per_prompt:
        assert callable(getattr(declared, "score_sets", None))
    else:
        assert callable(getattr(declared, "score_batch", None) or getattr(declared, "score", None))
    if not inspect.isclass(factory) or name.startswith("world_"):
        prompt, image = _world_image()
        if declared.per_prompt:
            values = declared.score_sets([[image, image.transpose(0)]], [prompt])
            assert len(values) == 1 and values[0] == values[0]
        else:
            values = declared.score([image], [prompt])
            assert values.shape == (1,) and bool(values.isfinite().all())


@pytest.mark.parametrize("name", _own(_benchmarks()))
def test_every_registered_benchmark_declares_its_contract(name, tmp_path):
    """Metadata, default metrics that exist, and a missing prompt source is one line naming the fix."""
    metrics = _metrics()
    benchmark = _benchmarks().get(name)(None)
    assert benchmark.name == name and benchmark.version and benchmark.description
    assert benchmark.default_metrics and all(m in metrics for m in benchmark.default_metrics)
    assert callable(benchmark.prompt_set) and callable(benchmark.reference_source)
    missing = str(tmp_path / "no-such-prompts.txt")
    with pytest.raises(LpoError) as err:
        _benchmarks().get(name)(missing).prompt_set(3)
    message = str(err.value)
    assert "\n" not in message and ("no-such-prompts.txt" in message or "takes no prompt source" in message)


@pytest.mark.parametrize("name", ["world", "world-heldout", "prompts-file"])
def test_benchmarks_with_local_prompts_give_a_prompt_set(name, tmp_path):
    source = None
    if name == "prompts-file":
        source = tmp_path / "prompts.txt"
        source.write_text("a red circle\na blue square\na green star\na red square\n")
    prompts = _benchmarks().get(name)(None if source is None else str(source)).prompt_set(3)
    assert len(prompts) == 3 and len(set(prompts.prompts)) == 3
