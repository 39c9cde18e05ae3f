"""The world's prompt grammar: round trips, categories and disjoint splits."""

import pytest

from lpo.core.errors import LpoError
from lpo.world.grammar import (
    CATEGORIES,
    HELDOUT_COMBOS,
    SPLIT_NAMES,
    enumerate_prompts,
    make_splits,
    parse_prompt,
    pretraining_splits,
)
from lpo.core.hashing import prompt_set_hash


@pytest.mark.parametrize("category", CATEGORIES)
def test_text_round_trips_to_the_same_spec(category):
    for spec in enumerate_prompts(category):
        assert parse_prompt(spec.text()) == spec


def test_examples_read_as_expected():
    spec = parse_prompt("a red square to the left of a blue circle")
    assert spec.category == "spatial" and spec.relation == "left of"
    assert [(p.colour, p.shape) for p in spec.phrases] == [("red", "square"), ("blue", "circle")]
    spec = parse_prompt("three yellow triangles")
    assert spec.category == "numeracy" and spec.phrases[0].count == 3
    assert parse_prompt("a hollow red square and a solid blue circle").category == "texture"
    assert parse_prompt("a green triangle and a green circle").category == "shape"


@pytest.mark.parametrize("bad", ["a red hexagon", "a crimson circle", "", "five red circles", "a red circle beside a blue square"])
def test_out_of_grammar_prompts_are_user_errors(bad):
    with pytest.raises(LpoError, match="grammar"):
        parse_prompt(bad)


def test_splits_are_disjoint_and_deterministic():
    a, b = make_splits(), make_splits()
    for name in SPLIT_NAMES:
        assert [s.text() for s in a.get(name)] == [s.text() for s in b.get(name)]
    texts = {name: {s.text() for s in a.get(name)} for name in SPLIT_NAMES}
    for i, x in enumerate(SPLIT_NAMES):
        for y in SPLIT_NAMES[i + 1 :]:
            assert not texts[x] & texts[y], (x, y)
    for name in SPLIT_NAMES:
        assert {s.category for s in a.get(name)} == set(CATEGORIES), name


def test_heldout_combinations_never_reach_training_or_validation():
    splits = make_splits()
    for spec in splits.train + splits.val + splits.test:
        assert not spec.combos & HELDOUT_COMBOS
    assert splits.test_heldout and all(spec.combos & HELDOUT_COMBOS for spec in splits.test_heldout)


def test_world_2_moves_train_prompts_to_test_and_keeps_world_1s_val_test_and_pretraining_corpus():
    world1, world2 = pretraining_splits(), make_splits()
    texts = {name: ([s.text() for s in world1.get(name)], [s.text() for s in world2.get(name)]) for name in SPLIT_NAMES}
    assert [len(texts[n][0]) for n in SPLIT_NAMES] == [5948, 86, 128, 48]  # world 1, as its results were made
    assert [len(texts[n][1]) for n in SPLIT_NAMES] == [5226, 86, 850, 48]
    for name in ("val", "test_heldout"):
        assert texts[name][0] == texts[name][1], name
    assert set(texts["test"][0]) < set(texts["test"][1])
    moved = set(texts["test"][1]) - set(texts["test"][0])
    assert moved == set(texts["train"][0]) - set(texts["train"][1])  # the new test prompts come from train only
    per_category = {c: sum(s.category == c for s in world2.test) for c in CATEGORIES}
    assert per_category == {"colour": 42, "shape": 8, "texture": 200, "spatial": 200, "numeracy": 200, "complex": 200}


def test_unknown_split_is_a_user_error():
    with pytest.raises(LpoError, match="test_heldout"):
        make_splits().get("dev")


def test_prompt_set_hash_depends_on_order_and_content():
    assert prompt_set_hash(["a", "b"]) != prompt_set_hash(["b", "a"])
    assert prompt_set_hash(["a", "b"]) == prompt_set_hash(["a", "b"])
