"""T2I-CompBench++ prompt readings by spaCy, as the official scorers make them.

The official scripts parse each prompt with ``spacy.load("en_core_web_sm")``:

- BLIP-VQA (colour / shape / texture, the complex 3-in-1): one question ``f"{chunk}?"`` per
  ``doc.noun_chunks``, the first ``np_num`` = 8 of them;
- 2D / 3D spatial: the first and the last token tagged ``NOUN``;
- the complex category's spatial part: at each preposition of its list, the nearest
  ``NOUN`` before and the first ``NOUN`` after, used only when exactly two were found;
- the complex category's CLIP part: the prompt without its ``ADJ`` tokens.

:class:`SpacyReading` gives those readings with the same method names as
:mod:`.compbench_text` (the dependency-free rules, which stay the fallback), so the scorer
takes either. It is used when spaCy and its English model are installed
(``pip install 'lpo[compbench-spacy]' && python -m spacy download en_core_web_sm``), unless
``LPO_COMPBENCH_PARSER=rules``; the metric's version string names the reading, so numbers of
the two never share a column.
"""

from __future__ import annotations

import os
from typing import Any

from lpo.core.errors import LpoError
from lpo.evals.metrics.compbench_text import complex_preposition_spans

PARSER_VARIABLE = "LPO_COMPBENCH_PARSER"
SPACY_MODEL = "en_core_web_sm"


class SpacyReading:
    """The official prompt readings from a loaded spaCy pipeline ``nlp``."""

    def __init__(self, nlp: Any, tag: str) -> None:
        self.nlp = nlp
        self.tag = tag  # e.g. "spacy3.8.7-en_core_web_sm3.8.0": goes into the version strings

    def noun_chunks(self, prompt: str) -> list[str]:
        return [chunk.text for chunk in self.nlp(prompt).noun_chunks]

    def blip_questions(self, prompt: str, max_phrases: int = 8) -> list[str]:
        return [f"{chunk}?" for chunk in self.noun_chunks(prompt)[:max_phrases]]

    def spatial_objects(self, prompt: str, relation: str | None) -> tuple[str, str] | None:
        """(first NOUN, last NOUN), lower-case; None without a noun. ``relation`` is not
        needed: upstream reads the nouns from the whole prompt."""
        nouns = [token.text for token in self.nlp(prompt) if token.pos_ == "NOUN"]
        return (nouns[0].lower(), nouns[-1].lower()) if nouns else None

    def complex_spatial_objects(self, prompt: str) -> tuple[str, str] | None:
        tokens = list(self.nlp(prompt))
        objects: list[str] = []
        for i, k in complex_preposition_spans([token.text for token in tokens]):
            before = next((t.text for t in reversed(tokens[:i]) if t.pos_ == "NOUN"), None)
            after = next((t.text for t in tokens[i + k :] if t.pos_ == "NOUN"), None)
            objects += [word.lower() for word in (before, after) if word is not None]
        return (objects[0], objects[1]) if len(objects) == 2 else None

    def remove_adjectives(self, prompt: str) -> str:
        return " ".join(token.text for token in self.nlp(prompt) if token.pos_ != "ADJ")


def spacy_reading(model: str = SPACY_MODEL) -> SpacyReading | None:
    """spaCy's reading when spaCy and ``model`` are installed, else None (the rules are used).

    ``LPO_COMPBENCH_PARSER``: ``rules`` forces the rules, ``spacy`` requires spaCy (a one-line
    error naming the install when it is missing); unset or ``auto`` takes spaCy when present.
    """
    choice = os.environ.get(PARSER_VARIABLE, "auto").strip().lower() or "auto"
    if choice not in ("auto", "rules", "spacy"):
        raise LpoError(f"{PARSER_VARIABLE}={choice!r} is not a parser; use auto, rules or spacy")
    if choice == "rules":
        return None
    try:
        import spacy

        nlp = spacy.load(model)
    except (ImportError, OSError) as err:
        if choice == "spacy":
            raise LpoError(f"{PARSER_VARIABLE}=spacy but spaCy's {model} cannot be loaded ({err.__class__.__name__}); "
                           f"pip install 'lpo[compbench-spacy]' && python -m spacy download {model}") from None
        return None
    meta = getattr(nlp, "meta", {}) or {}
    name = f"{meta['lang']}_{meta['name']}" if meta.get("lang") and meta.get("name") else model
    return SpacyReading(nlp, f"spacy{spacy.__version__}-{name}{meta.get('version', '')}")
