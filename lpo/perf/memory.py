"""Peak training memory of a trainer preset, estimated on fake tensors (no GPU, no weights).

`lpo perf memory` answers "does this preset fit my card?" before a user rents one. Every
model is built at its real architecture size under torch's ``FakeTensorMode`` (shapes,
dtypes and storages, no data), and :class:`LiveBytes` counts the bytes of every storage an
operator creates while it is alive. Two phases, whose transient peaks sit on top of what
stays resident:

- **rollout** (LPO / SPO): the calls of one trained step of
  :func:`lpo.trainers.rollout.step_rollout` on ``sample_batch_size`` prompts (that function
  itself picks winners by reading scores, which fake tensors do not hold): the policy's CFG
  call, K candidates, the step reward scoring all B·K of them (the LRM on latents; SPO's pixel
  model: x̂0 U-Net call, VAE decode, image scorer), with the trainer's autocast;
- **update**: one micro-batch of the trainer's own loss (``_loss_fn`` of the step-DPO and
  Diffusion-DPO trainers, run on a stand-in for ``self``) with backward, then the optimiser step
  (which creates its states).

Resident: the base model's weights, the reward model, the trainable weights and the optimiser
states; gradients count in the update's transient (alive from backward to zero_grad). What this leaves out: the CUDA context and cuDNN/cuBLAS workspaces
(~0.5–1 GiB), allocator fragmentation, and kernels whose workspace differs between the CPU
and CUDA (attention runs the fused SDPA path on both, so no T×T matrix is counted). Checked
against the H100 probe in ``results/perf/train_probe_h100.json`` (see the README's table).
"""

from __future__ import annotations

import contextlib
import gc
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MIB = 2**20


class LiveBytes(TorchDispatchMode):
    """Bytes of storages created by operators and still alive: now (``live``) and at most (``peak``).

    A storage is counted once however many tensors view it, and released when the last of
    them dies. Tensors made before the mode was entered are not seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self._views: dict[int, int] = {}
        self._bytes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self._views[key] -= 1
        if self._views[key] == 0:
            self.live -= self._bytes.pop(key)
            del self._views[key]

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self._views:
            self._views[key] = 0
            self._bytes[key] = storage.nbytes()
            self.live += self._bytes[key]
            self.peak = max(self.peak, self.live)
        self._views[key] += 1
        weakref.finalize(tensor, self._release, key)

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self._track(item)
        return out


@dataclass
class MemoryEstimate:
    """MiB per part; ``peak_mib`` = resident + the larger phase's transient."""

    preset: str
    architecture: str
    method: str
    dtype: str
    mixed_precision: str
    batch: dict[str, int]
    gradient_checkpointing: bool
    optimizer: str
    trainable_parameters: int
    reward_dtype: str
    resident_mib: dict[str, float] = field(default_factory=dict)
    transient_mib: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def peak_mib(self) -> float:
        return sum(self.resident_mib.values()) + max(self.transient_mib.values(), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peak_mib": self.peak_mib}


@contextlib.contextmanager
def _fake_model_building() -> Iterator[None]:
    """Module.to() and copy.deepcopy work on fake parameters and buffers while models are built.

    Two gaps in torch 2.13's fake tensors. A fake parameter is swapped in place on conversion,
    which fails because the fake mode holds a weak reference to it (peft moves its new adapters
    with .to()); nothing references the parameters yet while models are built, so a new
    Parameter replaces it here. And deep-copying a fake buffer (the LRM copies the U-Net's
    blocks and the text encoders) reads its storage's data pointer, which crashed the process;
    a fake tensor's copy is its clone here.
    """
    from torch._subclasses.fake_tensor import is_fake

    original_apply, original_deepcopy = torch.nn.Module._apply, torch.Tensor.__deepcopy__

    def deepcopy(self: torch.Tensor, memo: dict) -> torch.Tensor:
        if not is_fake(self):
            return original_deepcopy(self, memo)
        if id(self) not in memo:
            memo[id(self)] = self.clone().requires_grad_(self.requires_grad)
        return memo[id(self)]

    def apply(self: torch.nn.Module, fn: Callable, recurse: bool = True) -> torch.nn.Module:
        if recurse:
            for child in self.children():
                child._apply(fn)
        for key, param in self._parameters.items():
            if param is not None:
                with torch.no_grad():
                    applied = fn(param)
                if applied is not param:
                    self._parameters[key] = torch.nn.Parameter(applied, requires_grad=param.requires_grad)
        for key, buffer in self._buffers.items():
            if buffer is not None:
                self._buffers[key] = fn(buffer)
        return self

    torch.nn.Module._apply, torch.Tensor.__deepcopy__ = apply, deepcopy
    try:
        yield
    finally:
        torch.nn.Module._apply, torch.Tensor.__deepcopy__ = original_apply, original_deepcopy


class _Meter:
    """Resident bytes of each named part, as the live-byte counter grows while it is built.

    Tensors held only by reference cycles (autograd graphs, hooks) die whenever Python's
    cyclic collector happens to run, which depends on everything the process allocated
    before. So automatic collection is off while the meter is used (:func:`_collect_at_boundaries`)
    and garbage is collected at each boundary: the same estimate in any process.
    """

    def __init__(self, live: LiveBytes) -> None:
        self.live = live
        self.parts: dict[str, float] = {}

    def _settled(self) -> int:
        gc.collect()
        return self.live.live

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        before = self._settled()
        yield
        self.parts[name] = self.parts.get(name, 0.0) + (self._settled() - before) / MIB

    def transient(self, run: Callable[[], Any]) -> float:
        """MiB above what was live before ``run``, at its peak; what ``run`` keeps is counted too."""
        before = self._settled()
        self.live.reset_peak()
        run()
        return (self.live.peak - before) / MIB


@contextlib.contextmanager
def _collect_at_boundaries() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def estimate_training_memory(config: Any, architecture: str, *, reward_dtype: str = "fp32") -> MemoryEstimate:
    """Estimate the peak memory of ``config`` (a resolved trainer config) at ``architecture`` size.

    architecture: ``sd15`` or ``sdxl`` (random weights at the real sizes, built on fake tensors).
    reward_dtype: the step reward model's weights as loaded (the trainer keeps a reward folder's
    saved dtype; lpo's reward training saves fp32).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lpo.sampling.generate import resolve_dtype

    dtype = resolve_dtype(config.model.dtype)
    step_method = config.method in ("lpo", "spo")
    estimate = MemoryEstimate(
        preset=config.preset, architecture=architecture, method=config.method, dtype=config.model.dtype,
        mixed_precision=config.optim.mixed_precision, batch={},
        gradient_checkpointing=config.policy.gradient_checkpointing, optimizer=config.optim.optimizer,
        trainable_parameters=0, reward_dtype=reward_dtype if step_method else "",
    )
    with FakeTensorMode(allow_non_fake_inputs=True), _fake_model_building(), _collect_at_boundaries(), \
            LiveBytes() as live, contextlib.ExitStack() as stack, warnings.catch_warnings():
        # diffusers' ModelMixin.to reads a parameter's data pointer; a fake one has none (harmless here)
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        meter = _Meter(live)
        with meter.part("base model (U-Net, VAE, text encoders)"):
            from lpo.perf.architectures import random_components

            components = random_components(architecture, dtype=dtype)
        reward = None
        if step_method:
            with meter.part("step reward model"):
                reward = _build_reward(config.method, components, resolve_dtype(reward_dtype))
        from lpo.trainers.harness import build_optimizer, build_policy

        with meter.part("policy: fp32 trainable weights (+ frozen reference copy if full)"):
            policy = build_policy(components.unet, config.policy, config.run.seed, frozen_dtype=config.model.dtype)
        params = policy.trainable_parameters()
        estimate.trainable_parameters = sum(p.numel() for p in params)
        optimizer = build_optimizer(params, _fake_safe_optim(config.optim, estimate))
        autocast = _autocast(config.optim.mixed_precision)
        if config.optim.mixed_precision != "no":
            stack.enter_context(_cuda_fp32_ops())
        if step_method:
            estimate.batch = {"rollout prompts": config.sampler.sample_batch_size,
                              "candidates": config.sampler.num_candidates, "update": config.train.train_batch_size}
            estimate.transient_mib["rollout"] = meter.transient(
                lambda: _rollout_step(components, reward, config, autocast))
            update = lambda: _step_update(components, policy, config, autocast)  # noqa: E731
        else:
            micro = _dpo_micro_batch(config, estimate)
            estimate.batch = {"pairs per forward": micro}
            update = lambda: _dpo_update(components, policy, config, micro, autocast)  # noqa: E731

        def update_and_step() -> None:
            update()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        # the first step creates the optimiser states, which then stay; the second shows the
        # steady state: gradients (alive from backward to zero_grad) count in its transient
        update_and_step()
        meter.parts["optimiser states"] = _state_bytes(optimizer) / MIB
        estimate.transient_mib["update"] = meter.transient(update_and_step)
    estimate.resident_mib = meter.parts
    return estimate


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimiser's state tensors, each storage once.

    Read from the state itself rather than as the live-byte growth over the first step: a
    handful of the step's temporaries (0-2 MiB at SD1.5 LoRA) outlive it for as long as
    autograd's C++ side holds them, which varied between processes.
    """
    storages = {}
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()
                storages[storage._cdata] = storage.nbytes()
    return sum(storages.values())


def _fake_safe_optim(optim: Any, estimate: MemoryEstimate) -> Any:
    from dataclasses import replace

    if optim.optimizer != "adamw8bit":
        return optim
    # bitsandbytes needs CUDA; its 8-bit states are a quarter of AdamW's fp32 ones (+ small quantisation maps)
    estimate.notes.append("adamw8bit counted as AdamW's fp32 states; 8-bit states are about 1/4 of that")
    return replace(optim, optimizer="adamw")


def _autocast(mixed_precision: str) -> Callable[[], Any]:
    if mixed_precision == "no":
        return contextlib.nullcontext
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]
    return lambda: torch.autocast("cpu", dtype=dtype)


FP32_UNDER_CUDA_AUTOCAST = ("group_norm", "layer_norm", "interpolate", "softmax", "log_softmax")


@contextlib.contextmanager
def _cuda_fp32_ops() -> Iterator[None]:
    """Under autocast, the ops CUDA's autocast runs in float32 run in float32 here too.

    CPU autocast keeps group/layer norm, upsampling and softmax in the low precision, but
    which activations are fp32 decides much of the memory: norms ~20% of an SD1.5 LoRA update,
    and the VAE decoder's fp32 upsampling the largest tensor of SPO's rollout. The list is
    CUDA's policy for the ops these models use (``FP32_UNDER_CUDA_AUTOCAST``; a test checks it
    against CUDA's own autocast kernels on fake CUDA tensors); matmul, conv, linear and SDPA run
    in the low precision under both. The functions themselves are replaced (not a function
    mode) so that gradient checkpointing's recomputation in backward runs them alike.
    """
    import torch.nn.functional as F

    originals = {name: getattr(F, name) for name in FP32_UNDER_CUDA_AUTOCAST}

    def upcasting(original: Callable) -> Callable:
        def norm(input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if torch.is_autocast_enabled("cpu") and input.dtype in (torch.float16, torch.bfloat16):
                with torch.autocast("cpu", enabled=False):
                    cast = lambda x: x.float() if isinstance(x, torch.Tensor) else x  # noqa: E731
                    return original(input.float(), *(cast(a) for a in args), **{k: cast(v) for k, v in kwargs.items()})
            return original(input, *args, **kwargs)
        return norm

    for name, original in originals.items():
        setattr(F, name, upcasting(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(F, name, original)


def _build_reward(method: str, components: Any, dtype: torch.dtype) -> Any:
    if method == "lpo":
        from lpo.reward.lrm import LatentRewardModel

        return LatentRewardModel.from_components(components).to(dtype=dtype).eval()
    from lpo.perf.architectures import random_pickscore_scorer
    from lpo.reward.pixel import PixelStepReward

    scorer = random_pickscore_scorer(dtype=dtype)
    return PixelStepReward.from_components(components, scorer).eval()


def _prompts(count: int) -> list[str]:
    return ["a red circle left of a blue square"] * count


def _latents(components: Any, batch: int) -> torch.Tensor:
    side = components.default_resolution // components.vae_scale_factor
    return torch.randn(batch, components.latent_channels, side, side, dtype=components.unet.dtype)


def _rollout_step(components: Any, reward: Any, config: Any, autocast: Callable[[], Any]) -> None:
    """One trained step of the rollout: the policy's CFG call, K candidates, their scores."""
    from lpo.models.components import guided_conditioning
    from lpo.models.conditioning import predict_noise
    from lpo.sampling.ddim import branch_candidates, ddim_step_with_logprob

    s = config.sampler
    batch, k = s.sample_batch_size, s.num_candidates
    scheduler = components.scheduler
    t = _middle_timestep(scheduler, s.num_inference_steps)
    with torch.no_grad(), autocast():
        conditioning = guided_conditioning(components, _prompts(batch), s.guidance_scale)
        reward_text = reward.encode_text(_prompts(batch))
        latents = _latents(components, batch)
        eps = predict_noise(components.unet, latents, t, conditioning)
        step = ddim_step_with_logprob(scheduler, eps, t, latents, eta=s.eta, noise=torch.zeros_like(eps))
        candidates = branch_candidates(step.mean, step.std, k).to(latents.dtype)
        flat = candidates.reshape(batch * k, *latents.shape[1:])
        # inner steps (SPO-SDXL): each candidate runs on as one batch before its chain end is scored
        for _ in range(s.inner_steps):
            flat = predict_noise(components.unet, flat, t, _repeat_conditioning(conditioning, k)).to(flat.dtype)
        timesteps = torch.full((batch * k,), t, dtype=torch.long)
        reward.score_with_conditioning(flat, timesteps, reward_text.repeat_interleave(k))


def _middle_timestep(scheduler: Any, num_inference_steps: int) -> int:
    """Sets the scheduler's timesteps with real tensors (the rollout reads them as numbers)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        scheduler.set_timesteps(num_inference_steps)
        return int(scheduler.timesteps[len(scheduler.timesteps) // 2])


def _repeat_conditioning(conditioning: Any, k: int) -> Any:
    rows = torch.arange(conditioning.batch_size).repeat_interleave(k)
    return conditioning.index(rows)


def _trainer_stub(components: Any, policy: Any, config: Any, **extra: Any) -> Any:
    """What a trainer's ``_loss_fn`` reads from ``self``, so the estimate runs the trainer's own loss."""
    from types import SimpleNamespace

    return SimpleNamespace(components=components, policy=policy, config=config, **extra)


def _backward(loss_fn: Callable, rows: torch.Tensor, autocast: Callable[[], Any]) -> None:
    # as lpo.trainers.harness.accumulated_step: the loss under autocast, backward outside it
    with autocast():
        losses, _ = loss_fn(rows)
    losses.sum().backward()


def _step_update(components: Any, policy: Any, config: Any, autocast: Callable[[], Any]) -> None:
    """One micro-batch of lpo.trainers.step_dpo's loss on fake kept steps, backward included."""
    from lpo.models.components import guided_conditioning
    from lpo.sampling.step_kernels import kernel_for
    from lpo.trainers.rollout import KeptSteps
    from lpo.trainers.step_dpo import StepDPOTrainer

    s, batch = config.sampler, config.train.train_batch_size
    t = _middle_timestep(components.scheduler, s.num_inference_steps)
    with torch.no_grad():
        conditioning = guided_conditioning(components, _prompts(batch), s.guidance_scale)
    empty = torch.zeros(batch)
    kept = KeptSteps(
        latents_t=_latents(components, batch), latents_w=_latents(components, batch),
        latents_l=_latents(components, batch), timesteps=torch.full((batch,), t, dtype=torch.long),
        prompt_index=torch.arange(batch), conditioning=conditioning, gaps=empty, scores_w=empty, scores_l=empty,
        latents_t_l=_latents(components, batch) if s.inner_steps else None,  # inner steps: the loser's own x_t
    )
    kernel = kernel_for(components, config.sampler.eta, config.sampler.noise_level)
    loss_fn = StepDPOTrainer._loss_fn(_trainer_stub(components, policy, config, kernel=kernel), policy.unet, kept)
    _backward(loss_fn, torch.arange(batch), autocast)


def _dpo_micro_batch(config: Any, estimate: MemoryEstimate) -> int:
    # the presets' batch is global: 2048 = 1 per forward × 128 accumulation × 16 GPUs
    processes = 16 if config.preset in ("dpo-sd15", "dpo-sdxl") else 1
    micro = max(1, config.train.batch_size // (config.optim.gradient_accumulation_steps * processes))
    estimate.notes.append(f"{micro} pair(s) per forward = batch {config.train.batch_size} / "
                          f"({config.optim.gradient_accumulation_steps} accumulation × {processes} processes)")
    return micro


def _dpo_update(components: Any, policy: Any, config: Any, micro: int, autocast: Callable[[], Any]) -> None:
    """One micro-batch of lpo.trainers.diffusion_dpo's loss, backward included.

    The trainer's ``_encode`` decodes the pairs' images; here it VAE-encodes random pixels of
    the same size (the frozen VAE's forward, as in training), the rest is the trainer's code.
    """
    from lpo.models.components import encode_prompts
    from lpo.trainers.diffusion_dpo import DiffusionDPOTrainer

    c = components
    resolution = c.default_resolution

    def encode(draws: Any, rows: torch.Tensor) -> tuple:
        pixels = torch.randn(2 * micro, 3, resolution, resolution, dtype=c.vae.dtype)
        latents = c.vae.encode(pixels).latent_dist.mean.float() * c.vae.config.scaling_factor
        latents = latents.reshape(micro, 2, *latents.shape[1:])
        timesteps = torch.full((micro,), 500, dtype=torch.long)
        noise = torch.randn_like(latents[:, 0])
        x_t = [c.scheduler.add_noise(latents[:, i], noise, timesteps) for i in (0, 1)]
        conditioning = encode_prompts(c, _prompts(micro), resolution=resolution)
        return x_t[0], x_t[1], conditioning, timesteps, torch.stack([noise, noise], dim=1)

    loss_fn = DiffusionDPOTrainer._loss_fn(_trainer_stub(c, policy, config, _encode=encode), policy.unet, None)
    _backward(loss_fn, torch.arange(micro), autocast)
