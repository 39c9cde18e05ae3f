"""`lpo pairs` -> `lpo lrm train` (LRM and SPO pixel model) -> `lpo lrm eval`, end to end on the tiny world."""

import json

import pytest
from typer.testing import CliRunner

from lpo.cli import app

runner = CliRunner()
SMALL = ["--set", "max_steps=2", "--set", "batch_size=4", "--set", "warmup_steps=1", "--set", "save_every=0",
         "--set", "eval_every=0", "--set", "log_every=1"]



def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_both_step_rewards_and_compare_them_by_timestep(tiny_world_dir, tmp_path):
    pairs = tmp_path / "pairs.parquet"
    held = tmp_path / "held.parquet"
    for path, split in ((pairs, "train"), (held, "val")):
        r = invoke("pairs", "--model", tiny_world_dir, "--out", path, "--num-prompts", "3", "--pairs-per-prompt", "2",
                   "--steps", "2", "--prompt-split", split)
        assert r.exit_code == 0, r.output
    runs = {}
    for preset in ("lrm-world", "spo-pixel-world"):
        run_dir = tmp_path / preset
        # The LRM run also holds out a third of its prompts (the trainer splits them itself).
        held_out = ["--set", "eval_fraction=0.34"] if preset == "lrm-world" else []
        r = invoke("lrm", "train", pairs, "--model", tiny_world_dir, "--preset", preset, "--run-dir", run_dir, *SMALL, *held_out)
        assert r.exit_code == 0, r.output
        assert (run_dir / "config.json").exists() and (run_dir / "cost.json").exists()
        cost = json.loads((run_dir / "cost.json").read_text())
        assert cost["device_type"] == "cpu"
        runs[preset] = run_dir / "model"
    out = tmp_path / "eval"
    r = invoke("lrm", "eval", held, "--model", tiny_world_dir, "--lrm", runs["lrm-world"], "--pixel", runs["spo-pixel-world"], "--out", out)
    assert r.exit_code == 0, r.output
    result = json.loads((out / "accuracy_by_timestep.json").read_text())
    assert set(result["accuracy"]) == {"LRM (latent)", "SPO pixel model on x̂0", "true utility on x̂0 (ceiling)"}
    for by_t in result["accuracy"].values():
        assert sorted(int(t) for t in by_t) == list(range(1, 1000, 50))
        assert all(0.0 <= acc <= 1.0 for acc, _ in by_t.values())
    assert (out / "accuracy_by_timestep.png").stat().st_size > 1000
    # in the world, also against the true-utility order of the two images: a held-out set
    # whose labels contradict the true order on a known share of the pairs
    import numpy as np

    from lpo.pairs.format import PreferencePair, save_pairs
    from lpo.world.grammar import make_splits
    from lpo.world.render import render_prompt

    rng = np.random.default_rng(0)
    specs = make_splits().val[:6]
    blank = np.full((32, 32, 3), (24, 24, 32), dtype=np.uint8)  # the background alone: utility ~0.1
    known = [PreferencePair(f"k{i}", s.text(), render_prompt(s, rng), blank, 1.0 if i < 4 else 0.0, "world")
             for i, s in enumerate(specs)]  # 4 labels agree with the true order, 2 contradict it
    save_pairs(known, tmp_path / "known.parquet")
    out = tmp_path / "eval-known"
    r = invoke("lrm", "eval", tmp_path / "known.parquet", "--model", tiny_world_dir, "--lrm", runs["lrm-world"], "--out", out)
    assert r.exit_code == 0, r.output
    result = json.loads((out / "accuracy_by_timestep.json").read_text())
    assert set(result["accuracy_true_order"]) == set(result["accuracy"]) == {"LRM (latent)", "true utility on x̂0 (ceiling)"}
    assert result["label_agreement"] == [pytest.approx(4 / 6), 6]
    for name in result["accuracy"]:
        for t, (acc, n) in result["accuracy"][name].items():
            acc_true, n_true = result["accuracy_true_order"][name][t]
            assert n == n_true == 6
            # the 2 contradicted pairs are scored wrong against one target exactly when right against the other
            assert abs(acc - acc_true) <= 2 / 6 + 1e-9
    for key in ("accuracy", "accuracy_true_order"):
        for name, bands in result["bands"][key].items():
            ts = [t for t in result[key][name] if int(t) <= 251]
            assert bands["t<=251"][0] == pytest.approx(sum(result[key][name][t][0] for t in ts) / len(ts))
        for name, ensembles in result["ensembles"][key].items():  # one judgement per pair and band
            assert ensembles["t<=251"][1] == ensembles["all"][1] == 6


def test_noise_ensembles_average_the_scores_before_judging_the_pair():
    import torch

    from lpo.reward.jobs import noise_ensembles

    labels = torch.tensor([1.0, 0.0, 0.5])  # image_0 wins, image_1 wins, a tie (not counted)
    scores = {1: (torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 0.0])),
              51: (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 0.0])),
              251: (torch.tensor([-5.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 0.0])),
              501: (torch.tensor([9.0, -9.0, 0.0]), torch.tensor([0.0, 0.0, 0.0]))}
    out = noise_ensembles(scores, labels)
    # t <= 251: pair 0 averages 1 + 1 - 5 = -1 < 0 (wrong, though right at two of three t); pair 1 averages 2/3 < 1 (right)
    assert out["t<=251"] == [0.5, 2]
    # all t: pair 0 averages 6/4 > 0 (right); pair 1 averages -7/4 < 3/4 (right)
    assert out["all"] == [1.0, 2]


def test_lrm_eval_without_models_is_a_user_error(tiny_world_dir, tmp_path):
    r = invoke("lrm", "eval", tmp_path / "missing.parquet", "--model", tiny_world_dir)
    assert r.exit_code == 2 and "Traceback" not in r.output
