"""Text conditioning for a diffusers ``UNet2DConditionModel`` and the CFG noise prediction.

SD1.5-style U-Nets take ``encoder_hidden_states`` only; SDXL-style U-Nets also take
``added_cond_kwargs = {"text_embeds": pooled, "time_ids": add_time_ids}``. Holding both
in one dataclass lets the sampler, the LRM and the trainers call any U-Net the same way.

Classifier-free guidance (SPEC §3 step 2): ε̂ = ε_u + w·(ε_c − ε_u).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import Tensor


@dataclass
class TextConditioning:
    """Per-sample U-Net conditioning.

    prompt_embeds: (B, L, D) cross-attention context.
    pooled_prompt_embeds: (B, P) pooled text embedding (SDXL ``text_embeds``), else None.
    add_time_ids: (B, 6) SDXL micro-conditioning, else None.
    """

    prompt_embeds: Tensor
    pooled_prompt_embeds: Tensor | None = None
    add_time_ids: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.prompt_embeds.shape[0]

    def unet_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.prompt_embeds}
        if self.pooled_prompt_embeds is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": self.pooled_prompt_embeds,
                "time_ids": self.add_time_ids,
            }
        return kwargs

    def _map(self, fn) -> "TextConditioning":
        return TextConditioning(
            prompt_embeds=fn(self.prompt_embeds),
            pooled_prompt_embeds=None if self.pooled_prompt_embeds is None else fn(self.pooled_prompt_embeds),
            add_time_ids=None if self.add_time_ids is None else fn(self.add_time_ids),
        )

    def index(self, idx: Tensor | slice | int | Sequence[int]) -> "TextConditioning":
        """Rows ``idx`` of every tensor (keeps the batch dimension for an int)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return self._map(lambda t: t[idx])

    def repeat_interleave(self, repeats: int) -> "TextConditioning":
        """Each row repeated ``repeats`` times in place: (B, ...) -> (B*repeats, ...)."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def to(self, device=None, dtype=None) -> "TextConditioning":
        # time ids stay in their own dtype only if dtype is None; diffusers casts them anyway
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> "TextConditioning":
        return self._map(lambda t: t.detach())

    @staticmethod
    def cat(items: Sequence["TextConditioning"]) -> "TextConditioning":
        first = items[0]
        return TextConditioning(
            prompt_embeds=torch.cat([c.prompt_embeds for c in items]),
            pooled_prompt_embeds=None
            if first.pooled_prompt_embeds is None
            else torch.cat([c.pooled_prompt_embeds for c in items]),
            add_time_ids=None if first.add_time_ids is None else torch.cat([c.add_time_ids for c in items]),
        )


@dataclass
class GuidedConditioning:
    """Conditional and unconditional conditioning plus the CFG weight w.

    ``uncond`` may be None only when ``guidance_scale == 1`` (no guidance, one pass).
    """

    cond: TextConditioning
    uncond: TextConditioning | None
    guidance_scale: float

    def __post_init__(self) -> None:
        if self.uncond is None and self.guidance_scale != 1.0:
            raise ValueError(
                f"guidance_scale={self.guidance_scale} needs unconditional embeddings; "
                "pass uncond or set guidance_scale=1"
            )
        if self.uncond is not None and self.uncond.batch_size != self.cond.batch_size:
            raise ValueError(
                f"cond has batch {self.cond.batch_size} but uncond has {self.uncond.batch_size}"
            )

    @property
    def batch_size(self) -> int:
        return self.cond.batch_size

    def index(self, idx) -> "GuidedConditioning":
        return replace(self, cond=self.cond.index(idx), uncond=None if self.uncond is None else self.uncond.index(idx))

    def repeat_interleave(self, repeats: int) -> "GuidedConditioning":
        return replace(
            self,
            cond=self.cond.repeat_interleave(repeats),
            uncond=None if self.uncond is None else self.uncond.repeat_interleave(repeats),
        )

    def to(self, device=None, dtype=None) -> "GuidedConditioning":
        return replace(self, cond=self.cond.to(device=device, dtype=dtype),
                       uncond=None if self.uncond is None else self.uncond.to(device=device, dtype=dtype))

    @staticmethod
    def stack(parts: Sequence["GuidedConditioning"]) -> tuple["GuidedConditioning", list[int]]:
        """The prompt tables of ``parts`` one after another, and the row offset of each part
        (for shifting indices into them); every part must use the same guidance scale."""
        if not parts:
            raise ValueError("nothing to concatenate")
        guidance = {p.guidance_scale for p in parts}
        if len(guidance) != 1:
            raise ValueError(f"parts were sampled with different guidance scales {sorted(guidance)}")
        offsets, total = [], 0
        for part in parts:
            offsets.append(total)
            total += part.batch_size
        uncond = None if parts[0].uncond is None else TextConditioning.cat([p.uncond for p in parts])
        return GuidedConditioning(TextConditioning.cat([p.cond for p in parts]), uncond, guidance.pop()), offsets


def predict_noise(
    unet: torch.nn.Module,
    latents: Tensor,
    timesteps: Tensor | int,
    conditioning: GuidedConditioning | TextConditioning,
) -> Tensor:
    """ε̂ for ``latents`` (B, C, H, W) at ``timesteps`` (scalar or (B,)); CFG-combined when guided.

    With guidance the conditional and unconditional halves run as one batched U-Net call.
    """
    if isinstance(conditioning, TextConditioning):
        conditioning = GuidedConditioning(conditioning, None, 1.0)
    batch = latents.shape[0]
    if not torch.is_tensor(timesteps):
        timesteps = torch.tensor(timesteps, device=latents.device)
    timesteps = timesteps.to(latents.device).reshape(-1).expand(batch) if timesteps.numel() == 1 else timesteps
    if conditioning.uncond is None or conditioning.guidance_scale == 1.0:
        return unet(latents, timesteps, **conditioning.cond.unet_kwargs()).sample
    both = TextConditioning.cat([conditioning.uncond, conditioning.cond])
    noise_both = unet(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), **both.unet_kwargs()).sample
    noise_uncond, noise_cond = noise_both.chunk(2)
    return noise_uncond + conditioning.guidance_scale * (noise_cond - noise_uncond)
