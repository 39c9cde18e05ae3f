"""Simulated annotators: Bradley–Terry with biases and ties."""

import numpy as np
import pytest

from lpo.world.annotators import AnnotatorPoolConfig, label_pairs, make_annotators
from lpo.world.judges import JudgeScores


def _scores(alignment, aesthetic):
    soft = alignment
    return JudgeScores(alignment, soft, aesthetic, alignment, 0.6 * soft + 0.4 * aesthetic)


def test_better_image_wins_mostly_and_labels_are_seeded():
    config = AnnotatorPoolConfig()
    good, bad = [_scores(1.0, 0.9)] * 500, [_scores(0.5, 0.9)] * 500
    labels = label_pairs(good, bad, config, seed=1)
    assert labels == label_pairs(good, bad, config, seed=1)
    values = np.array([l.label for l in labels])
    # balanced and literal annotators prefer the aligned image; looks-only ones see a tie
    assert (values == 0.0).mean() > 0.6
    assert (values == 1.0).mean() < 0.2
    kinds = {l.annotator_kind for l in labels if l.label == 0.5}
    assert "looks" in kinds


def test_equal_images_give_ties_and_coin_flips():
    config = AnnotatorPoolConfig(tie_probability=0.5)
    same = [_scores(0.7, 0.7)] * 2000
    values = np.array([l.label for l in label_pairs(same, same, config, seed=0)])
    assert 0.4 < (values == 0.5).mean() < 0.6
    assert abs((values == 0.0).mean() - (values == 1.0).mean()) < 0.06


def test_pool_follows_kind_weights():
    pool = make_annotators(AnnotatorPoolConfig(num_annotators=1000, kind_weights=(1.0, 0.0, 0.0)))
    assert {a.kind for a in pool} == {"balanced"}


@pytest.mark.parametrize(
    "kwargs", [dict(num_annotators=0), dict(kind_weights=(1, 1)), dict(temperature_range=(0.0, 0.1)), dict(tie_probability=2)]
)
def test_bad_pool_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        AnnotatorPoolConfig(**kwargs)


def test_a_flipped_tie_changes_only_its_own_pair():
    """Pair n draws from its own stream: moving one pair's gap across the tie margin (as
    another CPU's last-bit rounding can) leaves every other pair's label as it was."""
    from lpo.world.judges import JudgeScores

    def scores(u):
        return JudgeScores(alignment=u, soft_alignment=u, aesthetic=u, clip=u, utility=u)

    config = AnnotatorPoolConfig(tie_probability=1.0)
    rng = np.random.default_rng(0)
    first = [scores(u) for u in rng.uniform(0.3, 0.9, 300)]
    second = [scores(a.utility + d) for a, d in zip(first, rng.uniform(-0.2, 0.2, 300))]
    before = label_pairs(first, second, config, seed=3)
    # pair 10 sits just inside the margin (a tie), then just outside it
    first[10], second[10] = scores(0.5), scores(0.5 + config.tie_margin * 0.999)
    inside = label_pairs(first, second, config, seed=3)
    second[10] = scores(0.5 + config.tie_margin * 1.001)
    outside = label_pairs(first, second, config, seed=3)
    assert inside[10].label == 0.5 and outside[10].label != 0.5
    for n in range(300):
        if n != 10:
            assert before[n] == inside[n] == outside[n], n
