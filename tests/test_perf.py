"""The cost benchmarks: architectures at their published sizes, and the timing plumbing.

Timings themselves are never asserted (these machines are noisy); the tests check that
the benchmark builds the real architectures and times what it says it times.
"""

from __future__ import annotations

import math

import pytest
import torch

from lpo.reward.lrm import LatentRewardModel
from lpo.perf.architectures import random_components, random_pickscore_scorer
from lpo.perf.reward_cost import PARTS, measure_reward_cost, time_parts
from lpo.perf.train_step import measure_train_step
from lpo.reward.pixel import PixelStepReward
from lpo.reward.pixel_scorer import world_pixel_scorer


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_random_sd15_matches_published_parameter_counts():
    # Built on the meta device: shapes without memory. Counts of the released checkpoints.
    c = random_components("sd15", device="meta")
    assert _count(c.unet) == 859_520_964
    assert _count(c.vae) == 83_653_863
    assert _count(c.text_encoder) == 123_060_480
    assert c.default_resolution == 512 and c.kind == "sd15"


def test_random_sdxl_matches_published_parameter_counts():
    c = random_components("sdxl", device="meta")
    assert _count(c.unet) == 2_567_463_684
    assert _count(c.text_encoder_2) == 694_659_840
    assert c.default_resolution == 1024 and c.force_zeros_for_empty_prompt


def test_pickscore_sized_scorer_is_vit_h_14():
    scorer = random_pickscore_scorer(device="meta")
    vision = scorer.clip.config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size) == (1280, 32, 14)
    assert _count(scorer.clip) == 986_109_441  # CLIP ViT-H/14 (laion2B), PickScore_v1's size


def test_time_parts_times_each_part_round_robin():
    calls: list[str] = []
    parts = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    seen: list[tuple[int, int]] = []
    seconds, peaks = time_parts(parts, torch.device("cpu"), repeats=3, warmup=1,
                                progress=lambda done, total: seen.append((done, total)))
    assert calls == ["a", "b"] * 4  # one warm-up round, then interleaved repeats
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values()) and peaks == {}
    assert seen == [(i, 8) for i in range(1, 9)]  # a long CPU run shows where it is


def test_measure_reward_cost_on_tiny_sd15(sd15):
    lrm = LatentRewardModel.from_components(sd15).eval()
    pixel = PixelStepReward.from_components(sd15, world_pixel_scorer(sd15.tokenizer)).eval()
    result = measure_reward_cost(sd15, lrm, pixel, ["a red cat", "a dog"], candidates=3, repeats=1, warmup=0)
    assert set(result.seconds) == set(PARTS)
    assert result.setup.prompts * result.setup.candidates == 6
    per = result.per_candidate_ms
    assert per["lrm"] == pytest.approx(1000 * result.seconds["lrm"] / 6)
    assert math.isfinite(result.pixel_to_lrm) and result.pixel_to_lrm > 0
    payload = result.to_dict()
    assert payload["pixel_to_lrm_per_candidate"] == pytest.approx(result.pixel_to_lrm)


def test_measure_train_step_updates_only_lora_weights(tiny_sd15_dir):
    from lpo.models.components import load_components

    components = load_components(tiny_sd15_dir)  # its own copy: the update adds adapters
    before = {k: v.clone() for k, v in components.unet.state_dict().items()}
    result = measure_train_step(components, batch=2, lora_rank=2, repeats=1, warmup=0)
    assert result.trainable_parameters > 0 and result.seconds_per_update > 0
    after = components.unet.state_dict()
    for key, value in before.items():  # peft moves wrapped weights to ...base_layer.weight
        stem, _, leaf = key.rpartition(".")
        moved = f"{stem}.base_layer.{leaf}"
        assert torch.equal(value, after[moved if moved in after else key]), key
    lora_b = [v for k, v in after.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # gaussian init, then updated
