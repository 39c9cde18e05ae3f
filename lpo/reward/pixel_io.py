"""The pixel step reward's folder: :func:`save_pixel_reward` and :func:`load_pixel_reward`.

Saving writes one folder atomically: ``model.safetensors`` (the scorer's weights only),
``pixel_reward_config.json`` (the :class:`~lpo.reward.pixel.PixelRewardConfig` naming the
base model, and the scorer's CLIP config, AdaLN config, preprocessing and the source it
was initialised from) and ``tokenizer/``. The base U-Net and VAE are never saved:
:func:`load_pixel_reward` takes them from the components it is given and refuses a scorer
trained for another base model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from lpo.reward.clip_preprocess import ImagePreprocessConfig
from lpo.core.errors import LpoError
from lpo.core.io import atomic_directory, load_safetensors_strict, one_line
from lpo.reward.lrm_io import same_base_model
from lpo.models.components import DiffusionComponents
from lpo.reward.pixel import PixelRewardConfig, PixelStepReward
from lpo.reward.pixel_scorer import TimestepConditionedScorer
from lpo.reward.time_conditioning import AdaLNConfig

PIXEL_REWARD_CONFIG_NAME = "pixel_reward_config.json"
PIXEL_REWARD_WEIGHTS_NAME = "model.safetensors"
PIXEL_REWARD_FORMAT = "lpo-pixel-reward"
PIXEL_REWARD_FORMAT_VERSION = 1


def save_pixel_reward(model: PixelStepReward, folder: str | Path) -> Path:
    """Write the scorer of ``model`` and its config to ``folder`` atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if type(model.scorer.clip).__name__ != "CLIPModel":
        raise LpoError(
            f"cannot save a scorer around a {type(model.scorer.clip).__name__}; load_pixel_reward rebuilds a CLIPModel"
        )
    meta = {
        "format": PIXEL_REWARD_FORMAT,
        "format_version": PIXEL_REWARD_FORMAT_VERSION,
        "config": asdict(model.config),
        "scorer": model.scorer.describe(),
        "dtype": str(model.scorer.dtype).removeprefix("torch."),
    }
    state = {key: tensor.detach().to("cpu").contiguous() for key, tensor in model.scorer.state_dict().items()}
    with atomic_directory(folder) as tmp:
        save_file(state, str(tmp / PIXEL_REWARD_WEIGHTS_NAME), metadata={"format": "pt"})
        model.scorer.tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / PIXEL_REWARD_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def load_pixel_reward(
    folder: str | Path,
    components: DiffusionComponents,
    expected_base: str | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    freeze_base: bool = True,
) -> PixelStepReward:
    """Rebuild a pixel reward saved by :func:`save_pixel_reward` on ``components``, scorer in eval mode.

    ``expected_base`` (default ``components.source``) must name the base model the scorer
    was trained for. ``device`` defaults to the components' device; ``dtype`` to the saved
    one. Failures a user can fix raise a one-line LpoError.
    """

    folder = Path(folder)
    hint = "pass a folder written by save_pixel_reward"
    if not folder.exists():
        raise LpoError(f"pixel reward folder {folder} does not exist; {hint}")
    if not folder.is_dir():
        raise LpoError(f"pixel reward path {folder} is a file, not a folder; {hint}")
    config_path, weights_path = folder / PIXEL_REWARD_CONFIG_NAME, folder / PIXEL_REWARD_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise LpoError(
                f"{path} is missing: {folder} is not a complete pixel reward folder; {hint}, or train it again"
            )

    # 1. the saved description, and whether it is for this base model
    meta = _read_meta(config_path)
    try:
        known = {f.name for f in fields(PixelRewardConfig)}
        config = PixelRewardConfig(**{k: v for k, v in meta["config"].items() if k in known})
        if config.kind is None or config.base_model is None:
            raise ValueError("base_model and kind must be set")
        spec = meta["scorer"]
        preprocess = ImagePreprocessConfig(**spec["preprocess"])
        adaln = AdaLNConfig(**spec["adaln"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise LpoError(f"{config_path} has an invalid pixel reward config ({one_line(err)}); train it again") from err
    expected = expected_base if expected_base is not None else components.source
    if not same_base_model(config.base_model, expected, config.base_model_hash):
        raise LpoError(
            f"pixel reward {folder} was trained for base model {config.base_model} but you are using {expected}; "
            f"train a step-aware scorer for {expected}"
        )
    if components.kind != config.kind:
        raise LpoError(
            f"pixel reward {folder} is for a {config.kind} model but the components are {components.kind}; "
            f"train a step-aware scorer for {components.source}"
        )

    # 2. the architecture with empty (meta) weights, then the weights strictly
    from accelerate import init_empty_weights
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    try:
        if spec.get("class") != "CLIPModel":
            raise ValueError(f"scorer class {spec.get('class')!r} is not CLIPModel")
        tokenizer_dir = folder / "tokenizer"
        if not tokenizer_dir.is_dir():
            raise OSError(f"{tokenizer_dir} is missing")
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
        with init_empty_weights(include_buffers=False):  # buffers such as position_ids stay real
            clip = CLIPModel(CLIPConfig.from_dict(spec["clip_config"]))
            source = str(spec.get("source", "random"))
            scorer = TimestepConditionedScorer(clip, tokenizer, preprocess, adaln, source=source)
    except (KeyError, TypeError, ValueError, OSError) as err:
        raise LpoError(
            f"could not rebuild the scorer described by {config_path} ({one_line(err)}); train it again"
        ) from err
    vocab_size = clip.config.text_config.vocab_size
    # transformers builds a 2-token default tokenizer from a folder without vocabulary files
    if not vocab_size / 2 <= len(tokenizer) <= vocab_size:
        raise LpoError(
            f"{folder / 'tokenizer'} has {len(tokenizer)} tokens but the text tower has {vocab_size}; "
            "the tokenizer files are missing or damaged: train it again"
        )
    load_safetensors_strict(
        scorer, weights_path, what="pixel reward weights", config_name=PIXEL_REWARD_CONFIG_NAME,
        fix="the file is damaged or from another scorer: train it again or restore the folder",
    )
    scorer.eval()
    device = components.device if device is None else device
    scorer.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
    return PixelStepReward(components, scorer, config, freeze_base=freeze_base)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LpoError(
            f"could not read {path} ({one_line(err)}); the pixel reward folder is damaged: train it again"
        ) from err
    if not isinstance(meta, dict) or meta.get("format") != PIXEL_REWARD_FORMAT:
        raise LpoError(
            f'{path} is not an lpo pixel reward config (no "format": "{PIXEL_REWARD_FORMAT}"); '
            "pass a folder written by save_pixel_reward"
        )
    if meta.get("format_version") != PIXEL_REWARD_FORMAT_VERSION:
        raise LpoError(
            f"{path} has pixel reward format version {meta.get('format_version')}; this lpo reads version "
            f"{PIXEL_REWARD_FORMAT_VERSION}: upgrade lpo or train it again"
        )
    return meta
