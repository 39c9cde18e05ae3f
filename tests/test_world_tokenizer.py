"""The world tokenizer is a real CLIP BPE tokenizer with one token per grammar word."""

from lpo.world.grammar import vocabulary
from lpo.world.tokenizer import BOS, EOS, MODEL_MAX_LENGTH, build_world_tokenizer, learn_merges


def test_every_grammar_word_is_one_token(tmp_path):
    tokenizer = build_world_tokenizer(tmp_path)
    for word in vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("a red circle", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == MODEL_MAX_LENGTH
    assert tokenizer.convert_ids_to_tokens(ids[:5]) == [BOS, "a</w>", "red</w>", "circle</w>", EOS]


def test_text_outside_the_grammar_still_tokenizes(tmp_path):
    tokenizer = build_world_tokenizer(tmp_path)
    ids = tokenizer("Zebra 42!", add_special_tokens=False).input_ids
    assert len(ids) > 2 and tokenizer.unk_token_id not in ids


def test_merges_are_deterministic():
    assert learn_merges(vocabulary()) == learn_merges(list(reversed(vocabulary())))
