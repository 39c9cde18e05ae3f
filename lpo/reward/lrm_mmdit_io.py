"""The MMDiT LRM's folder: :func:`save_mmdit_lrm` and :func:`load_mmdit_lrm`.

The folder holds ``model.safetensors`` (every weight the LRM owns: the embedders and kept
blocks of its transformer copy, its text encoders, both projections and the logit scale) and
``mmdit_lrm_config.json`` (its :class:`~lpo.reward.lrm_mmdit.MMDiTLRMConfig`, with the base
model). Unlike the U-Net LRM's folder it does not describe the architecture itself: loading
rebuilds it from the base pipeline's components (given, or loaded from the recorded base)
and then loads the weights strictly.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import torch

from lpo.core.errors import LpoError
from lpo.core.io import load_safetensors_strict, one_line
from lpo.reward.folder_format import RewardFolder, same_base_model
from lpo.reward.lrm_mmdit import MMDiTLatentRewardModel, MMDiTLRMConfig

MMDIT_LRM_CONFIG_NAME = "mmdit_lrm_config.json"
MMDIT_LRM_FOLDER = RewardFolder(
    what="MMDiT LRM", format="lpo-mmdit-lrm", version=1, config_name=MMDIT_LRM_CONFIG_NAME, writer="save_mmdit_lrm",
    hint="pass a folder written by `lpo lrm train` on a flow model (or save_mmdit_lrm)", retrain="train the LRM again",
)


def is_mmdit_lrm_folder(folder: str | Path) -> bool:
    return (Path(folder) / MMDIT_LRM_CONFIG_NAME).is_file()


def save_mmdit_lrm(model: MMDiTLatentRewardModel, folder: str | Path) -> Path:
    meta = {"config": asdict(model.config), "dtype": str(model.dtype).removeprefix("torch.")}
    # T5 ties its input embedding to ``shared``; safetensors refuses two names on one storage,
    # so a second name gets a copy (loading puts both back into the one tied weight)
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        pointer = tensor.untyped_storage().data_ptr()
        state[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return MMDIT_LRM_FOLDER.write(folder, state, meta, {})


def load_mmdit_lrm(folder: str | Path, components=None, *, device: torch.device | str | None = None) -> MMDiTLatentRewardModel:
    """Rebuild an MMDiT LRM from ``folder`` on ``components`` (default: its recorded base pipeline), in eval mode."""
    folder = Path(folder)
    config_path, weights_path = MMDIT_LRM_FOLDER.files(folder)
    meta = MMDIT_LRM_FOLDER.read_config(config_path)
    try:
        known = {f.name for f in fields(MMDiTLRMConfig)}
        config = MMDiTLRMConfig(**{k: v for k, v in meta["config"].items() if k in known})
    except (KeyError, TypeError, ValueError) as err:
        raise LpoError(f"{config_path} has an invalid MMDiT LRM config ({one_line(err)}); train the LRM again") from err
    if components is None:
        from lpo.models.flow_components import load_flow_components

        components = load_flow_components(config.base_model)
    elif config.base_model is not None and not same_base_model(config.base_model, components.source):
        raise LpoError(f"MMDiT LRM {folder} was trained for base model {config.base_model} but you are using "
                       f"{components.source}; train an LRM for {components.source} with `lpo lrm train --model "
                       f"{components.source}`")
    model = MMDiTLatentRewardModel(components, config)
    load_safetensors_strict(model, weights_path, what="MMDiT LRM weights", config_name=MMDIT_LRM_CONFIG_NAME,
                            fix="the file is damaged or from another LRM: train the LRM again or restore the folder")
    model.eval()
    return model.to(device) if device is not None else model
