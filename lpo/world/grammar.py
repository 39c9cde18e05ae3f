"""Prompt grammar of the world: what a prompt says, as text and as a structured spec.

Categories mirror T2I-CompBench++:
  colour   "a red circle and a blue square"            (two objects, colour-shape binding)
  shape    "a green triangle and a green circle"       (same colour, shapes must differ)
  texture  "a hollow red square and a solid blue circle"
  spatial  "a red square to the left of a blue circle"
  numeracy "three yellow triangles", "two red circles and a blue square"
  complex  mixtures: texture + spatial, or counts + texture

Held-out attribute combinations (colour-shape pairs listed in ``HELDOUT_COMBOS``) never
appear in train or validation prompts; the test split has a held-out part made of them
to measure compositional generalisation.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from lpo.core.errors import LpoError

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
TEXTURES: tuple[str, ...] = ("solid", "hollow")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
CATEGORIES: tuple[str, ...] = ("colour", "shape", "texture", "spatial", "numeracy", "complex")
NUMBER_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three", 4: "four"}
MAX_OBJECTS = 4
# Bump on any change to the prompts or their splits: it is part of every world benchmark's
# version, of the pairs' metadata and of every reward kit. World 2 enlarged the test split
# (see make_splits).
WORLD_VERSION = "2"
# Bump on any change to rendering, judging or the base models' pretraining corpus: part of
# the world metrics' versions and of the world base models' cache keys. World 2 changed
# neither, so its metrics are world 1's and the shipped base models stay valid (their
# pretraining saw the prompts that world 2 moved to the test split, as SD1.5's LAION
# holds captions like the evaluation prompts; no preference stage sees them).
RENDER_WORLD_VERSION = "1"
# Test prompts per category: world 1 had 24 (128 in all), too few to see a paired utility
# difference of 0.01 (the per-prompt spread of LPO's gain over the base model is ~0.11,
# results/bench-full-test128, world 1); world 2 has 200 (850 in all).
TEST_PER_CATEGORY = 200
WORLD1_TEST_PER_CATEGORY = 24

# (colour, shape) pairs withheld from training prompts.
HELDOUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("yellow", "square"), ("green", "circle")}
)

_RELATION_TEXT = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
_PLURAL = {s: s + "s" for s in SHAPES}


@dataclass(frozen=True)
class Phrase:
    """A noun phrase: ``count`` objects of one colour and shape, optionally a texture."""

    count: int
    colour: str
    shape: str
    texture: str | None = None  # None: the prompt does not say (rendered solid)

    def text(self) -> str:
        words = [NUMBER_WORDS[self.count]]
        if self.texture is not None:
            words.append(self.texture)
        words += [self.colour, self.shape if self.count == 1 else _PLURAL[self.shape]]
        return " ".join(words)


@dataclass(frozen=True)
class PromptSpec:
    """A prompt as structure. ``relation`` relates phrases[0] to phrases[1] (both count 1)."""

    category: str
    phrases: tuple[Phrase, ...]
    relation: str | None = None

    def text(self) -> str:
        if self.relation is not None:
            return f"{self.phrases[0].text()} {_RELATION_TEXT[self.relation]} {self.phrases[1].text()}"
        return " and ".join(p.text() for p in self.phrases)

    @property
    def num_objects(self) -> int:
        return sum(p.count for p in self.phrases)

    @property
    def combos(self) -> set[tuple[str, str]]:
        return {(p.colour, p.shape) for p in self.phrases}

    @property
    def heldout(self) -> bool:
        return bool(self.combos & HELDOUT_COMBOS)


# --------------------------------------------------------------------------- parsing


def parse_prompt(text: str, category: str | None = None) -> PromptSpec:
    """Inverse of ``PromptSpec.text``. The category is inferred when not given."""
    words = text.strip().lower().split()
    relation = None
    for rel, rel_text in _RELATION_TEXT.items():
        rel_words = rel_text.split()
        for i in range(len(words) - len(rel_words) + 1):
            if words[i : i + len(rel_words)] == rel_words:
                relation = rel
                parts = [words[:i], words[i + len(rel_words) :]]
                break
        if relation:
            break
    if relation is None:
        parts, current = [], []
        for w in words:
            if w == "and":
                parts.append(current)
                current = []
            else:
                current.append(w)
        parts.append(current)
    phrases = tuple(_parse_phrase(p, text) for p in parts)
    spec = PromptSpec(category=category or _infer_category(phrases, relation), phrases=phrases, relation=relation)
    if spec.text() != " ".join(words):
        raise LpoError(f"prompt {text!r} is not in the world's grammar (read back as {spec.text()!r})")
    return spec


def _parse_phrase(words: list[str], text: str) -> Phrase:
    inverse_numbers = {v: k for k, v in NUMBER_WORDS.items()}
    inverse_plural = {v: k for k, v in _PLURAL.items()}
    if len(words) not in (3, 4) or words[0] not in inverse_numbers:
        raise LpoError(f"prompt {text!r} is not in the world's grammar: cannot read phrase {' '.join(words)!r}")
    count = inverse_numbers[words[0]]
    texture = words[1] if len(words) == 4 else None
    colour, shape = words[-2], words[-1]
    shape = inverse_plural.get(shape, shape)
    if colour not in COLOURS or shape not in SHAPES or (texture is not None and texture not in TEXTURES):
        raise LpoError(f"prompt {text!r} is not in the world's grammar: unknown words in {' '.join(words)!r}")
    return Phrase(count, colour, shape, texture)


def _infer_category(phrases: tuple[Phrase, ...], relation: str | None) -> str:
    has_texture = any(p.texture is not None for p in phrases)
    has_count = any(p.count > 1 for p in phrases) or (len(phrases) == 1)
    if relation is not None:
        return "complex" if has_texture else "spatial"
    if has_count:
        return "complex" if has_texture else "numeracy"
    if has_texture:
        return "texture"
    if len(phrases) == 2 and phrases[0].colour == phrases[1].colour:
        return "shape"
    return "colour"


# ------------------------------------------------------------------- enumeration


def _objects() -> list[tuple[str, str]]:
    return list(itertools.product(COLOURS, SHAPES))


def enumerate_prompts(category: str) -> list[PromptSpec]:
    """Every prompt of one category, in a fixed order."""
    objs = _objects()
    specs: list[PromptSpec] = []
    if category == "colour":
        for (c1, s1), (c2, s2) in itertools.permutations(objs, 2):
            if c1 != c2 and s1 != s2:
                specs.append(PromptSpec("colour", (Phrase(1, c1, s1), Phrase(1, c2, s2))))
    elif category == "shape":
        for c in COLOURS:
            for s1, s2 in itertools.permutations(SHAPES, 2):
                specs.append(PromptSpec("shape", (Phrase(1, c, s1), Phrase(1, c, s2))))
    elif category == "texture":
        for (c1, s1), (c2, s2) in itertools.permutations(objs, 2):
            if c1 != c2:
                for t1, t2 in itertools.product(TEXTURES, TEXTURES):
                    specs.append(PromptSpec("texture", (Phrase(1, c1, s1, t1), Phrase(1, c2, s2, t2))))
    elif category == "spatial":
        for (c1, s1), (c2, s2) in itertools.permutations(objs, 2):
            if c1 != c2:
                for rel in RELATIONS:
                    specs.append(PromptSpec("spatial", (Phrase(1, c1, s1), Phrase(1, c2, s2)), rel))
    elif category == "numeracy":
        for (c, s), n in itertools.product(objs, range(1, MAX_OBJECTS + 1)):
            specs.append(PromptSpec("numeracy", (Phrase(n, c, s),)))
        for (c1, s1), (c2, s2) in itertools.permutations(objs, 2):
            if c1 != c2:
                for n1, n2 in ((2, 1), (1, 2), (2, 2), (3, 1)):
                    specs.append(PromptSpec("numeracy", (Phrase(n1, c1, s1), Phrase(n2, c2, s2))))
    elif category == "complex":
        # Mixtures of two dimensions, one texture word each: texture + spatial, and
        # texture + counting. (Textures on every object made the category unlearnable
        # for the 5-minute base model: measured at chance.)
        for (c1, s1), (c2, s2) in itertools.permutations(objs, 2):
            if c1 == c2:
                continue
            for texture, textured_first in itertools.product(TEXTURES, (True, False)):
                t1, t2 = (texture, None) if textured_first else (None, texture)
                for rel in RELATIONS:
                    specs.append(PromptSpec("complex", (Phrase(1, c1, s1, t1), Phrase(1, c2, s2, t2)), rel))
                specs.append(PromptSpec("complex", (Phrase(2, c1, s1, t1), Phrase(1, c2, s2, t2))))
    else:
        raise LpoError(f"unknown prompt category {category!r}; known: {', '.join(CATEGORIES)}")
    return specs


# ------------------------------------------------------------------------ splits


@dataclass
class PromptSplits:
    """Disjoint prompt splits. ``test_heldout`` prompts contain a held-out colour-shape pair."""

    train: list[PromptSpec] = field(default_factory=list)
    val: list[PromptSpec] = field(default_factory=list)
    test: list[PromptSpec] = field(default_factory=list)
    test_heldout: list[PromptSpec] = field(default_factory=list)

    def get(self, name: str) -> list[PromptSpec]:
        if name not in SPLIT_NAMES:
            raise LpoError(f"unknown prompt split {name!r}; known: {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)


SPLIT_NAMES = ("train", "val", "test", "test_heldout")


def make_splits(
    val_per_category: int = 16,
    test_per_category: int = TEST_PER_CATEGORY,
    heldout_per_category: int = 8,
    max_train_per_category: int | None = None,
    seed: int = 0,
) -> PromptSplits:
    """Deterministic splits: per category, shuffle with ``seed``, carve test and val first.

    The first 24 test prompts of a category are world 1's test prompts and validation
    follows them as in world 1, so a larger ``test_per_category`` moves prompts out of the
    train split only (world 1's splits are ``test_per_category=24``).
    """
    splits = PromptSplits()
    for category in CATEGORIES:
        specs = enumerate_prompts(category)
        random.Random(f"{seed}-{category}").shuffle(specs)
        seen = [s for s in specs if not s.heldout]
        heldout = [s for s in specs if s.heldout]
        # Small categories (shape has 24 seen prompts) give at most a third to test and
        # a quarter to validation so that training still sees the category.
        n_test = min(test_per_category, len(seen) // 3)
        n_first = min(n_test, WORLD1_TEST_PER_CATEGORY)
        n_val = min(val_per_category, len(seen) // 4)
        splits.test_heldout += heldout[:heldout_per_category]
        train_start = n_test + n_val
        splits.test += seen[:n_first] + seen[n_first + n_val : train_start]
        splits.val += seen[n_first : n_first + n_val]
        train = seen[train_start:]
        splits.train += train if max_train_per_category is None else train[:max_train_per_category]
    return splits


def pretraining_splits() -> PromptSplits:
    """World 1's splits: the base models' pretraining corpus is their train split."""
    return make_splits(test_per_category=WORLD1_TEST_PER_CATEGORY, seed=0)


def vocabulary() -> list[str]:
    """Every word the grammar can produce (the tokenizer is built from these)."""
    words = {"and", "to", "the", "of", *NUMBER_WORDS.values(), *COLOURS, *SHAPES, *_PLURAL.values(), *TEXTURES}
    for rel in _RELATION_TEXT.values():
        words.update(rel.split())
    return sorted(words)
