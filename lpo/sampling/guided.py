"""LRM-guided sampling (SPEC §5.4): step-level best-of-K with the Latent Reward Model.

At each DDIM step x_t -> x_prev (η > 0, CFG as usual) the sampler draws K candidates
x_prev^k = μ + std·z_k from the step's Gaussian, scores them with a step reward (the LRM
on the noisy candidates) and continues from one of them:

    select="best"     argmax_k S_k                    (the LPO paper's "future work")
    select="softmax"  k ~ softmax(S / τ)              (τ → 0 is "best")
    select="random"   k ~ uniform                     (a control: same branching, no reward)
    select="worst"    argmin_k S_k                    (a control: the reward's sign matters)

Cost: branching costs no extra U-Net calls — all K candidates share the step's μ, so one
(CFG) U-Net evaluation per image per step, as plain sampling — but K LRM evaluations per
image per branched step. :func:`lpo.sampling.guided_generation.best_of_k_final` is the obvious
baseline at K× the U-Net cost: K independent plain trajectories, keep the final image a
scorer likes best.

Noise layout (what makes guided and plain images comparable). Every image has two
generators: the *trajectory* generator, seeded with the image's seed
(:func:`lpo.sampling.generate.image_seed`), draws x_T and one z per step exactly as
:func:`lpo.sampling.ddim.sample_trajectory` does, and candidate 0 of every step is the plain
sampler's own x_prev; the *branch* generator (seed derived by :func:`branch_seed`) draws
the other K − 1 candidates and one uniform per branched step for the random / softmax pick.
Consequences: a guided image starts from the same x_T as the plain image of its seed; a
scorer that always prefers candidate 0 reproduces plain sampling exactly; and all four
rules see the same candidates at the first step (common random numbers for paired
comparisons). The uniform is drawn whatever the rule, so the streams never depend on it.

Call counting (:class:`CallCounts`, per batch and per image): ``unet_calls`` counts
denoiser evaluations — one per image per step, a CFG pair (conditional + unconditional,
run as one batched forward) counting once; ``unet_passes`` counts U-Net forward rows
(2 per CFG evaluation); ``lrm_calls`` counts latents scored by the LRM (with VFE each is
one batched pass over the prompt and the empty prompt, like a CFG pair).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import torch
from torch import Tensor

from lpo.models.conditioning import GuidedConditioning, TextConditioning, predict_noise
from lpo.core.errors import LpoError
from lpo.sampling.ddim import (
    Generators,
    _check_eta,
    _require_ddim,
    branch_candidates,
    ddim_step_with_logprob,
)

SELECT_RULES = ("best", "softmax", "random", "worst")
LRM_TIMESTEPS = ("current", "prev")


# --------------------------------------------------------------------------- config and outputs


@dataclass(frozen=True)
class GuidanceConfig:
    """How candidates are branched, scored and picked.

    num_candidates: K candidates per branched step (K = 1 is plain sampling).
    select: best | softmax | random | worst (see the module docstring).
    temperature: τ of ``softmax``; ignored by the other rules.
    lrm_timestep: the timestep the scorer is told. ``current`` = t although the candidates
        sit at prev_t (the official LPO code does this; SPEC §4.1/§5.1b), ``prev`` = prev_t
        (clamped at 0 after the last step).
    branch_timesteps: the timesteps t at which to branch (e.g. (951, 901, 851)); None =
        every step. Other steps are plain DDIM steps.
    """

    num_candidates: int = 4
    select: str = "best"
    temperature: float = 1.0
    lrm_timestep: str = "current"
    branch_timesteps: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.num_candidates < 1:
            raise LpoError(f"num_candidates={self.num_candidates}; need at least 1 (2 or more to branch)")
        if self.select not in SELECT_RULES:
            raise LpoError(f"unknown select rule {self.select!r}; use one of {', '.join(SELECT_RULES)}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise LpoError(f"temperature={self.temperature}; the softmax temperature τ must be a finite number > 0")
        if self.lrm_timestep not in LRM_TIMESTEPS:
            raise LpoError(f"unknown lrm_timestep {self.lrm_timestep!r}; use current (official code) or prev")
        if self.branch_timesteps is not None:
            object.__setattr__(self, "branch_timesteps", tuple(int(t) for t in self.branch_timesteps))


@dataclass
class CallCounts:
    """Model evaluations spent on ``images`` images (totals; see ``per_image``)."""

    images: int = 0
    unet_calls: int = 0  # denoiser evaluations; a CFG pair counts once
    unet_passes: int = 0  # U-Net forward rows; a CFG pair counts twice
    lrm_calls: int = 0  # latents scored by the step reward

    def per_image(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {"unet_calls": self.unet_calls / n, "unet_passes": self.unet_passes / n, "lrm_calls": self.lrm_calls / n}

    def __add__(self, other: "CallCounts") -> "CallCounts":
        return CallCounts(
            self.images + other.images,
            self.unet_calls + other.unet_calls,
            self.unet_passes + other.unet_passes,
            self.lrm_calls + other.lrm_calls,
        )


@dataclass
class GuidedTrajectory:
    """A batch of B guided trajectories.

    timesteps: (N,) long, sampling order.  branch_timesteps: (S,) long, those that branched.
    final_latents: (B, C, H, W) x_0 (divide by the VAE's scaling factor to decode).
    scores: (B, S, K) float32 scorer outputs of the candidates at each branched step.
    choices: (B, S) long, the candidate continued from.
    counts: model evaluations for this batch.
    latents: (B, N + 1, C, H, W) x_T, then the latents after each step (``record=True``).
    candidates: (B, S, K, C, H, W) every candidate (``record=True``).
    """

    timesteps: Tensor
    branch_timesteps: Tensor
    final_latents: Tensor
    scores: Tensor
    choices: Tensor
    counts: CallCounts
    latents: Tensor | None = None
    candidates: Tensor | None = None


class CandidateScorer(Protocol):
    """Scores K candidate latents per image: (B, K, C, H, W), timesteps (B,) -> (B, K)."""

    def __call__(self, candidates: Tensor, timesteps: Tensor) -> Tensor: ...


# A scorer for a batch of prompts (scorers hold their prompts' text features).
ScorerFactory = Callable[[Sequence[str]], CandidateScorer]


class LRMCandidateScorer:
    """A :class:`CandidateScorer` from a LatentRewardModel for B prompts (text encoded once)."""

    def __init__(self, lrm, prompts: Sequence[str]) -> None:
        self.lrm = lrm
        with torch.no_grad():
            self.text = lrm.encode_text(list(prompts))
        self._repeated: dict[int, object] = {}

    @torch.no_grad()
    def __call__(self, candidates: Tensor, timesteps: Tensor) -> Tensor:
        batch, k = candidates.shape[:2]
        if batch != self.text.batch_size:
            raise ValueError(f"{batch} images of candidates but the scorer holds {self.text.batch_size} prompts")
        if k not in self._repeated:
            self._repeated[k] = self.text.repeat_interleave(k)  # prompt i for its K candidates, in place
        flat_t = timesteps.reshape(batch).repeat_interleave(k)
        scores = self.lrm.score_with_conditioning(candidates.flatten(0, 1), flat_t, self._repeated[k])
        return scores.float().view(batch, k)


def lrm_scorer(lrm) -> ScorerFactory:
    """A :data:`ScorerFactory` over a (frozen, eval-mode) LRM."""
    return lambda prompts: LRMCandidateScorer(lrm, prompts)


# --------------------------------------------------------------------------- seeds


def derived_seed(seed: int, purpose: str) -> int:
    """A 32-bit seed for ``purpose`` derived from an image seed (independent streams)."""
    digest = hashlib.sha256(f"{int(seed)}|{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def branch_seed(seed: int) -> int:
    """Seed of an image's branch generator (candidates 1..K−1 and the pick's uniform)."""
    return derived_seed(seed, "lrm-guided-branch")


def generators_for(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed (CPU so that GPU and CPU runs draw the same numbers)."""
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def uniform_per_sample(batch: int, generators: Generators, device: torch.device | str | None = None) -> Tensor:
    """(B,) float64 U[0, 1) draws; with a list of generators row i comes from generator i."""
    if generators is None or isinstance(generators, torch.Generator):
        gen_device = generators.device if generators is not None else device
        return torch.rand((batch,), generator=generators, device=gen_device, dtype=torch.float64).to(device)
    generators = list(generators)
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
    return torch.cat([torch.rand((1,), generator=g, device=g.device, dtype=torch.float64) for g in generators]).to(device)


# --------------------------------------------------------------------------- selection


def select_candidates(scores: Tensor, select: str, uniforms: Tensor, temperature: float = 1.0) -> Tensor:
    """(B,) long index of the candidate to continue from, given scores (B, K) and U[0,1) (B,).

    ``softmax`` inverts the CDF of softmax(S/τ) at the uniform (float64, max-subtracted, so
    τ → 0 gives the argmax); ``random`` takes ⌊u·K⌋. Ties in best/worst go to the lowest index.
    """
    batch, k = scores.shape
    uniforms = uniforms.to(scores.device, torch.float64).reshape(batch)
    if select == "best":
        return scores.argmax(dim=1)
    if select == "worst":
        return scores.argmin(dim=1)
    if select == "random":
        return (uniforms * k).long().clamp(max=k - 1)
    if select == "softmax":
        probs = torch.softmax(scores.double() / temperature, dim=1)
        cdf = probs.cumsum(dim=1)
        # first k with cdf_k > u·total: the count of cdf entries <= u·total
        return (cdf <= (uniforms * cdf[:, -1]).unsqueeze(1)).sum(dim=1).clamp(max=k - 1)
    raise ValueError(f"unknown select rule {select!r}; use one of {', '.join(SELECT_RULES)}")


# --------------------------------------------------------------------------- the guided sampler


def cfg_rows(conditioning: GuidedConditioning | TextConditioning) -> int:
    """U-Net forward rows per denoiser evaluation: 2 with CFG (as predict_noise batches it), else 1."""
    if isinstance(conditioning, GuidedConditioning) and conditioning.uncond is not None and conditioning.guidance_scale != 1.0:
        return 2
    return 1


@torch.no_grad()
def guided_sample(
    unet: torch.nn.Module,
    scheduler,
    conditioning: GuidedConditioning | TextConditioning,
    latents: Tensor,
    scorer: CandidateScorer,
    config: GuidanceConfig,
    num_inference_steps: int = 20,
    eta: float = 1.0,
    generator: Generators = None,
    branch_generator: Generators = None,
    record: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> GuidedTrajectory:
    """N stochastic DDIM steps from x_T = ``latents`` (B, C, H, W), branching and picking as ``config`` says.

    ``generator`` draws each step's plain z (candidate 0) exactly as ``sample_trajectory``
    does; ``branch_generator`` draws candidates 1..K−1 and the pick's uniform (one generator
    or one per sample for both; see the module docstring). Sets ``scheduler``'s timesteps.
    """
    _require_ddim(scheduler)
    _check_eta(eta)
    batch = latents.shape[0]
    if conditioning.batch_size != batch:
        raise ValueError(f"conditioning has batch {conditioning.batch_size} but latents have {batch}")
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    timesteps = scheduler.timesteps
    branch_at = set(int(t) for t in timesteps) if config.branch_timesteps is None else set(config.branch_timesteps)
    unknown = sorted(branch_at - set(int(t) for t in timesteps))
    if unknown:
        raise LpoError(
            f"branch timesteps {unknown} are not DDIM timesteps of a {num_inference_steps}-step schedule "
            f"({', '.join(str(int(t)) for t in timesteps)})"
        )
    k = config.num_candidates
    counts = CallCounts(images=batch)
    rows = cfg_rows(conditioning)
    history = [latents] if record else None
    all_scores, all_choices, all_candidates, branched = [], [], [], []

    steps = progress(timesteps) if progress is not None else timesteps
    for t in steps:
        # 1. one (CFG) U-Net evaluation per image: μ and std of the step's Gaussian, and the
        #    plain sampler's own x_prev (candidate 0)
        model_input = scheduler.scale_model_input(latents, t)
        noise_pred = predict_noise(unet, model_input, t, conditioning)
        counts.unet_calls += batch
        counts.unet_passes += rows * batch
        step = ddim_step_with_logprob(scheduler, noise_pred, t, latents, eta=eta, generator=generator)
        if int(t) not in branch_at or k == 1:
            latents = step.prev_sample
        else:
            # 2. K candidates from the same mean: candidate 0 plus K − 1 branch draws
            others = branch_candidates(step.mean, step.std, k - 1, branch_generator).to(latents.dtype)
            candidates = torch.cat([step.prev_sample.unsqueeze(1), others], dim=1)  # (B, K, C, H, W)
            uniforms = uniform_per_sample(batch, branch_generator, device=latents.device)
            # 3. score them at t (official parity) or at prev_t, then pick one
            score_t = t if config.lrm_timestep == "current" else (step.prev_timestep[0]).clamp(min=0)
            score_t = torch.as_tensor(score_t, device=latents.device).long().reshape(1).expand(batch)
            scores = scorer(candidates, score_t).float()
            counts.lrm_calls += batch * k
            if tuple(scores.shape) != (batch, k):
                raise ValueError(f"the scorer returned shape {tuple(scores.shape)}; expected ({batch}, {k})")
            choice = select_candidates(scores, config.select, uniforms, config.temperature)
            latents = candidates[torch.arange(batch, device=candidates.device), choice.to(candidates.device)]
            all_scores.append(scores.cpu())
            all_choices.append(choice.cpu())
            branched.append(int(t))
            if record:
                all_candidates.append(candidates)
        if record:
            history.append(latents)

    num_branched = len(branched)
    return GuidedTrajectory(
        timesteps=timesteps,
        branch_timesteps=torch.tensor(branched, dtype=torch.long),
        final_latents=latents,
        scores=torch.stack(all_scores, dim=1) if num_branched else torch.zeros(batch, 0, k),
        choices=torch.stack(all_choices, dim=1) if num_branched else torch.zeros(batch, 0, dtype=torch.long),
        counts=counts,
        latents=torch.stack(history, dim=1) if record else None,
        candidates=torch.stack(all_candidates, dim=1) if record and num_branched else None,
    )
