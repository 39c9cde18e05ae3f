"""Bench ablations mirroring the LPO paper's: each is a set of variants of the bench config.

A variant changes a few BenchConfig fields (:func:`lpo.bench.config.variant_config`); tuple fields (the ``*_overrides``) are
extended, not replaced, so a variant keeps the preset's own overrides. Every variant
trains only the methods the ablation is about, in ``BENCH/ablations/<name>/<variant>/``,
reusing the main bench's pairs and reward models when its changes leave them alone, and
its final models land in one results folder per ablation (what the report reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lpo.core.errors import LpoError


@dataclass(frozen=True)
class Ablation:
    name: str
    description: str
    methods: tuple[str, ...]
    variants: tuple[tuple[str, dict[str, Any]], ...]  # (label, BenchConfig changes)


ABLATIONS: dict[str, Ablation] = {
    a.name: a
    for a in (
        Ablation("mpcf", "MPCF strategy of the pairs the LRM is trained on (paper: none 21.49, 1 21.61, 2 21.69, 3 21.47 PickScore).",
                 ("lpo",), (("none", {"mpcf_strategy": "none"}), ("1", {"mpcf_strategy": "1"}),
                            ("2", {"mpcf_strategy": "2"}), ("3", {"mpcf_strategy": "3"}))),
        Ablation("vfe", "Visual feature enhancement of the LRM: g = 7.5 (paper) vs g = 1 (off).",
                 ("lpo",), (("g=7.5", {}), ("g=1", {"lrm_overrides": ("vfe_scale=1",)}))),
        Ablation("lrm-t0", "The LRM told the real t vs t = 0 (paper: 21.69 vs 19.64 PickScore).",
                 ("lpo",), (("real t", {}), ("t=0", {"lpo_overrides": ("sampler.reward_timestep=zero",)}))),
        Ablation("lpo-timesteps", "Which timesteps LPO trains (paper: all 21.69 vs [750, 950] only 21.54).",
                 ("lpo",), (("t>=501 (world preset)", {}), ("all t", {"lpo_overrides": ("sampler.min_timestep=0",)}),
                            ("t>=751", {"lpo_overrides": ("sampler.min_timestep=751",)}))),
        Ablation("spo-all-t", "SPO on its skipped steps too (paper: over all of [0, 950] SPO collapses, 19.77).",
                 ("spo",), (("skip first 4", {}),
                            ("all t", {"spo_overrides": ("sampler.skip_first_steps=0", "sampler.min_timestep=0")}))),
        Ablation("beta", "β of LPO's loss (paper SD1.5: 20/100/500/1000/5000 → 21.53/21.68/21.69/21.39/20.95).",
                 ("lpo",), tuple((f"β={b:g}", {"lpo_overrides": (f"loss.beta={b:g}",)}) for b in (5, 50, 500))),
    )
}


def ablation(name: str) -> Ablation:
    try:
        return ABLATIONS[name]
    except KeyError:
        raise LpoError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}") from None


def slug(label: str) -> str:
    """A folder name for a variant label: ASCII letters, digits, '.', '-'; β spelled beta."""
    label = label.replace("β", "beta")
    return "".join(c if (c.isascii() and c.isalnum()) or c in ".-" else "_" for c in label)
