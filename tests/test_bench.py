"""`lpo bench` end to end on the tiny world model at micro size, and its resume."""

from __future__ import annotations

import json

import pytest

from lpo.bench.config import BenchConfig, bench_preset
from lpo.bench.runner import run_bench
from lpo.core.errors import LpoError


def _micro(model: str) -> BenchConfig:
    return BenchConfig(
        preset="micro", model=model, train_prompts=8, pairs_per_prompt=2, val_prompts=4, val_pairs_per_prompt=1,
        reward_train_prompts=11, mpcf_strategy="none",
        lrm_overrides=("max_steps=4", "warmup_steps=1", "batch_size=8", "eval_every=0", "save_every=2"),
        pixel_overrides=("max_steps=2", "warmup_steps=1", "batch_size=8", "eval_every=0", "save_every=2"),
        # thresholds 0: a 4-step reward model's gaps are tiny, and a run that keeps no pair is an error
        lpo_overrides=("train.max_rounds=2", "train.epochs=100", "sampler.sample_batch_size=4", "sampler.num_inference_steps=4",
                       "sampler.threshold_min=0", "sampler.threshold_max=0"),
        spo_overrides=("train.max_rounds=2", "train.epochs=100", "sampler.sample_batch_size=4", "sampler.num_inference_steps=6",
                       "sampler.min_timestep=0", "sampler.threshold_min=0", "sampler.threshold_max=0"),
        dpo_overrides=("train.max_steps=2", "train.batch_size=4", "optim.warmup_steps=1"),
        checkpoints_per_run=1, eval_prompts=6, eval_images_per_prompt=1, guided_prompts=2, guided_seeds=1,
        device="cpu",
    )


@pytest.fixture(scope="module")
def micro_bench(tiny_world_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    bench = run_bench(folder, _micro(str(tiny_world_dir)))
    return folder, bench


def test_bench_runs_every_stage_and_writes_the_report(micro_bench):
    folder, _ = micro_bench
    summary = json.loads((folder / "bench.json").read_text())
    stages = set(summary["stages"])
    for stage in ("pairs", "mpcf", "reward-lrm", "reward-pixel", "reward-eval", "train-lpo", "train-spo",
                  "train-diffusion-dpo", "evaluate", "guided", "samples", "report"):
        assert stage in stages and (folder / "stages" / f"{stage}.json").is_file(), stage
    assert summary["config"]["preset"] == "micro"
    # the pairs mix generation settings per image, as Pick-a-Pic mixes models
    sidecar = json.loads((folder / "pairs" / "train.parquet.json").read_text())
    assert sum(n > 0 for n in sidecar["provenance"]["images_per_source"].values()) >= 3
    # every final model and the base on both world benchmarks; the intermediate checkpoint on world
    from lpo.evals.store import load_records

    records = load_records(folder / "results")
    labels = {(r.benchmark, r.checkpoint["label"]) for r in records if r.metric == "world_utility"}
    for name in ("base", "lpo", "spo", "diffusion-dpo"):
        assert ("world", name) in labels and ("world-heldout", name) in labels
    steps = [r for r in records if r.metric == "world_utility" and "step" in r.checkpoint]
    assert {r.method for r in steps} >= {"lpo", "diffusion-dpo"}
    assert all(r.training_cost is not None for r in records if r.method != "base")
    for name in ("base", "lpo", "spo", "diffusion-dpo"):
        assert (folder / "samples" / f"{name}.png").is_file()
        assert (folder / "guided" / f"{name}.json").is_file()
    html = (folder / "report" / "index.html").read_text()
    assert "<img" in html and "lpo" in html


def test_the_reward_models_learn_from_the_whole_pool_and_the_policies_from_its_first_prompts(micro_bench):
    from lpo.pairs.format import load_pairs

    folder, _ = micro_bench
    pool = load_pairs(str(folder / "pairs" / "train.parquet")).pairs
    reward = load_pairs(str(folder / "pairs" / "reward-mpcf.parquet")).pairs
    policy = load_pairs(str(folder / "pairs" / "train-mpcf.parquet")).pairs
    assert len(pool) == 11 * 2 and len({p.prompt for p in pool}) == 11
    first_prompts = list(dict.fromkeys(p.prompt for p in pool))[:8]
    assert {p.prompt for p in policy} == set(first_prompts)  # strategy none keeps every decisive pair
    assert {p.pair_id for p in policy} == {p.pair_id for p in reward if p.prompt in first_prompts}
    assert len(reward) > len(policy)
    for name in ("lrm", "pixel"):  # both reward models read the whole pool's kept pairs
        run = json.loads((folder / "rewards" / name / "run.json").read_text())
        assert run["pairs"] == str(folder / "pairs" / "reward-mpcf.parquet")
    dpo = json.loads((folder / "stages" / "train-diffusion-dpo.json").read_text())["output"]["overrides"]
    assert f"data.pairs={folder / 'pairs' / 'train-mpcf.parquet'}" in dpo
    # the report says what each learned from, and shows the noise-ensemble rows of the accuracy table
    summary = (folder / "report" / "summary.md").read_text()
    assert f"the reward models learned from {len(reward)} MPCF-kept pairs of {len(pool)} generated" in summary
    assert f"the policies from the {len(policy)} of them that belong to the pool's first 8 prompts" in summary
    assert "ensemble t≤251" in summary


def test_rerun_skips_finished_stages_and_refuses_another_config(micro_bench, tiny_world_dir):
    folder, first = micro_bench
    before = (folder / "results" / "world" / "records-v1.jsonl").read_text()
    again = run_bench(folder, _micro(str(tiny_world_dir)))
    assert all(t.get("skipped") for t in again.timings.values())
    assert (folder / "results" / "world" / "records-v1.jsonl").read_text() == before  # nothing re-evaluated
    with pytest.raises(LpoError, match="another config"):
        run_bench(folder, BenchConfig(**{**_micro(str(tiny_world_dir)).__dict__, "eval_prompts": 7}))


def test_presets_and_config_errors():
    assert bench_preset("quick").preset == "quick" and bench_preset("full").seeds >= 3 and bench_preset("full").eval_prompts > bench_preset("quick").eval_prompts
    with pytest.raises(LpoError, match="unknown bench preset"):
        bench_preset("huge")
    with pytest.raises(LpoError, match="unknown bench methods"):
        BenchConfig(methods=("ppo",))
    with pytest.raises(LpoError, match="unknown pair_sources 'sdxl'; choose from single, pickapic"):
        BenchConfig(pair_sources="sdxl")
    with pytest.raises(LpoError, match="reward_train_prompts"):
        BenchConfig(train_prompts=100, reward_train_prompts=50)


def test_an_ablation_reuses_the_bench_and_lands_in_the_report(micro_bench, tiny_world_dir):
    from dataclasses import replace

    from lpo.evals.store import load_records

    folder, _ = micro_bench
    bench = run_bench(folder, replace(_micro(str(tiny_world_dir)), ablations=("lrm-t0",)))
    root = folder / "ablations" / "lrm-t0"
    meta = json.loads((root / "ablation.json").read_text())
    assert [v["label"] for v in meta["variants"]] == ["real t", "t=0"]
    # the variants reused the main bench's pairs and LRM (no retraining) and trained LPO only
    assert bench.timings["train-lpo"]["skipped"] and not (root / "t_0" / "runs" / "spo").exists()
    variant_stages = json.loads((root / "t_0" / "bench.json").read_text())["stages"]
    assert variant_stages["reward-lrm"].get("skipped") and "train-lpo" in variant_stages
    labels = {r.checkpoint["label"] for r in load_records(root / "results") if r.metric == "world_utility"}
    assert {"base", "lpo [real t]", "lpo [t=0]"} <= labels
    config = json.loads((root / "t_0" / "runs" / "lpo" / "config.json").read_text())
    assert config["sampler"]["reward_timestep"] == "zero"
    assert "Ablation: lrm-t0" in (folder / "report" / "summary.md").read_text()


def test_more_training_seeds_continue_a_bench_and_pool_in_the_report(micro_bench, tiny_world_dir):
    from dataclasses import replace

    from lpo.evals.store import load_records

    folder, _ = micro_bench
    bench = run_bench(folder, replace(_micro(str(tiny_world_dir)), seeds=2))
    # seed 0 is not retrained; seed 1 of every method trains with run.seed = seed + 1 in runs/METHOD/seed-1
    assert bench.timings["train-lpo"]["skipped"] and not bench.timings["train-lpo-seed-1"].get("skipped")
    methods = ("lpo", "spo", "diffusion-dpo")
    for method in methods:
        assert json.loads((folder / "runs" / method / "seed-1" / "config.json").read_text())["run"]["seed"] == 1
        assert json.loads((folder / "runs" / method / "config.json").read_text())["run"]["seed"] == 0
    # each seed-1 final model on both benchmarks, under the protocol of the others; no intermediate checkpoints
    records = [r for r in load_records(folder / "results") if r.metric == "world_utility" and r.run_id == "seed-1"]
    assert {(r.benchmark, r.checkpoint["label"]) for r in records} == {
        (b, f"{m}-seed-1") for b in ("world", "world-heldout") for m in methods}
    assert not any("step" in r.checkpoint for r in records)
    # the report pools both seeds and measures their spread
    paired = json.loads((folder / "report" / "paired.json").read_text())
    lpo = next(row for row in paired["benchmarks"][0]["rows"] if row["comparison"] == "LPO − base")
    assert lpo["seeds"] == [2, 1] and len(lpo["seed_means"]) == 2
    assert lpo["seed_sd"] == pytest.approx(abs(lpo["seed_means"][0] - lpo["seed_means"][1]) / 2 ** 0.5)
    assert any(line.startswith("  minimum detectable Δ, LPO vs base") for line in paired["console"])
    summary = (folder / "report" / "summary.md").read_text()
    assert summary.index("## The answer") < summary.index("## Leaderboard") and "| lpo-seed-1 |" in summary
    assert json.loads((folder / "bench.json").read_text())["config"]["seeds"] == 2


def test_starting_a_run_over_keeps_its_other_seeds(tmp_path):
    from lpo.bench.runner import _prepare_run_dir

    run = tmp_path / "runs" / "lpo"
    (run / "seed-1" / "checkpoints" / "step-2").mkdir(parents=True)
    (run / "model").mkdir()
    (run / "run.json").write_text("{}")
    assert _prepare_run_dir(run) is False  # no checkpoint of its own: it starts over
    assert sorted(p.name for p in run.iterdir()) == ["seed-1"] and (run / "seed-1" / "checkpoints" / "step-2").is_dir()
    (run / "checkpoints" / "step-3").mkdir(parents=True)
    assert _prepare_run_dir(run) is True  # resumable: nothing removed
    assert (run / "seed-1").is_dir()


def test_the_bench_ends_by_saying_the_answer(tmp_path):
    from lpo.bench.runner import Bench, _say_answer

    lines = ["paired world_utility@1 on world (...):", "  LPO − base: +0.037 ± 0.037 → better (1 seed, spread unknown)",
             "  minimum detectable Δ, LPO vs base: ±0.037 (64 prompts × 2 images, per-prompt SD 0.146)"]
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "paired.json").write_text(json.dumps({"benchmarks": [], "console": lines}))

    class Console:
        printed: list = []

        def print(self, message, highlight=True):
            self.printed.append(message)

    console = Console()
    _say_answer(Bench(tmp_path, BenchConfig(), console))
    assert console.printed == lines
