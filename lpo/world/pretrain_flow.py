"""Pretrain the world's flow-matching model and save it as a StableDiffusion3Pipeline.

The miniature of SD3 beside the world's miniature of SD1.5 (:mod:`lpo.world.pretrain`), so
LPO can run on a U-Net and on a flow transformer in one world (issue 16). What it shares
with the U-Net world, so that only the denoiser differs: the training images and prompts
(the same renderer and splits), the quick world's trained VAE (the same latent space and
scaling factor), and text encoders initialised from the quick world's text encoder.

Stages (seeded):
  1. render the training set (:func:`lpo.world.pretrain.render_training_set`);
  2. take the quick world's VAE and encode the set (posterior mean and std);
  3. train an ``SD3Transformer2DModel`` on the flow-matching path x_σ = (1 − σ)·x0 + σ·ε with
     the velocity target ε − x0, σ from SD3's logit-normal(0, 1), jointly with two
     ``CLIPTextModelWithProjection`` (SD3's CLIP-L / CLIP-G slots, both on the grammar
     tokenizer), 10 % of captions dropped to "" for classifier-free guidance, with an EMA;
  4. save the pipeline with ``FlowMatchEulerDiscreteScheduler(shift=1)`` (SD3 shifts by 3
     for 1024 px; the world's 8×8 latents need none) and ``lpo_world.json``.

SD3 appends T5's tokens after the CLIP tokens, zeros when there is no T5. The world model
has no T5 and is trained with none of those zero tokens (``max_sequence_length`` 0, recorded
in ``lpo_world.json``): 256 constant tokens would triple a CPU training step and carry
nothing. lpo's flow code reads the length from the marker; plain diffusers must be told
(``from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)``, then
``pipe(..., max_sequence_length=0)``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lpo.core.config import config_to_dict
from lpo.core.io import atomic_directory, atomic_write_json, run_metadata
from lpo.models.components import WORLD_MARKER
from lpo.world.grammar import RENDER_WORLD_VERSION
from lpo.world.pretrain_common import (
    encode_dataset,
    images_to_tensor,
    render_training_set,
    step_with_ema,
    warmup_cosine_lr,
    world_model_dir,
)

FLOW_MARKER_KIND = "lpo-world-flow"
WORLD_FLOW_MAX_SEQUENCE_LENGTH = 0


@dataclass(frozen=True)
class WorldFlowPretrainConfig:
    """The flow world's recipe; ``vae_from`` is the world preset whose VAE and text encoder it starts from."""

    preset: str = "flow"
    vae_from: str = "quick"
    num_images: int = 20000
    layers: int = 4
    heads: int = 4
    head_dim: int = 16
    steps: int = 4000  # 2,000 left the model below chance (results/world/flow-world); 4,000: 12 min idle here
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_images", "layers", "heads", "head_dim", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def fingerprint(self) -> str:
        """Hash of everything that changes the weights (names the cache folder)."""
        payload = json.dumps({"world": RENDER_WORLD_VERSION, "kind": FLOW_MARKER_KIND, **config_to_dict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]


@dataclass
class FlowPretrainOutput:
    folder: Path
    seconds: dict[str, float]
    loss: float


def _text_encoder_pair(world_text_encoder, seed: int):
    """Two CLIPTextModelWithProjection copies of the world's text encoder, fresh projections."""
    from transformers import CLIPTextModelWithProjection

    config = copy.deepcopy(world_text_encoder.config)
    config.projection_dim = config.hidden_size // 2
    torch.manual_seed(seed)
    # the world encoder's weights, named as inside the projection model (text_model.*)
    source = {key if key.startswith("text_model.") else f"text_model.{key}": value
              for key, value in world_text_encoder.state_dict().items()}
    pair = []
    for _ in range(2):
        encoder = CLIPTextModelWithProjection(config)
        missing, unexpected = encoder.load_state_dict(source, strict=False)
        if unexpected or set(missing) != {"text_projection.weight"}:
            raise ValueError(f"the world text encoder does not fit a CLIPTextModelWithProjection "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        pair.append(encoder)
    return pair


def build_flow_transformer(config: WorldFlowPretrainConfig, latent_channels: int, latent_size: int, clip_width: int,
                           pooled_width: int):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(config.seed)
    inner = config.heads * config.head_dim
    return SD3Transformer2DModel(
        sample_size=latent_size, patch_size=1, in_channels=latent_channels, out_channels=latent_channels,
        num_layers=config.layers, attention_head_dim=config.head_dim, num_attention_heads=config.heads,
        joint_attention_dim=clip_width, caption_projection_dim=inner, pooled_projection_dim=pooled_width,
        pos_embed_max_size=latent_size,
    )


def _embed(encoders, ids: torch.Tensor, joint_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's prompt layout without T5 tokens: both CLIPs' penultimate states side by side,
    zero-padded to the joint width; pooled: both projected pooled outputs (with gradients)."""
    outs = [encoder(ids, output_hidden_states=True) for encoder in encoders]
    hidden = torch.cat([out.hidden_states[-2] for out in outs], dim=-1)
    hidden = F.pad(hidden, (0, joint_width - hidden.shape[-1]))
    return hidden, torch.cat([out.text_embeds for out in outs], dim=-1)


def logit_normal_sigmas(batch: int, generator: torch.Generator) -> torch.Tensor:
    """σ = sigmoid(u), u ~ N(0, 1): SD3's training distribution of noise levels."""
    return torch.sigmoid(torch.randn(batch, generator=generator))


def train_flow_transformer(transformer, encoders, input_ids, empty_ids, latent_mean, latent_std, scaling_factor,
                           config: WorldFlowPretrainConfig, generator: torch.Generator, progress=None):
    """Joint flow-matching training of the transformer and both text encoders; (EMA transformer, EMA encoders, loss)."""
    params = list(transformer.parameters()) + [p for e in encoders for p in e.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine_lr(config.warmup_steps, config.steps))
    live = [transformer, *encoders]
    ema = [copy.deepcopy(m).requires_grad_(False) for m in live]
    for module in live:
        module.train()
    joint = int(transformer.config.joint_attention_dim)
    ema_loss = None
    for step in range(config.steps):
        idx = torch.randint(len(latent_mean), (config.batch_size,), generator=generator)
        x0 = (latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=generator)) * scaling_factor
        ids = input_ids[idx].clone()
        ids[torch.rand(len(idx), generator=generator) < config.caption_dropout] = empty_ids
        noise = torch.randn(x0.shape, generator=generator)
        sigmas = logit_normal_sigmas(len(idx), generator)
        s = sigmas.view(-1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        prompt_embeds, pooled = _embed(encoders, ids, joint)
        velocity = transformer(hidden_states=noisy, timestep=sigmas * 1000, encoder_hidden_states=prompt_embeds,
                               pooled_projections=pooled, return_dict=False)[0]
        loss = F.mse_loss(velocity.float(), (noise - x0).float())
        step_with_ema(loss, opt, sched, params, list(zip(ema, live)), step, config.ema_decay)
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        if not math.isfinite(ema_loss):
            from lpo.core.errors import LpoError

            raise LpoError(f"flow world pretraining diverged at step {step + 1} (loss {loss.item()}); lower lr")
        if progress:
            progress("transformer", step + 1, config.steps, ema_loss)
    return ema[0].eval(), [e.eval() for e in ema[1:]], float(ema_loss)


def pretrain_world_flow(config: WorldFlowPretrainConfig, base_folder: Path, output_dir: Path | None = None,
                        progress=None) -> FlowPretrainOutput:
    """Run all stages and write the SD3 pipeline folder atomically; returns where it went.
    ``base_folder``: the U-Net world whose VAE and text encoder it starts from (the
    ``config.vae_from`` preset's folder, ``resolve_world_alias("world:" + config.vae_from)``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from lpo.models.components import load_components

    output_dir = Path(output_dir) if output_dir is not None else world_model_dir(config)
    seconds: dict[str, float] = {}
    generator = torch.Generator().manual_seed(config.seed)
    base = load_components(base_folder)
    with atomic_directory(output_dir) as tmp:
        t0 = time.perf_counter()
        images_np, prompts = render_training_set(config.num_images, config.seed)
        images = images_to_tensor(images_np)
        seconds["render"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        vae = base.vae
        latent_mean, latent_std = encode_dataset(vae, images)
        scaling_factor = float(vae.config.scaling_factor)
        vae.register_to_config(shift_factor=0.0)
        tokenizer = base.tokenizer
        tokenize = lambda texts: tokenizer(  # noqa: E731
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        input_ids, empty_ids = tokenize(prompts), tokenize([""])[0]
        encoders = _text_encoder_pair(base.text_encoder, config.seed)
        clip_width = sum(int(e.config.hidden_size) for e in encoders)
        pooled_width = sum(int(e.config.projection_dim) for e in encoders)
        latent_size = int(base.unet.config.sample_size)
        transformer = build_flow_transformer(config, base.latent_channels, latent_size, clip_width, pooled_width)
        transformer, encoders, loss = train_flow_transformer(
            transformer, encoders, input_ids, empty_ids, latent_mean, latent_std, scaling_factor, config, generator, progress)
        seconds["transformer"] = time.perf_counter() - t0

        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae,
            text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1], tokenizer_2=tokenizer,
            text_encoder_3=None, tokenizer_3=None,
        )
        pipe.save_pretrained(tmp)
        atomic_write_json(tmp / WORLD_MARKER, {
            "kind": FLOW_MARKER_KIND,
            "config": config_to_dict(config),
            "fingerprint": config.fingerprint(),
            "max_sequence_length": WORLD_FLOW_MAX_SEQUENCE_LENGTH,
            "vae_from": str(base_folder),
            "seconds": seconds,
            "loss": loss,
            "scaling_factor": scaling_factor,
            **run_metadata(),
        })
    return FlowPretrainOutput(folder=output_dir, seconds=seconds, loss=loss)
