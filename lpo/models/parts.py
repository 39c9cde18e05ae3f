"""The shape every latent text-to-image pipeline's parts share, whatever denoises (U-Net or MMDiT)."""

from __future__ import annotations

from typing import Any

import torch


class LatentPipelineParts:
    """What every latent text-to-image pipeline's parts answer, whatever its denoiser.

    Subclasses are dataclasses with ``vae`` and ``text_encoders`` and name their denoiser
    (the U-Net, or an MMDiT for flow models) in :attr:`denoiser`.
    """

    vae: Any

    @property
    def denoiser(self) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell, computed as the diffusers pipelines do (8 for SD1.5/SDXL/SD3)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        """Image side the denoiser was configured for: 512 for SD1.5, 1024 for SDXL and SD3."""
        return int(self.denoiser.config.sample_size) * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move (and optionally cast) every module in place; returns self for chaining."""
        # Only pass what is set: diffusers warns about fp32 modules whenever dtype= is given.
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for module in (self.denoiser, self.vae, *self.text_encoders):
            module.to(**kwargs)
        return self
