"""Flow-matching pipelines (SD3 / SD3.5): their components, prompt encoding and velocity with CFG.

:func:`load_flow_components` takes a ``StableDiffusion3Pipeline`` folder or hub id and returns
a :class:`FlowComponents`: the MMDiT (``SD3Transformer2DModel``), the VAE, the
``FlowMatchEulerDiscreteScheduler`` as the pipeline configured it (SD3's shift 3.0), two
CLIP text encoders with projection and the optional T5 encoder. Every part loads through
its class's own ``from_pretrained``, so the tiny test pipelines and the real checkpoints share
one path, and loading failures are the one-line errors of :mod:`lpo.models.components`.

:func:`encode_flow_prompts` reproduces ``StableDiffusion3Pipeline.encode_prompt`` (no clip
skip, one image per prompt): each CLIP's penultimate hidden states, concatenated along
width and zero-padded to T5's width, then T5's states appended along the sequence (all
zeros when the pipeline has no T5); the pooled embedding is both CLIPs' projected pooled
outputs concatenated. The unconditional branch encodes "" the same way (SD3 has no
zeroed branch). :func:`predict_velocity` runs the transformer with classifier-free guidance
as the pipeline does; sampling is :func:`lpo.sampling.flow.sample_flow`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence, get_args

import torch
from torch import Tensor

from lpo.core.errors import LpoError
from lpo.models.components import _guarded, _load, _locate, _read_model_index
from lpo.models.parts import LatentPipelineParts

FlowKind = Literal["sd3", "world-flow"]
FLOW_PIPELINE_KINDS: dict[str, FlowKind] = {"StableDiffusion3Pipeline": "sd3"}
FLOW_KINDS: tuple[str, ...] = get_args(FlowKind)
# An SD3 pipeline folder holding this marker is the embedded world's flow model (kind
# "world-flow"); the marker names the T5 length it was trained with (its own, not SD3's 256).
WORLD_FLOW_MARKER_KIND = "lpo-world-flow"
SD3_SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
SD3_MAX_SEQUENCE_LENGTH = 256  # the pipeline's default T5 length


@dataclass
class FlowComponents(LatentPipelineParts):
    """The parts of a flow-matching text-to-image pipeline; ``text_encoder_3`` is None without T5.
    ``max_sequence_length``: the T5 tokens (zeros without T5) appended to the prompt, as the
    pipeline's ``max_sequence_length``; 256 for SD3, the world flow model's own from its marker."""

    kind: FlowKind
    source: str
    transformer: Any  # diffusers.SD3Transformer2DModel
    vae: Any  # diffusers.AutoencoderKL (with shift_factor)
    scheduler: Any  # diffusers.FlowMatchEulerDiscreteScheduler
    text_encoder: Any  # transformers.CLIPTextModelWithProjection (CLIP-L)
    tokenizer: Any
    text_encoder_2: Any  # transformers.CLIPTextModelWithProjection (CLIP-G)
    tokenizer_2: Any
    text_encoder_3: Any = None  # transformers.T5EncoderModel
    tokenizer_3: Any = None
    max_sequence_length: int = SD3_MAX_SEQUENCE_LENGTH

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.transformer

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2, self.text_encoder_3) if m is not None]

    def latents_to_vae(self, latents: Tensor) -> Tensor:
        """Model latents -> VAE latents, as the pipeline decodes: z / scaling_factor + shift_factor."""
        config = self.vae.config
        return latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)


def is_flow_pipeline(model: str | Path) -> bool:
    """Whether ``model`` (a folder or hub id) holds a flow-matching pipeline lpo loads here."""
    return _read_model_index(_locate(model)).get("_class_name") in FLOW_PIPELINE_KINDS


def load_flow_components(
    model: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> FlowComponents:
    """Load an SD3-style pipeline's components, in eval mode."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    source = _locate(model)
    index = _read_model_index(source)
    class_name = index.get("_class_name")
    kind = FLOW_PIPELINE_KINDS.get(class_name)
    if kind is None:
        raise LpoError(f"{source.describe()} holds a {class_name} pipeline; the flow loader takes "
                       f"{', '.join(FLOW_PIPELINE_KINDS)} (SD1.5/SDXL-style pipelines load with load_components)")
    if not source.is_hub:
        for name in SD3_SUBFOLDERS:
            if not (Path(source.where) / name).is_dir():
                raise LpoError(f"{source.where}/{name} is missing (expected an SD3 pipeline folder with "
                               f"{', '.join(s + '/' for s in SD3_SUBFOLDERS)} and optionally text_encoder_3/, tokenizer_3/)")
    has_t5 = (index.get("text_encoder_3") or [None])[0] is not None
    world = _world_flow_marker(source)
    if world is not None:
        kind = "world-flow"
    scheduler_config = _guarded(source, "scheduler", "scheduler config",
                                lambda: FlowMatchEulerDiscreteScheduler.load_config(source.where, subfolder="scheduler"))
    components = FlowComponents(
        kind=kind,
        source=str(model),
        transformer=_load(SD3Transformer2DModel, source, "transformer", torch_dtype=dtype),
        vae=_load(AutoencoderKL, source, "vae", torch_dtype=dtype),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config),
        text_encoder=_load(CLIPTextModelWithProjection, source, "text_encoder", dtype=dtype),
        tokenizer=_load(CLIPTokenizer, source, "tokenizer"),
        text_encoder_2=_load(CLIPTextModelWithProjection, source, "text_encoder_2", dtype=dtype),
        tokenizer_2=_load(CLIPTokenizer, source, "tokenizer_2"),
        text_encoder_3=_load(T5EncoderModel, source, "text_encoder_3", dtype=dtype) if has_t5 else None,
        tokenizer_3=_load(AutoTokenizer, source, "tokenizer_3") if has_t5 else None,
        max_sequence_length=int(world.get("max_sequence_length", SD3_MAX_SEQUENCE_LENGTH)) if world else SD3_MAX_SEQUENCE_LENGTH,
    )
    _check_flow_compatible(components, source.describe())
    for module in (components.transformer, components.vae, *components.text_encoders):
        module.eval()
    return components.to(device=device)


def _world_flow_marker(source) -> dict[str, Any] | None:
    """The world flow model's marker (a local folder's ``lpo_world.json`` of its kind), else None."""
    import json

    from lpo.models.components import WORLD_MARKER

    marker = Path(source.where) / WORLD_MARKER
    if source.is_hub or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        raise LpoError(f"could not read {marker} ({err}); re-save the world flow model (lpo world pretrain --preset flow)") from err
    return data if data.get("kind") == WORLD_FLOW_MARKER_KIND else None


def _check_flow_compatible(c: FlowComponents, where: str) -> None:
    config = c.transformer.config
    if config.in_channels != c.latent_channels:
        raise LpoError(f"the vae of {where} has {c.latent_channels} latent channels but the transformer takes "
                       f"{config.in_channels}; pass a vae and transformer made for each other")
    pooled = c.text_encoder.config.projection_dim + c.text_encoder_2.config.projection_dim
    if config.pooled_projection_dim != pooled:
        raise LpoError(f"the transformer of {where} takes pooled embeddings of width {config.pooled_projection_dim} "
                       f"but its CLIP encoders give {pooled}; the text encoders belong to another model")
    clip_width = c.text_encoder.config.hidden_size + c.text_encoder_2.config.hidden_size
    t5_width = c.text_encoder_3.config.d_model if c.text_encoder_3 is not None else config.joint_attention_dim
    if t5_width != config.joint_attention_dim or clip_width > config.joint_attention_dim:
        raise LpoError(f"the text encoders of {where} give widths {clip_width} (CLIP) and {t5_width} (T5) but the "
                       f"transformer's joint_attention_dim is {config.joint_attention_dim}")


@dataclass
class FlowConditioning:
    """What the transformer reads: ``prompt_embeds`` (B, 77 + T5 length, joint width), ``pooled`` (B, P)."""

    prompt_embeds: Tensor
    pooled: Tensor

    def cat(self, other: "FlowConditioning") -> "FlowConditioning":
        return FlowConditioning(torch.cat([self.prompt_embeds, other.prompt_embeds]), torch.cat([self.pooled, other.pooled]))


def _clip_embeds(tokenizer, encoder, prompts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    out = encoder(ids, output_hidden_states=True)
    return out.hidden_states[-2], out.text_embeds  # penultimate layer; projected pooled output


def encode_flow_prompts(
    c: FlowComponents, prompts: str | Sequence[str], *, max_sequence_length: int | None = None
) -> FlowConditioning:
    """``StableDiffusion3Pipeline.encode_prompt`` for one image per prompt (see the module docstring);
    ``max_sequence_length`` None: the components' own."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    max_sequence_length = c.max_sequence_length if max_sequence_length is None else max_sequence_length
    device = c.device
    hidden_1, pooled_1 = _clip_embeds(c.tokenizer, c.text_encoder, prompts, device)
    hidden_2, pooled_2 = _clip_embeds(c.tokenizer_2, c.text_encoder_2, prompts, device)
    clip = torch.cat([hidden_1.to(c.text_encoder.dtype), hidden_2.to(c.text_encoder.dtype)], dim=-1)
    width = c.transformer.config.joint_attention_dim
    if c.text_encoder_3 is None:
        t5 = torch.zeros(len(prompts), max_sequence_length, width, device=device, dtype=c.text_encoder.dtype)
    else:
        ids = c.tokenizer_3(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                            add_special_tokens=True, return_tensors="pt").input_ids.to(device)
        t5 = c.text_encoder_3(ids)[0].to(c.text_encoder_3.dtype)
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return FlowConditioning(torch.cat([clip, t5], dim=-2), torch.cat([pooled_1, pooled_2], dim=-1))


def flow_guided_conditioning(
    c: FlowComponents, prompts: Sequence[str], guidance_scale: float, *, max_sequence_length: int | None = None
) -> tuple[FlowConditioning, FlowConditioning | None]:
    """(conditional, unconditional "" or None when guidance is off, i.e. scale ≤ 1 as the pipeline decides)."""
    cond = encode_flow_prompts(c, prompts, max_sequence_length=max_sequence_length)
    if guidance_scale <= 1.0:
        return cond, None
    return cond, encode_flow_prompts(c, [""] * len(prompts), max_sequence_length=max_sequence_length)


def predict_velocity(
    transformer, latents: Tensor, timestep: Tensor | float, cond: FlowConditioning,
    uncond: FlowConditioning | None = None, guidance_scale: float = 1.0,
) -> Tensor:
    """The transformer's velocity at ``timestep`` (σ·1000), guided as the SD3 pipeline guides it:
    v_uncond + s·(v_cond − v_uncond), both branches in one batch (unconditional first)."""
    batch = latents.shape[0]
    t = torch.as_tensor(timestep, device=latents.device).reshape(-1).expand(batch)
    if uncond is None:
        return transformer(hidden_states=latents, timestep=t, encoder_hidden_states=cond.prompt_embeds,
                           pooled_projections=cond.pooled, return_dict=False)[0]
    both = uncond.cat(cond)
    out = transformer(hidden_states=torch.cat([latents, latents]), timestep=torch.cat([t, t]),
                      encoder_hidden_states=both.prompt_embeds, pooled_projections=both.pooled, return_dict=False)[0]
    v_uncond, v_cond = out.chunk(2)
    return v_uncond + guidance_scale * (v_cond - v_uncond)
