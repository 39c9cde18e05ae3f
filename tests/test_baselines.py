"""lpo.baselines: the catalogue of released checkpoints, trainers and published numbers."""

import lpo.baselines as baselines


def test_catalogue_names_every_released_method_and_its_trainer():
    names = {entry.name for entry in baselines.RELEASED}
    assert {"sd15", "sdxl", "dpo-sd15", "dpo-sdxl", "spo-sd15", "spo-sdxl", "lpo-sd15", "lpo-sdxl"} <= names
    methods = {entry.method for entry in baselines.RELEASED} - {"base"}
    assert methods <= set(baselines.TRAINERS.names())
    for method in baselines.TRAINERS.names():
        prefix = "dpo" if method == "diffusion-dpo" else method
        assert {f"{prefix}-sd15", f"{prefix}-sdxl", f"{prefix}-world"} <= set(baselines.PRESETS)
    assert baselines.REPORTED.__name__ == "lpo.evals.reported"
