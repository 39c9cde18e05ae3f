"""Step-level training on flow-matching models (SD3-style): the SDE step kernel against independent
references, the flow rollout with the MMDiT LRM, and LPO / GRPO runs on a tiny random SD3
pipeline whose LoRA plain diffusers reloads."""

from __future__ import annotations

import json
from dataclasses import replace
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lpo.core.errors import LpoError
from lpo.core.io import atomic_write_json
from lpo.core.runs import DeviceMeter
from lpo.sampling.flow import flow_sde_step_with_logprob
from lpo.sampling.step_kernels import DDIMKernel, FlowSDEKernel, policy_conditioning
from lpo.trainers.jobs import run_training
from lpo.trainers.rollout import StepRolloutSettings, step_rollout

from tiny_flow_models import T5_LENGTH, tiny_sd3_pipeline

PROMPTS = ["a red circle", "a blue square", "a green cat"]
# One round of 3 trajectories of 4 steps, pairs at t >= 801 (the first two flow steps), all kept.
FLOW_STEP = ["train.max_rounds=1", "sampler.sample_batch_size=3", "train.train_batch_size=64", "sampler.num_inference_steps=4",
             "sampler.threshold_min=0.0", "sampler.threshold_max=0.0", "sampler.min_timestep=801", "run.save_every=0",
             "model.dtype=fp32", "optim.mixed_precision=no", "policy.gradient_checkpointing=false", "policy.lora_rank=4",
             "optim.lr=0.05"]


def _sd3_images(folder: Path, lora: Path | None = None) -> np.ndarray:
    """Two images drawn by plain diffusers from the SD3 pipeline in ``folder`` (with ``lora`` loaded)."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(lora)
    return pipe(prompt=["a red circle", "a dog"], num_inference_steps=4, guidance_scale=4.5, max_sequence_length=T5_LENGTH,
                generator=[torch.Generator().manual_seed(s) for s in (1, 2)], output_type="np").images


def _flow_scheduler(steps: int = 6):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory) -> Path:
    return tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3") / "pipe")


@pytest.fixture(scope="module")
def mmdit_lrm(sd3_dir, tmp_path_factory) -> Path:
    from lpo.models.flow_components import load_flow_components
    from lpo.reward.lrm_mmdit import MMDiTLatentRewardModel, MMDiTLRMConfig
    from lpo.reward.lrm_mmdit_io import save_mmdit_lrm

    torch.manual_seed(0)
    lrm = MMDiTLatentRewardModel.from_components(load_flow_components(sd3_dir),
                                                 MMDiTLRMConfig(num_blocks=1, max_sequence_length=T5_LENGTH, vfe_scale=1.0))
    out = save_mmdit_lrm(lrm, tmp_path_factory.mktemp("rewards") / "lrm")
    meter = DeviceMeter()
    meter.add("reward_model_training", 4.0)
    atomic_write_json(out / "cost.json", meter.as_dict())
    return out


# --------------------------------------------------------------------------- the kernels


def test_the_flow_kernel_is_the_sde_step_and_its_log_prob_the_gaussian_density():
    kernel = FlowSDEKernel(_flow_scheduler(), noise_level=0.7)
    timesteps = kernel.set_schedule(6)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 8, 8, generator=gen)
    velocity = torch.randn(3, 4, 8, 8, generator=gen)
    t = timesteps[[0, 2, 5]]
    mean, std = kernel.gaussian(velocity, t, latents)
    # the SDE mean and std written out independently (Flow-GRPO's form; σ = t / 1000 here, shift applied)
    sigmas = torch.cat([kernel.scheduler.sigmas[[0, 2, 5]]])
    sigmas_next = kernel.scheduler.sigmas[[1, 3, 6]]
    s, s_next = sigmas.view(-1, 1, 1, 1), sigmas_next.view(-1, 1, 1, 1)
    ds = s_next - s
    g = 0.7 * torch.sqrt(s / (1 - torch.where(s >= 1, kernel.scheduler.sigmas[1], s)))
    expected = latents * (1 + g**2 / (2 * s) * ds) + velocity * (1 + g**2 * (1 - s) / (2 * s)) * ds
    torch.testing.assert_close(mean, expected)
    torch.testing.assert_close(std, g * torch.sqrt(-ds))
    prev = mean + std * torch.randn(3, 4, 8, 8, generator=gen)
    density = torch.distributions.Normal(mean.double(), std.double()).log_prob(prev.double()).mean(dim=(1, 2, 3))
    torch.testing.assert_close(kernel.log_prob(velocity, t, latents, prev).double(), density, rtol=1e-5, atol=1e-5)
    # the kernel's Euler limit: noise level -> 0 gives the scheduler's own step
    euler = kernel.scheduler.step(velocity[:1], timesteps[2], latents[:1]).prev_sample
    near_ode = flow_sde_step_with_logprob(kernel.scheduler, velocity[:1], timesteps[2], latents[:1], noise_level=1e-6,
                                          noise=torch.zeros_like(latents[:1])).mean
    torch.testing.assert_close(near_ode, euler, rtol=1e-4, atol=1e-5)


def test_flow_thresholds_rise_with_the_step_std_and_reward_timesteps_follow_the_schedule():
    kernel = FlowSDEKernel(_flow_scheduler())
    stds = kernel.step_stds(6)
    thresholds = kernel.thresholds(6, 0.2, 0.6)
    assert thresholds.shape == (6,)
    assert float(thresholds[int(stds.argmax())]) == pytest.approx(0.6) and float(thresholds[int(stds.argmin())]) == pytest.approx(0.2)
    order = stds.argsort()
    assert bool((thresholds[order].diff() >= 0).all())  # monotone in the std
    assert bool((kernel.thresholds(6, 0.3, 0.3) == 0.3).all())
    timesteps = kernel.set_schedule(6)
    assert kernel.reward_timestep(timesteps, 1, "current") == pytest.approx(float(timesteps[1]))
    assert kernel.reward_timestep(timesteps, 1, "prev") == pytest.approx(float(timesteps[2]))
    assert kernel.reward_timestep(timesteps, 5, "prev") == 0.0 and kernel.reward_timestep(timesteps, 1, "zero") == 0.0
    with pytest.raises(ValueError, match="noise_level must be > 0"):
        FlowSDEKernel(_flow_scheduler(), noise_level=0.0)
    from diffusers import FlowMatchEulerDiscreteScheduler

    with pytest.raises(ValueError, match="use_dynamic_shifting"):
        FlowSDEKernel(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    # flow states stay float32 under a bf16 transformer: the last steps' std is below bf16's spacing
    assert kernel.state_dtype(torch.bfloat16) == torch.float32 and float(kernel.step_stds(20)[-1]) < 0.01
    from diffusers import DDIMScheduler

    assert DDIMKernel(DDIMScheduler()).state_dtype(torch.float16) == torch.float16


def test_the_ddim_kernel_is_the_ddim_step(tiny_world_dir):
    from lpo.models.components import load_components
    from lpo.sampling.ddim import ddim_step_with_logprob, ddim_timesteps, sigma_schedule
    from lpo.trainers.rollout import step_thresholds

    scheduler = load_components(tiny_world_dir).scheduler
    kernel = DDIMKernel(scheduler, eta=1.0)
    timesteps = kernel.set_schedule(10)
    torch.testing.assert_close(timesteps, ddim_timesteps(scheduler, 10))
    torch.testing.assert_close(kernel.thresholds(10, 0.35, 0.5), step_thresholds(scheduler, 10, 0.35, 0.5))
    assert bool((kernel.thresholds(10, 0.35, 0.5).argsort() == sigma_schedule(scheduler, 10).argsort()).all())
    gen = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = timesteps[[1, 4]]
    mean, std = kernel.gaussian(eps, t, x)
    prev = mean + std * torch.randn(2, 4, 8, 8, generator=gen)
    step = ddim_step_with_logprob(scheduler, eps, t, x, eta=1.0, prev_sample=prev)
    torch.testing.assert_close(mean, step.mean)
    torch.testing.assert_close(kernel.log_prob(eps, t, x, prev), step.log_prob)
    assert kernel.reward_timestep(timesteps, 1, "prev") == int(timesteps[1]) - 100


# --------------------------------------------------------------------------- the rollout


def test_the_flow_rollout_keeps_the_lrm_winner_at_the_schedule_timesteps(sd3_dir, mmdit_lrm):
    from lpo.models.flow_components import load_flow_components
    from lpo.reward.lrm_mmdit_io import load_mmdit_lrm

    components = load_flow_components(sd3_dir)
    lrm = load_mmdit_lrm(mmdit_lrm, components)
    kernel = FlowSDEKernel(components.scheduler, 0.7)
    settings = StepRolloutSettings(num_inference_steps=4, num_candidates=3, threshold_min=0.0, threshold_max=0.0,
                                   min_timestep=500)
    conditioning = policy_conditioning(components, PROMPTS, 4.5)

    def roll(seed: int):
        gen = torch.Generator().manual_seed(seed)
        latents = torch.randn(3, 4, 8, 8, generator=gen)
        return step_rollout(components.transformer, kernel, conditioning, lrm, lrm.encode_text(PROMPTS), latents,
                            settings, gen, PROMPTS)

    out = roll(0)
    schedule = kernel.set_schedule(4)
    trained = schedule[schedule >= 500]
    assert out.branched == 3 * len(trained) and len(out.kept) > 0
    assert out.kept.timesteps.dtype == torch.float32
    assert set(out.kept.timesteps.tolist()) <= set(trained.tolist())
    # the stored winner is the candidate the LRM scored highest (told the current t)
    with torch.no_grad():
        rescored = lrm(out.kept.latents_w, out.kept.timesteps, [PROMPTS[i] for i in out.kept.prompt_index.tolist()])
    torch.testing.assert_close(rescored, out.kept.scores_w, rtol=1e-4, atol=1e-4)
    again = roll(0)
    torch.testing.assert_close(again.kept.latents_w, out.kept.latents_w)
    assert not torch.equal(roll(1).kept.latents_w, out.kept.latents_w)


# --------------------------------------------------------------------------- whole runs


def test_lpo_and_grpo_train_a_tiny_sd3_lora_that_plain_diffusers_reloads(sd3_dir, mmdit_lrm, tmp_path):
    from lpo.trainers.lora import LORA_WEIGHTS_NAME

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = [f"model.base={sd3_dir}", f"reward.path={mmdit_lrm}", f"train.prompts={prompts}", *FLOW_STEP]
    lpo = run_training("lpo", "lpo-sd3", [*common, "run.save_merged_pipeline=true"], run_dir=tmp_path / "lpo")
    grpo = run_training("grpo", "grpo-sd3", common, run_dir=tmp_path / "grpo")
    assert math.isfinite(lpo.final_loss) and math.isfinite(grpo.final_loss)
    base = _sd3_images(sd3_dir)
    for result in (lpo, grpo):
        assert (result.model_folder / LORA_WEIGHTS_NAME).is_file()
        assert not np.allclose(_sd3_images(sd3_dir, result.model_folder), base, atol=1e-5)  # the update moved the transformer
    # the merged pipeline is the LoRA'd policy, loadable by diffusers alone
    assert np.allclose(_sd3_images(lpo.pipeline_folder), _sd3_images(sd3_dir, lpo.model_folder), atol=1e-4)


@pytest.fixture(scope="module")
def flow_pixel(sd3_dir, tmp_path_factory) -> Path:
    from lpo.models.flow_components import load_flow_components
    from lpo.reward.pixel import PixelStepReward
    from lpo.reward.pixel_io import save_pixel_reward
    from lpo.reward.pixel_scorer import world_pixel_scorer

    torch.manual_seed(0)
    components = load_flow_components(sd3_dir)  # its own copy: the reward freezes the transformer it is given
    out = save_pixel_reward(PixelStepReward.from_components(components, world_pixel_scorer(components.tokenizer)),
                            tmp_path_factory.mktemp("rewards") / "pixel")
    meter = DeviceMeter()
    meter.add("reward_model_training", 2.0)
    atomic_write_json(out / "cost.json", meter.as_dict())
    return out


def test_the_pixel_reward_on_a_flow_model_decodes_the_velocitys_x0(sd3_dir, flow_pixel):
    from lpo.models.flow_components import flow_guided_conditioning, load_flow_components, predict_velocity
    from lpo.reward.pixel_io import load_pixel_reward

    components = load_flow_components(sd3_dir)
    reward = load_pixel_reward(flow_pixel, components)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    timesteps = torch.tensor([960.129, 250.0])
    cond, uncond = flow_guided_conditioning(components, PROMPTS[:2], 5.0)
    with torch.no_grad():
        velocity = predict_velocity(components.transformer, latents, timesteps, cond, uncond, 5.0)
        x0 = reward.predict_x0(latents, timesteps, PROMPTS[:2])
        scores = reward(latents, timesteps, PROMPTS[:2])
    torch.testing.assert_close(x0, latents - (timesteps / 1000).view(-1, 1, 1, 1) * velocity, rtol=1e-4, atol=1e-5)
    assert scores.shape == (2,) and bool(torch.isfinite(scores).all())
    # the scorer is told the integer t its embedding knows: 960.129 scores as 960
    images = reward.decode_x0(x0)
    torch.testing.assert_close(reward.score_images(images, timesteps, reward.encode_text(PROMPTS[:2])),
                               reward.score_images(images, torch.tensor([960, 250]), reward.encode_text(PROMPTS[:2])))


def test_spo_with_inner_steps_trains_a_tiny_sd3_lora(sd3_dir, flow_pixel, tmp_path):

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    spo = run_training("spo", "spo-sd3", [f"model.base={sd3_dir}", f"reward.path={flow_pixel}", f"train.prompts={prompts}",
                                          *FLOW_STEP, "sampler.skip_first_steps=0", "sampler.inner_steps=1"],
                       run_dir=tmp_path / "spo")
    assert math.isfinite(spo.final_loss)
    history = [json.loads(line) for line in (tmp_path / "spo" / "metrics.jsonl").read_text().splitlines()]
    rounds = [row for row in history if "kept_by_timestep" in row]
    assert rounds and rounds[0]["kept"] == 2 * rounds[0]["branched"]  # each branching gives inner_steps + 1 pairs
    assert not np.allclose(_sd3_images(sd3_dir, spo.model_folder), _sd3_images(sd3_dir), atol=1e-5)


def test_a_flow_run_is_evaluated_inline_with_the_flow_sampler(sd3_dir, mmdit_lrm, tmp_path):
    """Auto-eval of a flow run: the protocol's sampler is the pipeline's Euler ODE, recorded as flow-euler,
    and the final model's images are those of its LoRA on the base pipeline."""
    from lpo.evals.store import load_records
    from lpo.trainers.auto_eval import AutoEvalConfig
    from lpo.evals.protocol import EvalProtocol

    from metric_fixtures import tiny_clip_folder

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    clip = tiny_clip_folder(tmp_path / "clip")
    auto = AutoEvalConfig(benchmarks=("prompts-file",), prompts={"prompts-file": str(prompts)}, metrics=("clip_score",),
                          metric_weights={"clip_score": str(clip)}, metric_processors={"clip_score": str(clip)},
                          protocol=EvalProtocol(steps=3, images_per_prompt=1, batch_size=4),
                          results_dir=tmp_path / "results", cache_dir=tmp_path / "cache")
    run_training("lpo", "lpo-sd3", [f"model.base={sd3_dir}", f"reward.path={mmdit_lrm}", f"train.prompts={prompts}",
                                    *FLOW_STEP], run_dir=tmp_path / "run", auto_eval=auto)
    records = load_records(tmp_path / "results")
    assert records and {r.protocol["sampler"] for r in records} == {"flow-euler"}
    assert {r.protocol["eta"] for r in records} == {0.0} and all(math.isfinite(r.value) for r in records)


def test_what_flow_models_do_not_train_yet_is_a_one_line_error(sd3_dir, mmdit_lrm, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    common = [f"model.base={sd3_dir}", f"train.prompts={prompts}", *FLOW_STEP]
    with pytest.raises(LpoError, match="is not an MMDiT LRM"):
        run_training("lpo", "lpo-sd3", [*common, f"reward.path={tmp_path}"], run_dir=tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()  # nothing half-written


def test_lpo_lrm_train_builds_and_evaluates_a_pixel_reward_on_a_flow_pipeline(sd3_dir, tmp_path):
    """The CLI path of SPO's step model on SD3: noised on the flow path, x̂0 from the velocity, saved and reloaded."""
    from lpo.pairs.format import PreferencePair, save_pairs
    from lpo.reward.jobs import eval_reward_job, train_reward_job
    from lpo.reward.pixel_io import load_pixel_reward

    from metric_fixtures import tiny_clip_folder

    clip = tiny_clip_folder(tmp_path / "clip")
    rng = np.random.default_rng(2)
    pairs = [PreferencePair(f"p{i}", PROMPTS[i % 3], rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                            rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), float(i % 2), "test") for i in range(8)]
    save_pairs(pairs, tmp_path / "pairs.parquet")
    overrides = ["max_steps=2", "batch_size=4", "warmup_steps=0", "mixed_precision=no", "save_every=0", "eval_every=0",
                 f"pixel_scorer={clip}", f"pixel_scorer_processor={clip}"]
    train_reward_job(str(sd3_dir), str(tmp_path / "pairs.parquet"), "spo-pixel-sd15", overrides, run_dir=tmp_path / "run")
    folder = tmp_path / "run" / "model"
    from lpo.models.flow_components import load_flow_components

    reward = load_pixel_reward(folder, load_flow_components(sd3_dir))
    assert reward.kind == "sd3"
    result = eval_reward_job(str(sd3_dir), str(tmp_path / "pairs.parquet"), tmp_path / "eval", pixel_dir=folder)
    assert set(result["accuracy"]) == {"SPO pixel model on x̂0"}


def test_the_protocol_sampler_is_the_checkpoints_family(sd3_dir, tiny_world_dir):
    from lpo.evals.checkpoints import resolve_checkpoint
    from lpo.evals.protocol import EvalProtocol, resolve_protocol

    flow, unet = resolve_checkpoint(str(sd3_dir)), resolve_checkpoint(str(tiny_world_dir))
    assert (flow.sampler, unet.sampler) == ("flow-euler", "ddim")
    protocol, sources = resolve_protocol(EvalProtocol(eta=1.0), checkpoint=flow)
    assert (protocol.sampler, protocol.eta, sources["sampler"]) == ("flow-euler", 0.0, "checkpoint")
    assert protocol.pixel_hash() != resolve_protocol(EvalProtocol(eta=1.0), checkpoint=unet)[0].pixel_hash()
    assert resolve_protocol(EvalProtocol(eta=1.0), checkpoint=unet)[0] == replace(EvalProtocol(eta=1.0), guidance_scale=5.0,
                                                                                   images_per_prompt=4)
    with pytest.raises(LpoError, match="samples with ddim, not flow-euler"):
        resolve_protocol(EvalProtocol(sampler="flow-euler"), checkpoint=unet)


def test_diffusion_dpo_trains_a_tiny_sd3_lora_on_the_flow_path(sd3_dir, tmp_path):
    """Diffusion-DPO on a flow model: σ = t / T on the flow path, the velocity as the target."""

    from lpo.pairs.format import PreferencePair, save_pairs

    rng = np.random.default_rng(0)
    pairs = [PreferencePair(f"p{i}", PROMPTS[i % 3], rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                            rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), 1.0, "test") for i in range(4)]
    save_pairs(pairs, tmp_path / "pairs.parquet")
    dpo = run_training("diffusion-dpo", "dpo-sd15", [
        f"model.base={sd3_dir}", f"data.pairs={tmp_path / 'pairs.parquet'}", "policy.mode=lora", "train.max_steps=1",
        "train.batch_size=4", "optim.gradient_accumulation_steps=1", "optim.warmup_steps=0", "run.save_every=0",
        "optim.mixed_precision=no", "optim.lr=0.05"], run_dir=tmp_path / "dpo")
    assert math.isfinite(dpo.final_loss) and dpo.label == "diffusion-dpo-lora"
    history = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at the first step
    assert not np.allclose(_sd3_images(sd3_dir, dpo.model_folder), _sd3_images(sd3_dir), atol=1e-5)


def test_the_flow_dpo_draw_is_the_flow_path_and_the_velocity(sd3_dir):
    """_encode on a flow model: x_t = (1 − σ)·x0 + σ·ε with σ = t / T, target ε − x0 (winners first)."""
    from types import SimpleNamespace

    from lpo.models.flow_components import load_flow_components
    from lpo.pairs.format import PreferencePair
    from lpo.trainers.diffusion_dpo import DiffusionDPOTrainer, DPOBatch

    components = load_flow_components(sd3_dir)
    rng = np.random.default_rng(1)
    pair = PreferencePair("p", "a cat", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                          rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), 1.0, "test")
    from lpo.trainers.presets import trainer_preset

    stub = SimpleNamespace(components=components, pairs=[pair], resolution=components.default_resolution,
                           config=trainer_preset("dpo-sd15"), accelerator=SimpleNamespace(device=torch.device("cpu")),
                           num_train_timesteps=1000)
    shape = (components.latent_channels, 8, 8)
    draws = DPOBatch(torch.tensor([0]), torch.zeros(1, 2, dtype=torch.bool), torch.zeros(1, dtype=torch.bool),
                     torch.zeros(1, 2, *shape), torch.tensor([250]), torch.randn(1, *shape, generator=torch.Generator().manual_seed(0)))
    x_t, conditioning, timesteps, target = DiffusionDPOTrainer._encode(stub, draws, torch.tensor([0]))
    assert timesteps.tolist() == [250.0, 250.0] and conditioning.prompt_embeds.shape[0] == 2
    x0 = -(target[0] - draws.noise[0])  # target = ε − x0 per image
    torch.testing.assert_close(x_t, 0.75 * x0 + 0.25 * draws.noise[0].expand_as(x0))
