"""The LRM's visual tower: a diffusers U-Net cut after its mid block, and its forward up to there.

The LRM (:mod:`lpo.reward.lrm`, SPEC §4.1) holds a ``UNet2DConditionModel`` whose up path
(``up_blocks``, ``conv_norm_out``, ``conv_act``, ``conv_out``) has been *deleted*, so those
weights are neither stored, trained nor saved, and the copy's own ``forward`` fails loudly
if called. :func:`unet_down_mid` runs what remains the way ``UNet2DConditionModel.forward``
does (time embedding, SDXL ``add_embedding``, ``conv_in``, down blocks, mid block).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from lpo.models.conditioning import TextConditioning
from lpo.core.errors import LpoError

# The U-Net's decoder half: never used by the LRM, so removed from its copy.
UNET_UP_PATH = ("up_blocks", "conv_norm_out", "conv_act", "conv_out")


def check_supported_unet(unet: Any) -> None:
    """Raise LpoError for U-Nets the LRM cannot run without extra inputs or a mid block."""
    cfg = unet.config
    problems = []
    if getattr(unet, "class_embedding", None) is not None:
        problems.append(f"it is class-conditioned (class_embed_type={cfg.class_embed_type!r})")
    if cfg.addition_embed_type not in (None, "text", "text_time"):
        problems.append(f"addition_embed_type {cfg.addition_embed_type!r} needs image inputs")
    if cfg.encoder_hid_dim_type not in (None, "text_proj"):
        problems.append(f"encoder_hid_dim_type {cfg.encoder_hid_dim_type!r} needs image inputs")
    if getattr(unet, "mid_block", None) is None:
        problems.append("it has no mid block (mid_block_type=None), whose output the LRM scores")
    if getattr(unet, "peft_config", None):
        problems.append("it carries peft adapters; build the LRM from the base U-Net")
    if problems:
        raise LpoError(
            f"the LRM cannot be built from this U-Net: {'; '.join(problems)}; "
            "use an SD1.5-, SDXL- or world-style text-to-image U-Net"
        )


def truncate_unet(unet: nn.Module) -> nn.Module:
    """Delete the up path (``UNET_UP_PATH``) from ``unet`` in place and return it."""
    for name in UNET_UP_PATH:
        if hasattr(unet, name):
            delattr(unet, name)
    return unet


def copy_truncated_unet(unet: nn.Module) -> nn.Module:
    """A deep copy of ``unet`` without its up path; ``unet`` itself is untouched.

    The up-path modules are pre-seeded in deepcopy's memo as None, so their weights (about
    half of SDXL's U-Net) are never copied, then the None placeholders are deleted.
    """
    memo: dict[int, Any] = {}
    for name in ("up_blocks", "conv_norm_out", "conv_out"):  # the ones with weights; each owned by the U-Net alone
        module = getattr(unet, name, None)
        if module is not None:
            memo[id(module)] = None
    return truncate_unet(copy.deepcopy(unet, memo))


def unet_down_mid(
    unet: Any, sample: Tensor, timesteps: Tensor, conditioning: TextConditioning
) -> tuple[list[Tensor], Tensor]:
    """Run a (truncated) ``UNet2DConditionModel`` up to its mid block.

    Mirrors ``UNet2DConditionModel.forward`` steps 0–4 (diffusers 0.3x–0.4x) without
    attention masks, class labels, adapters or ControlNet residuals. Returns the last output
    of each down block *before its downsampler* (B, C_i, H_i, W_i) and the mid-block output
    (B, C_mid, H, W).
    """
    kwargs = conditioning.unet_kwargs()
    encoder_hidden_states = kwargs["encoder_hidden_states"]
    added_cond_kwargs = kwargs.get("added_cond_kwargs") or {}

    # 0. centre the input if the model was trained that way
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0

    # 1. time embedding (+ SDXL's add_embedding of text_embeds and time_ids)
    t_emb = unet.get_time_embed(sample=sample, timestep=timesteps)
    emb = unet.time_embedding(t_emb, None)
    aug_emb = unet.get_aug_embed(
        emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    if aug_emb is not None:
        emb = emb + aug_emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )

    # 2. pre-process
    hidden = unet.conv_in(sample)

    # 3. down blocks. Each returns (hidden after its downsampler, res_samples) where res_samples
    # holds one entry per resnet(+attention) and, when the block downsamples, the downsampler's
    # output last. The wanted "last output before the downsampler" is entry len(resnets) - 1.
    down_maps = []
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            hidden, res_samples = block(hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states)
        else:
            hidden, res_samples = block(hidden_states=hidden, temb=emb)
        num_layers = len(block.resnets)
        if len(res_samples) != num_layers + (block.downsamplers is not None):
            raise RuntimeError(  # a block type with another output layout: fail rather than pool the wrong map
                f"{type(block).__name__} returned {len(res_samples)} residuals for {num_layers} layers; "
                "the LRM does not know which is the pre-downsampler output"
            )
        down_maps.append(res_samples[num_layers - 1])

    # 4. mid block
    if getattr(unet.mid_block, "has_cross_attention", False):
        hidden = unet.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states)
    else:
        hidden = unet.mid_block(hidden, emb)
    return down_maps, hidden
