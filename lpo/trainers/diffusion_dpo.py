"""Diffusion-DPO (SPEC §5.3; Wallace et al. 2023 and the official DiffusionDPO code).

Per optimiser step s (:meth:`DiffusionDPOTrainer.run_unit` and the loss it builds; the job
around it is :class:`lpo.core.training_loop.TrainingLoop`):

1. ``train.batch_size`` pairs from the shuffled stream of epochs (position-keyed, so the
   batch does not depend on what came before) and, for the whole batch, every random draw
   from ``keyed_generator(seed, Stream.DPO, s)`` in a fixed order: horizontal flips (one
   per image, as the official per-image transform), caption dropout to "" (one per pair),
   the VAE posterior samples, t ~ U{0, …, T−1} (ONE per pair) and the noise ε (ONE per
   pair, shared by winner and loser);
2. each process takes its micro-batches of that batch (micro-batch m of process p starts
   at (m·P + p)·micro), so the result does not depend on the number of processes;
3. per micro-batch: VAE-encode winner and loser (frozen, no grad), x_t = add_noise(x_0, ε, t),
   the policy's and the reference's prediction (text conditioning without CFG), per-image
   mse against the target (ε, or v for v-prediction models), and the loss
   :func:`lpo.trainers.losses.diffusion_dpo_loss` (−log σ(−½β[(mse_w − mse_l) − (ref_w − ref_l)])).
   The implicit accuracy mean(inside > 0) is logged.

Ties are not used (Diffusion-DPO trains on Pick-a-Pic v2 without ties); they are counted
and skipped. The LoRA variant (``policy.mode=lora``) is labelled ``diffusion-dpo-lora``.

Flow-matching models (SD3-style; this project's extension, no published Diffusion-DPO
config): the same draws, with σ = t / T on the flow path x_σ = (1 − σ)·x0 + σ·ε, the
transformer told σ·1000, and the velocity ε − x0 as the target of the per-image mse; the
text conditioning is the pipeline's own (both CLIPs, T5 or its zeros, the pooled embedding).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Sequence

import torch

from lpo.core.errors import LpoError
from lpo.trainers.losses import diffusion_dpo_loss, per_sample_mse
from lpo.models.components import DiffusionComponents, encode_prompts
from lpo.models.flow_components import FlowComponents, encode_flow_prompts
from lpo.sampling.flow import flow_noisy_latents
from lpo.pairs.format import PreferencePair
from lpo.pairs.stream import decisive_pairs, pair_meta
from lpo.core.seeding import Stream, keyed_generator, pair_indices
from lpo.reward.data import image_to_tensor, sdxl_image_time_ids
from lpo.trainers.config import DiffusionDPOConfig
from lpo.trainers.harness import Policy, TrainResult, accumulated_step, check_step, finite_or_none, reduce_logs
from lpo.trainers.policy_trainer import PolicyTrainer

PROGRESS_LABEL = "diffusion-dpo"


@dataclass(frozen=True)
class DPOPlan:
    num_pairs: int
    num_ties_skipped: int
    num_processes: int
    batch_size: int
    gradient_accumulation_steps: int
    micro_batch_size: int
    max_steps: int
    resolution: int

    @property
    def epochs(self) -> float:
        return self.max_steps * self.batch_size / self.num_pairs

    def describe(self) -> str:
        return (
            f"{self.num_pairs} pairs ({self.num_ties_skipped} ties skipped) at {self.resolution} px; batch "
            f"{self.batch_size} = {self.micro_batch_size} per forward × {self.gradient_accumulation_steps} accumulation × "
            f"{self.num_processes} processes; {self.max_steps} steps = {self.epochs:.2f} epochs"
        )


@dataclass
class DPOBatch:
    """The draws of one optimiser step for the whole (global) batch; tensors on the CPU.

    pair_rows: (B,) indices into the pairs.  flips: (B, 2) bool, winner / loser.
    drop_caption: (B,) bool.  posterior_noise: (B, 2, C, h, w).  timesteps: (B,) long.
    noise: (B, C, h, w) ε shared by the pair's two images.
    """

    pair_rows: torch.Tensor
    flips: torch.Tensor
    drop_caption: torch.Tensor
    posterior_noise: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor


def draw_batch(config: DiffusionDPOConfig, num_pairs: int, step: int, latent_shape: tuple[int, int, int],
               num_train_timesteps: int) -> DPOBatch:
    """Step ``step``'s pairs and random draws, in a fixed order from one keyed generator."""
    batch = config.train.batch_size
    generator = keyed_generator(config.run.seed, Stream.DPO, step)
    rows = pair_indices(num_pairs, step * batch, batch, config.run.seed)
    flips = torch.rand((batch, 2), generator=generator) < 0.5
    if not config.data.random_flip:
        flips = torch.zeros_like(flips)
    drop = torch.rand((batch,), generator=generator) < config.data.caption_dropout
    posterior_noise = torch.randn((batch, 2, *latent_shape), generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (batch,), generator=generator)
    noise = torch.randn((batch, *latent_shape), generator=generator)
    return DPOBatch(rows, flips, drop, posterior_noise, timesteps, noise)


def pairs_fingerprint(pairs: Sequence[PreferencePair]) -> str:
    h = hashlib.sha256()
    for pair_id, prompt, label_0 in pair_meta(pairs):  # a streamed PairTable decodes no image for this
        h.update(f"{pair_id}\x1f{prompt}\x1f{label_0}\x1e".encode())
    return h.hexdigest()[:16]


class DiffusionDPOTrainer(PolicyTrainer):
    """Diffusion-DPO with its parts handed in: components, policy (full or LoRA), decisive pairs."""

    method: ClassVar[str] = "diffusion-dpo"
    config_class: ClassVar[type] = DiffusionDPOConfig
    needs = "pairs"
    progress_label = PROGRESS_LABEL
    unit = "step"
    history_key = "step"

    def __init__(
        self,
        config: DiffusionDPOConfig,
        components: DiffusionComponents | FlowComponents,
        policy: Policy,
        pairs: Sequence[PreferencePair],
        **common: Any,
    ) -> None:
        super().__init__(config, components, policy, **common)
        self.pairs = decisive_pairs(pairs)  # a list, or a view of a streamed PairTable
        self.num_ties = len(pairs) - len(self.pairs)
        if not self.pairs:
            raise LpoError(f"all {len(pairs)} pairs are ties; Diffusion-DPO needs pairs with a winner")

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def resolution(self) -> int:
        return self.config.data.resolution or self.components.default_resolution

    def plan(self) -> DPOPlan:
        acc, cfg = self.accelerator, self.config
        per_step = cfg.optim.gradient_accumulation_steps * acc.num_processes
        if cfg.train.batch_size % per_step:
            raise LpoError(
                f"train.batch_size {cfg.train.batch_size} does not split into {cfg.optim.gradient_accumulation_steps} "
                f"accumulation steps × {acc.num_processes} processes; use a multiple of {per_step}"
            )
        return DPOPlan(
            num_pairs=len(self.pairs), num_ties_skipped=self.num_ties, num_processes=acc.num_processes,
            batch_size=cfg.train.batch_size, gradient_accumulation_steps=cfg.optim.gradient_accumulation_steps,
            micro_batch_size=cfg.train.batch_size // per_step, max_steps=cfg.train.max_steps, resolution=self.resolution,
        )

    # ----------------------------------------------------------------- one micro-batch

    @torch.no_grad()
    def _encode(self, draws: DPOBatch, rows: torch.Tensor) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """(x_t of the winners then the losers (2b, C, h, w), their text conditioning, their
        timesteps, target (b, 2, C, h, w)) for batch rows ``rows``."""
        c, device = self.components, self.accelerator.device
        pairs = [self.pairs[int(i)] for i in draws.pair_rows[rows]]
        per_image = self.config.data.micro_conditioning == "per-image"
        images, time_ids = [], []
        for k, pair in enumerate(pairs):
            for side, image in enumerate((pair.winner, pair.loser)):
                flipped = bool(draws.flips[rows[k], side])
                pixels = image_to_tensor(image, self.resolution, f"image of pair {pair.pair_id}")
                images.append(pixels.flip(-1) if flipped else pixels)
                if per_image:
                    time_ids.append(sdxl_image_time_ids(image.shape[0], image.shape[1], self.resolution, flipped))
        pixels = torch.stack(images).to(device=device, dtype=c.vae.dtype)  # (2b, 3, R, R): w0, l0, w1, l1, ...
        posterior = c.vae.encode(pixels).latent_dist
        eps = draws.posterior_noise[rows].reshape(-1, *draws.posterior_noise.shape[2:]).to(device)
        latents = posterior.mean.float() + posterior.std.float() * eps
        shift = getattr(c.vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        latents = (latents * c.vae.config.scaling_factor).reshape(len(pairs), 2, *latents.shape[1:])  # (b, 2, C, h, w)
        timesteps = draws.timesteps[rows].to(device)
        noise = draws.noise[rows].to(device)
        captions = ["" if bool(draws.drop_caption[r]) else pair.prompt for r, pair in zip(rows, pairs)]
        if isinstance(c, FlowComponents):
            sigmas = timesteps.float() / self.num_train_timesteps
            x_t = torch.cat([flow_noisy_latents(latents[:, i], noise, sigmas) for i in (0, 1)])
            flow = encode_flow_prompts(c, captions)
            target = torch.stack([noise - latents[:, i] for i in (0, 1)], dim=1)  # the velocity
            return x_t, flow.cat(flow), torch.cat([timesteps, timesteps]).float(), target
        x_t = torch.cat([c.scheduler.add_noise(latents[:, i], noise, timesteps) for i in (0, 1)])
        conditioning = encode_prompts(c, captions, resolution=self.resolution)
        conditioning = type(conditioning).cat([conditioning, conditioning])
        if conditioning.add_time_ids is not None and per_image:
            # each image's own size and crop (winners first, as x_t); "fixed" keeps (R, R, 0, 0, R, R)
            # for every image, as the official DiffusionDPO train.py does
            rows_w, rows_l = time_ids[0::2], time_ids[1::2]
            conditioning = replace(conditioning, add_time_ids=torch.tensor(
                rows_w + rows_l, dtype=conditioning.add_time_ids.dtype, device=conditioning.add_time_ids.device))
        if c.scheduler.config.prediction_type == "v_prediction":
            target = torch.stack([c.scheduler.get_velocity(latents[:, i], noise, timesteps) for i in (0, 1)], dim=1)
        else:
            target = torch.stack([noise, noise], dim=1)
        return x_t, conditioning, torch.cat([timesteps, timesteps]), target

    def _loss_fn(self, model: Any, draws: DPOBatch) -> Callable[[torch.Tensor], tuple[torch.Tensor, dict]]:
        beta = self.config.loss.beta
        unet_dtype = self.components.denoiser.dtype
        flow = isinstance(self.components, FlowComponents)

        def predict(unet: Any, latents: torch.Tensor, timesteps: torch.Tensor, conditioning: Any) -> torch.Tensor:
            if flow:  # the transformer's velocity at σ·1000
                return unet(hidden_states=latents.to(unet_dtype), timestep=timesteps, encoder_hidden_states=conditioning.prompt_embeds,
                            pooled_projections=conditioning.pooled, return_dict=False)[0]
            return unet(latents.to(unet_dtype), timesteps, **conditioning.unet_kwargs()).sample

        def loss_fn(rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            both, both_cond, both_t, target = self._encode(draws, rows)  # winners first
            pred_w, pred_l = predict(model, both, both_t, both_cond).chunk(2)
            with self.policy.reference() as reference:
                ref_w, ref_l = predict(reference, both, both_t, both_cond).chunk(2)
            out = diffusion_dpo_loss(
                per_sample_mse(pred_w, target[:, 0]), per_sample_mse(pred_l, target[:, 1]),
                per_sample_mse(ref_w, target[:, 0]), per_sample_mse(ref_l, target[:, 1]), beta,
            )
            logs = {
                "implicit_accuracy": (out.inside > 0).float(), "inside": out.inside,
                "model_mse_diff": out.model_diff, "ref_mse_diff": out.ref_diff,
            }
            return out.losses, logs

        return loss_fn

    # ----------------------------------------------------------------- the scaffold's hooks

    def data_fingerprint(self) -> str:
        return pairs_fingerprint(self.pairs)

    def setup(self) -> int:
        c = self.components
        self.run_plan = self.plan()
        self.say(self.run_plan.describe())
        latent_size = self.resolution // c.vae_scale_factor
        self.latent_shape = (c.latent_channels, latent_size, latent_size)
        self.num_train_timesteps = int(c.scheduler.config.num_train_timesteps)
        self.prepare_optimisation(self.config.train.max_steps)
        self.window: list[Any] = []
        return self.config.train.max_steps

    def state_fields(self, done: int) -> dict[str, Any]:
        return {"method": self.method, "unit": "steps", "optimizer_steps": done}

    def micro_batch_size(self) -> int:
        return self.run_plan.micro_batch_size

    def begin_units(self) -> None:
        self.window_start = time.perf_counter()
        self.model.train()

    def run_unit(self, step: int, log_due: bool) -> dict[str, Any] | None:
        """One optimiser step over this process's micro-batches of the step's batch; a row every log_every."""
        config, acc = self.config, self.accelerator
        P, rank, micro = acc.num_processes, acc.process_index, self.run_plan.micro_batch_size
        draws = draw_batch(config, len(self.pairs), step, self.latent_shape, self.num_train_timesteps)
        group = [
            torch.arange((m * P + rank) * micro, (m * P + rank + 1) * micro)
            for m in range(config.optim.gradient_accumulation_steps)
        ]
        self.window.append(accumulated_step(
            acc, self.model, self.optimizer, self.lr_schedule, self.params, group, self._loss_fn(self.model, draws),
            config.train.batch_size, config.optim.grad_clip,
        ))
        check_step(self.window[-1], f"step {step + 1}", config.optim.lr)
        if not log_due:
            return None
        last = self.window[-1]
        row = {"step": step + 1, **reduce_logs(acc, self.window), "lr": last.lr, "grad_norm": finite_or_none(last.grad_norm),
               "seconds": time.perf_counter() - self.window_start}
        self.window, self.window_start = [], time.perf_counter()
        return row

    def describe_row(self, row: dict[str, Any], total: int) -> str:
        return (f"step {row['step']}/{total}: loss {row['loss']:.4f}, implicit accuracy "
                f"{row['implicit_accuracy']:.3f}, lr {row['lr']:.2e}")

    def end_units(self) -> None:
        self.model.eval()

    def finish(self) -> TrainResult:
        steps = self.config.train.max_steps
        return self.finish_with(steps, steps)
