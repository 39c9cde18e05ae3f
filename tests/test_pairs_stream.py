"""lpo.pairs.stream: pairs read through a memory-mapped cache, images decoded per batch.

The memory test builds a pair set whose decoded images take about 110 MB and trains
Diffusion-DPO on it under tracemalloc (numpy arrays and Python bytes are traced; the
memory-mapped file's pages are page cache, not the process's allocations): the streamed
run stays under a fixed cap that loading the set whole exceeds.
"""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lpo.pairs.format import load_pairs
from lpo.pairs.stream import PairTable, open_pairs, pair_meta
from test_pairs import _write_pickapic_parquet

CAP_MB = 40  # what a streamed run may allocate; the set's decoded images take ~110 MB


def test_a_streamed_set_is_the_loaded_set(tmp_path):
    path = _write_pickapic_parquet(tmp_path / "pickapic_style.parquet")  # skips, a tie, undecodable rows
    loaded, streamed = load_pairs(path), open_pairs(path, cache_dir=tmp_path / "cache")
    assert isinstance(streamed.pairs, PairTable)
    assert (streamed.n_rows, streamed.skipped, streamed.undecodable_ids, streamed.summary()) == \
        (loaded.n_rows, loaded.skipped, loaded.undecodable_ids, loaded.summary())
    assert list(pair_meta(streamed.pairs)) == list(pair_meta(loaded.pairs))
    for a, b in zip(loaded.pairs, streamed.pairs):
        assert (a.pair_id, a.prompt, a.label_0, a.source, a.weight, a.annotator_kind) == \
            (b.pair_id, b.prompt, b.label_0, b.source, b.weight, b.annotator_kind)
        assert np.array_equal(a.image_0, b.image_0) and np.array_equal(a.image_1, b.image_1)
    assert [p.pair_id for p in streamed.pairs.decisive()] == [p.pair_id for p in loaded.pairs if not p.is_tie]
    # the same options again reuse the cache; a limit is another cache
    again = open_pairs(path, cache_dir=tmp_path / "cache")
    assert again.pairs.path == streamed.pairs.path and len(list((tmp_path / "cache").glob("*.arrow"))) == 1
    limited = open_pairs(path, limit=2, cache_dir=tmp_path / "cache")
    assert limited.n_rows == 2 and len(limited.pairs) == 2
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 2
    weighted = open_pairs(path, weight_by_prompt=True, cache_dir=tmp_path / "cache")
    assert [weighted.pairs.weight(i) for i in range(len(weighted.pairs))] == \
        [p.weight for p in load_pairs(path, weight_by_prompt=True).pairs]


def test_diffusion_dpo_on_a_streamed_set_trains_the_weights_of_the_loaded_set(tiny_world_dir, tmp_path):
    from test_trainers_dpo import _pairs, _trainer

    from lpo.pairs.format import save_pairs

    save_pairs(_pairs(24), tmp_path / "pairs.parquet")
    loaded = load_pairs(tmp_path / "pairs.parquet").pairs
    streamed = open_pairs(tmp_path / "pairs.parquet", cache_dir=tmp_path / "cache").pairs
    weights = []
    for pairs in (loaded, streamed):
        trainer = _trainer(tiny_world_dir, pairs, "train.max_steps=2")
        trainer.train()
        weights.append({k: v.clone() for k, v in trainer.policy.trainable_state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _big_pair_set(path, pairs: int = 2000, side: int = 96) -> int:
    """Noise images (incompressible PNG): decoded, the set is pairs × 2 × side² × 3 bytes."""
    from lpo.pairs.format import encode_png

    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, pairs, 200):
        rows = range(start, min(start + 200, pairs))
        table = pa.table({
            "pair_id": [f"p{i}" for i in rows], "caption": [f"a red circle {i % 50}" for i in rows],
            "jpg_0": [encode_png(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in rows],
            "jpg_1": [encode_png(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in rows],
            "label_0": [float(i % 2) for i in rows], "label_1": [float(1 - i % 2) for i in rows],
        })
        writer = writer or pq.ParquetWriter(str(path), table.schema)
        writer.write_table(table, row_group_size=100)
    writer.close()
    return pairs * 2 * side * side * 3


@pytest.fixture(scope="module")
def big_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    decoded = _big_pair_set(path)
    assert decoded > 2.5 * CAP_MB * 2**20  # the set is far larger than the cap
    return path


def test_streamed_training_memory_does_not_grow_with_the_set(tiny_world_dir, tmp_path, big_set):
    from test_trainers_dpo import _trainer

    tracemalloc.start()
    try:
        result = open_pairs(big_set, cache_dir=tmp_path / "cache")  # the one indexing pass
        trainer = _trainer(tiny_world_dir, result.pairs, "train.max_steps=3")
        trainer.train()
        _, streamed_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = load_pairs(big_set)  # the comparison: every image decoded into memory
        _, loaded_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.pairs) == len(whole.pairs) == 2000
    assert streamed_peak < CAP_MB * 2**20, f"streamed peak {streamed_peak / 2**20:.1f} MB"
    assert loaded_peak > 2 * CAP_MB * 2**20  # the test can fail: loading whole is over the cap


def _reward_run(world_dir, pairs, tmp_path, name, **values):
    from lpo.core.runs import RunFolder
    from lpo.models.components import load_components
    from lpo.reward.config import RewardTrainingConfig
    from lpo.reward.lrm import LatentRewardModel, LRMConfig
    from lpo.reward.training import train_step_reward

    components = load_components(world_dir)
    torch.manual_seed(0)
    model = LatentRewardModel.from_components(components, LRMConfig(vfe_scale=1.0))
    config = RewardTrainingConfig(**{**dict(lr=1e-4, warmup_steps=0, max_steps=3, batch_size=8, mixed_precision="no",
                                          log_every=1, save_every=0, eval_every=0), **values})
    run = RunFolder.create(config, folder=tmp_path / name)
    result = train_step_reward(model, components, pairs, config, run)
    return model, result, run


def test_reward_training_on_streamed_pairs_and_a_disk_latent_cache_matches_memory(tiny_world_dir, tmp_path):
    from test_trainers_dpo import _pairs

    from lpo.pairs.format import save_pairs

    save_pairs(_pairs(24), tmp_path / "pairs.parquet")
    loaded = load_pairs(tmp_path / "pairs.parquet").pairs
    streamed = open_pairs(tmp_path / "pairs.parquet", cache_dir=tmp_path / "cache").pairs
    memory, memory_result, _ = _reward_run(tiny_world_dir, loaded, tmp_path, "memory", eval_fraction=0.25)
    disk, disk_result, run = _reward_run(tiny_world_dir, streamed, tmp_path, "disk", eval_fraction=0.25,
                                         latent_cache="disk", latent_shard_pairs=8)
    shards = sorted(p.name for p in (run.path / "latent-cache").glob("*.npy"))
    assert shards == ["mean-00000.npy", "mean-00001.npy", "mean-00002.npy", "std-00000.npy", "std-00001.npy",
                      "std-00002.npy"]  # 18 training pairs in shards of 8
    assert [r["loss"] for r in disk_result.history] == [r["loss"] for r in memory_result.history]
    assert disk_result.eval_history == memory_result.eval_history  # the held-out prompts split alike
    for (name, a), (_, b) in zip(memory.state_dict().items(), disk.state_dict().items()):
        assert torch.equal(a, b), name


def test_reward_training_memory_does_not_grow_with_the_set(tiny_world_dir, tmp_path, big_set):
    tracemalloc.start()
    try:
        pairs = open_pairs(big_set, cache_dir=tmp_path / "cache").pairs
        tracemalloc.reset_peak()
        _reward_run(tiny_world_dir, pairs, tmp_path, "disk", latent_cache="disk", encode_batch_size=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < CAP_MB * 2**20, f"reward training peak {peak / 2**20:.1f} MB"


def test_reward_training_encoding_on_the_fly_matches_memory_and_stores_nothing(tiny_world_dir, tmp_path):
    from test_trainers_dpo import _pairs

    from lpo.pairs.format import save_pairs

    save_pairs(_pairs(24), tmp_path / "pairs.parquet")
    loaded = load_pairs(tmp_path / "pairs.parquet").pairs
    streamed = open_pairs(tmp_path / "pairs.parquet", cache_dir=tmp_path / "cache").pairs
    memory, memory_result, _ = _reward_run(tiny_world_dir, loaded, tmp_path, "memory", eval_fraction=0.25)
    lazy, lazy_result, run = _reward_run(tiny_world_dir, streamed, tmp_path, "none", eval_fraction=0.25,
                                         latent_cache="none")
    assert not (run.path / "latent-cache").exists()
    # the same draws: the VAE encodes each batch's images when drawn instead of all at the start
    for a, b in zip(lazy_result.history, memory_result.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    for (name, a), (_, b) in zip(memory.state_dict().items(), lazy.state_dict().items()):
        # Adam normalises each update, so a gradient element near 0 may flip its lr-sized step: at most 3 × lr apart
        assert float((a - b).abs().max()) <= 3 * 1e-4 + 1e-6, name


def test_the_disk_latent_cache_reuses_finished_shards_and_re_encodes_stale_ones(tiny_world_dir, tmp_path):
    from test_trainers_dpo import _pairs

    from lpo.models.components import load_components
    from lpo.reward.data import encode_pairs

    components = load_components(tiny_world_dir)
    calls = []
    encode = components.vae.encode
    components.vae.encode = lambda x: calls.append(len(x)) or encode(x)
    pairs = _pairs(10)
    memory = encode_pairs(components, pairs, batch_size=4)
    calls.clear()
    disk = encode_pairs(components, pairs, batch_size=4, cache=tmp_path / "cache", shard_pairs=4)
    assert sum(calls) == 20 and disk.mean is None  # 10 pairs × 2 images, read back through memory maps
    for got, want in zip(disk.posterior([9, 0, 5]), memory.posterior([9, 0, 5])):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for got, want in zip(disk.subset([7, 2]).posterior([1]), memory.posterior([2])):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # an interrupted run: the last shard never finished; the first two are reused
    (tmp_path / "cache" / "mean-00002.npy").unlink()
    calls.clear()
    again = encode_pairs(components, pairs, batch_size=4, cache=tmp_path / "cache", shard_pairs=4)
    assert sum(calls) == 2 * 2  # only shard 2 (pairs 8 and 9)
    torch.testing.assert_close(again.posterior([8])[0], memory.posterior([8])[0], rtol=0, atol=0)
    # other pairs in the same folder: the shards that hold them are encoded again
    changed = pairs[:4] + [replace(p, pair_id=p.pair_id + "-new") for p in pairs[4:]]
    calls.clear()
    encode_pairs(components, changed, batch_size=4, cache=tmp_path / "cache", shard_pairs=4)
    assert sum(calls) == 2 * 6
    # a restart of nothing reads no image
    calls.clear()
    encode_pairs(components, changed, batch_size=4, cache=tmp_path / "cache", shard_pairs=4)
    assert calls == []


def test_encoded_pairs_on_the_fly_subset_and_posterior(tiny_world_dir, tmp_path):
    from test_trainers_dpo import _pairs

    from lpo.models.components import load_components
    from lpo.reward.data import encode_pairs

    components = load_components(tiny_world_dir)
    pairs = _pairs(6)
    cached = encode_pairs(components, pairs, batch_size=4)
    lazy = encode_pairs(components, pairs, on_the_fly=True)
    assert lazy.mean is None and lazy.fingerprint() == cached.fingerprint()
    for got, want in zip(lazy.subset([4, 1]).posterior([1, 0]), cached.posterior([1, 4])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
