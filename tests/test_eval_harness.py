"""The evaluation harness: generate once with fixed seeds, cache, score, summarise, resume."""

from __future__ import annotations

from dataclasses import replace

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lpo.evals.harness as harness
from lpo.core.errors import LpoError
from lpo.evals.benchmarks import BENCHMARKS, PromptSet, prompt_hash
from lpo.evals.harness import EvalConfig, EvalProtocol, run_eval
from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.store import load_records, records_path
from lpo.sampling.generate import image_seed


def _config(checkpoint, tmp_path: Path, **kwargs) -> EvalConfig:
    protocol = kwargs.pop("protocol", EvalProtocol(steps=3, images_per_prompt=2, batch_size=4))
    return EvalConfig(
        checkpoint=str(checkpoint),
        protocol=protocol,
        cache_dir=tmp_path / "cache",
        results_dir=tmp_path / "results",
        **kwargs,
    )


@pytest.fixture
def count_generate(monkeypatch):
    """Counts the harness's calls to generate_images (and the images asked for)."""
    calls = {"calls": 0, "images": 0}
    real = harness.generate_images

    def counting(pipeline, prompts, seeds, **kwargs):
        calls["calls"] += 1
        calls["images"] += len(prompts)
        return real(pipeline, prompts, seeds, **kwargs)

    monkeypatch.setattr(harness, "generate_images", counting)
    return calls


# --------------------------------------------------------------------------- world


@pytest.mark.parametrize("source", ["noise", "shuffled"])
def test_world_records_match_lpo_world_eval(tmp_path, source):
    """The harness's world metrics, per category, equal the older `lpo world eval` path."""
    from lpo.world.benchmark import NoiseSource, ShuffledSource, WorldEvalProtocol, evaluate_source, world_prompts

    protocol = WorldEvalProtocol(max_prompts=12, images_per_prompt=2)
    old_source = NoiseSource() if source == "noise" else ShuffledSource([s.text() for s in world_prompts(protocol)])
    old = evaluate_source(old_source, protocol)
    out = run_eval(_config(source, tmp_path, max_prompts=12))
    assert out.prompt_set.hash == old.prompt_set_hash
    by_metric = {r.metric: r for r in out.records}
    # the five judges, plus the diversity measure reported beside them (2 images per prompt)
    assert set(by_metric) == {f"world_{k}" for k in ("alignment", "soft_alignment", "aesthetic", "clip", "utility", "diversity")}
    for key in ("alignment", "soft_alignment", "aesthetic", "clip", "utility"):
        record = by_metric[f"world_{key}"]
        assert [b["category"] for b in record.breakdown] == list(old.categories)
        for entry in record.breakdown:
            category = old.categories[entry["category"]]
            assert entry["value"] == pytest.approx(category.mean[key], abs=1e-6)
            assert entry["n_prompts"] == category.n_prompts and entry["n_images"] == category.n_images
        # two prompts per category: the overall mean over prompts is the mean of the categories
        assert record.value == pytest.approx(old.overall[key], abs=1e-6)


def test_shuffled_reference_images_are_keyed_by_their_prompt_set(tmp_path):
    """"shuffled" draws from the other prompts, so a smaller set must not reuse its images."""
    small = run_eval(_config("shuffled", tmp_path, max_prompts=6, metrics=("world_clip",)))
    large = run_eval(_config("shuffled", tmp_path, max_prompts=12, metrics=("world_clip",)))
    assert small.checkpoint.content_hash != large.checkpoint.content_hash and large.images_cached == 0


def test_record_statistics_follow_the_per_image_scores(tmp_path):
    """value / stderr / ci95 recomputed independently from the stored per-image scores."""
    out = run_eval(_config("noise", tmp_path, max_prompts=6, metrics=("world_aesthetic",)))
    record = out.records[0]
    side = tmp_path / "results" / record.per_prompt
    data = json.loads(side.read_text())
    import hashlib

    assert hashlib.sha256(side.read_bytes()).hexdigest() == record.per_prompt_sha256
    grid = np.array(data["scores"][record.metric_key])  # (prompts, images)
    assert grid.shape == (6, 2)
    per_prompt = grid.mean(axis=1)
    se = per_prompt.std(ddof=1) / math.sqrt(6)
    assert record.value == pytest.approx(per_prompt.mean())
    assert record.stderr == pytest.approx(se)
    assert record.ci95 == pytest.approx((per_prompt.mean() - 1.96 * se, per_prompt.mean() + 1.96 * se))
    assert (record.n_prompts, record.n_images) == (6, 12)
    assert data["seeds"][0] == [image_seed(42, data["prompts"][0], k) for k in range(2)]
    assert record.protocol["images_per_prompt"] == 2 and record.protocol["image_size"] == [32, 32]
    assert record.environment["versions"]["torch"] == torch.__version__
    assert record.eval_cost["seconds"]["evaluation"] > 0


def test_second_run_with_another_metric_generates_nothing(tmp_path, tiny_world_dir, count_generate):
    first = run_eval(_config(tiny_world_dir, tmp_path, max_prompts=6, metrics=("world_alignment",)))
    assert (first.images_generated, first.images_cached) == (12, 0)
    assert count_generate["images"] == 12
    count_generate.update(calls=0, images=0)

    second = run_eval(_config(tiny_world_dir, tmp_path, max_prompts=6, metrics=("world_alignment", "world_utility")))
    assert count_generate["calls"] == 0 and (second.images_generated, second.images_cached) == (0, 12)
    assert second.records[0].value == first.records[0].value
    assert second.scores["world_alignment@1.2"] == first.scores["world_alignment@1.2"]
    assert [r.record_id for r in second.repeated] == [first.records[0].record_id]  # not stored twice

    # More images per prompt: only the new index is generated; a new CFG is a new protocol.
    third = run_eval(_config(tiny_world_dir, tmp_path, max_prompts=6, metrics=("world_alignment",),
                             protocol=EvalProtocol(steps=3, images_per_prompt=3, batch_size=4)))
    assert count_generate["images"] == 6 and third.images_cached == 12
    assert [row[:2] for row in third.scores["world_alignment@1.2"]] == first.scores["world_alignment@1.2"]
    count_generate.update(calls=0, images=0)
    fourth = run_eval(_config(tiny_world_dir, tmp_path, max_prompts=6, metrics=("world_alignment",),
                              protocol=EvalProtocol(steps=3, images_per_prompt=2, guidance_scale=2.0, batch_size=4)))
    assert count_generate["images"] == 12 and fourth.image_folder != first.image_folder
    assert len(load_records(tmp_path / "results")) == 1 + 1 + 1 + 1


def test_a_repeated_evaluation_adds_no_records(tmp_path, tiny_world_dir):
    """The same checkpoint, protocol and metrics again (e.g. rerun after a kill between the
    store's write and the report): the store keeps one record each and no orphan per-prompt file."""
    config = _config(tiny_world_dir, tmp_path, max_prompts=3, metrics=("world_alignment", "world_clip"))
    first = run_eval(config)
    again = run_eval(replace(config, label="same model, another label"))
    stored = load_records(tmp_path / "results")
    assert len(stored) == 2 and not again.written
    assert [r.record_id for r in again.records] == [r.record_id for r in first.records] == [r.record_id for r in stored]
    assert len(list((tmp_path / "results" / "world" / "per-prompt").glob("*.json"))) == 1


def test_cached_images_equal_fresh_ones(tmp_path, tiny_world_dir):
    """PNG round trip is lossless and image k of a prompt does not depend on the batch."""
    from lpo.sampling.generate import generate_images, load_pipeline

    out = run_eval(_config(tiny_world_dir, tmp_path, max_prompts=3, metrics=("world_clip",)))
    pipe, _ = load_pipeline(str(tiny_world_dir), device="cpu")
    prompt = out.prompt_set.prompts[1]
    fresh = generate_images(pipe, [prompt], [image_seed(42, prompt, 1)], num_inference_steps=3)[0]
    from PIL import Image

    cached = np.asarray(Image.open(out.image_folder / prompt_hash(prompt) / "0001.png"))
    assert np.abs(cached.astype(int) - fresh.astype(int)).max() <= 1


def test_interrupted_generation_leaves_no_records_and_resumes(tmp_path, tiny_world_dir, monkeypatch):
    real = harness.generate_images
    calls = {"n": 0}

    def failing(pipeline, prompts, seeds, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user pressing Ctrl-C mid-run
        return real(pipeline, prompts, seeds, **kwargs)

    monkeypatch.setattr(harness, "generate_images", failing)
    config = _config(tiny_world_dir, tmp_path, max_prompts=6, metrics=("world_alignment",))
    with pytest.raises(KeyboardInterrupt):
        run_eval(config)
    assert not records_path(tmp_path / "results", "world").exists()
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 4  # the first batch, whole
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    calls["n"] = 10
    resumed = run_eval(config)
    assert (resumed.images_generated, resumed.images_cached) == (8, 4)
    assert len(load_records(tmp_path / "results")) == 1


def test_a_run_folder_lora_is_sampled_on_its_base_model(tmp_path, tiny_world_dir):
    """A trainer's LoRA output (run/model/) gives the images of the merged policy."""
    from PIL import Image

    from lpo.trainers.lora import add_lora, save_lora, save_merged_pipeline
    from lpo.models.components import load_components
    from lpo.core.runs import RunFolder

    components = load_components(tiny_world_dir)
    add_lora(components.unet, rank=4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in components.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    run = RunFolder.create({"method": "lpo", "model": {"base": str(tiny_world_dir)}, "reward": {"path": "runs/lrm/model"}},
                           folder=tmp_path / "run", extra={"method": "lpo", "label": "lpo-world"})
    save_lora(components.unet, run.path / "model", "world")
    merged = save_merged_pipeline(components, components.unet, tmp_path / "merged")

    kwargs = dict(max_prompts=4, metrics=("world_soft_alignment",))
    lora = run_eval(_config(run.path / "model", tmp_path, **kwargs))
    policy = run_eval(_config(merged, tmp_path, **kwargs))
    base = run_eval(_config(tiny_world_dir, tmp_path, **kwargs))
    record = lora.records[0]
    assert (record.method, record.checkpoint["label"], record.optimised_reward) == ("lpo", "lpo-world", "runs/lrm/model")
    assert record.checkpoint["adapter_kind"] == "lora" and record.run_id == "run"
    assert len({lora.checkpoint.content_hash, policy.checkpoint.content_hash, base.checkpoint.content_hash}) == 3

    def images(out):
        return np.stack([np.asarray(Image.open(p)).astype(int) for p in sorted(out.image_folder.rglob("*.png"))])

    # Merged weights are not bitwise the unmerged sum, and 20 steps amplify the rounding
    # (up to 6 grey levels seen with these deliberately large random adapters): near, not equal.
    diff = np.abs(images(lora) - images(policy))
    assert diff.max() <= 10 and diff.mean() < 1.0
    assert np.abs(images(lora) - images(base)).max() > 10  # the adapter does change the images

    # A full fine-tune's output (a U-Net folder) is swapped into the base pipeline.
    from lpo.trainers.lora import save_unet

    full = RunFolder.create({"method": "diffusion-dpo", "model": {"base": str(tiny_world_dir)}}, folder=tmp_path / "full")
    save_unet(components.unet, full.path / "model")
    unet = run_eval(_config(full.path, tmp_path, **kwargs))
    assert unet.records[0].checkpoint["adapter_kind"] == "unet" and unet.records[0].method == "diffusion-dpo"
    assert np.abs(images(unet) - images(policy)).max() <= 2


class _Exploding:
    name, version, higher_is_better, formula, per_prompt = "test_exploding", "0", True, None, False

    def __init__(self):
        self.weights = {}

    def score(self, images, prompts):
        raise RuntimeError("scorer crashed")


class _Broken:
    def __init__(self, spec):
        raise OSError(f"Error no file named model.safetensors found in directory {spec.weights}")


class _NoContract:
    name, version, higher_is_better = "test_no_contract", "0", True

    def score(self, images, prompts):
        raise AssertionError("never scored")


@pytest.fixture(autouse=True)
def _test_metrics(monkeypatch):
    """Test-only metrics, registered for this module's tests alone (the registry contract tests
    elsewhere see only lpo's own entries)."""
    for name, factory in (("test_exploding", lambda spec: _Exploding()), ("test_broken_weights", _Broken),
                          ("test_no_contract", lambda spec: _NoContract())):
        monkeypatch.setitem(METRICS._items, name, factory)


def test_a_metric_missing_part_of_the_contract_is_refused_when_built(tmp_path):
    config = _config("noise", tmp_path, max_prompts=3, metrics=("test_no_contract",))
    with pytest.raises(TypeError, match="'test_no_contract' built an object without formula, per_prompt, weights"):
        run_eval(config)
    assert not records_path(tmp_path / "results", "world").exists()


def test_a_failing_metric_leaves_no_records(tmp_path):
    config = _config("noise", tmp_path, max_prompts=3, metrics=("world_alignment", "test_exploding"))
    with pytest.raises(RuntimeError, match="scorer crashed"):
        run_eval(config)
    assert not records_path(tmp_path / "results", "world").exists()


def test_a_metric_that_fails_to_load_is_a_one_line_user_error(tmp_path):
    weights = tmp_path / "empty"
    weights.mkdir()
    config = _config("noise", tmp_path, max_prompts=3, metrics=("test_broken_weights",),
                     metric_weights={"test_broken_weights": str(weights)})
    with pytest.raises(LpoError, match="--metric-weights test_broken_weights=PATH") as info:
        run_eval(config)
    assert "\n" not in str(info.value)


def test_a_metric_that_cannot_load_fails_before_any_image_is_generated(tmp_path, tiny_world_dir, count_generate):
    weights = tmp_path / "empty"
    weights.mkdir()
    config = _config(tiny_world_dir, tmp_path, max_prompts=3, metrics=("world_alignment", "test_broken_weights"),
                     metric_weights={"test_broken_weights": str(weights)})
    with pytest.raises(LpoError, match="could not load"):
        run_eval(config)
    assert count_generate["calls"] == 0


def test_bad_requests_fail_before_any_work(tmp_path, count_generate):
    with pytest.raises(LpoError, match="unknown metric 'nope'"):
        run_eval(_config("world", tmp_path, metrics=("nope",)))
    with pytest.raises(LpoError, match="unknown benchmark"):
        run_eval(_config("world", tmp_path, benchmark="geneval-typo"))
    with pytest.raises(LpoError, match="not a diffusers pipeline"):
        run_eval(_config(tmp_path, tmp_path))
    with pytest.raises(LpoError, match="does not exist"):
        run_eval(_config("world", tmp_path, benchmark="prompts-file", prompts=str(tmp_path / "missing.txt")))
    with pytest.raises(LpoError, match="needs a prompt file"):
        run_eval(_config("world", tmp_path, benchmark="prompts-file"))
    with pytest.raises(LpoError, match="not evaluated"):
        run_eval(_config("world", tmp_path, metric_weights={"pickscore": str(tmp_path)}))
    with pytest.raises(LpoError, match="takes no prompt source"):
        run_eval(_config("world", tmp_path, prompts="x.txt"))
    with pytest.raises(LpoError, match="sampler"):
        EvalProtocol(sampler="euler")
    assert count_generate["calls"] == 0 and not (tmp_path / "results").exists()


def test_world_metrics_refuse_non_world_images():
    from PIL import Image

    metric = METRICS.get("world_alignment")(MetricSpec())
    with pytest.raises(LpoError, match="32×32"):
        metric.score([Image.new("RGB", (64, 64))], ["a red circle"])
    with pytest.raises(LpoError, match="--benchmark world"):
        metric.score([Image.new("RGB", (32, 32))], ["a photo of a cat"])


# --------------------------------------------------------------------------- benchmarks


def test_prompt_benchmarks_read_local_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\na dog\n")
    assert BENCHMARKS.get("prompts-file")(str(txt)).prompt_set().prompts == ("a cat", "a dog")

    tsv = tmp_path / "parti.tsv"
    tsv.write_text("Prompt\tCategory\tChallenge\nbird\tAnimals\tBasic\ncar\tVehicles\tBasic\nowl\tAnimals\tBasic\ncar\tVehicles\tBasic\n")
    parti = BENCHMARKS.get("partiprompts")(str(tsv)).prompt_set()
    assert parti.prompts == ("bird", "car", "owl") and parti.categories == ("Animals", "Vehicles", "Animals")
    assert "1 repeated prompts kept once" in parti.source
    assert BENCHMARKS.get("partiprompts")(str(tsv)).prompt_set(2).prompts == ("bird", "car")  # round-robin

    folder = tmp_path / "hps"
    folder.mkdir()
    for style in ("anime", "photo"):
        (folder / f"{style}.json").write_text(json.dumps([f"{style} {i}" for i in range(3)]))
    hps = BENCHMARKS.get("hpsv2")(str(folder)).prompt_set(4)
    assert hps.prompts == ("anime 0", "photo 0", "anime 1", "photo 1") and set(hps.categories) == {"anime", "photo"}

    parquet = tmp_path / "pick.parquet"
    pq.write_table(pa.table({"caption": ["x", "y", "x", " "], "best_image_uid": ["1", "2", "3", "4"]}), parquet)
    assert BENCHMARKS.get("pickapic")(str(parquet)).prompt_set().prompts == ("x", "y")

    dup = tmp_path / "dup.txt"
    dup.write_text("a\nb\na\n")
    with pytest.raises(LpoError, match="prompt 3 repeats prompt 1"):
        BENCHMARKS.get("prompts-file")(str(dup)).prompt_set()
    with pytest.raises(LpoError, match="no prompt column"):
        bad = tmp_path / "bad.csv"
        bad.write_text("foo,bar\n1,2\n")
        BENCHMARKS.get("prompts-file")(str(bad)).prompt_set()


def test_hpdv3_reads_captions_per_category_local_and_from_the_hub(tmp_path, monkeypatch):
    from lpo.evals.benchmarks import prompt_files

    folder = tmp_path / "hpdv3"
    folder.mkdir()
    (folder / "benchmark_Animals.json").write_text(json.dumps([{"caption": "a fox", "id": 1}, {"caption": "an owl", "id": 2}]))
    # JSON lines under a .json name: the hub files are read by datasets' json loader, which takes both
    (folder / "benchmark_Natural Scenery.json").write_text('{"caption": "a lake"}\n{"caption": "a fox"}\n')
    local = BENCHMARKS.get("hpdv3")(str(folder)).prompt_set()
    assert local.prompts == ("a fox", "an owl", "a lake") and local.categories == ("Animals", "Animals", "Natural Scenery")
    assert "1 repeated prompts kept once" in local.source
    assert BENCHMARKS.get("hpdv3")(None).default_metrics[0] == "hpsv3"

    hub = tmp_path / "hub" / "benchmark"
    hub.mkdir(parents=True)
    for i, category in enumerate(prompt_files.HPDV3_CATEGORIES):
        (hub / f"benchmark_{category}.json").write_text(json.dumps([{"caption": f"{category} {i}"}]))
    calls = []

    def download(repo_id, filename, subfolder, repo_type):
        calls.append((repo_id, subfolder, repo_type))
        return str(hub / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    published = BENCHMARKS.get("hpdv3")(None).prompt_set()
    assert len(calls) == 12 and set(calls) == {("MizzenAI/HPDv3", "benchmark", "dataset")}
    assert published.prompts[:2] == ("Characters 0", "Arts 1") and published.categories[-1] == "Science"

    def offline(*args, **kwargs):
        raise OSError("no network\nsecond line")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    with pytest.raises(LpoError, match="could not download the HPDv3 benchmark prompts from MizzenAI/HPDv3") as err:
        BENCHMARKS.get("hpdv3")(None).prompt_set()
    assert "\n" not in str(err.value)
    with pytest.raises(LpoError, match="does not exist"):
        BENCHMARKS.get("hpdv3")(str(tmp_path / "missing")).prompt_set()


def test_prompt_set_hash_is_the_shared_convention():
    from lpo.core.hashing import prompt_set_hash

    ps = PromptSet(("a", "b"), "test")
    assert ps.hash == prompt_set_hash(["a", "b"]) != PromptSet(("b", "a"), "test").hash


# --------------------------------------------------------------------------- processes


def test_two_processes_give_the_records_of_one(tmp_path):
    """torchrun with 2 CPU processes: jobs sharded, scores gathered, one set of records."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "LPO_HOME": str(tmp_path / "home")}
    args = ["eval", "noise", "--max-prompts", "6", "--images-per-prompt", "2", "--metric", "world_utility",
            "--device", "cpu", "--results-dir", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "cache2")]
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "lpo.cli", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    two = load_records(tmp_path / "two")
    one = run_eval(_config("noise", tmp_path, max_prompts=6, metrics=("world_utility",),
                           protocol=EvalProtocol(images_per_prompt=2))).records
    assert len(two) == 1 and two[0].timing["processes"] == 2
    assert two[0].value == pytest.approx(one[0].value) and two[0].stderr == pytest.approx(one[0].stderr)


def test_one_dtype_spelling_with_torchs_names_as_aliases():
    assert EvalProtocol(dtype="float16").dtype == "fp16"
    assert EvalProtocol(dtype="float16", guidance_scale=5.0).pixel_hash() == EvalProtocol(dtype="fp16", guidance_scale=5.0).pixel_hash()
    assert EvalConfig(checkpoint="world", metric_dtype="fp16").metric_dtype == "float16"  # what the metrics load with
    assert EvalConfig(checkpoint="world", metric_dtype="bfloat16").metric_dtype == "bfloat16"
    with pytest.raises(LpoError, match=r"unknown dtype 'half'; use one of fp32, fp16, bf16"):
        EvalProtocol(dtype="half")
    with pytest.raises(LpoError, match=r"unknown dtype 'half'; use one of fp32, fp16, bf16"):
        EvalConfig(checkpoint="world", metric_dtype="half")
