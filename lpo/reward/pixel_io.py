"""The pixel step reward's folder: :func:`save_pixel_reward` and :func:`load_pixel_reward`.

Saving writes one folder atomically: ``model.safetensors`` (the scorer's weights only),
``pixel_reward_config.json`` (the :class:`~lpo.reward.pixel.PixelRewardConfig` naming the
base model, and the scorer's CLIP config, AdaLN config, preprocessing and the source it
was initialised from) and ``tokenizer/``. The base U-Net and VAE are never saved:
:func:`load_pixel_reward` takes them from the components it is given and refuses a scorer
trained for another base model.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import torch

from lpo.reward.clip_preprocess import ImagePreprocessConfig
from lpo.core.errors import LpoError
from lpo.core.io import load_safetensors_strict, one_line
from lpo.reward.folder_format import WEIGHTS_NAME, RewardFolder
from lpo.models.components import DiffusionComponents
from lpo.reward.pixel import PixelRewardConfig, PixelStepReward
from lpo.reward.pixel_scorer import TimestepConditionedScorer
from lpo.reward.time_conditioning import AdaLNConfig

PIXEL_REWARD_CONFIG_NAME = "pixel_reward_config.json"
PIXEL_REWARD_WEIGHTS_NAME = WEIGHTS_NAME
PIXEL_REWARD_FOLDER = RewardFolder(
    what="pixel reward", format="lpo-pixel-reward", version=1, config_name=PIXEL_REWARD_CONFIG_NAME,
    writer="save_pixel_reward", hint="pass a folder written by save_pixel_reward", retrain="train it again",
    text_model="text tower",
)


def save_pixel_reward(model: PixelStepReward, folder: str | Path) -> Path:
    """Write the scorer of ``model`` and its config to ``folder`` atomically."""
    folder = Path(folder)
    if type(model.scorer.clip).__name__ != "CLIPModel":
        raise LpoError(
            f"cannot save a scorer around a {type(model.scorer.clip).__name__}; load_pixel_reward rebuilds a CLIPModel"
        )
    meta = {
        "config": asdict(model.config),
        "scorer": model.scorer.describe(),
        "dtype": str(model.scorer.dtype).removeprefix("torch."),
    }
    PIXEL_REWARD_FOLDER.write(folder, model.scorer.state_dict(), meta, {"tokenizer": model.scorer.tokenizer})
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
    config_path, weights_path = PIXEL_REWARD_FOLDER.files(folder)

    # 1. the saved description, and whether it is for this base model
    meta = PIXEL_REWARD_FOLDER.read_config(config_path)
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
    PIXEL_REWARD_FOLDER.check_base(folder, config, expected, components.kind, components.source,
                                   "train a step-aware scorer for {model}")

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
    PIXEL_REWARD_FOLDER.check_tokenizer(tokenizer, clip.config.text_config.vocab_size, folder / "tokenizer")
    load_safetensors_strict(
        scorer, weights_path, what="pixel reward weights", config_name=PIXEL_REWARD_CONFIG_NAME,
        fix="the file is damaged or from another scorer: train it again or restore the folder",
    )
    scorer.eval()
    device = components.device if device is None else device
    scorer.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
    return PixelStepReward(components, scorer, config, freeze_base=freeze_base)
