"""LoRA on a diffusers U-Net through peft, the adapters-off reference, and the saved outputs.

SPEC §5.1: LoRA on the attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0``
with alpha = rank and peft's "gaussian" init (A ~ N(0, 1/r), B = 0, so the adapted U-Net
starts as the base U-Net); the reference policy is the SAME U-Net with its adapters
switched off (:func:`adapters_disabled`), so only one U-Net sits in memory.

Outputs, loadable by plain diffusers:

- :func:`save_lora` -> a diffusers LoRA folder (``pytorch_lora_weights.safetensors``) via
  ``StableDiffusionPipeline.save_lora_weights`` / ``StableDiffusionXLPipeline.save_lora_weights``
  (peft keys converted with ``convert_state_dict_to_diffusers``, the adapter config stored
  as metadata), or, for an SD3 transformer, ``StableDiffusion3Pipeline.save_lora_weights``
  with peft's keys under ``transformer.`` (the layout diffusers' SD3 LoRA scripts write);
  ``pipe.load_lora_weights(folder)`` loads it.
- :func:`save_unet` -> a ``UNet2DConditionModel`` folder (full fine-tunes);
  ``UNet2DConditionModel.from_pretrained(folder)`` loads it.
- :func:`save_merged_pipeline` -> a whole pipeline folder with the LoRA merged into the
  U-Net weights (:func:`merged_unet`), loadable with ``from_pretrained`` alone.

All writes go through :func:`lpo.core.io.atomic_directory`.
"""

from __future__ import annotations

import copy
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from lpo.core.errors import LpoError
from lpo.core.io import atomic_directory
from lpo.models.flow_components import FLOW_KINDS

LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "default"


# A LoRA weight's key: peft's names (lora_A / lora_B, optionally the adapter's name) and
# diffusers' older saved names (lora.down / lora.up), with or without the "unet." (or an SD3
# LoRA's "transformer.") prefix.
_LORA_KEY = re.compile(r"^(?:unet\.|transformer\.)?(.+?)\.(?:lora_([AB])(?:\.default)?|lora\.(down|up))\.weight$")


def parse_lora_key(key: str) -> tuple[str, str] | None:
    """(U-Net module path, "A" or "B") of a LoRA weight key; None for other keys (alphas, text encoders)."""
    if key.startswith(("text_encoder", "lora_te")):
        return None
    match = _LORA_KEY.match(key)
    if not match:
        return None
    return match.group(1), match.group(2) or ("A" if match.group(3) == "down" else "B")


def lora_file_modules(folder: str | Path) -> set[str] | None:
    """The U-Net modules a local LoRA folder's safetensors file adapts; None when there is no
    local file to read (a hub reference) or its keys are in a layout lpo does not parse."""
    folder = Path(folder).expanduser()
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else ([folder] if folder.suffix == ".safetensors" else [])
    if not files or not files[0].is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt") as handle:
        modules = {parsed[0] for parsed in map(parse_lora_key, handle.keys()) if parsed is not None}
    return modules or None


def adapted_modules(module: nn.Module) -> set[str]:
    """Names of the modules of ``module`` that carry a LoRA adapter (peft tuner layers)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)}


def check_lora_applied(unet: nn.Module, folder: str | Path, base: str, fix: str) -> int:
    """After ``load_lora_weights``: the number of U-Net modules the LoRA adapted; one line when it
    adapted none, or fewer than its file names (diffusers may load a LoRA that fits nothing
    without an error, and the images are then the base model's)."""
    applied = adapted_modules(unet)
    named = lora_file_modules(folder)
    if not applied:
        raise LpoError(f"the LoRA in {folder} adapted no module of {base}'s U-Net; {fix}")
    if named is not None and not named <= applied:
        missing = sorted(named - applied)
        raise LpoError(
            f"the LoRA in {folder} adapted {len(named & applied)} of the {len(named)} U-Net modules it names "
            f"({missing[0]} is not in {base}); {fix}"
        )
    return len(applied)


def _tuner_layers(module: nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def has_lora(unet: nn.Module) -> bool:
    """Whether ``unet`` carries peft adapter layers."""
    return bool(getattr(unet, "peft_config", None)) and bool(_tuner_layers(unet))


def add_lora(
    unet: nn.Module,
    rank: int,
    alpha: float | None = None,
    targets: Sequence[str] = LORA_TARGETS,
    init: str = "gaussian",
) -> list[nn.Parameter]:
    """Freeze ``unet`` and add one LoRA adapter; returns the adapter's (trainable) parameters.

    ``alpha`` defaults to ``rank`` (scale alpha/rank = 1, as the LPO and SPO code). The
    adapter weights are created in float32 whatever the U-Net's dtype, so an fp16/bf16
    U-Net trains float32 LoRA weights (as diffusers' ``cast_training_params`` does).
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if has_lora(unet):
        raise LpoError("the U-Net already carries a LoRA adapter; start from the base U-Net")
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha if alpha is not None else rank),
        init_lora_weights=init,
        target_modules=list(targets),
    )
    unet.requires_grad_(False)
    try:
        unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    except ValueError as err:  # peft: no module matched the targets
        raise LpoError(f"could not add LoRA on {', '.join(targets)} ({err}); name modules the U-Net has") from err
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for param in params:
        param.data = param.data.float()
        param.requires_grad_(True)
    return params


@contextmanager
def adapters_disabled(unet: nn.Module) -> Iterator[None]:
    """Run ``unet`` as its base model: every peft adapter layer switched off, then restored.

    The layers' own flag is set rather than calling ``unet.disable_adapters()``, which would
    also flip the adapter weights' ``requires_grad`` (and ``enable_adapters`` would turn it
    back on for every adapter). Wrap the call in ``torch.no_grad()`` for a reference pass.
    """
    switched = [layer for layer in _tuner_layers(unet) if not layer.disable_adapters]
    for layer in switched:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer in switched:
            layer._disable_adapters = False


def lora_state_dict(unet: nn.Module, convert: bool = True) -> dict[str, torch.Tensor]:
    """The adapter weights in diffusers' key layout (``unet`` prefix added by ``save_lora_weights``);
    ``convert=False``: peft's own keys (what SD3 LoRA files hold)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    if not has_lora(unet):
        raise LpoError("the U-Net has no LoRA adapter to save")
    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    state = convert_state_dict_to_diffusers(state) if convert else state
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def lora_metadata(unet: nn.Module) -> dict[str, Any]:
    """The adapter's peft config as a dict (rank, alpha, targets), stored with the weights.
    peft keeps the target modules as a set, whose order changes with the process's hash
    seed: sorted here, so identical runs write identical bytes."""
    metadata = unet.peft_config[ADAPTER_NAME].to_dict()
    for key, value in metadata.items():
        if isinstance(value, (set, frozenset)) or (key == "target_modules" and isinstance(value, (list, tuple))):
            metadata[key] = sorted(value)
    return metadata


def save_lora(unet: nn.Module, folder: str | Path, kind: str) -> Path:
    """Write the denoiser's LoRA as a diffusers LoRA folder for an SD1.5/world (``kind`` sd15 or
    world), SDXL (``sdxl``) or SD3 (``sd3``, the transformer's) pipeline;
    ``pipe.load_lora_weights(folder)`` reads it."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    metadata = lora_metadata(unet)
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        if kind in FLOW_KINDS:
            StableDiffusion3Pipeline.save_lora_weights(
                tmp, transformer_lora_layers=lora_state_dict(unet, convert=False), safe_serialization=True,
                weight_name=LORA_WEIGHTS_NAME, transformer_lora_adapter_metadata=metadata,
            )
        else:
            pipeline_cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
            pipeline_cls.save_lora_weights(
                tmp, unet_lora_layers=lora_state_dict(unet), safe_serialization=True, weight_name=LORA_WEIGHTS_NAME,
                unet_lora_adapter_metadata=metadata,
            )
        canonical_safetensors_header(tmp / LORA_WEIGHTS_NAME)
    return folder


def canonical_safetensors_header(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with its keys sorted, in place.

    safetensors keeps ``__metadata__`` in a hash map whose order changes from one save to
    the next, so two saves of the same LoRA (diffusers writes "format" and the adapter
    metadata) differ in their bytes. The header is rewritten with the same length (padded
    with spaces, which the format allows), so the tensor data does not move."""
    import json
    import struct

    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        ordered = {k: (dict(sorted(v.items())) if k == "__metadata__" else v) for k, v in sorted(header.items())}
        text = json.dumps(ordered, separators=(",", ":")).encode()
        if len(text) > length:  # cannot happen for a header serde wrote compactly; leave the file as it is
            return
        f.seek(8)
        f.write(text + b" " * (length - len(text)))


def merged_unet(unet: nn.Module) -> nn.Module:
    """A copy of ``unet`` with its LoRA merged into the base weights and the adapter layers
    removed: a plain ``UNet2DConditionModel``. ``unet`` itself is untouched."""
    merged = copy.deepcopy(unet)
    if has_lora(merged):
        merged.fuse_lora(lora_scale=1.0)
        merged.unload_lora()
    merged.requires_grad_(False)
    return merged


def save_unet(unet: nn.Module, folder: str | Path) -> Path:
    """Write ``unet`` as a diffusers ``UNet2DConditionModel`` folder (LoRA merged in, if any)."""
    folder = Path(folder)
    plain = merged_unet(unet) if has_lora(unet) else unet
    with atomic_directory(folder) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
    return folder


def save_merged_pipeline(components: Any, unet: nn.Module, folder: str | Path) -> Path:
    """Write a full pipeline folder: ``components`` (VAE, text encoders, scheduler) with
    ``unet`` (LoRA merged in). A world pipeline keeps its marker file so lpo loads it as one."""
    from dataclasses import replace

    from lpo.sampling.generate import build_flow_pipeline, build_pipeline
    from lpo.models.components import WORLD_MARKER

    plain = merged_unet(unet) if has_lora(unet) else unet
    if components.kind in FLOW_KINDS:
        pipeline = build_flow_pipeline(replace(components, transformer=plain))
    else:
        pipeline = build_pipeline(replace(components, unet=plain))
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        marker = Path(str(components.source)) / WORLD_MARKER
        if components.kind in ("world", "world-flow") and marker.is_file():
            shutil.copy2(marker, tmp / WORLD_MARKER)
    return folder
