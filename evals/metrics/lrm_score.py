"""``lrm_score``: a Latent Reward Model's own score of a finished image.

An LPO run optimises its LRM, so the LRM's score of the final images is the signal the
run was *optimised* for; shown beside held-out judges it makes reward hacking visible
(the optimised signal rises while they do not). The image is encoded with the LRM's base
model's VAE (posterior mean × scaling factor: deterministic, no sampling noise) and
scored at timestep 1, the last DDIM timestep of the LRM's training grid {1, 51, …, 951}
(nearly clean latents): S = exp(logit_scale)·cos(V, T) (SPEC §4.1).

``--metric-weights lrm_score=LRM_FOLDER`` is required (there is no default LRM); the
VAE comes from the LRM's recorded base model, or ``--metric-processor
lrm_score=PIPELINE_OR_VAE`` when that base is elsewhere now. The version carries the
LRM folder's content hash, so two LRMs never share a leaderboard column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from lpo.core.errors import LpoError
from lpo.evals.metrics.base import METRICS, MetricSpec
from lpo.evals.metrics.scoring import BatchedMetric

REVISION = "1"
SCORE_TIMESTEP = 1


def lrm_metric_version(folder: str | Path) -> str:
    """``1+<first 8 hex of the LRM folder's content hash>``."""
    from lpo.core.hashing import folder_hash

    return f"{REVISION}+{folder_hash(Path(folder))[:8]}"


def _load_vae(ref: str, dtype: torch.dtype, device: torch.device):
    from diffusers import AutoencoderKL

    from lpo.sampling.generate import resolve_model_name
    from lpo.core.io import one_line

    ref = resolve_model_name(ref)
    path = Path(ref).expanduser()
    subfolder = "vae" if (path / "vae").is_dir() or not path.exists() else None
    try:
        vae = AutoencoderKL.from_pretrained(ref, subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise LpoError(
            f"lrm_score could not load the VAE of {ref} ({one_line(err)}); pass --metric-processor lrm_score=PIPELINE "
            "(the base pipeline folder or a VAE folder)"
        ) from err
    return vae.to(device).eval()


@METRICS.register("lrm_score")
class LRMScore(BatchedMetric):
    name = "lrm_score"
    version = REVISION
    formula = f"LRM score exp(s)·cos(V, T) of the VAE posterior mean at t={SCORE_TIMESTEP}"
    comparability = "lpo"
    comparability_note = "a trained LRM's own score"

    def __init__(self, spec: MetricSpec):
        super().__init__(spec)
        if not spec.weights:
            raise LpoError("metric 'lrm_score' needs the LRM: pass --metric-weights lrm_score=LRM_FOLDER (e.g. a run's model/)")
        from lpo.reward.lrm_io import load_lrm

        folder = Path(spec.weights).expanduser()
        self.lrm = load_lrm(folder, device=self.device, dtype=self.dtype)
        self.vae = _load_vae(spec.processor or str(self.lrm.config.base_model), self.dtype, self.device)
        self.version = lrm_metric_version(folder)
        self.weights = {"lrm": str(folder.resolve()), "vae": spec.processor or str(self.lrm.config.base_model)}

    def score_batch(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        pixels = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device=self.device, dtype=self.dtype) / 127.5 - 1.0
        posterior = self.vae.encode(x).latent_dist
        latents = posterior.mean
        shift = getattr(self.vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        latents = latents * self.vae.config.scaling_factor
        return self.lrm(latents, SCORE_TIMESTEP, list(prompts)).float()
