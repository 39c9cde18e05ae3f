"""Failure semantics (issue 13): no silent success, no code from run folders.

- a diverging run (lr = 1e6, or an injected NaN) stops with one line naming the step and the
  fix, writes no final model, and leaves only finite checkpoints; every trainer does this;
- a broken step reward (NaN weights, NaN scores) is refused with one line;
- an evaluation of a U-Net with NaN weights is refused before anything is recorded;
- a resume never unpickles objects: a poisoned pickle planted in a checkpoint does not run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lpo.core.errors import LpoError
from lpo.core.finite import DivergedError
from lpo.trainers.jobs import run_training

from tiny_models import save_random_lrm

# One round of 4 trajectories, pairs at the 4 highest t, every branched row kept, 4 updates per round.
QUICK = ["train.max_rounds=3", "sampler.sample_batch_size=4", "train.train_batch_size=4", "sampler.threshold_min=0.0",
         "sampler.threshold_max=0.0", "sampler.min_timestep=801", "run.save_every=1"]


@pytest.fixture(scope="module")
def world_lrm(tiny_world_dir, tmp_path_factory) -> Path:
    return save_random_lrm(tiny_world_dir, tmp_path_factory.mktemp("rewards") / "lrm")


@pytest.fixture(scope="module")
def world_pairs(tmp_path_factory) -> Path:
    from lpo.pairs.format import PreferencePair, save_pairs

    rng = np.random.default_rng(0)
    pairs = [PreferencePair(f"p{i}", ("a red circle", "a blue square")[i % 2],
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), float(i % 2), "test") for i in range(16)]
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    save_pairs(pairs, path)
    return path


def _all_finite(folder: Path) -> bool:
    files = list(folder.rglob("*.safetensors"))
    assert files
    return all(torch.isfinite(t).all() for f in files for t in load_file(str(f)).values() if t.is_floating_point())


# --------------------------------------------------------------------------- divergence


def test_a_diverging_lpo_run_stops_with_one_line_and_writes_no_model(tiny_world_dir, world_lrm, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"^round \d, optimiser step \d+: the loss became NaN or inf, training "
                                            r"diverged; lower optim.lr \(now 1e\+06\) and start a new run") as err:
        run_training("lpo", "lpo-world", [f"model.base={tiny_world_dir}", f"reward.path={world_lrm}", *QUICK,
                                          "optim.lr=1e6"], run_dir=run_dir)
    assert "\n" not in str(err.value)
    assert not (run_dir / "model").exists() and not (run_dir / "result.json").exists()
    for checkpoint in (run_dir / "checkpoints").glob("step-*"):  # whatever was saved before is finite
        assert _all_finite(checkpoint)


def test_a_diverging_diffusion_dpo_run_stops(tiny_world_dir, world_pairs, tmp_path):
    with pytest.raises(DivergedError, match=r"^step \d+: the (loss|gradients) became NaN or inf.*optim.lr \(now 1e\+06\)"):
        run_training("diffusion-dpo", "dpo-world", [
            f"model.base={tiny_world_dir}", f"data.pairs={world_pairs}", "train.max_steps=6", "train.batch_size=4",
            "optim.warmup_steps=0", "run.save_every=2", "optim.lr=1e6"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("step-*"):
        assert _all_finite(checkpoint)


def test_a_diverging_reward_model_stops(tiny_world_dir, tmp_path):
    from lpo.reward.lrm import LatentRewardModel, LRMConfig
    from lpo.reward.lrm_io import save_lrm
    from lpo.models.components import load_components
    from lpo.pairs.format import PreferencePair
    from lpo.reward.config import RewardTrainingConfig
    from lpo.reward.training import train_step_reward
    from lpo.core.runs import RunFolder

    components = load_components(tiny_world_dir)
    torch.manual_seed(0)
    model = LatentRewardModel.from_components(components, LRMConfig(vfe_scale=1.0))
    rng = np.random.default_rng(0)
    pairs = [PreferencePair(f"p{i}", "a red circle", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), float(i % 2), "test") for i in range(16)]
    config = RewardTrainingConfig(lr=1e6, warmup_steps=0, max_steps=8, batch_size=8, mixed_precision="no", log_every=1,
                                  save_every=2, eval_every=0, grad_clip=None)
    run = RunFolder.create(config, name="lrm", root=tmp_path)
    with pytest.raises(DivergedError, match=r"^step \d+: the (loss|gradients) became NaN or inf.*lower lr \(now 1e\+06\)"):
        train_step_reward(model, components, pairs, config, run, save_model=save_lrm)
    assert not (run.path / "model").exists() and not (run.path / "result.json").exists()
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad update was never applied
    for checkpoint in (run.path / "checkpoints").glob("step-*"):
        assert _all_finite(checkpoint)


def test_a_nan_loss_is_never_applied_to_the_weights():
    from accelerate import Accelerator

    from lpo.trainers.harness import accumulated_step

    model = torch.nn.Linear(3, 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = Accelerator(cpu=True)

    def loss_fn(rows):
        out = model(torch.ones(len(rows), 3)).squeeze(1)
        return out * float("nan"), {}

    logs = accumulated_step(acc, model, optimizer, None, list(model.parameters()), [torch.arange(2)], loss_fn, 2, None)
    assert logs.nonfinite == "the loss"
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# --------------------------------------------------------------------------- a broken step reward


def test_a_nan_lrm_is_refused_as_the_step_reward(tiny_world_dir, tmp_path):
    bad = save_random_lrm(tiny_world_dir, tmp_path / "nan-lrm", poison=True)
    with pytest.raises(LpoError, match=r"the step reward .*nan-lrm has non-finite weights \(\d+ of \d+ values are NaN.*"
                                       r"retrain it \(lpo lrm train"):
        run_training("lpo", "lpo-world", [f"model.base={tiny_world_dir}", f"reward.path={bad}", *QUICK],
                     run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()


def test_nan_reward_scores_stop_the_run_before_any_update(tiny_world_dir, world_lrm, tmp_path, monkeypatch):
    from lpo.reward.lrm import LatentRewardModel

    real = LatentRewardModel.score_with_conditioning
    monkeypatch.setattr(LatentRewardModel, "score_with_conditioning",
                        lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    with pytest.raises(DivergedError, match=r"^round 1: the step reward .* gave NaN or inf \(64 of 64 scores.*the reward "
                                            r"model is broken"):
        run_training("lpo", "lpo-world", [f"model.base={tiny_world_dir}", f"reward.path={world_lrm}", *QUICK],
                     run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()


# --------------------------------------------------------------------------- evaluation


def test_eval_refuses_a_unet_with_nan_weights(tiny_world_dir, tmp_path):
    from lpo.evals.harness import EvalConfig, EvalProtocol, run_eval

    folder = tmp_path / "nan-pipeline"
    shutil.copytree(tiny_world_dir, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    first = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(weights))
    config = EvalConfig(checkpoint=str(folder), max_prompts=2, cache_dir=tmp_path / "cache",
                        results_dir=tmp_path / "results", protocol=EvalProtocol(steps=2, images_per_prompt=1))
    with pytest.raises(LpoError, match=r"the denoiser of checkpoint .*nan-pipeline has non-finite weights.*diverged run"):
        run_eval(config)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.jsonl"))


# --------------------------------------------------------------------------- no code from run folders


class _Poison:
    """Unpickling this creates ``marker``: what a planted pickle could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_never_runs_a_planted_pickle(tiny_world_dir, world_lrm, tmp_path):
    sets = [f"model.base={tiny_world_dir}", f"reward.path={world_lrm}", *QUICK, "train.max_rounds=2"]
    run_dir = tmp_path / "run"
    run_training("lpo", "lpo-world", sets, run_dir=run_dir)
    (run_dir / "result.json").unlink()  # as if killed after its last checkpoint: a run to resume
    state = run_dir / "checkpoints" / "step-000001" / "state"
    assert (state / "lr_schedule.json").is_file() and not list(state.glob("custom_checkpoint_*"))
    marker = tmp_path / "pwned"

    # 1. a custom-state pickle (accelerate would unpickle it with weights_only=False): refused, not run
    torch.save(_Poison(marker), state / "custom_checkpoint_0.pkl")
    with pytest.raises(LpoError, match=r"holds custom_checkpoint_0.pkl: pickled state, which this lpo does not load"):
        run_training("lpo", "lpo-world", sets, run_dir=run_dir, resume=True)
    assert not marker.exists()
    (state / "custom_checkpoint_0.pkl").unlink()

    # 2. a poisoned optimiser state: refused by the weights-only unpickler, one line
    optimizer_file = state / "optimizer.bin"
    good = optimizer_file.read_bytes()
    torch.save(_Poison(marker), optimizer_file)
    with pytest.raises(LpoError, match=r"optimizer.bin|not plain tensors"):
        run_training("lpo", "lpo-world", sets, run_dir=run_dir, resume=True)
    assert not marker.exists()
    optimizer_file.write_bytes(good)

    # 3. a poisoned RNG state: skipped (lpo's randomness is keyed, not global); the resume completes
    torch.save(_Poison(marker), state / "random_states_0.pkl")
    (run_dir / "result.json").unlink(missing_ok=True)
    result = run_training("lpo", "lpo-world", sets, run_dir=run_dir, resume=True)
    assert result.resumed_from == 1 and not marker.exists()

    # the poison is live: an unrestricted unpickle would have run it
    torch.load(state / "random_states_0.pkl", weights_only=False)
    assert marker.exists()


def test_reward_training_checkpoints_store_the_schedule_as_json(tiny_world_dir, tmp_path):
    from lpo.reward.lrm import LatentRewardModel, LRMConfig
    from lpo.reward.lrm_io import save_lrm
    from lpo.models.components import load_components
    from lpo.pairs.format import PreferencePair
    from lpo.reward.config import RewardTrainingConfig
    from lpo.reward.training import train_step_reward
    from lpo.core.runs import RunFolder

    components = load_components(tiny_world_dir)
    rng = np.random.default_rng(0)
    pairs = [PreferencePair(f"p{i}", "a red circle", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), float(i % 2), "test") for i in range(8)]
    config = RewardTrainingConfig(lr=1e-4, warmup_steps=1, max_steps=3, batch_size=4, mixed_precision="no", log_every=1,
                                  save_every=2, eval_every=0)
    torch.manual_seed(0)
    run = RunFolder.create(config, name="lrm", root=tmp_path)
    train_step_reward(LatentRewardModel.from_components(components, LRMConfig(vfe_scale=1.0)), components, pairs,
                      config, run, save_model=save_lrm)
    (run.path / "result.json").unlink(missing_ok=True)  # as if killed after its last checkpoint: a run to resume
    state = run.path / "checkpoints" / "step-000002" / "state"
    assert json.loads((state / "lr_schedule.json").read_text())["last_epoch"] == 2
    assert not list(state.glob("custom_checkpoint_*"))
    marker = tmp_path / "pwned"
    torch.save(_Poison(marker), state / "custom_checkpoint_0.pkl")
    torch.manual_seed(0)
    with pytest.raises(LpoError, match="pickled state, which this lpo does not load"):
        train_step_reward(LatentRewardModel.from_components(components, LRMConfig(vfe_scale=1.0)), components, pairs,
                          config, RunFolder.resume(run.path, config), save_model=save_lrm, resume=True)
    assert not marker.exists()


# --------------------------------------------------------------------------- fixes that exist


def test_an_unreachable_vae_override_names_model_vae_none(tiny_sdxl_dir):
    from lpo.models.components import load_components

    # the suite runs with HF_HUB_OFFLINE=1: a hub VAE that is not cached cannot load
    with pytest.raises(LpoError, match=r"could not load the VAE override \(model.vae\).*set model.vae=none to use the "
                                       r"pipeline's own VAE, or model.vae to a local AutoencoderKL folder"):
        load_components(tiny_sdxl_dir, vae="nobody/no-such-vae")
    assert load_components(tiny_sdxl_dir, vae=None).vae is not None  # the fix named: model.vae=none


def test_mpcf_world_scorers_on_real_captions_point_to_the_paper_preset():
    from lpo.pairs.gap_scores import GAP_SCORERS

    scorer = GAP_SCORERS.get("world-aesthetic")()
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(LpoError, match=r"is not in the world's grammar.*reads world prompts only: filter real pairs "
                                       r"with --preset paper"):
        scorer.score([image], ["a photo of an astronaut riding a horse"])


def test_an_unreachable_pickscore_names_the_hub_cache_fix():
    from lpo.reward.pixel import TimestepConditionedScorer

    with pytest.raises(LpoError, match=r"allow hub access or fetch nobody/no-pickscore .* with `hf download`.*--set pixel_scorer=FOLDER"):
        TimestepConditionedScorer.from_clip_pretrained("nobody/no-pickscore")
