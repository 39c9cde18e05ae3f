"""Prompts longer than the text encoder reads.

CLIP text encoders read a fixed number of tokens (77 for SD1.5/SDXL, 16 in the world)
and the pipelines cut the rest silently once library logging is quieted (the CLI quiets
it), so a long prompt would be scored and trained on as its first words. These helpers
find such prompts so the commands that take user prompts can say so.
"""

from __future__ import annotations

from typing import Callable, Sequence


def truncated_prompts(tokenizer, prompts: Sequence[str]) -> list[tuple[str, int]]:
    """(prompt, its token count) for each distinct prompt over ``tokenizer.model_max_length``
    tokens (start and end tokens included)."""
    limit = int(tokenizer.model_max_length)
    distinct = list(dict.fromkeys(prompts))
    if not distinct:
        return []
    counts = [len(ids) for ids in tokenizer(distinct, truncation=False)["input_ids"]]
    return [(prompt, count) for prompt, count in zip(distinct, counts) if count > limit]


def warn_truncated(tokenizer, prompts: Sequence[str], say: Callable[[str], None]) -> int:
    """Say (once) how many prompts the text encoder will cut, with the longest as example;
    returns that number."""
    cut = truncated_prompts(tokenizer, prompts)
    if cut:
        prompt, count = max(cut, key=lambda item: item[1])
        example = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        noun = "prompt is" if len(cut) == 1 else "prompts are"
        say(f"warning: {len(cut)} {noun} longer than the text encoder's {tokenizer.model_max_length} tokens and "
            f"will be cut to them (e.g. {example!r}: {count} tokens); shorten them to use every word")
    return len(cut)
