"""World evaluation: fixed per-image seeds, category coverage, honest intervals."""

import numpy as np
import pytest

from lpo.core.errors import LpoError
from lpo.sampling.generate import generate_images, image_seed, load_pipeline
from lpo.world.benchmark import (
    GroundTruthSource,
    NoiseSource,
    ShuffledSource,
    WorldEvalProtocol,
    evaluate_source,
    world_prompts,
)
from lpo.world.grammar import CATEGORIES


def test_image_seeds_depend_only_on_prompt_and_index():
    assert image_seed(42, "a red circle", 0) == image_seed(42, "a red circle", 0)
    assert len({image_seed(42, "a red circle", k) for k in range(50)}) == 50
    assert image_seed(42, "a red circle", 0) != image_seed(43, "a red circle", 0)


def test_max_prompts_keeps_every_category():
    specs = world_prompts(WorldEvalProtocol(max_prompts=12))
    assert len(specs) == 12 and {s.category for s in specs} == set(CATEGORIES)


def test_ground_truth_and_noise_bracket_the_scale():
    protocol = WorldEvalProtocol(max_prompts=18, images_per_prompt=2)
    gt = evaluate_source(GroundTruthSource(), protocol)
    noise = evaluate_source(NoiseSource(), protocol)
    assert gt.overall["alignment"] == 1.0 and gt.overall["utility"] > 0.99
    assert noise.overall["alignment"] == 0.0 and noise.overall["utility"] < 0.2
    assert all(c.n_images == 2 * c.n_prompts for c in gt.categories.values())
    assert gt.prompt_set_hash == noise.prompt_set_hash
    shuffled = evaluate_source(ShuffledSource([s.text() for s in world_prompts(protocol)]), protocol)
    assert shuffled.overall["alignment"] < 0.1 and shuffled.overall["aesthetic"] > 0.99


def test_a_prompts_images_do_not_depend_on_its_batch(tiny_world_dir):
    pipe, _ = load_pipeline(str(tiny_world_dir), device="cpu")
    prompts = ["a red circle", "two blue squares", "a hollow green triangle and a solid red circle"]
    seeds = [image_seed(0, p, 0) for p in prompts]
    together = generate_images(pipe, prompts, seeds, num_inference_steps=3)
    alone = generate_images(pipe, prompts[1:2], seeds[1:2], num_inference_steps=3)
    assert np.abs(together[1].astype(int) - alone[0].astype(int)).max() <= 1


@pytest.mark.parametrize("kwargs", [dict(images_per_prompt=0), dict(num_inference_steps=0), dict(max_prompts=0)])
def test_bad_protocol_values_are_user_errors(kwargs):
    with pytest.raises(LpoError):
        WorldEvalProtocol(**kwargs)
