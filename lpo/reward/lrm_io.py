"""The LRM's folder: :func:`save_lrm` and :func:`load_lrm` (SPEC §4.1).

Saving writes one folder: ``model.safetensors`` (every LRM weight), ``lrm_config.json``
(the :class:`~lpo.reward.lrm.LRMConfig`, including the base model and kind, plus the U-Net and
text-encoder configs, so :func:`load_lrm` rebuilds the architecture without the base model)
and the tokenizer(s), in the step reward folder format of :mod:`lpo.reward.folder_format`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lpo.core.errors import LpoError
from lpo.core.io import load_safetensors_strict, one_line
from lpo.models.components import DiffusionComponents
from lpo.reward.lrm import LatentRewardModel, LRMConfig
from lpo.reward.folder_format import WEIGHTS_NAME, RewardFolder
from lpo.reward.lrm_unet import UNET_UP_PATH

LRM_CONFIG_NAME = "lrm_config.json"
LRM_WEIGHTS_NAME = WEIGHTS_NAME
LRM_FOLDER = RewardFolder(
    what="LRM", format="lpo-lrm", version=1, config_name=LRM_CONFIG_NAME, writer="save_lrm",
    hint="pass a folder written by `lpo lrm train` (or save_lrm)", retrain="train the LRM again",
)
TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")


def save_lrm(model: LatentRewardModel, folder: str | Path) -> Path:
    """Write ``model`` to ``folder`` atomically (a temporary sibling renamed into place)."""
    folder = Path(folder)
    encoders = {"text_encoder": model.text_encoder, "text_encoder_2": model.text_encoder_2}
    for name, encoder in encoders.items():
        if encoder is not None and type(encoder).__name__ not in TEXT_ENCODER_CLASSES:
            raise LpoError(
                f"cannot save an LRM whose {name} is a {type(encoder).__name__}; "
                f"load_lrm rebuilds only {', '.join(TEXT_ENCODER_CLASSES)}"
            )
    meta = {
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
    LRM_FOLDER.write(folder, model.state_dict(), meta, {"tokenizer": model.tokenizer, "tokenizer_2": model.tokenizer_2})
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
    config_path, weights_path = LRM_FOLDER.files(folder)

    # 1. the saved description, and whether it is for this base model
    meta = LRM_FOLDER.read_config(config_path)
    try:
        known = {f.name for f in fields(LRMConfig)}
        values = {k: v for k, v in meta["config"].items() if k in known}
        if "vfe_uncond" not in values and meta.get("force_zeros_for_empty_prompt"):
            values["vfe_uncond"] = "zeros"  # an SDXL LRM saved before the field: it was trained with zeros
        config = LRMConfig(**values)
        if config.kind is None or config.base_model is None:
            raise ValueError("base_model and kind must be set")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise LpoError(f"{config_path} has an invalid LRM config ({one_line(err)}); train the LRM again") from err
    expected = expected_base if expected_base is not None else (components.source if components is not None else None)
    LRM_FOLDER.check_base(folder, config, expected, None if components is None else components.kind,
                          None if components is None else components.source,
                          "train an LRM for {model} with `lpo lrm train --model {model}`")

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
        if tokenizer_ is not None:
            LRM_FOLDER.check_tokenizer(tokenizer_, encoder.config.vocab_size, folder / name)

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
