"""lpo.trainers: registry, presets, the shared contract of every trainer, LPO / SPO runs on the
tiny world and a LoRA run on the tiny SD1.5 pipeline whose output plain diffusers reloads.

Runs go through lpo.trainers.jobs.run_training, the body of `lpo train`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lpo.core.errors import LpoError
from lpo.core.io import atomic_write_json
from lpo.core.runs import DeviceMeter, RunFolder, read_cost
from lpo.trainers import TRAINERS
from lpo.trainers.jobs import resolve_config, run_training
from lpo.trainers.presets import PRESET_METHOD, PRESETS, trainer_preset

from tiny_models import save_random_lrm

REWARD_SECONDS = 12.5
# One round of 4 trajectories, pairs at the 4 highest t, every branched row kept, one update.
QUICK_STEP = ["train.max_rounds=1", "sampler.sample_batch_size=4", "train.train_batch_size=64",
              "sampler.threshold_min=0.0", "sampler.threshold_max=0.0", "sampler.min_timestep=801",
              "run.save_every=0"]


def _with_cost(folder: Path, seconds: float = REWARD_SECONDS) -> Path:
    meter = DeviceMeter()
    meter.add("reward_model_training", seconds)
    atomic_write_json(folder / "cost.json", meter.as_dict())
    return folder


def _lrm_folder(base: Path, out: Path) -> Path:
    return _with_cost(save_random_lrm(base, out))


@pytest.fixture(scope="module")
def world_lrm(tiny_world_dir, tmp_path_factory) -> Path:
    return _lrm_folder(tiny_world_dir, tmp_path_factory.mktemp("rewards") / "lrm")


@pytest.fixture(scope="module")
def world_pixel(tiny_world_dir, tmp_path_factory) -> Path:
    from lpo.models.components import load_components
    from lpo.reward.pixel import PixelStepReward
    from lpo.reward.pixel_io import save_pixel_reward

    components = load_components(tiny_world_dir)  # its own copy: the reward freezes the U-Net it is given
    out = tmp_path_factory.mktemp("rewards") / "pixel"
    save_pixel_reward(PixelStepReward.from_components(components), out)
    return _with_cost(out, 3.0)


@pytest.fixture(scope="module")
def world_pairs(tmp_path_factory) -> Path:
    from lpo.pairs.format import PreferencePair, save_pairs

    rng = np.random.default_rng(0)
    pairs = [
        PreferencePair(f"p{i}", ("a red circle", "a blue square")[i % 2],
                       rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                       (1.0, 0.0, 0.5)[i % 3], "test")
        for i in range(24)
    ]
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    save_pairs(pairs, path)
    return path


# --------------------------------------------------------------------------- registry and presets


def test_registry_and_presets():
    assert TRAINERS.names() == ["diffusion-dpo", "grpo", "lpo", "spo"]
    with pytest.raises(LpoError, match="unknown trainer 'ppo'; known: diffusion-dpo, grpo, lpo, spo"):
        TRAINERS.get("ppo")
    for name in PRESETS:  # every preset builds and validates
        config = trainer_preset(name)
        assert config.preset == name and type(config) is TRAINERS.get(PRESET_METHOD[name]).config_class
    lpo15, lpoxl = trainer_preset("lpo-sd15"), trainer_preset("lpo-sdxl")
    assert (lpo15.loss.beta, lpo15.loss.clip_epsilon, lpo15.sampler.num_candidates) == (500.0, 0.1, 4)
    assert (lpo15.sampler.threshold_min, lpo15.sampler.threshold_max) == (0.35, 0.5)
    assert (lpoxl.sampler.threshold_min, lpoxl.sampler.threshold_max, lpoxl.policy.lora_rank) == (0.45, 0.6, 64)
    assert (lpo15.optim.lr, lpoxl.optim.lr, lpo15.optim.weight_decay) == (6e-5, 1e-5, 1e-4)
    assert (lpo15.sampler.num_inference_steps, lpo15.sampler.eta, lpo15.sampler.guidance_scale) == (20, 1.0, 5.0)
    assert lpo15.sampler.reward_timestep == "current" and lpo15.policy.mode == "lora"
    spo15, spoxl = trainer_preset("spo-sd15"), trainer_preset("spo-sdxl")
    assert (spo15.loss.beta, spo15.sampler.skip_first_steps, spo15.sampler.threshold_min, spo15.sampler.threshold_max) \
        == (10.0, 4, 0.3, 0.3)
    assert (spoxl.sampler.num_candidates, spoxl.sampler.threshold_min, spoxl.policy.lora_rank) == (2, 0.4, 64)
    dpo15, dpoxl = trainer_preset("dpo-sd15"), trainer_preset("dpo-sdxl")
    assert (dpo15.loss.beta, dpoxl.loss.beta, dpo15.train.batch_size, dpo15.train.max_steps) == (2000.0, 5000.0, 2048, 2000)
    assert (dpo15.optim.lr, dpo15.optim.warmup_steps, dpoxl.optim.optimizer) == (2.048e-5, 500, "adafactor")
    assert (dpo15.data.caption_dropout, dpo15.policy.mode, dpo15.label) == (0.2, "full", "diffusion-dpo")
    # world presets: SPEC §5.5's lessons
    for name in ("lpo-world", "spo-world", "dpo-world"):
        world = trainer_preset(name)
        assert world.policy.mode == "full" and set(world.policy.full_trainable) == {"attentions", "resnets"}
        assert world.optim.lr == 1e-4
    assert trainer_preset("lpo-world").loss.beta == 50.0 and trainer_preset("lpo-world").sampler.min_timestep == 501


def test_overrides_are_type_checked_and_presets_fit_their_method():
    config = resolve_config("lpo", "lpo-world", ["loss.beta=250", "policy.mode=lora", "loss.clip_epsilon=none"])
    assert (config.loss.beta, config.policy.mode, config.loss.clip_epsilon) == (250.0, "lora", None)
    with pytest.raises(LpoError, match="unknown config key 'loss.gamma'"):
        resolve_config("lpo", "lpo-world", ["loss.gamma=1"])
    with pytest.raises(LpoError, match="beta expects float"):
        resolve_config("lpo", "lpo-world", ["loss.beta=big"])
    with pytest.raises(LpoError, match="mode must be one of lora, full"):
        resolve_config("lpo", "lpo-world", ["policy.mode=half"])
    with pytest.raises(LpoError, match="threshold_min <= threshold_max"):
        resolve_config("spo", "spo-world", ["sampler.threshold_min=0.5"])
    with pytest.raises(LpoError, match="preset dpo-world is for diffusion-dpo, not lpo"):
        resolve_config("lpo", "dpo-world", [])
    with pytest.raises(LpoError, match="needs optim.mixed_precision"):
        resolve_config("lpo", "lpo-world", ["model.dtype=fp16"])


# --------------------------------------------------------------------------- the shared contract


def _unet_state(folder: Path) -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder).state_dict()


@pytest.mark.parametrize("method", ["lpo", "spo", "diffusion-dpo"])
def test_one_step_of_every_trainer_trains_the_chosen_weights_only(method, tiny_world_dir, world_lrm, world_pixel,
                                                                  world_pairs, tmp_path):
    preset = {"lpo": "lpo-world", "spo": "spo-world", "diffusion-dpo": "dpo-world"}[method]
    overrides = [f"model.base={tiny_world_dir}"]
    if method == "diffusion-dpo":
        overrides += [f"data.pairs={world_pairs}", "train.max_steps=1", "train.batch_size=8", "optim.warmup_steps=0",
                      "run.save_every=0"]
    else:
        reward = world_lrm if method == "lpo" else world_pixel
        overrides += [f"reward.path={reward}", *QUICK_STEP]
        if method == "spo":
            overrides += ["sampler.min_timestep=601",  # SPO trains from t = 751 down
                          "reward.decode_batch_size=3"]  # the candidates' x̂0 decoded 3 at a time
    result = run_training(method, preset, overrides, run_dir=tmp_path / "run")

    assert result.optimizer_steps == 1 and math.isfinite(result.final_loss)
    assert result.final_loss == pytest.approx(math.log(2), abs=1e-6)  # policy == reference before the update
    before, after = _unet_state(tiny_world_dir / "unet"), _unet_state(result.model_folder)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(".attentions." in n or ".resnets." in n for n in changed)  # full_trainable parts only
    untouched = [n for n in before if ".attentions." not in n and ".resnets." not in n]
    assert untouched and all(torch.equal(before[n], after[n]) for n in untouched)
    # the run folder: resolved config, provenance, cost with the reward model's own training cost
    run = RunFolder.open(tmp_path / "run")
    assert run.read_config()["method"] == method and run.read_config()["model"]["base"] == str(tiny_world_dir)
    meta = run.read_run()
    assert meta["git"]["commit"] and meta["versions"]["peft"] and meta["argv"] and meta["preset"] == preset
    cost = read_cost(tmp_path / "run")
    assert cost["seconds"]["optimisation"] > 0 and cost["device_type"] == "cpu" and cost["device_count"] == 1
    included = {r["source"]: r["seconds"] for r in cost["included"]}
    if method == "diffusion-dpo":
        assert included == {} and "rollout" not in cost["seconds"]
    else:
        assert cost["seconds"]["rollout"] > 0  # sampling the round's trajectories, booked apart from the update
        from lpo.bench.efficiency import training_seconds

        counted = training_seconds(cost)
        assert counted.rollout == pytest.approx(cost["seconds"]["rollout"])
        assert counted.optimisation == pytest.approx(cost["seconds"]["rollout"] + cost["seconds"]["optimisation"])
        assert included == {str(reward): {"reward_model_training": REWARD_SECONDS if method == "lpo" else 3.0}}
    assert json.loads((result.model_folder / "cost.json").read_text()) == cost


def test_grpo_round_keeps_every_group_and_starts_at_ratio_one(tiny_world_dir, world_lrm, tmp_path):
    """Step-level GRPO with the LRM: all B × trained-steps groups kept, advantages centred per group,
    the first update's ratio 1 (old log-probs are the rollout policy's own), so its loss is −mean(A) = 0."""
    from lpo.trainers.presets import trainer_preset

    grpo = trainer_preset("grpo-world")
    assert (grpo.method, grpo.loss.clip_epsilon, grpo.loss.kl_beta) == ("grpo", 1e-4, 0.0)
    result = run_training("grpo", "grpo-world", [f"model.base={tiny_world_dir}", f"reward.path={world_lrm}", *QUICK_STEP,
                                                 "loss.kl_beta=0.05"], run_dir=tmp_path / "run")
    row = result.history[-1]
    assert row["kept"] == row["branched"] == 4 * 4  # 4 trajectories × the 4 steps at t >= 801, nothing thresholded
    assert row["ratio"] == pytest.approx(1.0, abs=1e-4) and row["kl"] == pytest.approx(0.0, abs=1e-6)
    assert result.optimizer_steps == 1 and abs(result.final_loss) < 1e-4
    before, after = _unet_state(tiny_world_dir / "unet"), _unet_state(result.model_folder)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    with pytest.raises(LpoError, match="grpo needs loss.clip_epsilon"):
        run_training("grpo", "grpo-world", [f"model.base={tiny_world_dir}", f"reward.path={world_lrm}", *QUICK_STEP,
                                            "loss.clip_epsilon=none"], run_dir=tmp_path / "none")


def test_group_rollout_advantages_and_old_log_probs(tiny_world_dir, world_lrm):
    from lpo.models.components import guided_conditioning, load_components
    from lpo.reward.lrm_io import load_lrm
    from lpo.sampling.ddim import initial_latents
    from lpo.trainers.rollout import StepRolloutSettings
    from lpo.trainers.step_grpo import group_rollout

    c = load_components(tiny_world_dir)
    lrm = load_lrm(world_lrm).eval()
    prompts = ["a red circle", "a blue square", "two green triangles"]
    generator = torch.Generator().manual_seed(0)
    latents = initial_latents(3, c.latent_channels, 8, 8, generator, c.scheduler)
    settings = StepRolloutSettings(num_inference_steps=10, num_candidates=5, min_timestep=501)
    out = group_rollout(c.unet, c.scheduler, guided_conditioning(c, prompts, 5.0), lrm, lrm.encode_text(prompts),
                        latents, settings, generator, prompts)
    groups = out.kept
    assert len(groups) == out.branched == 3 * 5 and groups.candidates.shape == (15, 5, 4, 8, 8)
    torch.testing.assert_close(groups.advantages.mean(dim=1), torch.zeros(15), atol=1e-5, rtol=0)
    assert groups.prompt_index.tolist() == [0, 1, 2] * 5 and set(groups.timesteps.tolist()) == {901, 801, 701, 601, 501}
    # the candidates' log-probs under the policy that drew them, recomputed here
    from lpo.models.conditioning import predict_noise
    from lpo.sampling.ddim import candidate_log_probs, ddim_step_with_logprob

    first = groups.select(torch.arange(3))
    with torch.no_grad():
        pred = predict_noise(c.unet, first.latents_t, first.timesteps, first.row_conditioning())
        step = ddim_step_with_logprob(c.scheduler, pred, first.timesteps, first.latents_t, eta=1.0, noise=torch.zeros_like(pred))
    torch.testing.assert_close(candidate_log_probs(first.candidates, step.mean, step.std), first.old_log_probs,
                               rtol=1e-4, atol=1e-4)


def test_lpo_round_records_kept_pairs_and_log_ratios(tiny_world_dir, world_lrm, tmp_path):
    events = []
    result = run_training("lpo", "lpo-world", [f"model.base={tiny_world_dir}", f"reward.path={world_lrm}", *QUICK_STEP,
                                               "train.max_rounds=2", "train.train_batch_size=4", "run.save_every=1"],
                          run_dir=tmp_path / "run", callbacks=[events.append])
    # the evaluation hook: one event per checkpoint and one for the final model, each loadable
    assert [(e.step, e.final) for e in events] == [(1, False), (2, True)]
    assert events[0].folder == tmp_path / "run" / "checkpoints" / "step-000001"
    # each checkpoint carries what it cost to reach: less than the finished run
    snapshot = read_cost(events[0].folder)
    assert 0 < snapshot["seconds"]["optimisation"] < read_cost(tmp_path / "run")["seconds"]["optimisation"]
    # and the evaluator takes it as a checkpoint of its own, at its own step and cost
    from lpo.evals.checkpoints import resolve_checkpoint

    ckpt = resolve_checkpoint(str(events[0].folder))
    assert ckpt.adapter_path == str((events[0].folder / "model").resolve()) and ckpt.as_dict()["step"] == 1
    assert "steps_trained" not in ckpt.as_dict()
    assert ckpt.training_cost == snapshot and ckpt.method == "lpo" and ckpt.label == "lpo@1"
    final = resolve_checkpoint(str(tmp_path / "run")).as_dict()
    assert final["preset"] == "lpo-world" and final["steps_trained"] == 2 and "step" not in final
    assert ckpt.content_hash != resolve_checkpoint(str(tmp_path / "run")).content_hash
    assert events[1].model_folder == result.model_folder and events[1].label == "lpo" and events[1].kind == "world"
    assert all(_unet_state(e.model_folder) for e in events) and not events[0].lora
    first, second = result.history
    assert first["kept"] == first["branched"] == 4 * 4  # 4 prompts × 4 trained steps, all kept at threshold 0
    assert set(first["kept_by_timestep"]) == {"951", "901", "851", "801"}
    assert first["optimizer_steps"] == 4 and second["optimizer_steps"] == 8  # 16 kept / micro-batches of 4
    assert 0 < second["abs_log_ratio"] < 1 and second["implicit_accuracy"] >= 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]


def test_spo_trains_after_its_skipped_steps_only(tiny_world_dir, world_pixel, tmp_path):
    result = run_training("spo", "spo-world", [f"model.base={tiny_world_dir}", f"reward.path={world_pixel}", *QUICK_STEP,
                                               "sampler.min_timestep=0", "sampler.num_inference_steps=10"],
                          run_dir=tmp_path / "run")
    kept_t = {int(t) for t in result.history[0]["kept_by_timestep"]}
    assert max(kept_t) == 501 and min(kept_t) == 1  # 10 steps: 901 … 1, the first 4 skipped


def test_a_lora_run_writes_a_diffusers_lora_that_reproduces_the_policy(tiny_sd15_dir, tmp_path):
    """Real-mode path on the tiny SD1.5 pipeline: LoRA policy, LRM reward, `load_lora_weights` parity."""
    from diffusers import StableDiffusionPipeline

    from lpo.sampling.generate import build_pipeline
    from lpo.trainers.lora import LORA_WEIGHTS_NAME
    from lpo.models.components import ddim_from_config, load_components

    lrm = _lrm_folder(tiny_sd15_dir, tmp_path / "lrm")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green cat\n")
    overrides = [f"model.base={tiny_sd15_dir}", "model.dtype=fp32", "optim.mixed_precision=no", f"reward.path={lrm}",
                 f"train.prompts={prompts}", *QUICK_STEP, "optim.lr=0.05", "run.save_merged_pipeline=true"]
    result = run_training("lpo", "lpo-sd15", overrides, run_dir=tmp_path / "run")
    assert (result.model_folder / LORA_WEIGHTS_NAME).is_file() and result.label == "lpo"

    def samples(pipe):
        pipe.set_progress_bar_config(disable=True)
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        return pipe(prompt=["a red circle", "a dog"], num_inference_steps=4, guidance_scale=5.0, eta=1.0,
                    generator=gens, output_type="np").images

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = ddim_from_config(pipe.scheduler.config)
    base = samples(pipe)
    pipe.load_lora_weights(result.model_folder)
    trained = samples(pipe)
    assert not np.allclose(trained, base, atol=1e-4)  # the update moved the policy
    # the merged pipeline folder is the same policy, loadable by lpo and by diffusers alone
    merged = load_components(result.pipeline_folder)
    assert np.allclose(samples(build_pipeline(merged)), trained, atol=1e-4)


def test_missing_parts_are_one_line_errors(tiny_world_dir, tmp_path):
    with pytest.raises(LpoError, match="needs a step reward: set reward.path"):
        run_training("lpo", "lpo-world", [f"model.base={tiny_world_dir}"], run_dir=tmp_path / "a")
    with pytest.raises(LpoError, match="needs preference pairs: set data.pairs"):
        run_training("diffusion-dpo", "dpo-world", [f"model.base={tiny_world_dir}"], run_dir=tmp_path / "b")
    with pytest.raises(LpoError, match="reward.path nowhere does not exist"):
        run_training("lpo", "lpo-world", ["reward.path=nowhere"], run_dir=tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")  # refused before a run folder was made
    with pytest.raises(LpoError, match="--resume needs --run-dir"):
        run_training("lpo", "lpo-world", [f"reward.path={tmp_path}"], resume=True)


def test_cli_train_help_dry_run_and_errors():
    from typer.testing import CliRunner

    from lpo.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["train", "--help"]).exit_code == 0
    out = runner.invoke(app, ["train", "--method", "spo", "--preset", "spo-world", "--dry-run", "--set", "loss.beta=20"])
    assert out.exit_code == 0 and json.loads(out.stdout)["loss"]["beta"] == 20.0
    bad = runner.invoke(app, ["train", "--method", "ppo", "--preset", "lpo-world"])
    assert bad.exit_code == 2 and "unknown trainer 'ppo'" in bad.output and "Traceback" not in bad.output
    bad = runner.invoke(app, ["train", "--method", "lpo", "--preset", "lpo-world", "--set", "optim.lr=-1"])
    assert bad.exit_code == 2 and "lr must be a finite number > 0" in bad.output


def test_trackers_get_the_config_and_every_round(tiny_world_dir, world_lrm, tmp_path):
    from accelerate.tracking import GeneralTracker

    class Recorder(GeneralTracker):
        name, requires_logging_directory, main_process_only = "recorder", False, True

        def __init__(self):
            super().__init__()
            self.config, self.rows, self.finished = None, [], False

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.rows.append((step, values))

        def finish(self):
            self.finished = True

    recorder = Recorder()
    run_training("lpo", "lpo-world", [f"model.base={tiny_world_dir}", f"reward.path={world_lrm}", *QUICK_STEP,
                                      "train.max_rounds=2"], run_dir=tmp_path / "run", trackers=[recorder])
    assert recorder.config["loss.beta"] == 50.0 and recorder.config["reward.path"] == str(world_lrm)
    assert [step for step, _ in recorder.rows] == [1, 2] and "loss" in recorder.rows[0][1] and recorder.finished


def test_trackers_resolve_to_installed_ones():
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    from lpo.trainers.harness import resolve_trackers

    assert resolve_trackers(["auto"]) == (["tensorboard"] if is_tensorboard_available() else [])
    assert resolve_trackers(["none"]) == []
    if not is_wandb_available():
        with pytest.raises(LpoError, match="tracker wandb is not installed"):
            resolve_trackers(["wandb"])


def test_sdxl_runs_and_writes_an_sdxl_lora(tiny_sdxl_dir, tmp_path):
    """SDXL conditioning (pooled embeds, time ids) through the rollout, the gather and both losses."""
    from diffusers import StableDiffusionXLPipeline

    from lpo.models.components import ddim_from_config
    from lpo.pairs.format import PreferencePair, save_pairs

    lrm = _lrm_folder(tiny_sdxl_dir, tmp_path / "lrm")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    common = [f"model.base={tiny_sdxl_dir}", "model.dtype=fp32", "model.vae=none", "optim.mixed_precision=no",
              "policy.gradient_checkpointing=false", "optim.lr=0.05"]
    lpo = run_training("lpo", "lpo-sdxl", [*common, f"reward.path={lrm}", f"train.prompts={prompts}", *QUICK_STEP],
                       run_dir=tmp_path / "lpo")
    rng = np.random.default_rng(0)
    pairs = [PreferencePair(f"p{i}", "a red circle", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                            rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), 1.0, "test") for i in range(4)]
    save_pairs(pairs, tmp_path / "pairs.parquet")
    dpo = run_training("diffusion-dpo", "dpo-sdxl", [
        *common, f"data.pairs={tmp_path / 'pairs.parquet'}", "policy.mode=lora", "train.max_steps=1", "train.batch_size=4",
        "optim.gradient_accumulation_steps=1", "optim.warmup_steps=0", "run.save_every=0",  # Adafactor, as the preset
    ], run_dir=tmp_path / "dpo")
    assert math.isfinite(lpo.final_loss) and math.isfinite(dpo.final_loss) and dpo.label == "diffusion-dpo-lora"
    for result in (lpo, dpo):
        pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
        pipe.scheduler = ddim_from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        run = lambda: pipe(prompt=["a red circle"], num_inference_steps=3, generator=torch.Generator().manual_seed(0),  # noqa: E731
                           output_type="np").images
        base = run()
        pipe.load_lora_weights(result.model_folder)
        assert not np.allclose(run(), base, atol=1e-5)


def test_a_run_that_keeps_nothing_fails_without_saving_a_model(tiny_world_dir, world_lrm, tmp_path):
    # a softmax gap can never exceed 1: nothing is kept, no optimiser step; the base weights are not
    # passed off as a trained model
    with pytest.raises(LpoError, match=r"no pairs were kept in 1 round \(0 optimiser steps\).*largest winner-loser gap "
                                       r"was 0\.\d+.*lower sampler.threshold_min and sampler.threshold_max"):
        run_training("lpo", "lpo-world", [f"model.base={tiny_world_dir}", f"reward.path={world_lrm}", *QUICK_STEP,
                                          "train.max_rounds=1", "sampler.threshold_min=0.999",
                                          "sampler.threshold_max=0.999"], run_dir=tmp_path / "run")
    # nothing to resume: the run leaves nothing, and the fixed command runs in the same folder
    assert not (tmp_path / "run").exists()
    fixed = run_training("lpo", "lpo-world", [f"model.base={tiny_world_dir}", f"reward.path={world_lrm}", *QUICK_STEP,
                                              "train.max_rounds=1"], run_dir=tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert fixed.optimizer_steps > 0 and rows[0]["round"] == 1 and rows[0]["kept"] > 0


def test_adamw_8bit_is_refused_in_one_line_off_cuda_or_without_bitsandbytes(monkeypatch):
    import sys

    from lpo.core.errors import LpoError
    from lpo.trainers.config import OptimConfig
    from lpo.trainers.harness import build_optimizer

    config = OptimConfig(optimizer="adamw8bit")
    with pytest.raises(LpoError, match="adamw8bit runs on CUDA devices, but the weights are on cpu; use optim.optimizer=adamw"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], config)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    fake_cuda = type("P", (), {"device": torch.device("cuda"), "dtype": torch.float32})()
    with pytest.raises(LpoError, match=r"needs bitsandbytes: pip install 'lpo\[memory\]'"):
        build_optimizer([fake_cuda], config)


def test_processes_that_each_believe_they_are_alone_are_refused_with_the_launch_that_works(monkeypatch):
    from types import SimpleNamespace

    from lpo.core.errors import LpoError
    from lpo.trainers.harness import _check_world_size

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LpoError, match=r"2 processes were launched \(WORLD_SIZE\) but accelerate sees 1; .*"
                                       r"ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N"):
        _check_world_size(SimpleNamespace(num_processes=1))
    _check_world_size(SimpleNamespace(num_processes=2))  # one group of two: fine


def test_spo_with_inner_steps_trains_on_both_chains_own_transitions(tiny_world_dir, world_pixel, tmp_path):
    """SPO SDXL's recipe on the world: each pair's loser transition is scored from its own x_t."""
    from lpo.models.components import load_components
    from lpo.models.conditioning import predict_noise
    from lpo.sampling.ddim import ddim_step_with_logprob
    from lpo.trainers.jobs import _load_step_reward
    from lpo.trainers.harness import build_policy
    from lpo.trainers.losses import clipped_step_dpo_loss
    from lpo.trainers.step_dpo import SPOTrainer

    assert trainer_preset("spo-sdxl").sampler.inner_steps == 3 and trainer_preset("spo-sd15").sampler.inner_steps == 0
    overrides = [f"model.base={tiny_world_dir}", f"reward.path={world_pixel}", *QUICK_STEP, "sampler.num_candidates=2",
                 "sampler.inner_steps=2", "sampler.min_timestep=851", "sampler.skip_first_steps=0"]
    result = run_training("spo", "spo-world", overrides, run_dir=tmp_path / "run")
    row = result.history[0]
    assert row["keep_rate"] == 1.0 and row["kept"] == 4 * 3  # 4 prompts × (branching + 2 inner steps)
    assert math.isfinite(row["loss"])

    # the loss of a pair whose chains start apart, against the log-probs computed here
    config = resolve_config("spo", "spo-world", overrides)
    components = load_components(tiny_world_dir)
    policy = build_policy(components.unet, config.policy, config.run.seed)
    reward = _load_step_reward(config, "pixel", components, policy)  # on the frozen reference, as lpo train does
    trainer = SPOTrainer(config, components, policy, reward, ["a red circle"] * 4)
    trainer.train()  # a round: the trained policy now differs from its reference
    out = trainer._rollout(1, ["a red circle", "a blue square"])
    kept = out.kept
    inner = torch.nonzero((kept.latents_t != kept.latents_t_l).flatten(1).any(dim=1)).flatten()
    assert len(inner) > 0
    samples = kept.select(inner)
    losses, _ = trainer._loss_fn(components.unet, samples)(torch.arange(len(samples)))
    cond = samples.row_conditioning()
    components.scheduler.set_timesteps(config.sampler.num_inference_steps)

    def log_prob(unet, x_t, sample):
        pred = predict_noise(unet, x_t, samples.timesteps, cond)
        return ddim_step_with_logprob(components.scheduler, pred, samples.timesteps, x_t, eta=config.sampler.eta,
                                      prev_sample=sample).log_prob

    with torch.no_grad():
        with policy.reference() as reference:
            ref_w, ref_l = log_prob(reference, samples.latents_t, samples.latents_w), \
                log_prob(reference, samples.latents_t_l, samples.latents_l)
        pol_w, pol_l = log_prob(components.unet, samples.latents_t, samples.latents_w), \
            log_prob(components.unet, samples.latents_t_l, samples.latents_l)
    expected = clipped_step_dpo_loss(pol_w, pol_l, ref_w, ref_l, config.loss.beta, config.loss.clip_epsilon).losses
    torch.testing.assert_close(losses.detach(), expected, atol=1e-5, rtol=1e-4)
