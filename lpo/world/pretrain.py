"""Pretrain the world's latent diffusion model and save it as a StableDiffusionPipeline.

Stages (each seeded, so a preset reproduces the same weights on the same machine):
  1. render a training set of (image, prompt) pairs from the train prompts, categories
     sampled uniformly so that small categories are not drowned out;
  2. train an ``AutoencoderKL`` (32×32×3 ↔ 8×8×4) on reconstruction + a tiny KL term,
     then set ``scaling_factor`` so that scaled latents have unit variance, as SD does;
  3. train a ``UNet2DConditionModel`` (ε-prediction, SD1.5's noise schedule) jointly with
     a small ``CLIPTextModel`` on the grammar tokenizer, with 10% of captions dropped to
     "" so that classifier-free guidance works; keep an EMA of the U-Net weights;
  4. save the pipeline (DDIM scheduler with SD1.5's config) plus ``lpo_world.json``.

The output folder loads with ``StableDiffusionPipeline.from_pretrained(folder)`` and is
treated by every trainer, the LRM and the evaluator exactly like SD1.5.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from lpo.core.config import config_to_dict
from lpo.core.errors import LpoError
from lpo.core.io import atomic_directory, atomic_write_json, run_metadata
from lpo.models.components import SD15_SCHEDULER_CONFIG, WORLD_MARKER
from lpo.world.grammar import RENDER_WORLD_VERSION
from lpo.world.render import IMAGE_SIZE
from lpo.world.pretrain_common import (
    encode_dataset,
    images_to_tensor,
    render_training_set,
    step_with_ema,
    warmup_cosine_lr,
    world_model_dir,
)
from lpo.world.pretrain_flow import WorldFlowPretrainConfig
from lpo.world.tokenizer import MODEL_MAX_LENGTH, build_world_tokenizer


@dataclass(frozen=True)
class WorldModelConfig:
    """Architecture of the world's model (real diffusers / transformers classes, tiny)."""

    image_size: int = IMAGE_SIZE
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 64)  # 3 blocks: 32 px -> 8 px latents
    unet_channels: tuple[int, ...] = (32, 64)
    unet_layers_per_block: int = 1
    # diffusers' legacy name: this is the number of heads. Two heads (widths 16 and 32)
    # learned binding far faster than eight narrow ones in the same 200 s (measured).
    unet_attention_head_dim: int = 2
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4

    def __post_init__(self) -> None:
        if self.image_size % 2 ** (len(self.vae_channels) - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{len(self.vae_channels) - 1}")

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


@dataclass(frozen=True)
class WorldPretrainConfig:
    preset: str = "quick"
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    num_images: int = 20000
    vae_steps: int = 550
    vae_batch_size: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 1950
    unet_batch_size: int = 32
    unet_lr: float = 2e-3
    snr_gamma: float | None = 5.0  # Min-SNR-γ loss weighting (Hang et al. 2023); None: plain MSE
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_images", "vae_steps", "vae_batch_size", "unet_steps", "unet_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be > 0 or None, got {self.snr_gamma}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def fingerprint(self) -> str:
        """Hash of everything that changes the weights (names the cache folder)."""
        payload = json.dumps({"world": RENDER_WORLD_VERSION, **config_to_dict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]


PRETRAIN_PRESETS: dict[str, "WorldPretrainConfig | WorldFlowPretrainConfig"] = {
    # ~5 minutes on 2 CPU cores; the default world model.
    "quick": WorldPretrainConfig(),
    # Longer training: a stronger (still imperfect) base model.
    "full": WorldPretrainConfig(preset="full", num_images=40000, vae_steps=1500, unet_steps=10000),
    # The quick recipe with a U-Net of twice the width (64/128 channels, ~4x the compute):
    # the world study's lever for reward features that carry prompt-image alignment. The
    # VAE and its training stream are the quick preset's, so only the U-Net differs.
    "wide": WorldPretrainConfig(preset="wide", model=WorldModelConfig(unet_channels=(64, 128))),
    # Seconds; for tests of the machinery only (samples are blobs).
    "tiny": WorldPretrainConfig(preset="tiny", num_images=256, vae_steps=4, unet_steps=4, warmup_steps=2, vae_batch_size=16, unet_batch_size=16),
    # The flow-matching world (lpo.world.pretrain_flow): an SD3-style MMDiT on the quick world's VAE.
    "flow": WorldFlowPretrainConfig(),
    "flow-tiny": WorldFlowPretrainConfig(preset="flow-tiny", num_images=256, layers=1, steps=3, warmup_steps=1, batch_size=8),
}


def pretrain_preset(name: str) -> "WorldPretrainConfig | WorldFlowPretrainConfig":
    if name not in PRETRAIN_PRESETS:
        raise LpoError(f"unknown world pretrain preset {name!r}; known: {', '.join(PRETRAIN_PRESETS)}")
    return PRETRAIN_PRESETS[name]




# --------------------------------------------------------------------- components


def build_components(config: WorldModelConfig, tokenizer_dir: Path, seed: int):
    """Randomly initialised (vae, text_encoder, tokenizer, unet) of the given sizes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_world_tokenizer(tokenizer_dir)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
        block_out_channels=config.vae_channels,
        latent_channels=config.latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=config.image_size,
        # Self-attention at 8×8 triples the VAE's step time on CPU and buys nothing
        # for flat-coloured shapes.
        mid_block_add_attention=False,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_hidden_size,
            intermediate_size=2 * config.text_hidden_size,
            projection_dim=config.text_hidden_size,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=MODEL_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    n = len(config.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=config.unet_channels,
        layers_per_block=config.unet_layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=config.unet_attention_head_dim,
        norm_num_groups=16,
    )
    return vae, text_encoder, tokenizer, unet


# ----------------------------------------------------------------------- data








# ------------------------------------------------------------------- training


@dataclass
class PretrainOutput:
    folder: Path
    seconds: dict[str, float]
    vae_mse: float
    unet_loss: float


ProgressFn = Callable[[str, int, int, float], None]  # (stage, step, total, loss)


def train_vae(vae, images: torch.Tensor, config: WorldPretrainConfig, generator: torch.Generator, progress: ProgressFn | None) -> float:
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine_lr(config.warmup_steps, config.vae_steps))
    vae.train()
    ema_mse = None
    for step in range(config.vae_steps):
        idx = torch.randint(len(images), (config.vae_batch_size,), generator=generator)
        x = images[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        loss = mse + config.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_mse = mse.item() if ema_mse is None else 0.95 * ema_mse + 0.05 * mse.item()
        if progress:
            progress("vae", step + 1, config.vae_steps, ema_mse)
    vae.eval()
    return float(ema_mse)




def train_unet(
    unet,
    text_encoder,
    input_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    scaling_factor: float,
    config: WorldPretrainConfig,
    generator: torch.Generator,
    progress: ProgressFn | None,
):
    """Joint ε-prediction training of U-Net and text encoder; returns (EMA U-Net, loss)."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(**{k: v for k, v in SD15_SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    alphas_cumprod = noise_scheduler.alphas_cumprod
    snr_table = alphas_cumprod / (1 - alphas_cumprod)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine_lr(config.warmup_steps, config.unet_steps))
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    unet.train()
    text_encoder.train()
    ema_loss = None
    for step in range(config.unet_steps):
        idx = torch.randint(len(latent_mean), (config.unet_batch_size,), generator=generator)
        latents = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=generator)
        latents = latents * scaling_factor
        ids = input_ids[idx].clone()
        drop = torch.rand(len(idx), generator=generator) < config.caption_dropout
        ids[drop] = empty_ids
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prompt_embeds = text_encoder(ids)[0]
        pred = unet(noisy, timesteps, encoder_hidden_states=prompt_embeds).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        if config.snr_gamma is not None:
            # Min-SNR-γ: ε-loss weight min(SNR, γ)/SNR stops easy low-noise steps from
            # dominating; it converged markedly faster in this world.
            snr = snr_table[timesteps]
            per_sample = per_sample * snr.clamp(max=config.snr_gamma) / snr
        loss = per_sample.mean()
        step_with_ema(loss, opt, sched, params, [(ema_unet, unet), (ema_text, text_encoder)], step, config.ema_decay)
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        if progress:
            progress("unet", step + 1, config.unet_steps, ema_loss)
    return ema_unet.eval(), ema_text.eval(), float(ema_loss)


def pretrain_world(config: WorldPretrainConfig, output_dir: Path | None = None, progress: ProgressFn | None = None) -> PretrainOutput:
    """Run all stages and write the pipeline folder atomically; returns where it went."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    output_dir = Path(output_dir) if output_dir is not None else world_model_dir(config)
    seconds: dict[str, float] = {}
    generator = torch.Generator().manual_seed(config.seed)
    with atomic_directory(output_dir) as tmp:
        t0 = time.perf_counter()
        images_np, prompts = render_training_set(config.num_images, config.seed)
        images = images_to_tensor(images_np)
        seconds["render"] = time.perf_counter() - t0

        vae, text_encoder, tokenizer, unet = build_components(config.model, tmp / "_tokenizer_src", config.seed)
        t0 = time.perf_counter()
        vae_mse = train_vae(vae, images, config, generator, progress)
        seconds["vae"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        latent_mean, latent_std = encode_dataset(vae, images)
        # SD scales latents to unit variance (0.18215 for SD1.5); ours is measured.
        scaling_factor = float(1.0 / latent_mean.flatten().std())
        vae.register_to_config(scaling_factor=scaling_factor)
        tokenize = lambda texts: tokenizer(  # noqa: E731
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        input_ids = tokenize(prompts)
        empty_ids = tokenize([""])[0]
        unet, text_encoder, unet_loss = train_unet(
            unet, text_encoder, input_ids, empty_ids, latent_mean, latent_std, scaling_factor, config, generator, progress
        )
        seconds["unet"] = time.perf_counter() - t0

        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=DDIMScheduler(**SD15_SCHEDULER_CONFIG),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(tmp)
        import shutil

        shutil.rmtree(tmp / "_tokenizer_src", ignore_errors=True)
        atomic_write_json(
            tmp / WORLD_MARKER,
            {
                "kind": "lpo-world",
                "config": config_to_dict(config),
                "fingerprint": config.fingerprint(),
                "seconds": seconds,
                "vae_mse": vae_mse,
                "unet_loss": unet_loss,
                "scaling_factor": scaling_factor,
                **run_metadata(),
            },
        )
    return PretrainOutput(folder=output_dir, seconds=seconds, vae_mse=vae_mse, unet_loss=unet_loss)


def is_world_alias(name: str) -> bool:
    return name == "world" or name.startswith("world:")


def resolve_world_alias(name: str) -> Path:
    """``world`` / ``world:PRESET`` -> the cached pretrained folder of that preset.

    The quick world model ships inside the package (``lpo/world/assets/quick``) when it
    was committed; otherwise, or for other presets, the cache must hold it.
    """
    preset = name.split(":", 1)[1] if ":" in name else "quick"
    config = pretrain_preset(preset)
    folder = world_model_dir(config)
    if (folder / WORLD_MARKER).exists():
        return folder
    shipped = Path(__file__).parent / "assets" / preset
    if (shipped / WORLD_MARKER).exists():
        marker = json.loads((shipped / WORLD_MARKER).read_text())
        if marker.get("fingerprint") == config.fingerprint():
            return shipped
    raise LpoError(
        f"the world model {name!r} is not pretrained yet (looked in {folder}); run `lpo world pretrain --preset {preset}` first"
    )
