"""Golden values: each metric@version on fixed tiny weights and fixed images gives pinned scores.

A change to a formula, a preprocessing step or a default that moves a score fails here. If
the change is intended, the metric's version must change with it (every result record is
keyed by metric@version, so old and new values never share a leaderboard column); then pin
the new version's values here. The weights are the tiny random models of metric_fixtures
(seeded), not the real checkpoints: these pins guard lpo's code, the upstream-parity tests
(`pytest -m parity`) guard the agreement with the upstream packages.

T2I-CompBench++ and GenEval are pinned by their own rule tests (tests/test_compbench.py,
tests/test_geneval.py) on fixed detections, not here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hpsv3_fixtures import write_hpsv3_checkpoint
from metric_fixtures import random_image, tiny_clip_folder, write_aesthetic_head, write_hps_checkpoints, write_image_reward_checkpoint

PROMPTS = ["a photo of a red cat", "two small blue birds above a green tree", "a house"]
WORLD_PROMPTS = ["a red circle", "a solid red circle and a solid green circle", "a red circle to the left of a green circle"]

# metric@version -> scores of the three images (per-image metrics) or of the two image sets (diversity)
GOLDEN = {
    "pickscore@v1+lpo1": [-0.510578, -0.47647, -0.849761],
    "clip_cosine_h14@h14-laion2b-cos+lpo1": [-0.069099, -0.064483, -0.115003],
    "clip_score@l14-100relucos+lpo1": [6.909928, 6.448314, 11.50026],
    "laion_aesthetic@v2-l14-linearMSE+lpo1": [-46.972496, -39.406322, -46.049236],
    "hpsv2@v2.0+lpo1": [25.899918, 9.323414, -17.876236],
    "hpsv21@v2.1+lpo1": [17.870546, 7.31012, -7.598612],
    "image_reward@v1.0+lpo1": [-43.097385, -48.6978, -19.288137],
    "hpsv3@v3.0+lpo1": [-0.741496, -0.70785, -0.740164],
    "pixel_diversity@1": [0.409083, 0.406403],
    "clip_diversity@l14-1mcos+lpo1": [0.048379, 0.03575],
    "world_alignment@1.2": [1.0, 1.0, 0.0],
    "world_soft_alignment@1.2": [0.5, 1.0, 0.25],
    "world_aesthetic@1.2": [1.0, 1.0, 1.0],
    "world_clip@1.2": [0.866025, 1.0, 0.866025],
    "world_utility@1.2": [0.7, 1.0, 0.55],
}


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    import lpo.world

    lpo.world.install()
    from lpo.evals.metrics import METRICS, MetricSpec, load_metrics
    from lpo.evals.metrics.hps import HPSv2, HPSv21
    from lpo.evals.metrics.image_reward import ImageReward

    load_metrics()
    root = tmp_path_factory.mktemp("golden")
    clip = tiny_clip_folder(root / "clip", seed=2, logit_scale=2.0)
    flipped = tiny_clip_folder(root / "flipped", seed=2, logit_scale=2.0, flip_image_projection=True)  # cos > 0
    write_aesthetic_head(root / "aesthetic")
    _, hps_arch, _ = write_hps_checkpoints(root / "hps")
    _, ir_arch, _, _ = write_image_reward_checkpoint(root / "ir")
    hpsv3_base, hpsv3_weights = write_hpsv3_checkpoint(root / "hpsv3")
    hps = MetricSpec(weights=str(root / "hps"), processor=str(root / "hps" / "tokenizer"))
    built = {
        "pickscore": METRICS.get("pickscore")(MetricSpec(weights=str(clip), processor=str(clip))),
        "clip_cosine_h14": METRICS.get("clip_cosine_h14")(MetricSpec(weights=str(clip))),
        "clip_score": METRICS.get("clip_score")(MetricSpec(weights=str(flipped))),
        "laion_aesthetic": METRICS.get("laion_aesthetic")(MetricSpec(weights=str(root / "aesthetic"), processor=str(clip))),
        "hpsv2": HPSv2(hps, architecture=hps_arch),
        "hpsv21": HPSv21(hps, architecture=hps_arch),
        "image_reward": ImageReward(MetricSpec(weights=str(root / "ir"), processor=str(root / "ir" / "tokenizer")),
                                    architecture=ir_arch),
        "hpsv3": METRICS.get("hpsv3")(MetricSpec(weights=str(hpsv3_weights), processor=str(hpsv3_base))),
        "pixel_diversity": METRICS.get("pixel_diversity")(MetricSpec()),
        "clip_diversity": METRICS.get("clip_diversity")(MetricSpec(weights=str(clip))),
    }
    for name in ("world_alignment", "world_soft_alignment", "world_aesthetic", "world_clip", "world_utility"):
        built[name] = METRICS.get(name)(MetricSpec())
    return built


def _scores(name, metric) -> list[float]:
    images = [random_image(s, (40, 32)) for s in range(3)]
    if metric.per_prompt:
        return [float(x) for x in metric.score_sets([images, images[:2]], ["a", "b"])]
    if name.startswith("world_"):
        from lpo.world.grammar import parse_prompt
        from lpo.world.render import render_prompt

        rendered = [Image.fromarray(render_prompt(parse_prompt(p), np.random.default_rng(i))) for i, p in enumerate(WORLD_PROMPTS)]
        return metric.score(rendered[::-1], WORLD_PROMPTS).tolist()  # reversed: some images miss their prompt
    return metric.score(images, PROMPTS).tolist()


@pytest.mark.parametrize("name", sorted({key.split("@")[0] for key in GOLDEN}))
def test_each_metric_version_gives_its_pinned_scores(metrics, name):
    metric = metrics[name]
    key = f"{name}@{metric.version}"
    assert key in GOLDEN, f"{key} is a new version: pin its values in GOLDEN (and keep the old pin out)"
    torch.testing.assert_close(torch.tensor(_scores(name, metric)), torch.tensor(GOLDEN[key]), rtol=1e-4, atol=1e-4,
                               msg=lambda m: f"{key} moved without a version bump: {m}")
