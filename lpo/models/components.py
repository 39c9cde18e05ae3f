"""Load a text-to-image pipeline's components and encode prompts the way its pipeline does.

One entry point, :func:`load_components`, takes a diffusers pipeline folder or a hub id
and returns a :class:`DiffusionComponents` for one of three kinds (SPEC §1.1, §4.1):

- ``"sd15"``  ``StableDiffusionPipeline`` (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5):
  one CLIP text encoder; the U-Net is conditioned on its last hidden state.
- ``"sdxl"``  ``StableDiffusionXLPipeline`` (e.g. stabilityai/stable-diffusion-xl-base-1.0):
  two text encoders; the U-Net takes their penultimate hidden states concatenated, plus the
  pooled projected embedding of the second (``text_embeds``) and ``add_time_ids``
  (orig_h, orig_w, crop_top, crop_left, target_h, target_w) = (res, res, 0, 0, res, res).
- ``"world"`` an SD1.5-style pipeline folder that also holds ``lpo_world.json``: the tiny
  latent diffusion model pretrained in the embedded world (SPEC §2). It loads and encodes
  exactly like ``"sd15"``.

Every component goes through its class's own ``from_pretrained``, so real checkpoints and
the tiny test pipelines share one code path. The scheduler is always a ``DDIMScheduler``
built from the pipeline's scheduler config, since the trainers sample with DDIM (SPEC §3).

:func:`encode_prompts`, :func:`encode_negative` and :func:`guided_conditioning` reproduce
``StableDiffusionPipeline.encode_prompt`` / ``StableDiffusionXLPipeline.encode_prompt``
(no clip skip, one image per prompt) and return the :mod:`lpo.models.conditioning` dataclasses
that ``predict_noise`` consumes. They never disable autograd: callers that train the text
encoder get gradients, callers that don't wrap them in ``torch.no_grad()``.

Loading failures a user can fix (bad path, missing subfolder, damaged weights, hub id not
reachable offline) become a one-line :class:`~lpo.core.errors.LpoError` naming the path.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import Tensor

from lpo.models.conditioning import GuidedConditioning, TextConditioning
from lpo.models.parts import LatentPipelineParts
from lpo.core.errors import LpoError

logger = logging.getLogger(__name__)

ModelKind = Literal["sd15", "sdxl", "world"]

WORLD_MARKER = "lpo_world.json"

# SD1.5's noise schedule as a DDIM config ("leading" spacing, offset 1: 951, 901, …, 1).
# The world model uses it too, so the published step thresholds and β transfer.
SD15_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)
PIPELINE_KINDS: dict[str, ModelKind] = {
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionXLPipeline": "sdxl",
}
SD15_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_SUBFOLDERS = SD15_SUBFOLDERS + ("text_encoder_2", "tokenizer_2")
EXAMPLE_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# "owner/name": the only shape of hub id treated as one when no such local folder exists.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# DDIM's own defaults (clip x0 to [-1, 1], alpha_0 = 1) are for pixel-space models; SD1.5
# and SDXL state these values in their scheduler configs, and any latent pipeline needs them.
_LATENT_DDIM_DEFAULTS = {"clip_sample": False, "set_alpha_to_one": False}


@dataclass
class DiffusionComponents(LatentPipelineParts):
    """The parts of a text-to-image pipeline that sampling, rewards and trainers use.

    ``text_encoder_2`` / ``tokenizer_2`` are set only for ``kind == "sdxl"``.
    ``force_zeros_for_empty_prompt`` is the SDXL pipeline's config flag (False otherwise):
    when set, the default unconditional branch is all zeros rather than the encoded "".
    """

    kind: ModelKind
    source: str
    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    scheduler: Any  # diffusers.DDIMScheduler
    text_encoder: Any  # transformers.CLIPTextModel
    tokenizer: Any  # transformers.CLIPTokenizer
    text_encoder_2: Any = None  # transformers.CLIPTextModelWithProjection (SDXL)
    tokenizer_2: Any = None  # transformers.CLIPTokenizer (SDXL)
    force_zeros_for_empty_prompt: bool = False

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Location:
    """Where a component lives: a local folder, or a hub repo id."""

    where: str
    is_hub: bool

    def describe(self, subfolder: str | None = None) -> str:
        path = self.where if subfolder is None else f"{self.where}/{subfolder}"
        return f"hub id {path}" if self.is_hub else path


def load_components(
    model: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    vae: str | Path | None = None,
    vae_subfolder: str | None = None,
    unet: str | Path | None = None,
    unet_subfolder: str | None = None,
) -> DiffusionComponents:
    """Load the components of an SD1.5-style, SDXL-style or world pipeline, in eval mode.

    ``model`` is a diffusers pipeline folder (with ``model_index.json``) or a hub id
    ``owner/name``. ``vae`` / ``unet`` replace those components with an
    ``AutoencoderKL`` / ``UNet2DConditionModel`` from another folder or hub id (e.g.
    ``madebyollin/sdxl-vae-fp16-fix``); ``*_subfolder`` points inside it. Nothing is
    frozen here: trainers decide what trains.
    """
    source = _locate(model)

    # 1. Which pipeline is it? model_index.json names the class; the marker file a world.
    index = _read_model_index(source)
    class_name = index.get("_class_name")
    kind = PIPELINE_KINDS.get(class_name)
    if kind is None:
        raise LpoError(
            f"{source.describe()} holds a {class_name} pipeline; lpo loads "
            f"{' and '.join(PIPELINE_KINDS)} pipelines (SD1.5- and SDXL-style) here; SD3-style flow pipelines "
            "load with lpo.models.flow_components.load_flow_components"
        )
    if _has_world_marker(source):
        if kind != "sd15":
            raise LpoError(
                f"{source.describe()} has {WORLD_MARKER} but holds a {class_name}; world pipelines "
                "are StableDiffusionPipeline folders: remove the marker or re-save the world model"
            )
        kind = "world"
    subfolders = SDXL_SUBFOLDERS if kind == "sdxl" else SD15_SUBFOLDERS
    if not source.is_hub:
        for name in subfolders:
            if not (Path(source.where) / name).is_dir():
                expected = ", ".join(f"{s}/" for s in subfolders)
                raise LpoError(
                    f"{source.where}/{name} is missing (expected a diffusers pipeline folder with {expected})"
                )

    # 2. Load each component with its own class's from_pretrained.
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if unet is None:
        unet_module = _load(UNet2DConditionModel, source, "unet", torch_dtype=dtype)
    else:
        unet_source = _locate_override(unet, unet_subfolder, "unet")
        unet_module = _load(UNet2DConditionModel, unet_source, unet_subfolder, torch_dtype=dtype)
    if vae is None:
        vae_module = _load(AutoencoderKL, source, "vae", torch_dtype=dtype)
    else:
        vae_source = _locate_override(vae, vae_subfolder, "vae")
        vae_module = _guarded(vae_source, vae_subfolder, "the VAE override (model.vae)", lambda: AutoencoderKL.from_pretrained(
            vae_source.where, torch_dtype=dtype, **({"subfolder": vae_subfolder} if vae_subfolder else {})),
            hub_fix="set model.vae=none to use the pipeline's own VAE, or model.vae to a local AutoencoderKL folder")
    text_encoder = _load(CLIPTextModel, source, "text_encoder", dtype=dtype)
    tokenizer = _load(CLIPTokenizer, source, "tokenizer")
    text_encoder_2 = tokenizer_2 = None
    if kind == "sdxl":
        text_encoder_2 = _load(CLIPTextModelWithProjection, source, "text_encoder_2", dtype=dtype)
        tokenizer_2 = _load(CLIPTokenizer, source, "tokenizer_2")

    # The SDXL pipeline's constructor default is True; SD1.5 has no such flag.
    force_zeros = kind == "sdxl" and bool(index.get("force_zeros_for_empty_prompt", True))
    components = DiffusionComponents(
        kind=kind,
        source=str(model),
        unet=unet_module,
        vae=vae_module,
        scheduler=_load_ddim_scheduler(source),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        force_zeros_for_empty_prompt=force_zeros,
    )
    # 3. Catch mismatched parts now (mostly from overrides), not as a shape error mid-run.
    _check_compatible(components, source)
    for module in (components.unet, components.vae, *components.text_encoders):
        module.eval()
    return components.to(device=device)


def _locate(model: str | Path) -> _Location:
    """An existing local folder; else a hub id if it has the shape ``owner/name``; else an error."""
    text = os.fspath(model)
    path = Path(text).expanduser()
    fix = f"pass a diffusers pipeline folder or a hub id such as {EXAMPLE_HUB_ID}"
    if path.exists():
        if not path.is_dir():
            raise LpoError(f"model {text} is a file; {fix}")
        return _Location(str(path), is_hub=False)
    if isinstance(model, str) and _HUB_ID.match(text):
        return _Location(text, is_hub=True)
    raise LpoError(f"model folder {text} does not exist; {fix}")


def _locate_override(model: str | Path, subfolder: str | None, what: str) -> _Location:
    """Location of a single-component override (``vae=`` / ``unet=``), checked like a model."""
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        folder = path / subfolder if subfolder else path
        if not (folder / "config.json").is_file():
            raise LpoError(
                f"{what} folder {folder} has no config.json; pass a diffusers {what} folder "
                f"(e.g. a pipeline's {what}/), or the pipeline folder with {what}_subfolder='{what}'"
            )
        return _Location(str(path), is_hub=False)
    if isinstance(model, str) and _HUB_ID.match(text):
        return _Location(text, is_hub=True)
    raise LpoError(f"{what} folder {text} does not exist; pass a diffusers {what} folder or a hub id")


def _short(err: BaseException) -> str:
    """One line of the original error for a one-line LpoError."""
    lines = str(err).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(err).__name__}: {first[:200]}"


def _hub_hint(location: _Location, fix: str = "pass a local pipeline folder") -> str:
    return (
        f"it could not be downloaded and is not in the local Hugging Face cache (and there is no local "
        f"folder {location.where}); {fix}, or allow hub access (network on, "
        "HF_HUB_OFFLINE unset, `hf auth login` for gated models)"
    )


def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "these files could not be read", never programming errors."""
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors import SafetensorError

    # OSError covers missing/unreadable files and every hub HTTP error; ValueError covers
    # bad JSON configs and shape/config mismatches; RuntimeError covers torch.load failures.
    return (OSError, ValueError, RuntimeError, EntryNotFoundError, SafetensorError)


def _load(cls: Any, location: _Location, subfolder: str | None, **kwargs: Any) -> Any:
    """``cls.from_pretrained(location, subfolder=...)`` with load failures as one-line LpoErrors."""
    if subfolder is not None:
        kwargs["subfolder"] = subfolder
    return _guarded(location, subfolder, cls.__name__, lambda: cls.from_pretrained(location.where, **kwargs))


def _guarded(location: _Location, subfolder: str | None, what: str, load: Callable[[], Any],
             hub_fix: str = "pass a local pipeline folder") -> Any:
    """Run one loading call; a failure to read the files becomes a one-line LpoError."""
    try:
        return load()
    except _load_errors() as err:
        where = location.describe(subfolder)
        if location.is_hub:
            raise LpoError(f"could not load {what} from {where} ({_short(err)}): {_hub_hint(location, hub_fix)}") from err
        raise LpoError(
            f"could not load {what} from {where} ({_short(err)}); the files may be damaged or "
            "incomplete: re-save or re-download the pipeline"
        ) from err


def _read_model_index(source: _Location) -> dict[str, Any]:
    if source.is_hub:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(source.where, "model_index.json")
        except _load_errors() as err:
            raise LpoError(
                f"could not get model_index.json of hub id {source.where} ({_short(err)}): {_hub_hint(source)}"
            ) from err
    else:
        path = Path(source.where) / "model_index.json"
        if not path.is_file():
            raise LpoError(
                f"{source.where} has no model_index.json; pass a diffusers pipeline folder "
                f"(saved with save_pretrained) or a hub id such as {EXAMPLE_HUB_ID}"
            )
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise LpoError(f"could not read {path} ({_short(err)}); re-save or re-download the pipeline") from err


def _has_world_marker(source: _Location) -> bool:
    if not source.is_hub:
        return (Path(source.where) / WORLD_MARKER).is_file()
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        hf_hub_download(source.where, WORLD_MARKER)
    except EntryNotFoundError:  # absent on the hub, or offline and never fetched
        return False
    return True


def ddim_from_config(config: dict[str, Any]) -> Any:
    """A ``DDIMScheduler`` from any scheduler config (PNDM, Euler, DDIM, ...).

    Keys DDIM doesn't know are ignored; ``clip_sample`` / ``set_alpha_to_one``, when the
    config doesn't state them, take the latent-diffusion values (False, False) instead of
    DDIM's pixel-space defaults, with a warning, since clipping latent x0 to [-1, 1] would
    quietly distort every sample.
    """
    from diffusers import DDIMScheduler

    missing = {k: v for k, v in _LATENT_DDIM_DEFAULTS.items() if k not in config}
    if missing:
        logger.warning(
            "scheduler config (%s) does not set %s; using %s as SD1.5/SDXL do",
            config.get("_class_name", "unknown class"),
            ", ".join(missing),
            ", ".join(f"{k}={v}" for k, v in missing.items()),
        )
    return DDIMScheduler.from_config({**config, **missing})


def _load_ddim_scheduler(source: _Location) -> Any:
    from diffusers import DDIMScheduler

    # load_config + from_config is DDIMScheduler.from_pretrained, split to see the raw config.
    config = _guarded(
        source, "scheduler", "scheduler config", lambda: DDIMScheduler.load_config(source.where, subfolder="scheduler")
    )
    return ddim_from_config(config)


def _check_compatible(c: DiffusionComponents, source: _Location) -> None:
    """Raise LpoError when the loaded parts cannot work together (widths, vocab, channels)."""
    unet_cfg = c.unet.config
    if unet_cfg.in_channels != c.latent_channels:
        raise LpoError(
            f"the vae of {source.describe()} has {c.latent_channels} latent channels but the unet takes "
            f"{unet_cfg.in_channels}; pass a vae and unet made for each other"
        )
    pairs = ((c.tokenizer, c.text_encoder, "tokenizer"), (c.tokenizer_2, c.text_encoder_2, "tokenizer_2"))
    for tokenizer, encoder, name in pairs:
        # Too many tokens would index past the embedding table; far too few means transformers 5
        # silently built its 2-token default because the tokenizer files are missing.
        vocab = encoder.config.vocab_size if encoder is not None else 0
        if tokenizer is not None and not vocab / 2 <= len(tokenizer) <= vocab:
            raise LpoError(
                f"{source.describe(name)} has {len(tokenizer)} tokens but its text encoder has a vocabulary of "
                f"{vocab}; the tokenizer files are missing or belong to another model"
            )
    text_width = sum(e.config.hidden_size for e in c.text_encoders)
    if isinstance(unet_cfg.cross_attention_dim, int) and unet_cfg.cross_attention_dim != text_width:
        raise LpoError(
            f"the unet has cross_attention_dim {unet_cfg.cross_attention_dim} but the {c.kind} text encoders "
            f"of {source.describe()} give {text_width}; pass a unet made for this pipeline"
        )
    if c.kind == "sdxl":
        expected = c.text_encoder_2.config.projection_dim + 6 * (unet_cfg.addition_time_embed_dim or 0)
        if unet_cfg.addition_embed_type != "text_time" or unet_cfg.projection_class_embeddings_input_dim != expected:
            raise LpoError(
                f"the unet is not an SDXL unet for {source.describe()}: it needs addition_embed_type 'text_time' "
                f"and projection_class_embeddings_input_dim {expected} (got {unet_cfg.addition_embed_type!r}, "
                f"{unet_cfg.projection_class_embeddings_input_dim})"
            )


# --------------------------------------------------------------------------- prompts


def _as_list(prompts: str | Sequence[str]) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    return prompts


def _token_ids(tokenizer: Any, prompts: list[str], device: torch.device) -> Tensor:
    """(B, L) ids padded to the tokenizer's full length (77 for CLIP), as the pipelines do."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


def _run_sd15_encoder(c: DiffusionComponents, prompts: list[str]) -> Any:
    """The SD1.5 text encoder's output for ``prompts`` (attention mask only if its config asks)."""
    inputs = c.tokenizer(
        prompts, padding="max_length", max_length=c.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    device = c.text_encoder.device
    mask = inputs.attention_mask.to(device) if getattr(c.text_encoder.config, "use_attention_mask", False) else None
    return c.text_encoder(inputs.input_ids.to(device), attention_mask=mask)


def sdxl_add_time_ids(
    c: DiffusionComponents,
    batch_size: int,
    resolution: int | tuple[int, int] | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """(B, 6) SDXL micro-conditioning (h, w, 0, 0, h, w); ``resolution`` defaults to the model's."""
    if resolution is None:
        resolution = c.default_resolution
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    row = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype or c.dtype, device=c.device)
    return row.expand(batch_size, 6).clone()


def encode_prompts(
    components: DiffusionComponents,
    prompts: str | Sequence[str],
    *,
    resolution: int | tuple[int, int] | None = None,
) -> TextConditioning:
    """U-Net conditioning for ``prompts``, as the model's own diffusers pipeline encodes them.

    SD1.5/world: ``prompt_embeds`` (B, L, D) = the text encoder's last hidden state.
    SDXL: ``prompt_embeds`` (B, L, D1+D2) = penultimate hidden states of both encoders
    concatenated; ``pooled_prompt_embeds`` (B, P) = ``text_encoder_2``'s ``text_embeds``;
    ``add_time_ids`` (B, 6) for ``resolution`` (int or (h, w); default the model's).
    """
    prompts = _as_list(prompts)
    c = components
    if c.kind != "sdxl":
        prompt_embeds = _run_sd15_encoder(c, prompts)[0]  # (B, L, D) last hidden state
        return TextConditioning(prompt_embeds=prompt_embeds.to(device=c.device))

    # SDXL (diffusers encode_prompt): hidden_states[-2] of each encoder, no attention mask.
    out_1 = c.text_encoder(_token_ids(c.tokenizer, prompts, c.text_encoder.device), output_hidden_states=True)
    out_2 = c.text_encoder_2(_token_ids(c.tokenizer_2, prompts, c.text_encoder_2.device), output_hidden_states=True)
    prompt_embeds = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)  # (B, L, D1+D2)
    prompt_embeds = prompt_embeds.to(dtype=c.text_encoder_2.dtype, device=c.device)
    pooled = out_2.text_embeds.to(device=c.device)  # (B, P)
    return TextConditioning(
        prompt_embeds=prompt_embeds,
        pooled_prompt_embeds=pooled,
        add_time_ids=sdxl_add_time_ids(c, len(prompts), resolution, dtype=prompt_embeds.dtype),
    )


def encode_negative(
    components: DiffusionComponents,
    batch_size: int,
    negative_prompt: str | Sequence[str] | None = None,
    *,
    resolution: int | tuple[int, int] | None = None,
) -> TextConditioning:
    """The unconditional branch for CFG, built as the diffusers pipeline builds it.

    ``negative_prompt=None`` (the pipelines' default): SDXL with
    ``force_zeros_for_empty_prompt`` gives all-zero ``prompt_embeds`` and pooled embeds;
    otherwise "" is encoded. A string (even "") is encoded for every row; a list must have
    ``batch_size`` entries. Like diffusers, an explicit "" is *not* zeroed.
    """
    c = components
    if negative_prompt is None and c.force_zeros_for_empty_prompt:
        width = sum(e.config.hidden_size for e in c.text_encoders)
        length, pooled_width = c.tokenizer.model_max_length, c.text_encoder_2.config.projection_dim
        dtype = c.text_encoder_2.dtype
        return TextConditioning(
            prompt_embeds=torch.zeros(batch_size, length, width, dtype=dtype, device=c.device),
            pooled_prompt_embeds=torch.zeros(batch_size, pooled_width, dtype=dtype, device=c.device),
            add_time_ids=sdxl_add_time_ids(c, batch_size, resolution, dtype=dtype),
        )
    if negative_prompt is None:
        negative_prompt = ""
    negatives = [negative_prompt] * batch_size if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != batch_size:
        raise ValueError(f"negative_prompt has {len(negatives)} entries but the batch has {batch_size} prompts")
    return encode_prompts(c, negatives, resolution=resolution)


def guided_conditioning(
    components: DiffusionComponents,
    prompts: str | Sequence[str],
    guidance_scale: float,
    negative_prompt: str | Sequence[str] | None = None,
    *,
    resolution: int | tuple[int, int] | None = None,
) -> GuidedConditioning:
    """Conditional + unconditional conditioning for CFG with weight ``guidance_scale``.

    ``guidance_scale == 1`` needs no unconditional pass, so ``uncond`` is None then.
    ``negative_prompt`` follows :func:`encode_negative`.
    """
    cond = encode_prompts(components, prompts, resolution=resolution)
    uncond = None
    if guidance_scale != 1.0:
        uncond = encode_negative(components, cond.batch_size, negative_prompt, resolution=resolution)
    return GuidedConditioning(cond=cond, uncond=uncond, guidance_scale=float(guidance_scale))


def pooled_text_embedding(components: DiffusionComponents, prompts: str | Sequence[str]) -> Tensor:
    """(B, P) pooled prompt embedding for the LRM's text tower (SPEC §4.1).

    SD1.5/world: the text encoder's ``pooler_output`` (final-layer-normed EOS state, 768 for
    CLIP-L). SDXL: ``text_encoder_2``'s projected ``text_embeds`` (1280 for OpenCLIP-bigG).
    """
    prompts = _as_list(prompts)
    c = components
    if c.kind == "sdxl":
        ids = _token_ids(c.tokenizer_2, prompts, c.text_encoder_2.device)
        return c.text_encoder_2(ids).text_embeds
    return _run_sd15_encoder(c, prompts).pooler_output


def encode_prompts_and_pooled(
    components: DiffusionComponents,
    prompts: str | Sequence[str],
    *,
    resolution: int | tuple[int, int] | None = None,
) -> tuple[TextConditioning, Tensor]:
    """:func:`encode_prompts` and :func:`pooled_text_embedding` from one run of each text encoder.

    The LRM needs both for the same prompts, with gradients through the text encoders;
    calling the two functions would run (and backpropagate through) every encoder twice.
    """
    prompts = _as_list(prompts)
    c = components
    if c.kind == "sdxl":  # the pooled text_embeds are already part of the U-Net conditioning
        cond = encode_prompts(c, prompts, resolution=resolution)
        return cond, cond.pooled_prompt_embeds
    out = _run_sd15_encoder(c, prompts)
    return TextConditioning(prompt_embeds=out.last_hidden_state.to(device=c.device)), out.pooler_output
