"""MPCF: each strategy's rule at its edges, the tie rule, report arithmetic, the score
cache (counted scorer calls), the world's scorers on rendered images, and the empty-result
error."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lpo.core.config import apply_overrides
from lpo.core.errors import LpoError
from lpo.pairs.gap_scores import GAP_SCORERS, ROLES, GapScorer, GapScores, compute_gap_scores
from lpo.pairs.mpcf import STRATEGIES, MPCFConfig, build_gap_scorers, filter_pairs, mpcf_preset
from lpo.pairs.format import TIE, PreferencePair
from lpo.world.grammar import RENDER_WORLD_VERSION, parse_prompt
from lpo.world.render import IMAGE_SIZE, SceneObject, render_prompt, render_scene

PAPER = MPCFConfig()  # thresholds 0 / −0.5 / −1, 0, 0; ties 0.2, 0.03, 0.07
PAPER_SCORERS = {role: f"{name}@1" for role, name in PAPER.scorer_names().items()}


def _image(k: int) -> np.ndarray:
    """A distinct rendered image per k (position and colour vary)."""
    colour = ("red", "green", "blue", "yellow", "purple", "white")[k % 6]
    x, y = 1 + (k // 6) % 18, 1 + (k // 108) % 18
    return render_scene([SceneObject(colour, "circle", "solid", 11, x, y)])


def _pair(pid: str, label_0: float, k0: int = 0, k1: int = 1, prompt: str = "a red circle") -> PreferencePair:
    return PreferencePair(pid, prompt, _image(k0), _image(k1), label_0, source="test")


def _pairs_with_gaps(rows: list[tuple[float, tuple[float, float, float]]], config: MPCFConfig = PAPER):
    """Pairs and hand-made GapScores such that (G_A, G_C, G_V) are exactly the given gaps.

    rows: (label_0, gaps). The winner (image_1 when label_0 = 0) scores the gap, the
    loser 0; for a tie image_0 scores the gap.
    """
    pairs, values = [], {r: [] for r in ROLES}
    for i, (label, gaps) in enumerate(rows):
        pairs.append(_pair(f"p{i}", label))
        for role, gap in zip(ROLES, gaps):
            values[role].append((0.0, gap) if label == 0.0 else (gap, 0.0))
    scorers = {role: f"{name}@1" for role, name in config.scorer_names().items()}
    scores = GapScores(tuple(p.pair_id for p in pairs), {r: np.array(v) for r, v in values.items()}, scorers)
    return pairs, scores


def _kept_ids(result) -> list[str]:
    return [p.pair_id for p in result.pairs]


# ------------------------------------------------------------------------- rules


@pytest.mark.parametrize("strategy,a_min", [("1", 0.0), ("2", -0.5), ("3", -1.0)])
@pytest.mark.parametrize("label", [1.0, 0.0])
def test_each_strategy_keeps_exactly_at_its_edges(strategy, a_min, label):
    config = MPCFConfig(strategy=strategy)
    rows = [
        (label, (a_min, 0.0, 0.0)),  # every gap on its bound: kept
        (label, (a_min - 0.01, 0.0, 0.0)),  # G_A just under
        (label, (a_min, -0.01, 0.0)),  # G_C just under
        (label, (a_min, 0.0, -0.01)),  # G_V just under
        (label, (2.0, 0.3, 0.4)),  # clearly consistent
        (label, (-2.0, -0.3, -0.4)),  # annotator contradicted by all three
    ]
    pairs, scores = _pairs_with_gaps(rows, config)
    result = filter_pairs(pairs, config, scores)
    assert _kept_ids(result) == ["p0", "p4"]
    np.testing.assert_allclose(result.gaps["aesthetic"], [g[0] for _, g in rows])
    report = result.report
    assert report.decisive_failed == {"aesthetic": 2, "clip": 2, "vqa": 2}
    assert report.decisive_failed_only == {"aesthetic": 1, "clip": 1, "vqa": 1}


def test_strategies_differ_only_in_the_aesthetic_bound():
    gaps = [(0.0, 0, 0), (-0.3, 0, 0), (-0.5, 0, 0), (-0.7, 0, 0), (-1.0, 0, 0), (-1.5, 0, 0)]
    pairs, scores = _pairs_with_gaps([(1.0, g) for g in gaps])
    kept = {s: len(filter_pairs(pairs, MPCFConfig(strategy=s), scores).pairs) for s in STRATEGIES}
    assert kept == {"none": 6, "1": 1, "2": 3, "3": 5}


def test_edges_survive_floating_point_rounding():
    # 0.30 − 0.35 is −0.04999999999999999 and 0.53 − 0.50 is 0.030000000000000027.
    config = mpcf_preset("world")
    pairs = [_pair("w", 1.0), _pair("t", TIE)]
    scorers = {role: f"{name}@1" for role, name in config.scorer_names().items()}
    values = {"aesthetic": np.array([[0.30, 0.35], [0.50, 0.50]]), "clip": np.array([[0.5, 0.5], [0.53, 0.50]]), "vqa": np.zeros((2, 2))}
    result = filter_pairs(pairs, config, GapScores(("w", "t"), values, scorers))
    assert _kept_ids(result) == ["w", "t"]


def test_strategy_none_keeps_every_decisive_pair_and_ties_unless_told():
    rows = [(1.0, (-5.0, -1.0, -1.0)), (0.0, (-5.0, -1.0, -1.0)), (TIE, (3.0, 1.0, 1.0))]
    pairs, scores = _pairs_with_gaps(rows)
    assert _kept_ids(filter_pairs(pairs, MPCFConfig(strategy="none"), scores)) == ["p0", "p1", "p2"]
    result = filter_pairs(pairs, MPCFConfig(strategy="none", keep_ties=False), scores)
    assert _kept_ids(result) == ["p0", "p1"]
    assert result.report.ties_dropped_by_keep_ties == 1


def test_tie_rule_on_absolute_gaps():
    rows = [
        (TIE, (0.2, 0.03, 0.07)),  # all on the bound: kept
        (TIE, (-0.2, -0.03, -0.07)),  # sign does not matter
        (TIE, (0.21, 0.0, 0.0)),
        (TIE, (0.0, -0.031, 0.0)),
        (TIE, (0.0, 0.0, 0.071)),
        (TIE, (-0.5, 0.5, 0.0)),  # fails two
        (1.0, (1.0, 1.0, 1.0)),
    ]
    pairs, scores = _pairs_with_gaps(rows)
    result = filter_pairs(pairs, MPCFConfig(strategy="1"), scores)
    assert _kept_ids(result) == ["p0", "p1", "p6"]
    report = result.report
    assert (report.total_ties, report.kept_ties, report.ties_within_rule) == (6, 2, 2)
    assert report.ties_failed == {"aesthetic": 2, "clip": 2, "vqa": 1}
    assert report.ties_failed_only == {"aesthetic": 1, "clip": 1, "vqa": 1}
    # The tie gap is image_0 − image_1.
    np.testing.assert_allclose(result.gaps["clip"][:2], [0.03, -0.03])

    dropped = filter_pairs(pairs, MPCFConfig(strategy="1", keep_ties=False), scores)
    assert _kept_ids(dropped) == ["p6"]
    assert (dropped.report.kept_ties, dropped.report.ties_dropped_by_keep_ties, dropped.report.ties_within_rule) == (0, 6, 2)
    assert dropped.report.ties_failed == {"aesthetic": 0, "clip": 0, "vqa": 0}


def test_report_counts_add_up_and_strategies_nest():
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.choice([1.0, 0.0, TIE], size=n, p=[0.45, 0.45, 0.1])
    gaps = np.stack([rng.normal(0, 0.8, n), rng.normal(0.02, 0.05, n), rng.normal(0.05, 0.1, n)], 1)
    pairs, scores = _pairs_with_gaps([(float(lab), tuple(g)) for lab, g in zip(labels, gaps)])
    kept_sets = {}
    for strategy in STRATEGIES:
        result = filter_pairs(pairs, MPCFConfig(strategy=strategy), scores)
        report = result.report
        kept_sets[strategy] = set(_kept_ids(result))
        assert report.total == n and report.total_ties == int((labels == TIE).sum())
        assert report.kept + report.dropped_decisive + report.dropped_ties == report.total
        assert report.kept == len(result.pairs) == int(result.keep.sum())
        assert report.kept_decisive == report.kept_decisive_by_strategy[strategy]
        if strategy == "none":
            assert report.dropped_decisive == 0 and report.kept_ties == report.total_ties
            continue
        for failed, only, dropped in (
            (report.decisive_failed, report.decisive_failed_only, report.dropped_decisive),
            (report.ties_failed, report.ties_failed_only, report.dropped_ties),
        ):
            # Every dropped pair fails at least one condition; "only" counts are disjoint.
            assert sum(failed.values()) >= dropped >= sum(only.values())
            assert all(only[r] <= failed[r] <= dropped for r in ROLES)
        assert report.kept_ties == report.ties_within_rule
        json.dumps(report.as_dict())
    by_strategy = report.kept_decisive_by_strategy
    assert by_strategy["1"] <= by_strategy["2"] <= by_strategy["3"] <= by_strategy["none"]
    assert by_strategy["1"] < by_strategy["3"] < by_strategy["none"]  # the data are not degenerate
    decisive = {p.pair_id for p in pairs if not p.is_tie}
    assert kept_sets["1"] & decisive <= kept_sets["2"] & decisive <= kept_sets["3"] & decisive <= kept_sets["none"]


def test_report_renders_as_table_and_dict():
    from rich.console import Console

    pairs, scores = _pairs_with_gaps([(1.0, (1.0, 0.0, 0.0)), (1.0, (-0.7, 0.0, -1.0)), (TIE, (0.0, 0.0, 0.0))])
    report = filter_pairs(pairs, MPCFConfig(), scores).report
    console = Console(record=True, width=120)
    console.print(report.as_table())
    text = console.export_text()
    assert "strategy 2" in text and "G_V below bound" in text and "laion-aesthetic@1" in text
    as_dict = report.as_dict()
    assert as_dict["kept_decisive_by_strategy"] == {"none": 2, "1": 1, "2": 1, "3": 1}
    assert (as_dict["kept"], as_dict["total"], as_dict["thresholds"]["aesthetic_min"]) == (2, 3, [0.0, -0.5, -1.0])


def test_empty_result_is_one_line_user_error():
    pairs, scores = _pairs_with_gaps([(1.0, (-0.7, 0.0, 0.0)), (0.0, (-0.8, 0.0, 0.0)), (1.0, (-0.2, -0.1, 0.0))])
    with pytest.raises(LpoError) as err:
        filter_pairs(pairs, MPCFConfig(strategy="1"), scores)
    message = str(err.value)
    assert "\n" not in message
    assert "strategy 1" in message and "G_A ≥ 0, G_C ≥ 0, G_V ≥ 0" in message
    # Strategy 2 keeps nothing either: the suggestion is the strictest one that keeps pairs.
    assert message.endswith("try --strategy 3 (keeps 2) or --strategy none (keeps 3)")

    ties, tie_scores = _pairs_with_gaps([(TIE, (0.0, 0.0, 0.0))])
    with pytest.raises(LpoError, match="keep_ties=true"):
        filter_pairs(ties, MPCFConfig(strategy="none", keep_ties=False), tie_scores)


def test_scores_from_another_scorer_are_refused():
    pairs, scores = _pairs_with_gaps([(1.0, (1.0, 1.0, 1.0))], config=PAPER)
    with pytest.raises(LpoError, match="world-aesthetic"):
        filter_pairs(pairs, mpcf_preset("world"), scores)


# ------------------------------------------------------------------------ config


def test_config_validates_and_takes_overrides():
    with pytest.raises(ValueError, match="strategy must be one of none, 1, 2, 3, got '4'"):
        MPCFConfig(strategy="4")
    with pytest.raises(ValueError, match="non-increasing"):
        MPCFConfig(aesthetic_min=(0.0, -1.0, -0.5))
    with pytest.raises(ValueError, match="tie_clip"):
        MPCFConfig(tie_clip=-0.01)
    with pytest.raises(ValueError, match="vqa_scale"):
        MPCFConfig(vqa_scale=0.0)
    config = apply_overrides(mpcf_preset("world"), ["strategy=3", "aesthetic_min=(0,-0.1,-0.2)", "keep_ties=false"])
    assert (config.strategy, config.aesthetic_min, config.keep_ties) == ("3", (0.0, -0.1, -0.2), False)
    with pytest.raises(LpoError, match="strategy"):
        apply_overrides(config, ["strategy=5"])
    with pytest.raises(LpoError, match="known: paper, world"):
        mpcf_preset("nope")
    assert mpcf_preset("paper") == MPCFConfig()


def test_scale_converts_gaps_to_threshold_units():
    # A CLIP metric reporting 100·cos: a 2.5-point gap is 0.025 in the tie rule's units.
    config = MPCFConfig(clip_scale=0.01)
    pairs, scores = _pairs_with_gaps([(TIE, (0.0, 2.5, 0.0)), (TIE, (0.0, 3.5, 0.0))], config)
    result = filter_pairs(pairs, config, scores)
    assert _kept_ids(result) == ["p0"]
    np.testing.assert_allclose(result.gaps["clip"], [0.025, 0.035])


# ------------------------------------------------------------------------- cache


class CountingScorer:
    """A fake GapScorer: mean pixel value × factor; records every call."""

    def __init__(self, name: str, version: str = "1", factor: float = 1.0):
        self.name, self.version, self.factor = name, version, factor
        self.calls: list[int] = []

    def score(self, images, prompts):
        assert len(images) == len(prompts)
        self.calls.append(len(images))
        return np.array([self.factor * float(im.mean()) for im in images])

    @property
    def images_scored(self) -> int:
        return sum(self.calls)


def _scored_pairs(n: int) -> list[PreferencePair]:
    return [_pair(f"p{i}", 1.0, 2 * i, 2 * i + 1) for i in range(n)]


def test_cache_second_call_scores_nothing(tmp_path):
    pairs = _scored_pairs(5)
    a, c = CountingScorer("fake-a"), CountingScorer("fake-c", factor=2.0)
    first = compute_gap_scores(pairs, {"aesthetic": a, "clip": c}, cache_dir=tmp_path, batch_size=4)
    assert a.calls == [4, 4, 2] and c.images_scored == 10
    assert first.num_scored == {"aesthetic": 10, "clip": 10}
    second = compute_gap_scores(pairs, {"aesthetic": a, "clip": c}, cache_dir=tmp_path, batch_size=4)
    assert a.images_scored == 10 and c.images_scored == 10  # no new calls
    assert second.num_scored == {"aesthetic": 0, "clip": 0}
    for role in ("aesthetic", "clip"):
        np.testing.assert_array_equal(first.values[role], second.values[role])
    np.testing.assert_allclose(first.values["aesthetic"][0], [pairs[0].image_0.mean(), pairs[0].image_1.mean()])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake-a@1.json", "fake-c@1.json"]
    entries = json.loads((tmp_path / "fake-a@1.json").read_text())["entries"]
    assert sorted(entries) == [f"p{i}" for i in range(5)] and len(entries["p0"]) == 2


def test_cache_new_scorer_only_scores_itself_and_version_bump_rescores(tmp_path):
    pairs = _scored_pairs(3)
    a, c = CountingScorer("fake-a"), CountingScorer("fake-c")
    compute_gap_scores(pairs, {"aesthetic": a, "clip": c}, cache_dir=tmp_path)
    v = CountingScorer("fake-v")
    scores = compute_gap_scores(pairs, {"aesthetic": a, "clip": c, "vqa": v}, cache_dir=tmp_path)
    assert (a.images_scored, c.images_scored, v.images_scored) == (6, 6, 6)
    assert scores.num_scored == {"aesthetic": 0, "clip": 0, "vqa": 6}
    assert scores.scorers == {"aesthetic": "fake-a@1", "clip": "fake-c@1", "vqa": "fake-v@1"}

    a2 = CountingScorer("fake-a", version="2", factor=3.0)
    bumped = compute_gap_scores(pairs, {"aesthetic": a2}, cache_dir=tmp_path)
    assert a2.images_scored == 6 and a.images_scored == 6
    np.testing.assert_allclose(bumped.values["aesthetic"], 3.0 * scores.values["aesthetic"])
    assert (tmp_path / "fake-a@1.json").exists() and (tmp_path / "fake-a@2.json").exists()


def test_cache_rescores_a_changed_image_and_scores_shared_images_once(tmp_path):
    pairs = _scored_pairs(3)
    a = CountingScorer("fake-a")
    compute_gap_scores(pairs, {"aesthetic": a}, cache_dir=tmp_path)
    # Same pair id, new image_1: only that image is scored again.
    pairs[1] = _pair("p1", 1.0, 2, 50)
    scores = compute_gap_scores(pairs, {"aesthetic": a}, cache_dir=tmp_path)
    assert a.calls[1:] == [1] and scores.num_scored["aesthetic"] == 1
    assert scores.values["aesthetic"][1, 1] == pytest.approx(_image(50).mean())
    # Pick-a-Pic reuses images across pairs: a shared (image, prompt) is scored once.
    b = CountingScorer("fake-b")
    shared = [_pair("x", 1.0, 7, 8), _pair("y", 0.0, 7, 9), _pair("z", TIE, 8, 7)]
    compute_gap_scores(shared, {"aesthetic": b}, cache_dir=None)
    assert b.images_scored == 3


def test_without_cache_every_call_scores(tmp_path):
    pairs = _scored_pairs(2)
    a = CountingScorer("fake-a")
    compute_gap_scores(pairs, {"aesthetic": a})
    compute_gap_scores(pairs, {"aesthetic": a})
    assert a.images_scored == 8


def test_scorer_contract_is_checked(tmp_path):
    pairs = _scored_pairs(2)

    class WrongShape(CountingScorer):
        def score(self, images, prompts):
            return np.zeros((len(images), 2))

    with pytest.raises(ValueError, match=r"bad@1 returned shape \(4, 2\) for 4 images"):
        compute_gap_scores(pairs, {"aesthetic": WrongShape("bad")})
    with pytest.raises(TypeError, match="GapScorer"):
        compute_gap_scores(pairs, {"aesthetic": object()})
    with pytest.raises(ValueError, match="cache file"):
        compute_gap_scores(pairs, {"aesthetic": CountingScorer("../escape")}, cache_dir=tmp_path)
    with pytest.raises(LpoError, match="unknown MPCF role 'pickscore'"):
        compute_gap_scores(pairs, {"pickscore": CountingScorer("a")})
    with pytest.raises(LpoError, match="duplicate pair_id 'p0'"):
        compute_gap_scores([pairs[0], pairs[0]], {"aesthetic": CountingScorer("a")})


def test_any_object_with_the_protocol_is_a_gap_scorer():
    class MetricWrapper:  # what a real-mode wrapper around an evaluation metric looks like
        name, version = "laion-aesthetic", "1"

        def score(self, images, prompts):
            return np.full(len(images), 5.0)

    assert isinstance(MetricWrapper(), GapScorer)
    assert isinstance(CountingScorer("a"), GapScorer)


# ------------------------------------------------------------------ world scorers


def test_world_scorers_are_registered_and_versioned_by_the_world():
    assert {"world-aesthetic", "world-clip", "world-vqa"} <= set(GAP_SCORERS.names())
    scorers = build_gap_scorers(mpcf_preset("world"))
    assert {r: s.name for r, s in scorers.items()} == {"aesthetic": "world-aesthetic", "clip": "world-clip", "vqa": "world-vqa"}
    assert all(f"world{RENDER_WORLD_VERSION}" in s.version for s in scorers.values())
    assert scorers["vqa"].judge_field == "soft_alignment"


def test_world_scorers_see_alignment_and_aesthetic_gaps(tmp_path):
    rng = np.random.default_rng(0)
    prompt = "a red circle to the left of a blue square"
    truth = render_prompt(parse_prompt(prompt), rng)
    other = render_prompt(parse_prompt("a yellow triangle above a green triangle"), rng)
    clean = render_scene([SceneObject("red", "square", "solid", 12, 10, 10)])
    muddy = clean.copy()
    muddy[2:5, 2:6] = (120, 90, 60)  # brown: neither background nor any palette colour
    muddy[28:30, 27:30] = (120, 90, 60)
    assert muddy.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    pairs = [
        PreferencePair("align", prompt, other, truth, 0.0, source="test"),  # image_1 (the truth) wins
        PreferencePair("looks", "a red square", clean, muddy, 1.0, source="test"),
    ]
    config = dataclasses.replace(mpcf_preset("world"), strategy="1")
    scorers = build_gap_scorers(config)
    result = filter_pairs(pairs, config, compute_gap_scores(pairs, scorers, cache_dir=tmp_path))
    gaps = {r: g.tolist() for r, g in result.gaps.items()}
    assert gaps["vqa"][0] > 0.5 and gaps["clip"][0] > 0.5, gaps
    # 18 muddy pixels cost more than strategy 2's aesthetic slack (−0.05); alignment is untouched.
    assert gaps["aesthetic"][1] > 0.05 and gaps["vqa"][1] == 0 and gaps["clip"][1] == 0, gaps
    assert _kept_ids(result) == ["align", "looks"]

    # Label the muddy image the winner: strategies 1 and 2 drop the pair; strategy 3's
    # slack of 0.1 forgives 18 muddy pixels (0.094).
    flipped = [pairs[0], dataclasses.replace(pairs[1], label_0=0.0)]
    scores = compute_gap_scores(flipped, scorers, cache_dir=tmp_path)
    assert scores.num_scored == {"aesthetic": 0, "clip": 0, "vqa": 0}  # same images: all cached
    for strategy in ("1", "2"):
        again = filter_pairs(flipped, dataclasses.replace(config, strategy=strategy), scores)
        assert _kept_ids(again) == ["align"] and again.report.decisive_failed_only["aesthetic"] == 1
    assert _kept_ids(filter_pairs(flipped, dataclasses.replace(config, strategy="3"), scores)) == ["align", "looks"]


# ------------------------------------------------------------------ real-mode scorers


def test_real_mode_scorers_come_from_the_evaluation_metrics(tmp_path):
    from metric_fixtures import tiny_clip_folder, write_aesthetic_head

    from lpo.evals.metrics.gap import MetricGapScorer
    from lpo.pairs.mpcf import build_gap_scorers

    clip = tiny_clip_folder(tmp_path / "clip", seed=5)
    write_aesthetic_head(tmp_path)
    config = MPCFConfig(aesthetic_scorer="laion-aesthetic", clip_scorer="world-clip", vqa_scorer="world-vqa")
    # keyed by the scorer's name or by its metric's name (the one the metric's errors print)
    scorers = build_gap_scorers(config, {"laion-aesthetic": str(tmp_path)}, {"laion_aesthetic": str(clip)})
    assert isinstance(scorers["aesthetic"], MetricGapScorer)
    assert scorers["aesthetic"].name == "laion_aesthetic"  # the metric's name and version key the cache
    images = [np.full((32, 32, 3), v, dtype=np.uint8) for v in (10, 200)]
    assert scorers["aesthetic"].score(images, ["a", "b"]).shape == (2,)


def test_any_metric_name_can_fill_a_role_and_unknown_names_fail(tmp_path):
    from metric_fixtures import tiny_clip_folder

    from lpo.pairs.mpcf import build_gap_scorers

    clip = tiny_clip_folder(tmp_path / "clip", seed=1)
    config = MPCFConfig(aesthetic_scorer="world-aesthetic", clip_scorer="clip_score", vqa_scorer="world-vqa")
    scorers = build_gap_scorers(config, {"clip_score": str(clip)})
    assert scorers["clip"].name.startswith("clip_score")
    with pytest.raises(LpoError, match="unknown gap scorer 'nope'"):
        build_gap_scorers(MPCFConfig(aesthetic_scorer="nope"))
    with pytest.raises(LpoError, match="VQAScore"):
        build_gap_scorers(MPCFConfig(aesthetic_scorer="world-aesthetic", clip_scorer="world-clip"))
    with pytest.raises(LpoError, match="no metric-backed scorer"):
        build_gap_scorers(mpcf_preset("world"), {"laion-aesthetic": "/x"})
