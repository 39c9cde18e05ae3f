"""Keyed random streams: every random draw of a training job, named in one place.

A draw is taken from ``keyed_generator(seed, stream, *keys)``: a CPU generator determined
by the run's seed, the stream's purpose and the position in the job (step, round,
process) alone. Nothing depends on what was drawn before, so a run resumed from a
checkpoint needs no sampler state and gives the weights of an uninterrupted run, and two
uses never share numbers because their streams differ.

The values are part of every committed result: changing one changes the numbers, so new
streams take new values and old ones never move.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch
from torch import Tensor


class Stream(IntEnum):
    """The purpose of a keyed stream (its first key)."""

    REWARD_STEP = 0  # reward-model training: pairs' posterior samples, t and noise of optimiser step s
    EPOCH = 1  # the permutation of epoch e of the endless pair stream (pair_indices)
    SPLIT = 2  # which prompts a reward-model run holds out
    EVAL = 3  # the noise of held-out accuracy by t
    ROLLOUT = 10  # LPO / SPO: the initial latents and step candidates of round r on process p
    SHUFFLE = 11  # LPO / SPO: the order of round r's kept samples before they are split over processes
    DPO = 12  # Diffusion-DPO: flips, caption dropout, posterior samples, t and noise of step s


def keyed_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator determined by (seed, *keys) alone (non-negative ints; independent streams per key)."""
    if any(int(k) < 0 for k in (seed, *keys)):
        raise ValueError(f"seed and keys must be >= 0, got {(seed, *map(int, keys))}")
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def pair_indices(num_pairs: int, start: int, count: int, seed: int) -> Tensor:
    """Positions ``start … start+count−1`` of the endless stream of shuffled epochs.

    Epoch e is a permutation of all items drawn from ``keyed_generator(seed, Stream.EPOCH, e)``,
    so position p always names the same item, whatever was drawn before.
    """
    out, cache = [], {}
    for position in range(start, start + count):
        epoch, offset = divmod(position, num_pairs)
        if epoch not in cache:
            cache[epoch] = torch.randperm(num_pairs, generator=keyed_generator(seed, Stream.EPOCH, epoch))
        out.append(int(cache[epoch][offset]))
    return torch.tensor(out, dtype=torch.long)
