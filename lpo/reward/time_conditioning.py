"""Timestep conditioning of a CLIP vision tower: the embedding e_t and DiT-style AdaLN hooks.

Follows SPO's ``TimestepEmbedder`` and ``TimeConditionedCLIPEncoderLayer`` (SPEC §4.3).
Per vision layer l, (shift, scale, gate) × 2 = Linear(SiLU(e_t)), zero-initialised:

    h = h + (1 + g_a)·Attn((1 + s_a)·LN1(h) + b_a)
    h = h + (1 + g_m)·MLP((1 + s_m)·LN2(h) + b_m)
    pooled = (1 + s_p)·post_LN(h_cls) + b_p

The modules attach with forward hooks to an intact transformers ``CLIPModel``, so its
official state-dict keys load unchanged; outside a conditioning call (``condition(None)``)
the hooks do nothing. SPO writes the gates as ``g·x`` with a bias of 1; ``(1 + g)·x`` with
a zero bias is the same function family with the zero-init identity stated explicitly.
:class:`lpo.reward.pixel_scorer.TimestepConditionedScorer` owns and drives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class AdaLNConfig:
    """The timestep conditioning of the vision tower (SPO's ``TimestepEmbedder`` + adaLN).

    frequency_dim: width of the sinusoidal embedding of t (cos then sin, as DiT / SPO).
    max_period: its longest period.
    The MLP and AdaLN widths follow the vision tower's hidden size.
    """

    frequency_dim: int = 256
    max_period: float = 10000.0

    def __post_init__(self) -> None:
        if self.frequency_dim < 2 or self.frequency_dim % 2:
            raise ValueError(f"frequency_dim must be an even number >= 2, got {self.frequency_dim}")
        if not math.isfinite(self.max_period) or self.max_period <= 1:
            raise ValueError(f"max_period must be a finite number > 1, got {self.max_period}")


def timestep_sinusoid(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B, dim) float32 [cos, sin] embedding of (B,) timesteps (GLIDE / DiT / SPO)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """e_t = MLP(sinusoid(t)): Linear(F, D) -> SiLU -> Linear(D, D), weights N(0, 0.02) as SPO."""

    def __init__(self, hidden_size: int, config: AdaLNConfig) -> None:
        super().__init__()
        self.config = config
        self.mlp = nn.Sequential(
            nn.Linear(config.frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, timesteps: Tensor) -> Tensor:
        sinusoid = timestep_sinusoid(timesteps, self.config.frequency_dim, self.config.max_period)
        return self.mlp(sinusoid.to(self.mlp[0].weight.dtype))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """(1 + scale)·x + shift, with (B, D) shift/scale broadcast over x's middle dims."""
    view = (shift.shape[0],) + (1,) * (x.dim() - 2) + (shift.shape[-1],)
    return x * (1 + scale.view(view).to(x.dtype)) + shift.view(view).to(x.dtype)


class EncoderLayerAdaLN(nn.Module):
    """AdaLN of one CLIP vision encoder layer, attached by forward hooks (module docstring).

    ``linear`` maps SiLU(e_t) to (shift, scale, gate) for the attention branch and the MLP
    branch; zero-initialised, so the layer starts as the plain CLIP layer. The hooks read
    the modulation set by :meth:`condition` and do nothing when none is set.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 6 * hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self._modulation: tuple[Tensor, ...] | None = None

    def condition(self, time_embedding: Tensor | None) -> None:
        """Set (time_embedding (B, D)) or clear (None) the modulation the hooks apply."""
        if time_embedding is None:
            self._modulation = None
        else:
            self._modulation = self.linear(F.silu(time_embedding)).chunk(6, dim=-1)  # 6 × (B, D)

    def attach(self, layer: nn.Module) -> list[Any]:
        """Register the hooks on a ``CLIPEncoderLayer``; returns the handles."""
        return [
            layer.layer_norm1.register_forward_hook(self._after_layer_norm1),
            layer.self_attn.register_forward_hook(self._after_attention),
            layer.layer_norm2.register_forward_hook(self._after_layer_norm2),
            layer.mlp.register_forward_hook(self._after_mlp),
        ]

    # Bound methods (not closures), so copy.deepcopy of the scorer re-binds them to the copy.
    def _after_layer_norm1(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if self._modulation is None:
            return None
        shift, scale = self._modulation[0], self._modulation[1]
        return _modulate(output, shift, scale)

    def _after_attention(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self._modulation is None:
            return None
        gate = self._modulation[2]
        if isinstance(output, tuple):  # (attn_output, attn_weights)
            return (_modulate(output[0], torch.zeros_like(gate), gate),) + output[1:]
        return _modulate(output, torch.zeros_like(gate), gate)

    def _after_layer_norm2(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if self._modulation is None:
            return None
        return _modulate(output, self._modulation[3], self._modulation[4])

    def _after_mlp(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if self._modulation is None:
            return None
        gate = self._modulation[5]
        return _modulate(output, torch.zeros_like(gate), gate)


class PooledAdaLN(nn.Module):
    """(1 + scale)·post_layernorm(h_cls) + shift, zero-initialised (SPO's final adaLN)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 2 * hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self._modulation: tuple[Tensor, ...] | None = None

    def condition(self, time_embedding: Tensor | None) -> None:
        self._modulation = None if time_embedding is None else self.linear(F.silu(time_embedding)).chunk(2, dim=-1)

    def attach(self, post_layernorm: nn.Module) -> list[Any]:
        return [post_layernorm.register_forward_hook(self._after_post_layernorm)]

    def _after_post_layernorm(self, module: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        if self._modulation is None:
            return None
        return _modulate(output, self._modulation[0], self._modulation[1])


class PooledFeatureFiLM(nn.Module):
    """Timestep FiLM of a pooled feature vector: (1 + γ(t))·x + β(t), zero-initialised.

    DiNa-LRM (arXiv 2602.11146) conditions its reward head on the timestep with FiLM
    adapters whose modulation MLP starts at zero ("no modulation"). Here the same
    conditioning acts on the LRM's pooled visual feature before its projection, so an LRM
    with ``head="film"`` starts as the plain one and learns a per-t re-weighting of its
    features. (DiNa's query/cross-attention token head itself is not reproduced.)
    """

    def __init__(self, feature_dim: int, hidden_size: int = 256, config: AdaLNConfig | None = None) -> None:
        super().__init__()
        self.embedding = TimestepEmbedding(hidden_size, config or AdaLNConfig())
        self.linear = nn.Linear(hidden_size, 2 * feature_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: Tensor, timesteps: Tensor) -> Tensor:
        """(B, F) float32 modulated features for (B, F) ``features`` and (B,) ``timesteps``."""
        gamma, beta = self.linear(F.silu(self.embedding(timesteps))).float().chunk(2, dim=-1)
        return _modulate(features.float(), beta, gamma)


def feature_film(head: str, feature_dim: int, factory: dict[str, Any]) -> PooledFeatureFiLM | None:
    """The timestep FiLM of an LRM with ``head="film"`` (None for the plain cosine head),
    on the model's device and in its dtype."""
    return PooledFeatureFiLM(feature_dim).to(**factory) if head == "film" else None
