"""The world's true utility of the one-step x̂0, as a step reward: the ceiling that any
pixel-space step reward (SPO's) can reach at a given noise level.

It scores a noisy latent the way SPO's pixel model sees it — the frozen base model with CFG
predicts x̂0 in one step (the U-Net's ε or the flow world's velocity), the VAE decodes it —
but reads the decoded image with the world's exact judges instead of a learned scorer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lpo.reward.pixel import PixelRewardConfig, PixelStepReward
from lpo.world.judges import judge


class WorldUtilityOnX0(nn.Module):
    """StepRewardModel: forward(latents_t, timesteps, prompts) -> (B,) true utility of decoded x̂0."""

    def __init__(self, components, guidance_scale: float = 5.0):
        super().__init__()
        if components.kind not in ("world", "world-flow"):
            raise ValueError(f"the true utility exists only in the world, not for a {components.kind} model")
        # PixelStepReward owns the x̂0 and decode path; its (random) scorer is never called.
        self.x0_path = PixelStepReward.from_components(components, config=PixelRewardConfig(guidance_scale=guidance_scale))

    @property
    def x0_key(self) -> tuple:
        """Shared with SPO's pixel model when it predicts x̂0 the same way (same denoiser, VAE, CFG)."""
        return self.x0_path.x0_key

    def decode_for_scoring(self, latents_t: Tensor, timesteps: Tensor | int, prompts: Sequence[str]) -> Tensor:
        return self.x0_path.decode_for_scoring(latents_t, timesteps, prompts)

    def score_decoded(self, images: Tensor, timesteps: Tensor | int, prompts: Sequence[str]) -> Tensor:
        """True utility of decoded images in [-1, 1] (read as the uint8 image a user would see)."""
        pixels = ((images.permute(0, 2, 3, 1).cpu().numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        return torch.tensor([judge(image, prompt).utility for image, prompt in zip(pixels, prompts)], dtype=torch.float32)

    @torch.no_grad()
    def decoded_x0(self, latents_t: Tensor, timesteps: Tensor | int, prompts: Sequence[str]) -> np.ndarray:
        """(B, H, W, 3) uint8 images of the decoded one-step x̂0."""
        images = self.decode_for_scoring(latents_t, timesteps, prompts)
        return ((images.permute(0, 2, 3, 1).cpu().numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)

    def forward(self, latents_t: Tensor, timesteps: Tensor | int, prompts: Sequence[str]) -> Tensor:
        return self.score_decoded(self.decode_for_scoring(latents_t, timesteps, prompts), timesteps, prompts)
