"""The LRM's folder: :func:`save_lrm` and :func:`load_lrm` (SPEC §4.1).

Saving writes one folder: ``model.safetensors`` (every LRM weight), ``lrm_config.json``
(the :class:`~lpo.reward.lrm.LRMConfig`, including the base model and kind, plus the U-Net and
text-encoder configs, so :func:`load_lrm` rebuilds the architecture without the base model)
and the tokenizer(s). :func:`same_base_model` is the rule both step reward folders (this one
and :mod:`lpo.reward.pixel_io`) use to refuse a model trained for another base model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpo.core.errors import LpoError
from lpo.core.hashing import base_model_fingerprint
from lpo.core.io import atomic_directory, load_safetensors_strict, one_line
from lpo.models.components import DiffusionComponents
from lpo.reward.lrm import LatentRewardModel, LRMConfig
from lpo.reward.lrm_unet import UNET_UP_PATH

LRM_CONFIG_NAME = "lrm_config.json"
LRM_WEIGHTS_NAME = "model.safetensors"
LRM_FORMAT = "lpo-lrm"
LRM_FORMAT_VERSION = 1
TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")


def save_lrm(model: LatentRewardModel, folder: str | Path) -> Path:
    """Write ``model`` to ``folder`` atomically (a temporary sibling renamed into place)."""
    folder = Path(folder)
    from safetensors.torch import save_file

    encoders = {"text_encoder": model.text_encoder, "text_encoder_2": model.text_encoder_2}
    for name, encoder in encoders.items():
        if encoder is not None and type(encoder).__name__ not in TEXT_ENCODER_CLASSES:
            raise LpoError(
                f"cannot save an LRM whose {name} is a {type(encoder).__name__}; "
                f"load_lrm rebuilds only {', '.join(TEXT_ENCODER_CLASSES)}"
            )
    meta = {
        "format": LRM_FORMAT,
        "format_version": LRM_FORMAT_VERSION,
        "config": asdict(model.config),
        "resolution": model.resolution,
        "force_zeros_for_empty_prompt": model.force_zeros_for_empty_prompt,
        "feature_dims": list(model.feature_dims),
        "text_dim": model.text_dim,
        "dtype": str(model.dtype).removeprefix("torch."),
        # The full U-Net config: load_lrm builds the U-Net from it, then deletes this up path.
        "unet": {"config": json.loads(model.unet.to_json_string()), "removed": list(UNET_UP_PATH)},
        **{
            name: None
            if encoder is None
            else {"class": type(encoder).__name__, "config": json.loads(encoder.config.to_json_string())}
            for name, encoder in encoders.items()
        },
    }
    state = {key: tensor.detach().to("cpu").contiguous() for key, tensor in model.state_dict().items()}
    with atomic_directory(folder) as tmp:
        save_file(state, str(tmp / LRM_WEIGHTS_NAME), metadata={"format": "pt"})
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        if model.tokenizer_2 is not None:
            model.tokenizer_2.save_pretrained(tmp / "tokenizer_2")
        (tmp / LRM_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def load_lrm(
    folder: str | Path,
    components: DiffusionComponents | None = None,
    expected_base: str | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> LatentRewardModel:
    """Rebuild an LRM saved by :func:`save_lrm`, in eval mode, from its folder alone.

    ``expected_base`` (default: ``components.source`` when components are given) must name
    the same base model the LRM was built from. ``device`` defaults to the components'
    device (else CPU); ``dtype`` to the saved one. Failures a user can fix (missing or
    damaged files, another base model) raise a one-line LpoError.
    """
    folder = Path(folder)
    hint = "pass a folder written by `lpo lrm train` (or save_lrm)"
    if not folder.exists():
        raise LpoError(f"LRM folder {folder} does not exist; {hint}")
    if not folder.is_dir():
        raise LpoError(f"LRM path {folder} is a file, not a folder; {hint}")
    config_path, weights_path = folder / LRM_CONFIG_NAME, folder / LRM_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise LpoError(f"{path} is missing: {folder} is not a complete LRM folder; {hint}, or train the LRM again")

    # 1. the saved description, and whether it is for this base model
    meta = _read_meta(config_path)
    try:
        known = {f.name for f in fields(LRMConfig)}
        config = LRMConfig(**{k: v for k, v in meta["config"].items() if k in known})
        if config.kind is None or config.base_model is None:
            raise ValueError("base_model and kind must be set")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise LpoError(f"{config_path} has an invalid LRM config ({one_line(err)}); train the LRM again") from err
    expected = expected_base if expected_base is not None else (components.source if components is not None else None)
    if expected is not None and not same_base_model(config.base_model, expected, config.base_model_hash):
        raise LpoError(
            f"LRM {folder} was trained for base model {config.base_model} but you are using {expected}; "
            f"train an LRM for {expected} with `lpo lrm train --model {expected}`"
        )
    if components is not None and components.kind != config.kind:
        raise LpoError(
            f"LRM {folder} is for a {config.kind} model but the components are {components.kind}; "
            f"train an LRM for {components.source} with `lpo lrm train --model {components.source}`"
        )

    # 2. the architecture, with empty (meta) weights: nothing is initialised only to be overwritten
    from accelerate import init_empty_weights

    try:
        tokenizer = _load_tokenizer(folder / "tokenizer")
        tokenizer_2 = _load_tokenizer(folder / "tokenizer_2") if config.kind == "sdxl" else None
        with init_empty_weights(include_buffers=False):  # buffers such as position_ids stay real
            unet = _build_unet(meta["unet"]["config"])
            text_encoder = _build_text_encoder(meta["text_encoder"])
            text_encoder_2 = _build_text_encoder(meta["text_encoder_2"]) if config.kind == "sdxl" else None
            model = LatentRewardModel(
                unet,
                text_encoder,
                tokenizer,
                config,
                resolution=int(meta["resolution"]),
                text_encoder_2=text_encoder_2,
                tokenizer_2=tokenizer_2,
                force_zeros_for_empty_prompt=bool(meta.get("force_zeros_for_empty_prompt", False)),
            )
    except (KeyError, TypeError, ValueError, OSError) as err:
        raise LpoError(
            f"could not rebuild the LRM described by {config_path} ({one_line(err)}); train the LRM again"
        ) from err
    pairs = (("tokenizer", tokenizer, text_encoder), ("tokenizer_2", tokenizer_2, text_encoder_2))
    for name, tokenizer_, encoder in pairs:
        # transformers builds a 2-token default tokenizer from a folder without vocabulary files
        if tokenizer_ is not None and not encoder.config.vocab_size / 2 <= len(tokenizer_) <= encoder.config.vocab_size:
            raise LpoError(
                f"{folder / name} has {len(tokenizer_)} tokens but the text encoder has {encoder.config.vocab_size}; "
                "the tokenizer files are missing or damaged: train the LRM again"
            )

    # 3. the weights, strictly
    load_safetensors_strict(
        model, weights_path, what="LRM weights", config_name=LRM_CONFIG_NAME,
        fix="the file is damaged or from another LRM: train the LRM again or restore the folder",
    )
    model.eval()
    if device is None and components is not None:
        device = components.device
    kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    return model.to(**kwargs) if kwargs else model


def same_base_model(a: str, b: str, a_hash: str | None = None) -> bool:
    """Whether two base-model names mean the same model: equal strings, the same local folder,
    or (``a_hash``, :func:`lpo.core.hashing.base_model_fingerprint` of ``a``) a folder ``b`` whose
    U-Net has the same content."""
    if str(a) == str(b):
        return True
    path_a, path_b = Path(a).expanduser(), Path(b).expanduser()
    if path_a.exists() and path_b.exists() and path_a.resolve() == path_b.resolve():
        return True
    return a_hash is not None and base_model_fingerprint(b) == a_hash


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LpoError(
            f"could not read {path} ({one_line(err)}); the LRM folder is damaged: train the LRM again"
        ) from err
    if not isinstance(meta, dict) or meta.get("format") != LRM_FORMAT:
        raise LpoError(
            f"{path} is not an lpo LRM config (no \"format\": \"{LRM_FORMAT}\"); pass a folder written by save_lrm"
        )
    if meta.get("format_version") != LRM_FORMAT_VERSION:
        raise LpoError(
            f"{path} has LRM format version {meta.get('format_version')}; this lpo reads version "
            f"{LRM_FORMAT_VERSION}: upgrade lpo or train the LRM again"
        )
    return meta


def _load_tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    if not folder.is_dir():
        raise OSError(f"{folder} is missing")
    return CLIPTokenizer.from_pretrained(folder)


def _build_unet(config: dict[str, Any]) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(config)


def _build_text_encoder(spec: dict[str, Any]) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    classes = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
    if spec["class"] not in classes:
        raise ValueError(f"text encoder class {spec['class']!r} is not one of {', '.join(classes)}")
    return classes[spec["class"]](CLIPTextConfig.from_dict(spec["config"]))
