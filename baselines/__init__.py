"""The baselines a study compares against, in one place. Installed as ``lpo.baselines``.

- ``RELEASED``: the published checkpoints (SD1.5 / SDXL bases, Diffusion-DPO, SPO, LPO)
  as registry entries, the names ``lpo eval`` / ``lpo compare`` resolve;
- ``TRAINERS``: the trainers that reproduce them on the shared harness (``lpo``, ``spo``,
  ``diffusion-dpo``; and ``grpo``, step-level GRPO with the LRM, which no paper released), with
  the papers' presets in ``PRESETS`` (``grpo-*``: this project's values);
- ``REPORTED``: the published numbers of SPEC §7, shown as "reported" rows.

Nothing is defined here: the code lives where it runs (``lpo.evals.checkpoint_registry``,
``lpo.trainers``, ``lpo.evals.reported``); this module is the catalogue.
"""

from lpo.evals.checkpoint_registry import BUILTIN as RELEASED
from lpo.trainers import TRAINERS
from lpo.trainers.presets import PRESETS

__all__ = ["RELEASED", "TRAINERS", "PRESETS", "REPORTED"]


def __getattr__(name: str):
    if name == "REPORTED":  # imported on use: the table module pulls in the leaderboard's types
        from lpo.evals import reported

        return reported
    raise AttributeError(name)
