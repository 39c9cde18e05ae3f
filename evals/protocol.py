"""The evaluation protocol: how a benchmark's images are made (SPEC §6.2), one object for
``lpo eval``, ``lpo compare`` and the evaluation of checkpoints during and after training.

Light on purpose (no torch): configs that carry a protocol import it at module level.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from lpo.core.dtypes import canonical_dtype
from lpo.core.errors import LpoError

# The sampler is the model family's: DDIM for U-Net pipelines (lpo.models.components swaps it
# in), the pipeline's own FlowMatch Euler ODE for flow-matching pipelines (SD3 / SD3.5).
SAMPLERS = ("ddim", "flow-euler")


DEFAULT_GUIDANCE_SCALE = 5.0  # SPEC §6.2: LPO/SPO's evaluation CFG
DEFAULT_IMAGES_PER_PROMPT = 4  # the LPO paper's Pick-a-Pic protocol


@dataclass(frozen=True)
class EvalProtocol:
    """How images are made (SPEC §6.2); recorded in every result record.

    ``resolution`` None means the model's native size (the record also stores the size
    the images actually have). Only ``images_per_prompt`` and ``batch_size`` may change
    without changing any image.

    ``guidance_scale`` None: the checkpoint's own CFG (a registry entry's original
    evaluation CFG, :mod:`lpo.evals.checkpoint_registry`), else 5.0. ``images_per_prompt``
    None: the benchmark's ``default_images_per_prompt`` (T2I-CompBench++ 10, GenEval 4),
    else 4. :func:`resolve_protocol` fills both and says where each value came from.
    """

    sampler: str = "ddim"
    steps: int = 20
    guidance_scale: float | None = None
    eta: float = 0.0
    resolution: int | None = None
    dtype: str = "fp32"
    images_per_prompt: int | None = None
    seed: int = 42
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise LpoError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))  # "float16" -> "fp16": one spelling, one hash
        for name in ("steps", "images_per_prompt", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LpoError(f"{name} must be >= 1, got {value}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise LpoError(f"resolution must be a multiple of 8 (>= 8), got {self.resolution}")
        if not self.eta >= 0:
            raise LpoError(f"eta must be >= 0, got {self.eta}")
        if self.guidance_scale is not None and not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise LpoError(f"guidance scale must be a finite number >= 0, got {self.guidance_scale}")

    @property
    def resolved(self) -> bool:
        return self.guidance_scale is not None and self.images_per_prompt is not None

    def pixel_settings(self) -> dict[str, Any]:
        """The settings that change pixels (the image cache key)."""
        if self.guidance_scale is None:
            raise ValueError("the protocol's guidance scale is not resolved yet (resolve_protocol)")
        d = asdict(self)
        return {k: d[k] for k in ("sampler", "steps", "guidance_scale", "eta", "resolution", "dtype", "seed")}

    def pixel_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.pixel_settings(), sort_keys=True).encode()).hexdigest()[:16]

    def summary(self) -> str:
        res = "native" if self.resolution is None else f"{self.resolution}px"
        cfg = "own" if self.guidance_scale is None else f"{self.guidance_scale:g}"
        n = "default" if self.images_per_prompt is None else self.images_per_prompt
        return f"{self.sampler.upper()} {self.steps} · CFG {cfg} · {n} img/prompt · seed {self.seed} · {res} · {self.dtype}"


def resolve_protocol(protocol: EvalProtocol, benchmark=None, checkpoint=None) -> tuple[EvalProtocol, dict[str, str]]:
    """Fill the unset CFG and images per prompt; (protocol, where each value came from).

    Sources: ``user`` (set explicitly), ``checkpoint`` (the registry entry's CFG of its
    original evaluation), ``benchmark`` (its ``default_images_per_prompt``), ``default``.
    The sampler is the checkpoint's family's (its ``sampler``: ddim or flow-euler); a flow
    model's Euler ODE has no η, so η is recorded as 0 for it.
    """
    sources = {"guidance_scale": "user", "images_per_prompt": "user"}
    family = getattr(checkpoint, "sampler", None)
    if family is not None and family != protocol.sampler:
        if protocol.sampler != EvalProtocol.sampler:
            raise LpoError(f"{checkpoint.spec} samples with {family}, not {protocol.sampler}; leave the sampler at its default")
        protocol = replace(protocol, sampler=family, eta=0.0 if family == "flow-euler" else protocol.eta)
        sources["sampler"] = "checkpoint"
    guidance, images = protocol.guidance_scale, protocol.images_per_prompt
    if guidance is None:
        own = getattr(checkpoint, "guidance_scale", None)
        guidance, sources["guidance_scale"] = (own, "checkpoint") if own is not None else (DEFAULT_GUIDANCE_SCALE, "default")
    if images is None:
        own = getattr(benchmark, "default_images_per_prompt", None)
        images, sources["images_per_prompt"] = (own, "benchmark") if own else (DEFAULT_IMAGES_PER_PROMPT, "default")
    return replace(protocol, guidance_scale=float(guidance), images_per_prompt=int(images)), sources


PROTOCOL_FIELDS = tuple(f.name for f in fields(EvalProtocol))


def split_protocol_fields(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the protocol's fields, the rest) of a flat mapping of settings."""
    return ({k: v for k, v in values.items() if k in PROTOCOL_FIELDS},
            {k: v for k, v in values.items() if k not in PROTOCOL_FIELDS})
