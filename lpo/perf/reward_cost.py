"""Cost of scoring step candidates: the LRM on noisy latents vs SPO's pixel step reward.

One denoising step of LPO/SPO with K candidates per prompt costs one policy call (CFG)
plus K step-reward calls. The pixel reward needs, per candidate, a CFG U-Net call for
x̂0, a VAE decode and the image scorer; the LRM needs one truncated U-Net pass (two
with VFE, batched) and a projection. Every part is timed on the same inputs in one
process, so the printed ratios compare like with like (the LPO paper, Table 5, measured
0.243 s vs 0.039 s per step with K = 4 on an A100).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from lpo.models.conditioning import predict_noise
from lpo.models.components import DiffusionComponents, guided_conditioning

PARTS = ("denoise", "x0_unet", "vae_decode", "pixel_scorer", "lrm")


@dataclass(frozen=True)
class RewardCostSetup:
    architecture: str  # world | sd15 | sdxl
    device: str
    dtype: str
    resolution: int
    latent_shape: tuple[int, ...]
    prompts: int  # B prompts per step
    candidates: int  # K candidates per prompt
    repeats: int
    warmup: int


@dataclass
class RewardCostResult:
    setup: RewardCostSetup
    seconds: dict[str, float]  # median seconds of each part for the whole step batch
    peak_memory_mib: dict[str, float] = field(default_factory=dict)  # CUDA only

    @property
    def per_candidate_ms(self) -> dict[str, float]:
        n = self.setup.prompts * self.setup.candidates
        return {part: 1000 * s / n for part, s in self.seconds.items() if part != "denoise"}

    @property
    def pixel_seconds(self) -> float:
        """Pixel reward for all candidates of one step: x̂0 U-Net + decode + scorer."""
        return self.seconds["x0_unet"] + self.seconds["vae_decode"] + self.seconds["pixel_scorer"]

    @property
    def pixel_to_lrm(self) -> float:
        """How many times more the pixel reward costs than the LRM per candidate."""
        return self.pixel_seconds / self.seconds["lrm"]

    @property
    def step_ratio(self) -> float:
        """Whole-step cost (policy call + scoring all candidates), SPO over LPO."""
        denoise = self.seconds["denoise"]
        return (denoise + self.pixel_seconds) / (denoise + self.seconds["lrm"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "setup": asdict(self.setup),
            "seconds": self.seconds,
            "per_candidate_ms": self.per_candidate_ms,
            "pixel_to_lrm_per_candidate": self.pixel_to_lrm,
            "spo_to_lpo_per_step": self.step_ratio,
            "peak_memory_mib": self.peak_memory_mib,
        }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_parts(
    parts: dict[str, Callable[[], Any]], device: torch.device, *, repeats: int, warmup: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds of each part and its peak CUDA MiB (empty off CUDA).

    The parts are timed round-robin (one call of each per repeat), so a load spike on a
    shared machine hits every part alike instead of one part's whole series.
    ``progress(done, total)`` after every call (untimed ones included).
    """
    total, done = (warmup + repeats) * len(parts), 0
    for _ in range(warmup):
        for fn in parts.values():
            fn()
            done += 1
            if progress is not None:
                progress(done, total)
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in parts}
    peaks: dict[str, float] = {}
    for _ in range(repeats):
        for name, fn in parts.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            fn()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
            done += 1
            if progress is not None:
                progress(done, total)  # after the timed span: drawing the bar is not timed
    return {name: statistics.median(ts) for name, ts in times.items()}, peaks


@torch.no_grad()
def measure_reward_cost(
    components: DiffusionComponents,
    lrm: Any,
    pixel_reward: Any,
    prompts: list[str],
    *,
    candidates: int = 4,
    timestep: int = 501,
    guidance_scale: float = 5.0,
    repeats: int = 5,
    warmup: int = 2,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> RewardCostResult:
    """Time each part of one step's scoring for ``len(prompts)`` prompts × ``candidates``.

    Text encoding is excluded from every part: it happens once per prompt per trajectory
    for both rewards. Inputs are random latents at ``timestep`` (costs do not depend on values).
    """
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    device = components.device
    batch = len(prompts) * candidates
    side = components.default_resolution // components.vae_scale_factor
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (components.latent_channels, side, side)
    latents = torch.randn((len(prompts), *shape), generator=generator).to(device, components.dtype)
    candidate_latents = torch.randn((batch, *shape), generator=generator).to(device, components.dtype)
    t_policy = torch.full((len(prompts),), timestep, device=device, dtype=torch.long)

    policy_conditioning = guided_conditioning(components, prompts, guidance_scale)
    lrm_text = lrm.encode_text(prompts).repeat_interleave(candidates)
    pixel_text = pixel_reward.encode_text(prompts).repeat_interleave(candidates)
    x0 = pixel_reward.predict_x0(candidate_latents, timestep, pixel_text)
    images = pixel_reward.decode_x0(x0)

    parts: dict[str, Callable[[], Any]] = {
        "denoise": lambda: predict_noise(components.unet, latents, t_policy, policy_conditioning),
        "x0_unet": lambda: pixel_reward.predict_x0(candidate_latents, timestep, pixel_text),
        "vae_decode": lambda: pixel_reward.decode_x0(x0),
        "pixel_scorer": lambda: pixel_reward.score_images(images, timestep, pixel_text),
        "lrm": lambda: lrm.score_with_conditioning(candidate_latents, timestep, lrm_text),
    }
    seconds, peaks = time_parts(parts, device, repeats=repeats, warmup=warmup, progress=progress)
    setup = RewardCostSetup(
        architecture=components.kind,
        device=_describe_device(device),
        dtype=str(components.dtype).replace("torch.", ""),
        resolution=components.default_resolution,
        latent_shape=tuple(shape),
        prompts=len(prompts),
        candidates=candidates,
        repeats=repeats,
        warmup=warmup,
    )
    return RewardCostResult(setup=setup, seconds=seconds, peak_memory_mib=peaks)


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
