"""SPO's step-aware preference model: a timestep-conditioned pixel reward on the decoded one-step x̂0.

Implements SPEC §4.3 (SPO paper, arXiv 2406.04314, §4.2 and its official code) as the
pixel-space counterpart of the LRM (:mod:`lpo.reward.lrm`, SPEC §4.1): the same call signature
``forward(latents_t, timesteps, prompts) -> (B,)``, the same scores (exp(logit_scale)·cos),
trained on the same pairs the same way (2-way cross-entropy). SPO's step loop (SPEC §5.2)
uses it as the step reward where LPO uses the LRM.

Paper notation -> code:

====================  ==================================================================
x_t, t                ``latents_t`` (B, C, h, w), ``timesteps`` (B,) or an int
ε̂                     CFG-combined noise prediction of the FROZEN base U-Net, w = 5.0
                      (``PixelRewardConfig.guidance_scale``), empty negative prompt
x̂0                    ``predicted_original_sample`` = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t  (B, C, h, w);
                      flow models (SD3): x_σ − σ·v̂ with σ = t/1000 (the transformer's
                      velocity with CFG, :func:`lpo.sampling.flow.flow_predicted_x0`)
D(x̂0)                 ``PixelStepReward.decode_x0``: frozen VAE decode of x̂0/scaling_factor,
                      an image (B, 3, H, W) in [-1, 1]
e_t                   timestep embedding: sinusoid(t) -> MLP (``TimestepEmbedding``)
AdaLN                 per vision layer l: (shift, scale, gate) × 2 = Linear(SiLU(e_t)),
                      zero-initialised (``EncoderLayerAdaLN``); pooled output: (shift, scale)
I, T                  ``TimestepConditionedScorer.encode_images`` / ``encode_text`` (B, P)
S(prompt, x_t, t)     ``PixelStepReward.forward`` = exp(logit_scale)·cos(I(D(x̂0), t), T)

The pieces, one module each:

- :mod:`lpo.reward.pixel_scorer`: the trainable scorer, :class:`TimestepConditionedScorer` (a
  transformers ``CLIPModel`` kept intact) and :func:`world_pixel_scorer` for the world;
- :mod:`lpo.reward.time_conditioning`: e_t and the AdaLN hooks on its vision tower;
- :mod:`lpo.reward.clip_preprocess`: ``CLIPImageProcessor`` in torch, differentiably;
- :mod:`lpo.reward.pixel_io`: the saved folder (:func:`save_pixel_reward`,
  :func:`load_pixel_reward`);
- this module: the settings (:class:`PixelRewardConfig`), the one-step x̂0
  (:func:`predicted_original_sample`) and the step reward itself (:class:`PixelStepReward`).

Precision: the scorer runs in its dtype; preprocessing, the cosine and the scores are
float32. x̂0 is float32; the VAE decodes in its own dtype (for fp16 SDXL use an fp16-safe
VAE such as ``madebyollin/sdxl-vae-fp16-fix``, see ``load_components(vae=...)``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence, get_args

import torch
from torch import Tensor, nn

from lpo.core.hashing import base_model_fingerprint
from lpo.models.components import ModelKind
from lpo.models.conditioning import GuidedConditioning
from lpo.models.flow_components import FlowKind
from lpo.models.parts import LatentPipelineParts
from lpo.sampling.flow import flow_predicted_x0, is_flow_scheduler
from lpo.sampling.step_kernels import kernel_for, policy_conditioning
from lpo.reward.pixel_scorer import (
    PICKSCORE_MODEL_ID,
    PICKSCORE_PROCESSOR_ID,
    TimestepConditionedScorer,
    as_timesteps,
    prompt_list,
    world_pixel_scorer,
)


@dataclass
class PixelRewardConfig:
    """Settings of the pixel step reward (SPEC §4.3, §5.2).

    ``base_model`` and ``kind`` name the diffusion model whose denoiser predicts x̂0 and whose
    VAE decodes it; left as None they are filled in from the components.
    """

    guidance_scale: float = 5.0  # CFG weight of the one-step x̂0 prediction (SPO: 5)
    negative_prompt: str | None = None  # None: the pipeline's default ("" for SD1.5/world, zeros for SDXL)
    base_model: str | None = None
    kind: ModelKind | FlowKind | None = None
    base_model_hash: str | None = None  # as LRMConfig.base_model_hash

    def __post_init__(self) -> None:
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 1:
            raise ValueError(
                f"guidance_scale must be a finite number >= 1 (1 turns CFG off), got {self.guidance_scale}"
            )
        kinds = (*get_args(ModelKind), *get_args(FlowKind))
        if self.kind is not None and self.kind not in kinds:
            raise ValueError(f"kind must be one of {', '.join(kinds)} (or None), got {self.kind!r}")
        if self.base_model is not None and not str(self.base_model).strip():
            raise ValueError("base_model is empty; give the base model's hub id or folder, or None")


# --------------------------------------------------------------------------- the step reward


def predicted_original_sample(scheduler: Any, noise_pred: Tensor, timesteps: Tensor, latents_t: Tensor) -> Tensor:
    """(B, C, h, w) float32 one-step x̂0 from the model output at (B,) timesteps (SPEC §3 step 3).

    ε-prediction: x̂0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t with ᾱ = ``scheduler.alphas_cumprod``;
    ``sample`` and ``v_prediction`` models as ``DDIMScheduler.step`` does, and x̂0 clipped
    or thresholded exactly when the scheduler's config asks (never for SD1.5/SDXL), so
    this equals ``ddim_step_with_logprob(...).pred_original_sample``.
    """
    alpha_prod_t = scheduler.alphas_cumprod.to(device=latents_t.device, dtype=torch.float32)[timesteps]
    alpha_prod_t = alpha_prod_t.view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    beta_prod_t = 1 - alpha_prod_t
    model_output, sample = noise_pred.float(), latents_t.float()
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        x0 = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
    elif prediction_type == "sample":
        x0 = model_output
    elif prediction_type == "v_prediction":
        x0 = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
    else:
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported; use 'epsilon', 'sample' or 'v_prediction'"
        )
    if getattr(scheduler.config, "thresholding", False):
        x0 = scheduler._threshold_sample(x0)
    elif getattr(scheduler.config, "clip_sample", False):
        clip = scheduler.config.clip_sample_range
        x0 = x0.clamp(-clip, clip)
    return x0


def _tuner_layers(module: nn.Module) -> list[Any]:
    """peft adapter layers (LoRA etc.) inside ``module``; empty without peft."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def _freeze_base_weights(module: nn.Module) -> None:
    """requires_grad False and eval mode for every weight except peft adapter weights.

    The base U-Net is shared with the policy, whose LoRA may already be attached: those
    adapter weights keep their flag (they are switched off during the reward's call).
    """
    adapter_params = set()
    for layer in _tuner_layers(module):
        for name in layer.adapter_layer_names:
            adapter_params.update(id(p) for p in getattr(layer, name).parameters())
    for param in module.parameters():
        if id(param) not in adapter_params:
            param.requires_grad_(False)
    module.eval()


@contextmanager
def _base_model(module: nn.Module) -> Iterator[None]:
    """Run ``module`` as the frozen base model: no grad, eval mode, peft adapters switched off.

    Adapters are switched off through the layer's flag itself rather than
    ``enable_adapters(False)``, which would also change the adapter weights' requires_grad.
    Everything is restored afterwards.
    """
    switched = [layer for layer in _tuner_layers(module) if not layer.disable_adapters]
    was_training = module.training
    for layer in switched:
        layer._disable_adapters = True
    if was_training:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for layer in switched:
            layer._disable_adapters = False
        if was_training:
            module.train()


def _flow_timesteps(timesteps: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """(B,) float32 σ·1000 timesteps from a number or a (B,) / 1-element tensor."""
    t = torch.as_tensor(timesteps, device=device, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} timesteps for a batch of {batch}; pass one or one per sample")
    return t


@dataclass
class PixelRewardText:
    """The text side of the pixel reward for B prompts, reusable for many latents.

    conditioning: the base U-Net's CFG conditioning (computed without gradients).
    text_embeds: (B, P) the scorer's text embeddings T (with gradients when training).
    """

    conditioning: GuidedConditioning
    text_embeds: Tensor

    @property
    def batch_size(self) -> int:
        return self.text_embeds.shape[0]

    def repeat_interleave(self, repeats: int) -> "PixelRewardText":
        """Each prompt repeated ``repeats`` times in place, e.g. for K candidates per prompt."""
        return PixelRewardText(
            self.conditioning.repeat_interleave(repeats), self.text_embeds.repeat_interleave(repeats, dim=0)
        )

    def index(self, idx: Tensor | slice | int | Sequence[int]) -> "PixelRewardText":
        """Rows ``idx`` (an int keeps the batch dimension)."""
        rows = slice(idx, idx + 1) if isinstance(idx, int) else idx
        return PixelRewardText(self.conditioning.index(idx), self.text_embeds[rows])


class PixelStepReward(nn.Module):
    """SPO's step reward S(prompt, x_t, t) on noisy latents, via the decoded one-step x̂0.

    Same call as :class:`~lpo.reward.lrm.LatentRewardModel`: ``forward(latents_t, timesteps,
    prompts) -> (B,)`` float32. Steps (each timeable on its own):

    1. :meth:`predict_x0`: the frozen base U-Net predicts ε̂ with CFG; x̂0 in one step;
    2. :meth:`decode_x0`: the frozen VAE decodes x̂0 to an image in [-1, 1];
    3. :meth:`score_images`: the trainable :class:`TimestepConditionedScorer` on (image, t, prompt).

    The U-Net, VAE, scheduler and text encoder are the components' own modules, shared with
    the caller and not registered as submodules: ``parameters()``, ``state_dict()``,
    ``train()`` and ``to()`` cover the scorer only. With ``freeze_base`` (default) the VAE
    and the U-Net's base weights get requires_grad False and eval mode (peft adapter
    weights already on the U-Net are left alone); steps 1–2 always run under no_grad, in
    eval mode and with any peft adapters switched off, so the policy's LoRA never leaks
    into the reward.
    """

    def __init__(
        self,
        components: LatentPipelineParts,
        scorer: TimestepConditionedScorer,
        config: PixelRewardConfig | None = None,
        *,
        freeze_base: bool = True,
    ) -> None:
        super().__init__()
        config = config or PixelRewardConfig()
        if config.kind is not None and config.kind != components.kind:
            raise ValueError(f"config.kind is {config.kind!r} but the components are {components.kind!r}")
        self.config = replace(config, kind=components.kind, base_model=config.base_model or components.source,
                              base_model_hash=config.base_model_hash or base_model_fingerprint(components.source))
        self.scorer = scorer
        self.components = components  # a dataclass, not a Module: not registered, not saved
        self.decode_batch_size: int | None = None  # a runtime setting (trainers' reward.decode_batch_size), not saved
        if freeze_base:
            _freeze_base_weights(components.vae)
            _freeze_base_weights(components.denoiser)
        self._flow = is_flow_scheduler(components.scheduler)
        self._kernel = kernel_for(components)  # the base denoiser's CFG prediction, by family

    @classmethod
    def from_components(
        cls,
        components: LatentPipelineParts,
        scorer: TimestepConditionedScorer | None = None,
        config: PixelRewardConfig | None = None,
        *,
        freeze_base: bool = True,
    ) -> "PixelStepReward":
        """A pixel reward on ``components``; the scorer defaults to the paper's.

        Without ``scorer``: world -> :func:`world_pixel_scorer` on the world tokenizer
        (random init); SD1.5/SDXL/SD3 -> PickScore (``PICKSCORE_MODEL_ID`` with the processor
        ``PICKSCORE_PROCESSOR_ID``), which needs hub access or the local cache.
        """
        if scorer is None:
            if components.kind in ("world", "world-flow"):
                scorer = world_pixel_scorer(components.tokenizer)
            else:
                scorer = TimestepConditionedScorer.from_clip_pretrained(PICKSCORE_MODEL_ID, PICKSCORE_PROCESSOR_ID)
        scorer.to(components.device)
        return cls(components, scorer, config, freeze_base=freeze_base)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The scorer's parameters: the only ones the pixel reward trains."""
        return list(self.scorer.parameters())

    @property
    def device(self) -> torch.device:
        return self.scorer.device

    @property
    def kind(self) -> ModelKind:
        return self.config.kind  # type: ignore[return-value]

    # ----------------------------------------------------------------- the three steps

    def encode_text(self, prompts: str | Sequence[str]) -> PixelRewardText:
        """The base denoiser's CFG conditioning (no grad) and the scorer's T (grad) for ``prompts``."""
        prompts = prompt_list(prompts)
        with torch.no_grad():  # the base text encoder is frozen too
            conditioning = policy_conditioning(
                self.components, prompts, self.config.guidance_scale, self.config.negative_prompt
            )
        return PixelRewardText(conditioning=conditioning, text_embeds=self.scorer.encode_text(prompts))

    def predict_x0(
        self,
        latents_t: Tensor,
        timesteps: Tensor | int,
        text: str | Sequence[str] | PixelRewardText | GuidedConditioning,
    ) -> Tensor:
        """(B, C, h, w) float32 one-step x̂0 of the frozen base denoiser with CFG (no grad);
        flow models take σ·1000 timesteps (floats allowed)."""
        unet = self.components.denoiser
        batch = latents_t.shape[0]
        if isinstance(text, PixelRewardText):
            conditioning = text.conditioning
        elif isinstance(text, GuidedConditioning):
            conditioning = text
        else:
            with torch.no_grad():
                conditioning = policy_conditioning(
                    self.components, prompt_list(text), self.config.guidance_scale, self.config.negative_prompt
                )
        if conditioning.batch_size != batch:
            raise ValueError(
                f"{batch} latents but conditioning for {conditioning.batch_size} prompts; "
                "for K latents per prompt use text.repeat_interleave(K)"
            )
        scheduler = self.components.scheduler
        timesteps = _flow_timesteps(timesteps, batch, unet.device) if self._flow else as_timesteps(timesteps, batch, unet.device)
        latents_t = latents_t.to(device=unet.device, dtype=unet.dtype)
        with _base_model(unet):
            prediction = self._kernel.predict(unet, latents_t, timesteps, conditioning)
            if self._flow:
                return flow_predicted_x0(scheduler, prediction, timesteps, latents_t)
            return predicted_original_sample(scheduler, prediction, timesteps, latents_t)

    def decode_x0(self, pred_original_sample: Tensor) -> Tensor:
        """(B, 3, H, W) float32 image in [-1, 1]: the frozen VAE's decode of x̂0 / scaling_factor (no grad)."""
        vae = self.components.vae
        latents = pred_original_sample.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:  # latents were (z − shift)·scale; SD1.5/SDXL have no shift
            latents = latents + shift
        # decode_batch_size (set by the trainer): chunks bound the decoder's activations; each image's
        # decode is independent of the others in the batch, so the scores do not change
        chunk = self.decode_batch_size or len(latents)
        with _base_model(vae):
            return torch.cat([vae.decode(part).sample.float().clamp(-1, 1) for part in latents.split(chunk)])

    def score_images(
        self, images: Tensor, timesteps: Tensor | int, text: str | Sequence[str] | PixelRewardText | Tensor
    ) -> Tensor:
        """(B,) float32 scorer output on decoded images in [-1, 1] at timesteps t (with grad);
        a flow model's σ·1000 is rounded to the integer t the scorer's embedding was trained on."""
        text_embeds = text.text_embeds if isinstance(text, PixelRewardText) else text
        if self._flow and torch.is_tensor(timesteps) and timesteps.is_floating_point():
            timesteps = timesteps.round().long()
        elif self._flow and isinstance(timesteps, float):
            timesteps = round(timesteps)
        return self.scorer.score(images, timesteps, text_embeds)

    def score_with_conditioning(self, latents_t: Tensor, timesteps: Tensor | int, text: PixelRewardText) -> Tensor:
        """(B,) scores for precomputed text (:meth:`encode_text`), e.g. K candidates per prompt."""
        pred_original_sample = self.predict_x0(latents_t, timesteps, text)
        return self.score_images(self.decode_x0(pred_original_sample), timesteps, text)

    # ----------------------------------------------------------------- shared x̂0 (evaluation)

    @property
    def x0_key(self) -> tuple:
        """Readers of x̂0 with equal keys see the same decoded image of an x_t (see
        :func:`lpo.reward.training.pair_scores_by_timestep_many`)."""
        return ("x0", id(self.components.denoiser), id(self.components.vae), self.config.guidance_scale,
                self.config.negative_prompt)

    def decode_for_scoring(self, latents_t: Tensor, timesteps: Tensor | int, prompts: Sequence[str]) -> Tensor:
        """The decoded one-step x̂0 of ``latents_t`` (no grad), as :meth:`forward` computes it."""
        with torch.no_grad():
            return self.decode_x0(self.predict_x0(latents_t, timesteps, list(prompts)))

    def score_decoded(self, images: Tensor, timesteps: Tensor | int, prompts: Sequence[str]) -> Tensor:
        """:meth:`forward`'s scores from :meth:`decode_for_scoring`'s images."""
        return self.score_images(images, timesteps, self.scorer.encode_text(list(prompts)))

    def forward(self, latents_t: Tensor, timesteps: Tensor | int, prompts: str | Sequence[str]) -> Tensor:
        """(B,) float32 scores S(prompt_i, x_t^i, t_i); ``timesteps`` an int or (B,)."""
        prompts = prompt_list(prompts)
        if len(prompts) != latents_t.shape[0]:
            raise ValueError(f"{latents_t.shape[0]} latents but {len(prompts)} prompts; pass one prompt per latent")
        return self.score_with_conditioning(latents_t, timesteps, self.encode_text(prompts))
