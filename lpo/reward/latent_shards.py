"""The on-disk latent cache of reward-model training: VAE posteriors in shards.

Pick-a-Pic v2 holds about a million pairs; at SD1.5 size a pair's two posteriors (mean and
std, 4×64×64 float32 each) take 256 KiB, about 250 GB for the set. One memory-mapped file
of that size would have to be encoded again whole after an interruption, so the cache is
cut into shards of ``shard_pairs`` pairs (``mean-00000.npy``, ``std-00000.npy``, …), each
written to a temporary name and renamed when complete. ``shards.json`` records every
finished shard with a key of its pairs (ids, prompts), the image resolution and the VAE's
latent scaling: a run that resumes, or a second run on the same pairs and model in the same
folder, re-encodes only the shards that are missing or were made from other pairs.

Rows are read through read-only memory maps, so memory stays bounded by the batch in hand
whatever the size of the set.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from lpo.core.io import atomic_write_file, atomic_write_json

MANIFEST = "shards.json"
SHARD_VERSION = 1

EncodeRows = Callable[[list[int]], tuple[Tensor, Tensor]]


def shard_key(pair_ids: Sequence[str], prompts: Sequence[str], resolution: int, scaling: str) -> str:
    """What decides a shard's content: its pairs (ids, prompts), the resolution and the VAE's scaling."""
    h = hashlib.sha256(f"{resolution}\x1f{scaling}\x1e".encode())
    for pair_id, prompt in zip(pair_ids, prompts):
        h.update(f"{pair_id}\x1f{prompt}\x1e".encode())
    return h.hexdigest()[:16]


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.save would add ".npy" to the temporary name
            np.save(handle, array)

    atomic_write_file(path, write)


class ShardedPosteriors:
    """(mean, std) of pair rows, read from the shards of ``folder``; see the module doc."""

    def __init__(self, folder: Path, num_pairs: int, shard_pairs: int) -> None:
        self.folder, self.num_pairs, self.shard_pairs = Path(folder), num_pairs, shard_pairs
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def num_shards(self) -> int:
        return -(-self.num_pairs // self.shard_pairs)

    def files(self, shard: int) -> tuple[Path, Path]:
        return self.folder / f"mean-{shard:05d}.npy", self.folder / f"std-{shard:05d}.npy"

    def _arrays(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._open:
            mean, std = self.files(shard)
            self._open[shard] = (np.load(mean, mmap_mode="r"), np.load(std, mmap_mode="r"))
        return self._open[shard]

    def __call__(self, rows: list[int]) -> tuple[Tensor, Tensor]:
        """(mean, std), each (B, 2, C, h, w) float32, of pairs ``rows`` in that order."""
        means, stds = [], []
        for row in rows:
            mean, std = self._arrays(row // self.shard_pairs)
            means.append(mean[row % self.shard_pairs])
            stds.append(std[row % self.shard_pairs])
        return torch.from_numpy(np.stack(means)), torch.from_numpy(np.stack(stds))

    def __getstate__(self) -> dict:  # memory maps are reopened, not pickled
        return {**self.__dict__, "_open": {}}


def build_shards(folder: Path, pair_ids: Sequence[str], prompts: Sequence[str], resolution: int, scaling: str,
                 encode_rows: EncodeRows, shard_pairs: int, batch_size: int) -> ShardedPosteriors:
    """Encode the shards of ``folder`` that are missing or stale (the rest are reused); returns their reader."""
    if shard_pairs < 1:
        raise ValueError(f"shard_pairs must be >= 1, got {shard_pairs}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reader = ShardedPosteriors(folder, len(pair_ids), shard_pairs)
    manifest_path = folder / MANIFEST
    manifest = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
    if manifest.get("version") != SHARD_VERSION or manifest.get("shard_pairs") != shard_pairs:
        manifest = {"version": SHARD_VERSION, "shard_pairs": shard_pairs, "shards": {}}
    for shard in range(reader.num_shards):
        start, stop = shard * shard_pairs, min((shard + 1) * shard_pairs, len(pair_ids))
        key = shard_key(pair_ids[start:stop], prompts[start:stop], resolution, scaling)
        mean_path, std_path = reader.files(shard)
        if manifest["shards"].get(f"{shard:05d}") == key and mean_path.is_file() and std_path.is_file():
            continue
        parts = [encode_rows(list(range(s, min(s + batch_size, stop)))) for s in range(start, stop, batch_size)]
        _save_npy(mean_path, torch.cat([m for m, _ in parts]).numpy())
        _save_npy(std_path, torch.cat([s for _, s in parts]).numpy())
        manifest["shards"][f"{shard:05d}"] = key
        atomic_write_json(manifest_path, manifest)  # a shard counts once its files are in place
    return reader
