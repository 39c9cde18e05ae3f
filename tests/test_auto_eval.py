"""lpo.trainers.auto_eval: every checkpoint scored through the evaluation harness, inline during
`lpo train` or by `lpo eval --watch RUN`, with evaluation time counted as evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lpo.core.errors import LpoError
from lpo.core.io import atomic_write_json
from lpo.core.runs import DeviceMeter, RunFolder, read_cost
from lpo.evals.watcher import watch_config, watch_run
from lpo.trainers.auto_eval import FINAL, SD_METRICS, AutoEvalConfig, done_jobs, model_kind, read_state, resolve_plan
from lpo.trainers.jobs import run_training

# Two LPO rounds of 4 trajectories (pairs at the 4 highest t, all kept), a checkpoint after the first.
QUICK_STEP = ["train.max_rounds=2", "sampler.sample_batch_size=4", "train.train_batch_size=64",
              "sampler.threshold_min=0.0", "sampler.threshold_max=0.0", "sampler.min_timestep=801", "run.save_every=1"]
METRICS = ("world_utility", "world_alignment")


def _tiny_eval(tmp_path: Path, **changes) -> AutoEvalConfig:
    values = dict(max_prompts=3, images_per_prompt=1, steps=4, metrics=METRICS, results_dir=tmp_path / "results",
                  cache_dir=tmp_path / "cache", device="cpu")
    return AutoEvalConfig.from_settings(**{**values, **changes})


@pytest.fixture(scope="module")
def world_lrm(tiny_world_dir, tmp_path_factory) -> Path:
    from lpo.reward.lrm import LatentRewardModel, LRMConfig
    from lpo.reward.lrm_io import save_lrm
    from lpo.models.components import load_components

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("rewards") / "lrm"
    save_lrm(LatentRewardModel.from_components(load_components(tiny_world_dir), LRMConfig(vfe_scale=1.0)), out)
    meter = DeviceMeter()
    meter.add("reward_model_training", 12.5)
    atomic_write_json(out / "cost.json", meter.as_dict())
    return out


def _dpo_overrides(world_dir: Path, pairs: Path) -> list[str]:
    return [f"model.base={world_dir}", f"data.pairs={pairs}", "train.max_steps=3", "train.batch_size=4",
            "optim.gradient_accumulation_steps=1", "optim.warmup_steps=0", "run.save_every=1", "policy.mode=lora"]


@pytest.fixture(scope="module")
def dpo_pairs(tmp_path_factory) -> Path:
    from lpo.pairs.format import PreferencePair, save_pairs

    rng = np.random.default_rng(0)
    pairs = [PreferencePair(f"p{i}", ("a red circle", "a blue square")[i % 2],
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                            rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), float(i % 2), "test")
             for i in range(8)]
    path = tmp_path_factory.mktemp("dpo") / "pairs.parquet"
    save_pairs(pairs, path)
    return path


@pytest.fixture(scope="module")
def finished_dpo_run(tiny_world_dir, dpo_pairs, tmp_path_factory) -> Path:
    """A finished Diffusion-DPO run trained without evaluation: checkpoints step-1 and step-2, final model."""
    run_dir = tmp_path_factory.mktemp("dpo-run") / "run"
    run_training("diffusion-dpo", "dpo-world", _dpo_overrides(tiny_world_dir, dpo_pairs), run_dir=run_dir)
    return run_dir


class _Spy:
    """Wraps the harness's run_eval: counts the checkpoints it was asked to evaluate."""

    def __init__(self, monkeypatch, fail: set[str] | None = None, fake: bool = False):
        import types

        import lpo.evals.harness as harness

        self.calls: list[str] = []
        self.fail = fail or set()
        real = harness.run_eval

        def run_eval(config, console=None):
            self.calls.append(Path(config.checkpoint).name)
            if Path(config.checkpoint).name in self.fail:
                raise LpoError("metric weights unreachable (test)")
            if fake:  # only the order of evaluations matters to the test
                return types.SimpleNamespace(eval_id=f"fake-{len(self.calls)}", records=[])
            return real(config, console=console)

        monkeypatch.setattr(harness, "run_eval", run_eval)


# --------------------------------------------------------------------------- plans


def test_defaults_follow_the_base_model(tiny_world_dir, tmp_path):
    assert model_kind(str(tiny_world_dir)) == "world" and model_kind("world") == "world"
    atomic_write_json(tmp_path / "xl" / "model_index.json", {"_class_name": "StableDiffusionXLPipeline"})
    assert model_kind(str(tmp_path / "xl")) == "sdxl"
    assert model_kind("stable-diffusion-v1-5/stable-diffusion-v1-5") == "sd"  # a hub id is not looked up
    world = resolve_plan(AutoEvalConfig(), "world")
    (job,) = world.jobs
    assert (job.benchmark, job.max_prompts, job.images_per_prompt) == ("world", 32, 2)
    assert job.metrics == ("world_alignment", "world_soft_alignment", "world_aesthetic", "world_clip", "world_utility",
                           "world_diversity")
    assert world.config.results_dir == Path("results").resolve()
    (job,) = resolve_plan(AutoEvalConfig(), "sdxl").jobs
    assert (job.benchmark, job.metrics, job.max_prompts, job.images_per_prompt) == ("pickapic", SD_METRICS, None, 1)
    assert SD_METRICS == ("pickscore", "hpsv21", "image_reward", "laion_aesthetic")
    # a benchmark with its own protocol keeps it; explicit values win
    pick, geneval = resolve_plan(AutoEvalConfig(benchmarks=("pickapic", "geneval")), "sd15").jobs
    assert (geneval.metrics, geneval.images_per_prompt) == (("geneval", "clip_diversity"), 4)  # the harness's default
    (job,) = resolve_plan(AutoEvalConfig.from_settings(metrics=("world_utility",), max_prompts=4, images_per_prompt=3), "world").jobs
    assert (job.metrics, job.max_prompts, job.images_per_prompt) == (("world_utility",), 4, 3)


def test_job_keys_change_with_what_changes_records_only(tmp_path):
    base = resolve_plan(_tiny_eval(tmp_path), "world")
    key = base.job_key(base.jobs[0])
    same = resolve_plan(_tiny_eval(tmp_path, device="cuda", batch_size=2, cache_dir=tmp_path / "other"), "world")
    assert same.job_key(same.jobs[0]) == key
    for change in ({"steps": 5}, {"max_prompts": 4}, {"metrics": ("world_utility",)}, {"seed": 1},
                   {"results_dir": tmp_path / "elsewhere"}):
        other = resolve_plan(_tiny_eval(tmp_path, **change), "world")
        assert other.job_key(other.jobs[0]) != key, change


def test_mistakes_fail_before_training(tmp_path):
    with pytest.raises(LpoError, match="unknown benchmark 'pickapik'"):
        resolve_plan(AutoEvalConfig(benchmarks=("pickapik",)), "sd15")
    with pytest.raises(LpoError, match="unknown metric 'pickscor'"):
        resolve_plan(AutoEvalConfig(metrics=("pickscor",)), "sd15")
    with pytest.raises(LpoError, match="world_diversity.*2 or more images"):
        resolve_plan(AutoEvalConfig.from_settings(metrics=("world_diversity",), images_per_prompt=1), "world")
    with pytest.raises(LpoError, match="weights given for metric 'pickscore', which is not evaluated"):
        resolve_plan(AutoEvalConfig(metric_weights={"pickscore": str(tmp_path)}), "world")
    with pytest.raises(LpoError, match="listed twice"):
        AutoEvalConfig(metrics=("world_utility", "world_utility"))
    with pytest.raises(LpoError, match="unknown benchmark"):  # before the run folder exists
        run_training("lpo", "lpo-world", [f"reward.path={tmp_path}", "train.prompts=world:train"],
                     run_dir=tmp_path / "run", auto_eval=AutoEvalConfig(benchmarks=("nope",)))
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- inline


def test_every_checkpoint_is_evaluated_inline_and_counted_as_evaluation(tiny_world_dir, world_lrm, tmp_path):
    from lpo.evals.store import load_records

    run_dir = tmp_path / "run"
    result = run_training("lpo", "lpo-world", [f"model.base={tiny_world_dir}", f"reward.path={world_lrm}", *QUICK_STEP],
                          run_dir=run_dir, auto_eval=_tiny_eval(tmp_path))
    step1 = run_dir / "checkpoints" / "step-000001"
    records = load_records(tmp_path / "results")
    # one record per metric for the checkpoint and for the final model
    assert sorted((r.checkpoint["spec"], r.metric) for r in records) == sorted(
        (str(where), m) for where in (step1, run_dir) for m in METRICS)
    run_name = RunFolder.open(run_dir).read_run()["name"]
    for r in records:  # each links the checkpoint to its training run
        assert (r.method, r.run_id, r.optimised_reward, r.benchmark) == ("lpo", run_name, str(world_lrm), "world")
        assert r.checkpoint["path"] is None and r.n_prompts == 3 and r.n_images == 3 and r.protocol["steps"] == 4
    inter = [r for r in records if r.checkpoint["spec"] == str(step1)]
    final = [r for r in records if r.checkpoint["spec"] == str(run_dir)]
    assert {r.checkpoint["step"] for r in inter} == {1} and {r.checkpoint["label"] for r in inter} == {"lpo@1"}
    assert all("step" not in r.checkpoint for r in final)
    # the training cost of each: the checkpoint's snapshot, and the finished run's training
    snapshot = read_cost(step1)
    assert all(r.training_cost == snapshot for r in inter)
    assert all(r.training_cost["seconds"]["optimisation"] == result.cost["seconds"]["optimisation"] for r in final)

    # evaluation time is evaluation: none before the first checkpoint's snapshot, the
    # checkpoint's evaluation before the final model's record, both in cost.json at the end
    state = read_state(run_dir)
    (key,) = state["jobs"]
    seconds = {name: state["checkpoints"][name]["done"][key]["seconds"] for name in ("step-000001", FINAL)}
    assert "evaluation" not in snapshot["seconds"]
    at_finish = result.cost["seconds"]  # result.json's record: written before the final evaluation
    assert seconds["step-000001"] <= at_finish["evaluation"] <= seconds["step-000001"] + 0.5
    cost = read_cost(run_dir)["seconds"]
    assert cost["optimisation"] == at_finish["optimisation"]
    assert seconds[FINAL] <= cost["evaluation"] - at_finish["evaluation"] <= seconds[FINAL] + 0.5
    assert all(r.training_cost["seconds"]["evaluation"] == at_finish["evaluation"] for r in final)
    assert state["config"]["metrics"] == list(METRICS)


def test_an_inline_evaluation_leaves_every_global_generator_where_it_was():
    import random

    from lpo.trainers.auto_eval import _rng_preserved

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with _rng_preserved():
        torch.rand(5), np.random.rand(5), random.random()
    after = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1]) and after[2] == expected[2]


def test_inline_evaluation_leaves_the_trained_weights_unchanged(tiny_world_dir, dpo_pairs, finished_dpo_run, tmp_path,
                                                                monkeypatch):
    import lpo.evals.harness as harness

    real = harness.run_eval

    def run_eval(config, console=None):  # an evaluation that also draws from every global generator
        import random

        torch.rand(3), np.random.rand(3), random.random()
        return real(config, console=console)

    monkeypatch.setattr(harness, "run_eval", run_eval)
    run_training("diffusion-dpo", "dpo-world", _dpo_overrides(tiny_world_dir, dpo_pairs), run_dir=tmp_path / "run",
                 auto_eval=_tiny_eval(tmp_path, metrics=("world_utility",)))
    assert len(read_state(tmp_path / "run")["checkpoints"]) == 3  # step-1, step-2, final
    from safetensors.torch import load_file

    for name in ("model/pytorch_lora_weights.safetensors", "checkpoints/step-000002/model/pytorch_lora_weights.safetensors"):
        mine, plain = load_file(tmp_path / "run" / name), load_file(finished_dpo_run / name)
        assert mine.keys() == plain.keys() and all(torch.equal(mine[k], plain[k]) for k in mine), name


# --------------------------------------------------------------------------- watching


def _copy_run(run_dir: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, to)
    (to / "auto_eval.json").unlink(missing_ok=True)
    return to


def test_a_watch_evaluates_each_checkpoint_once(finished_dpo_run, tmp_path, monkeypatch):
    from lpo.evals.store import load_records

    run_dir = _copy_run(finished_dpo_run, tmp_path / "run")
    spy = _Spy(monkeypatch, fail={"step-000002"})
    sleeps = []
    summary = watch_run(run_dir, _tiny_eval(tmp_path), interval=0, until_done=True, sleep=sleeps.append)
    assert spy.calls == ["step-000001", "step-000002", "run"] and summary.polls == 1 and not sleeps
    assert [o.name for o in summary.failed] == ["step-000002"]
    records = load_records(tmp_path / "results")
    assert sorted(str(r.checkpoint.get("step", FINAL)) for r in records) == ["1", "1", FINAL, FINAL]
    assert {r.method for r in records} == {"diffusion-dpo"}
    state = read_state(run_dir)
    assert "error" in next(iter(state["checkpoints"]["step-000002"]["failed"].values()))

    # the next watch tries again only what failed; a third finds nothing to do
    spy.calls.clear()
    spy.fail.clear()
    watch_run(run_dir, _tiny_eval(tmp_path), interval=0, until_done=True)
    assert spy.calls == ["step-000002"]
    spy.calls.clear()
    watch_run(run_dir, _tiny_eval(tmp_path), interval=0, until_done=True)
    assert spy.calls == []
    assert len(load_records(tmp_path / "results")) == 6
    state = read_state(run_dir)
    assert all(len(done_jobs(state, name)) == 1 for name in ("step-000001", "step-000002", FINAL))
    assert not state["checkpoints"]["step-000002"]["failed"]
    # the run's cost record is the trainer's: a watcher is another process
    assert "evaluation" not in read_cost(run_dir)["seconds"]


def test_a_watch_waits_for_the_run_to_finish(finished_dpo_run, tmp_path, monkeypatch):
    import shutil

    run_dir = _copy_run(finished_dpo_run, tmp_path / "running")
    (run_dir / "result.json").unlink()
    (run_dir / "checkpoints" / "step-000002" / "cost.json").unlink()  # its snapshot is not written yet
    spy = _Spy(monkeypatch, fake=True)
    polls = []

    def sleep(seconds):  # the run finishes during the second pause
        polls.append(seconds)
        if len(polls) == 2:
            shutil.copy(finished_dpo_run / "result.json", run_dir / "result.json")

    summary = watch_run(run_dir, _tiny_eval(tmp_path), interval=7, until_done=True, sleep=sleep)
    assert polls == [7, 7] and summary.polls == 3
    assert spy.calls == ["step-000001", "step-000002", "running"]


def test_a_watch_starts_from_the_config_the_run_recorded(finished_dpo_run, tmp_path):
    from lpo.trainers.auto_eval import record_config

    run_dir = tmp_path / "run"
    RunFolder.create({"model": {"base": "world"}}, folder=run_dir)
    assert watch_config(run_dir, {}) == AutoEvalConfig()
    record_config(run_dir, _tiny_eval(tmp_path))
    assert watch_config(run_dir, {"max_prompts": 5}) == _tiny_eval(tmp_path, max_prompts=5)
    assert watch_config(run_dir, {"steps": 3}).protocol.steps == 3  # a protocol option lands in the protocol
    # a run recorded before the protocol object kept its fields flat: it still loads
    flat = {k: v for k, v in _tiny_eval(tmp_path).as_dict().items() if k != "protocol"}
    flat.update(images_per_prompt=1, steps=4, guidance_scale=None, seed=42, resolution=None, dtype="fp32", batch_size=8)
    assert AutoEvalConfig.from_dict(flat) == _tiny_eval(tmp_path)


def test_job_keys_are_those_of_jobs_recorded_before_the_protocol_object():
    """A job done is never run again: its key (values computed by the code before the protocol
    object moved into the config) must not move, or every recorded evaluation reruns."""
    default = resolve_plan(AutoEvalConfig(results_dir=Path("/r")), "world")  # the key holds the results folder
    assert [default.job_key(j) for j in default.jobs] == ["a63e687e41e7"]
    custom = resolve_plan(AutoEvalConfig.from_settings(
        max_prompts=3, images_per_prompt=1, steps=4, metrics=("world_utility",), results_dir=Path("/r"),
        guidance_scale=3.0, seed=7, dtype="fp16"), "world")
    assert [custom.job_key(j) for j in custom.jobs] == ["e407a95c40ce"]


# --------------------------------------------------------------------------- command line


def test_cli_train_evaluates_and_eval_watch_finds_it_done(tiny_world_dir, world_lrm, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lpo.cli import app
    from lpo.evals.store import load_records

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    run_dir = tmp_path / "run"
    train = ["train", "--method", "lpo", "--preset", "lpo-world", "--run-dir", str(run_dir),
             "--set", f"model.base={tiny_world_dir}", "--set", f"reward.path={world_lrm}",
             *[arg for o in QUICK_STEP for arg in ("--set", o)], "--set", "train.max_rounds=1", "--set", "run.save_every=0"]
    refused = runner.invoke(app, [*train, "--no-eval", "--eval-metric", "world_utility"])
    assert refused.exit_code == 2 and "no effect with --no-eval" in refused.output and not run_dir.exists()
    out = runner.invoke(app, [*train, "--eval-max-prompts", "2", "--eval-images-per-prompt", "1",
                              "--eval-metric", "world_utility", "--results-dir", "scores"])
    assert out.exit_code == 0, out.output
    assert "evaluating every checkpoint: world (2 prompts × 1: world_utility)" in out.output
    (record,) = load_records(tmp_path / "scores")  # the final model (no intermediate checkpoint)
    assert record.checkpoint["spec"] == str(run_dir) and record.protocol["steps"] == 20
    # a watcher starts from the recorded config: everything is done already
    spy = _Spy(monkeypatch)
    watch = runner.invoke(app, ["eval", "--watch", str(run_dir), "--until-done", "--interval", "0"])
    assert watch.exit_code == 0, watch.output
    assert "evaluated 0 checkpoint(s)" in watch.output and spy.calls == []
    # options given here change the plan (and so what counts as done)
    plan = runner.invoke(app, ["eval", "--watch", str(run_dir), "--max-prompts", "3", "--dry-run"])
    assert plan.exit_code == 0, plan.output
    (job,) = json.loads(plan.output)["jobs"].values()
    assert (job["benchmark"], job["metrics"], job["max_prompts"], job["images_per_prompt"]) == \
        ("world", ["world_utility"], 3, 1)
    assert job["results_dir"] == str((tmp_path / "scores").resolve())
    bad = runner.invoke(app, ["eval", "world", "--watch", str(run_dir)])
    assert bad.exit_code == 2 and "drop a CHECKPOINT" in bad.output
