"""A CLIP BPE tokenizer whose merges make every grammar word a single token.

CLIP's vocabulary is the 256 byte symbols, the same with the end-of-word marker
``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>``. We learn
merges on the grammar's words with plain BPE (most frequent pair first, ties broken
alphabetically, so it is deterministic); any other text still tokenizes, byte by byte.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from lpo.world.grammar import vocabulary

END_OF_WORD = "</w>"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 24


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable-character table.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges until every word is one symbol."""
    segmented = {w: tuple(w[:-1]) + (w[-1] + END_OF_WORD,) for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for symbols in segmented.values() for p in zip(symbols, symbols[1:]))
        if not pairs:
            return merges
        best_count = max(pairs.values())
        best = min(p for p, c in pairs.items() if c == best_count)
        merges.append(best)
        for w, symbols in segmented.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            segmented[w] = tuple(out)


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """Write CLIP-format vocab.json and merges.txt for the grammar into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    byte_chars = list(_bytes_to_unicode().values())
    merges = learn_merges(vocabulary())
    tokens = byte_chars + [c + END_OF_WORD for c in byte_chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {}
    for token in tokens:  # a merge can recreate an existing symbol; keep the first id
        vocab.setdefault(token, len(vocab))
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab_file, merges_file


def build_world_tokenizer(folder: Path):
    """A ``CLIPTokenizer`` for the grammar, with its files written under ``folder``.

    Loading through ``from_pretrained`` (rather than the constructor, whose arguments
    changed between transformers 4 and 5) keeps this working on both.
    """
    from transformers import CLIPTokenizer

    write_tokenizer_files(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": MODEL_MAX_LENGTH,
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": EOS,  # SD1.5's tokenizer pads with the end token too
                "unk_token": EOS,
                "tokenizer_class": "CLIPTokenizer",
            }
        )
    )
    return CLIPTokenizer.from_pretrained(str(folder))
