"""Reward-model training data: encoded pairs, noised batches and the keyed random streams.

Both images of every pair are VAE-encoded once (:func:`encode_pairs`); each use of a pair
re-samples x_0 from the cached posterior and noises it to a t shared by both images
(:func:`noise_pairs`). Every draw comes from a generator keyed by (seed, stream, key)
(:func:`lpo.core.seeding.keyed_generator`), so a resumed run draws what an uninterrupted one would. The
paper's notation is mapped to these names in :mod:`lpo.reward.training`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, get_args

import numpy as np
import torch
from torch import Tensor

from lpo.core.errors import LpoError
from lpo.core.seeding import Stream, keyed_generator
from lpo.pairs.format import TIE, PreferencePair
from lpo.reward.config import NoiseMode, PairWeighting, TimestepSampling
from lpo.sampling.flow import flow_noisy_latents, is_flow_scheduler



@dataclass
class EncodedPairs:
    """VAE posteriors of both images of N pairs, computed once (SPEC §4.1 training data).

    mean, std: (N, 2, C, h, w) float32 on the CPU: posterior of ``image_0`` ([:, 0]) and
        ``image_1`` ([:, 1]), unscaled; None when the pairs are encoded on the fly or kept in
        disk shards, in which case ``encoder(rows)`` gives (mean, std) of those rows
        (:meth:`posterior` reads either).
    labels_0: (N,) float32 P(image_0 ≻ image_1).   weights: (N,) float32 the pairs' own weights.
    scaling_factor / shift_factor: x_0 = (posterior sample − shift) × scale.
    """

    pair_ids: list[str]
    prompts: list[str]
    mean: Tensor | None
    std: Tensor | None
    labels_0: Tensor
    weights: Tensor
    scaling_factor: float
    shift_factor: float | None = None
    encoder: Callable[[list[int]], tuple[Tensor, Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def posterior(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std), each (B, 2, C, h, w) float32, of pairs ``indices``: cached or encoded now."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.mean is not None:
            return self.mean[idx], self.std[idx]
        return self.encoder(idx.tolist())

    @property
    def decisive(self) -> Tensor:
        """(N,) bool: pairs that are not ties."""
        return self.labels_0 != TIE

    def subset(self, indices: Sequence[int] | Tensor) -> "EncodedPairs":
        idx = torch.as_tensor(indices, dtype=torch.long)
        rows = idx.tolist()
        lazy = self.mean is None
        encoder = self.encoder
        return replace(
            self,
            pair_ids=[self.pair_ids[i] for i in rows],
            prompts=[self.prompts[i] for i in rows],
            mean=None if lazy else self.mean[idx],
            std=None if lazy else self.std[idx],
            labels_0=self.labels_0[idx],
            weights=self.weights[idx],
            encoder=(lambda picked: encoder([rows[i] for i in picked])) if lazy else None,
        )

    def fingerprint(self) -> str:
        """Hash of ids, prompts and labels (not pixels): a resumed run must see the same pairs."""
        h = hashlib.sha256()
        for pid, prompt, label in zip(self.pair_ids, self.prompts, self.labels_0.tolist()):
            h.update(f"{pid}\x1f{prompt}\x1f{label}\x1e".encode())
        return h.hexdigest()[:16]


def resize_crop_geometry(height: int, width: int, resolution: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resized width, resized height), (crop left, crop top)) of :func:`image_to_tensor`:
    the shorter side resized to ``resolution``, then the centre ``resolution`` square."""
    scale = resolution / min(height, width)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    return size, ((size[0] - resolution) // 2, (size[1] - resolution) // 2)


def sdxl_image_time_ids(height: int, width: int, resolution: int, flipped: bool = False) -> tuple[int, ...]:
    """SDXL micro-conditioning of one training image, as diffusers' SDXL fine-tuning
    script derives it: (original h, original w, crop top, crop left, R, R), the crop in
    the resized image's pixels. A horizontal flip mirrors the crop's left edge within the
    resized image (diffusers writes ``R - left`` there, which is the mirror only when the
    resized width is ``2R``; the centre crops here make the two agree up to rounding)."""
    (resized_width, _), (left, top) = resize_crop_geometry(height, width, resolution)
    if flipped:
        left = resized_width - resolution - left
    return (height, width, top, left, resolution, resolution)


def image_to_tensor(image: np.ndarray, resolution: int, what: str = "image") -> Tensor:
    """(3, R, R) float32 in [-1, 1] from an (H, W, 3) uint8 image.

    An image of another size is resized with PIL (bicubic) so its shorter side is R and
    centre-cropped to R × R, as the diffusers training scripts prepare images.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise LpoError(f"{what} is a {desc}; pairs must hold (H, W, 3) uint8 RGB images")
    if image.shape[0] != resolution or image.shape[1] != resolution:
        from PIL import Image

        (width, height), (left, top) = resize_crop_geometry(image.shape[0], image.shape[1], resolution)
        pil = Image.fromarray(image).resize((width, height), Image.BICUBIC)
        image = np.array(pil.crop((left, top, left + resolution, top + resolution)))
    # A copy: decoded images can be read-only arrays, which torch warns about.
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def _pair_fields(pairs: Sequence[PreferencePair]) -> tuple[list[str], list[str], list[float], list[float]]:
    """(ids, prompts, labels, weights) without decoding a streamed PairTable's images."""
    from lpo.pairs.stream import PairTable, pair_meta

    ids, prompts, labels = [], [], []
    for pair_id, prompt, label in pair_meta(pairs):
        ids.append(pair_id)
        prompts.append(prompt)
        labels.append(float(label))
    if isinstance(pairs, PairTable):
        weights = pairs.weights().tolist()
    else:
        weights = [float(p.weight) for p in pairs]
    return ids, prompts, labels, weights


@torch.no_grad()
def encode_pairs(components: Any, pairs: Sequence[PreferencePair], batch_size: int = 32,
                 cache: Path | None = None, on_the_fly: bool = False, shard_pairs: int = 4096) -> EncodedPairs:
    """VAE-encode both images of every pair once; keep the posterior's mean and std.

    Images are brought to ``components.default_resolution`` (:func:`image_to_tensor`).
    The VAE runs in its own dtype and device, without gradients, on ``batch_size`` images
    at a time in pair order (image_0, image_1 of each pair); pairs are taken one by one, so
    a streamed :class:`~lpo.pairs.stream.PairTable` decodes only the batch in hand.
    ``cache``: a folder to hold mean and std on disk instead of RAM (2 images × 2 tensors ×
    C·h·w float32 per pair; 256 KiB per pair at SD1.5), in shards of ``shard_pairs`` pairs
    read through memory maps; finished shards of the same pairs are reused, so an
    interrupted run does not encode them again (:mod:`lpo.reward.latent_shards`).
    ``on_the_fly``: encode nothing now; each batch's pairs are encoded when drawn
    (:meth:`EncodedPairs.posterior`), so nothing grows with the number of pairs.
    """
    if not len(pairs):
        raise LpoError("no preference pairs to encode; pass at least one pair")
    ids, prompts, labels, weights = _pair_fields(pairs)
    for pair_id, label, weight in zip(ids, labels, weights):
        if not (math.isfinite(label) and 0.0 <= label <= 1.0):
            raise LpoError(f"pair {pair_id} has label_0 {label}; it must be 1.0, 0.0 or 0.5 (tie)")
        if not (math.isfinite(weight) and weight >= 0):
            raise LpoError(f"pair {pair_id} has weight {weight}; weights must be finite and >= 0")
    vae = components.vae
    resolution = components.default_resolution
    shift = getattr(vae.config, "shift_factor", None)
    encoded = EncodedPairs(
        pair_ids=ids, prompts=prompts, mean=None, std=None, labels_0=torch.tensor(labels, dtype=torch.float32),
        weights=torch.tensor(weights, dtype=torch.float32), scaling_factor=float(vae.config.scaling_factor),
        shift_factor=None if shift is None else float(shift),
    )
    if on_the_fly:
        return replace(encoded, encoder=lambda rows: _encode_rows(vae, pairs, rows, resolution))
    if cache is not None:
        from lpo.reward.latent_shards import build_shards

        scaling = f"{vae.config.scaling_factor}/{shift}/{vae.dtype}"
        reader = build_shards(cache, ids, prompts, resolution, scaling,
                                 lambda rows: _encode_rows(vae, pairs, rows, resolution), shard_pairs,
                                 max(1, batch_size // 2))
        return replace(encoded, encoder=reader)

    def images() -> Iterator[Tensor]:
        for index in range(len(pairs)):
            pair = pairs[index]
            for k, image in enumerate((pair.image_0, pair.image_1)):
                yield image_to_tensor(image, resolution, f"image_{k} of pair {pair.pair_id}")

    mean = std = None
    flat_mean = flat_std = None
    done = 0
    stream = images()
    while True:
        chunk = list(itertools.islice(stream, batch_size))
        if not chunk:
            break
        posterior = vae.encode(torch.stack(chunk).to(device=vae.device, dtype=vae.dtype)).latent_dist
        if mean is None:
            shape = (len(pairs), 2, *posterior.mean.shape[1:])
            mean, std = torch.empty(shape), torch.empty(shape)
            flat_mean, flat_std = mean.view(-1, *shape[2:]), std.view(-1, *shape[2:])
        flat_mean[done:done + len(chunk)] = posterior.mean.float().cpu()
        flat_std[done:done + len(chunk)] = posterior.std.float().cpu()
        done += len(chunk)
    return replace(encoded, mean=mean, std=std)


@torch.no_grad()
def _encode_rows(vae: Any, pairs: Sequence[PreferencePair], rows: list[int], resolution: int) -> tuple[Tensor, Tensor]:
    """(mean, std) (B, 2, C, h, w) float32 CPU of pairs ``rows``, both images in one VAE call."""
    images = []
    for index in rows:
        pair = pairs[index]
        images += [image_to_tensor(image, resolution, f"image_{k} of pair {pair.pair_id}")
                   for k, image in enumerate((pair.image_0, pair.image_1))]
    posterior = vae.encode(torch.stack(images).to(device=vae.device, dtype=vae.dtype)).latent_dist
    shape = (len(rows), 2, *posterior.mean.shape[1:])
    return posterior.mean.float().cpu().reshape(shape), posterior.std.float().cpu().reshape(shape)


def loss_weights(encoded: EncodedPairs, mode: PairWeighting) -> Tensor:
    """(N,) per-pair loss weights, normalised to mean 1 over the set (so lr means the same)."""
    if mode == "none":
        return torch.ones(len(encoded))
    if mode == "pair":
        weights = encoded.weights.clone()
    elif mode == "per_prompt":
        counts: dict[str, int] = {}
        for prompt in encoded.prompts:
            counts[prompt] = counts.get(prompt, 0) + 1
        weights = torch.tensor([1.0 / counts[p] for p in encoded.prompts])
    else:
        raise ValueError(f"pair_weighting must be one of {', '.join(get_args(PairWeighting))}, got {mode!r}")
    total = float(weights.sum())
    if total <= 0:
        raise LpoError("every pair has weight 0; give some pairs a positive weight or use pair_weighting=none")
    return weights * (len(weights) / total)


def timestep_pool(scheduler: Any, mode: TimestepSampling, num_inference_steps: int = 20) -> Tensor:
    """(M,) ascending timesteps t is drawn from: the DDIM set ({1, 51, …, 951}) or 0…T−1 (long).

    A flow-matching scheduler gives float t = σ·1000: its N sampling timesteps (shift applied),
    or for ``uniform`` the 1,000-step grid the same schedule makes.
    """
    if is_flow_scheduler(scheduler):
        scheduler.set_timesteps(num_inference_steps if mode == "ddim" else int(scheduler.config.num_train_timesteps))
        return scheduler.timesteps.float().cpu().sort().values
    if mode == "ddim":
        from lpo.sampling.ddim import ddim_timesteps

        return ddim_timesteps(scheduler, num_inference_steps).sort().values
    if mode == "uniform":
        return torch.arange(int(scheduler.config.num_train_timesteps))
    raise ValueError(f"timestep_sampling must be one of {', '.join(get_args(TimestepSampling))}, got {mode!r}")


@dataclass
class NoisyPairBatch:
    """B pairs noised for one forward (all tensors on the CPU unless moved).

    latents_0 / latents_1: (B, C, h, w) x_0 (scaled posterior samples).
    noise_0 / noise_1: (B, C, h, w) ε (the same tensor values when noise="shared").
    latents_t_0 / latents_t_1: (B, C, h, w) x_t = add_noise(x_0, ε, t).
    timesteps: (B,) shared by both images of a pair: long, or float σ·1000 for a flow-matching model.
    labels_0: (B,) P(image_0 ≻ image_1).   weights: (B,) loss weights.
    """

    prompts: list[str]
    latents_0: Tensor
    latents_1: Tensor
    noise_0: Tensor
    noise_1: Tensor
    latents_t_0: Tensor
    latents_t_1: Tensor
    timesteps: Tensor
    labels_0: Tensor
    weights: Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    def slice(self, start: int, stop: int) -> "NoisyPairBatch":
        return NoisyPairBatch(
            prompts=self.prompts[start:stop],
            **{f.name: getattr(self, f.name)[start:stop] for f in fields(self) if f.name != "prompts"},
        )


def sample_clean_latents(encoded: EncodedPairs, indices: Tensor, generator: torch.Generator) -> Tensor:
    """(B, 2, C, h, w) x_0 of both images: posterior samples × scaling factor."""
    mean, std = encoded.posterior(indices)
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    if encoded.shift_factor is not None:
        sample = sample - encoded.shift_factor
    return sample * encoded.scaling_factor


def noise_pairs(
    encoded: EncodedPairs,
    indices: Tensor,
    scheduler: Any,
    generator: torch.Generator,
    *,
    timesteps: Tensor | None = None,
    pool: Tensor | None = None,
    noise: NoiseMode = "independent",
    weights: Tensor | None = None,
) -> NoisyPairBatch:
    """Noise pairs ``indices`` of ``encoded`` to one t per pair (the same t for both images).

    ``timesteps`` (B,) fixes t; otherwise each t is drawn uniformly from ``pool``. Draw
    order from ``generator``: posterior samples, then t (when drawn), then noise.
    """
    indices = torch.as_tensor(indices, dtype=torch.long)
    batch = len(indices)
    # 1. x_0 for both images, re-sampled from the cached posteriors
    latents = sample_clean_latents(encoded, indices, generator)  # (B, 2, C, h, w)
    # 2. one t per pair, shared by its two images
    if timesteps is None:
        if pool is None:
            raise ValueError("pass fixed timesteps or a pool to draw them from")
        timesteps = pool[torch.randint(len(pool), (batch,), generator=generator)]
    flow = is_flow_scheduler(scheduler)
    timesteps = torch.as_tensor(timesteps, dtype=torch.float32 if flow else torch.long).reshape(-1).expand(batch).clone()
    # 3. independent noise per image (LRM) or one noise per pair (SPO)
    if noise == "independent":
        eps = torch.randn(latents.shape, generator=generator)
    elif noise == "shared":
        eps = torch.randn((batch, 1, *latents.shape[2:]), generator=generator).expand_as(latents).clone()
    else:
        raise ValueError(f"noise must be one of {', '.join(get_args(NoiseMode))}, got {noise!r}")
    latents_0, latents_1 = latents[:, 0], latents[:, 1]
    noise_0, noise_1 = eps[:, 0], eps[:, 1]
    return NoisyPairBatch(
        prompts=[encoded.prompts[i] for i in indices.tolist()],
        latents_0=latents_0,
        latents_1=latents_1,
        noise_0=noise_0,
        noise_1=noise_1,
        latents_t_0=_noised(scheduler, flow, latents_0, noise_0, timesteps),
        latents_t_1=_noised(scheduler, flow, latents_1, noise_1, timesteps),
        timesteps=timesteps,
        labels_0=encoded.labels_0[indices],
        weights=(weights[indices] if weights is not None else torch.ones(batch)),
    )


def _noised(scheduler: Any, flow: bool, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    if flow:  # t = σ·T
        return flow_noisy_latents(latents, noise, timesteps.float() / int(scheduler.config.num_train_timesteps))
    return scheduler.add_noise(latents, noise, timesteps)


def split_by_prompt(pairs: Sequence[PreferencePair], fraction: float, seed: int) -> tuple[Sequence[PreferencePair], Sequence[PreferencePair]]:
    """(train, held-out): a random ``fraction`` of the distinct prompts, with all their pairs, held out.
    A streamed :class:`~lpo.pairs.stream.PairTable` is split into two views, no image decoded."""
    from lpo.pairs.stream import PairTable, pair_meta

    pair_prompts = [prompt for _, prompt, _ in pair_meta(pairs)]
    prompts = sorted(set(pair_prompts))
    held = max(1, round(fraction * len(prompts))) if fraction > 0 else 0
    if held >= len(prompts):
        raise LpoError(
            f"eval_fraction {fraction} of {len(prompts)} prompts leaves no training prompts; lower it or pass eval pairs"
        )
    order = torch.randperm(len(prompts), generator=keyed_generator(seed, Stream.SPLIT)).tolist()
    held_out = {prompts[i] for i in order[:held]}
    train = [i for i, prompt in enumerate(pair_prompts) if prompt not in held_out]
    evaluation = [i for i, prompt in enumerate(pair_prompts) if prompt in held_out]
    if isinstance(pairs, PairTable):
        return pairs.select(train), pairs.select(evaluation)
    return [pairs[i] for i in train], [pairs[i] for i in evaluation]
