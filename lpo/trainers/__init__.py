"""The pluggable trainers: one interface (a config dataclass + a trainer class), registered by name.

``TRAINERS.get("lpo" | "spo" | "grpo" | "diffusion-dpo")`` gives the trainer class; its
``config_class`` is the config it takes; presets live in :mod:`lpo.trainers.presets`
and :func:`lpo.trainers.jobs.run_training` loads the parts a trainer gets handed in.
"""

from __future__ import annotations

from lpo.core.registry import Registry
from lpo.trainers.diffusion_dpo import DiffusionDPOTrainer
from lpo.trainers.step_dpo import LPOTrainer, SPOTrainer
from lpo.trainers.step_grpo import GRPOTrainer

TRAINERS: Registry[type] = Registry("trainer")
TRAINERS.add("lpo", LPOTrainer)
TRAINERS.add("spo", SPOTrainer)
TRAINERS.add("grpo", GRPOTrainer)
TRAINERS.add("diffusion-dpo", DiffusionDPOTrainer)

__all__ = ["TRAINERS", "LPOTrainer", "SPOTrainer", "GRPOTrainer", "DiffusionDPOTrainer"]
