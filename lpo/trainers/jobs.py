"""`lpo train`: resolve the config, load the parts a trainer is handed, run it.

This is the only trainer module that loads things by name (the base model, the reward
model, prompts, pairs); the trainers themselves get their parts handed in.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from lpo.core.errors import LpoError


def resolve_config(method: str, preset: str, overrides: Sequence[str]) -> Any:
    """The preset's config for ``method`` with the type-checked ``--set`` overrides applied."""
    from lpo.core.config import apply_overrides
    from lpo.trainers import TRAINERS
    from lpo.trainers.presets import trainer_preset

    TRAINERS.get(method)  # unknown method -> one-line error listing the known ones
    return apply_overrides(trainer_preset(preset, method), list(overrides))


def load_prompts(spec: str | None) -> list[str]:
    """Training prompts from ``world:SPLIT``, a text file (one per line) or a pairs parquet (captions, deduplicated)."""
    if spec is None:
        raise LpoError("no training prompts: set train.prompts=world:train, a .txt file or a pairs .parquet")
    from lpo.models.families import alias_family

    family = alias_family(spec) if ":" in spec else None
    if family is not None and family.split_prompts is not None:  # world:SPLIT
        return family.split_prompts(spec.split(":", 1)[1])
    path = Path(spec)
    if not path.exists():
        if spec.startswith("world:"):  # the world registers world:SPLIT when it is plugged in
            raise LpoError(f"prompt source {spec} needs the embedded world: call lpo.world.install() first "
                           "(the lpo command does), or use a .txt file or a pairs .parquet")
        raise LpoError(f"prompt source {spec} does not exist; use world:SPLIT, a .txt file or a pairs .parquet")
    if path.suffix == ".parquet" or path.is_dir():
        import pyarrow.parquet as pq

        files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
        captions: list[str] = []
        for file in files:
            try:
                column = pq.read_table(file, columns=["caption"]).column("caption").to_pylist()
            except (OSError, KeyError, ValueError) as err:
                raise LpoError(f"could not read captions from {file} ({err}); pass a pairs parquet with a caption column") from err
            captions.extend(c for c in column if isinstance(c, str) and c.strip())
        prompts = list(dict.fromkeys(captions))
        if not prompts:
            raise LpoError(f"{spec} holds no captions")
        return prompts
    from lpo.sampling.generate import read_prompts_file

    return read_prompts_file(path)


def _check_resumable(run_dir: Path, config: Any) -> None:
    """Refuse before touching run.json / config.json when the newest checkpoint has another config."""
    from lpo.core.runs import RunFolder, list_checkpoints
    from lpo.core.training_loop import read_trainer_state
    from lpo.trainers.harness import config_changes

    checkpoints = list_checkpoints(RunFolder.open(run_dir))
    if checkpoints:
        saved = read_trainer_state(checkpoints[-1][1])
        changes = config_changes(saved.get("config", {}), config)
        if changes:
            raise LpoError(
                f"cannot resume {run_dir}: the config differs from its checkpoint's ({'; '.join(changes)}); "
                "resume with the same preset and --set values, or start a new run"
            )


def _open_run(config: Any, run_dir: Path | None, resume: bool, accelerator: Any, extra: dict[str, Any]) -> Any:
    from lpo.core.runs import RunFolder
    from lpo.trainers.harness import RESUME_FREE_FIELDS

    if resume:
        if run_dir is None:
            raise LpoError("--resume needs --run-dir pointing at the run to continue")
        RunFolder.open(run_dir).refuse_if_finished()  # before comparing configs: that answer is the useful one
        _check_resumable(run_dir, config)
        return RunFolder.resume(run_dir, config, accelerator=accelerator, resume_free=RESUME_FREE_FIELDS)
    if run_dir is not None:
        return RunFolder.create(config, folder=run_dir, accelerator=accelerator, extra=extra)
    return RunFolder.create(config, name=config.preset, accelerator=accelerator, extra=extra)


def check_parts(config: Any) -> None:
    """The parts the method's trainer needs are named (checked before a run folder is made)."""
    from lpo.trainers import TRAINERS

    trainer_cls = TRAINERS.get(config.method)
    if trainer_cls.needs == "pairs":
        if config.data.pairs is None:
            raise LpoError(f"{config.method} needs preference pairs: set data.pairs to a parquet from `lpo pairs` or a dataset id")
        from lpo.models.components import _HUB_ID

        pairs = str(config.data.pairs)
        if not Path(pairs).exists() and not _HUB_ID.match(pairs):
            raise LpoError(f"pairs file {pairs} does not exist; pass an existing .parquet file or folder, or a hub dataset id")
        return
    if config.reward.path is None:
        what = "an LRM folder (lpo lrm train ... ; its run's model/)" if trainer_cls.reward_kind == "lrm" else \
            "an SPO pixel model folder (lpo lrm train --preset spo-pixel-...)"
        raise LpoError(f"{config.method} needs a step reward: set reward.path to {what}")
    if not Path(config.reward.path).exists():
        raise LpoError(f"reward.path {config.reward.path} does not exist; train the step reward first (lpo lrm train)")
    if config.train.prompts is None:
        raise LpoError("no training prompts: set train.prompts=world:train, a .txt file or a pairs .parquet")


def _load_step_reward(config: Any, reward_kind: str, components: Any, policy: Any) -> Any:
    from lpo.core.finite import check_finite_module

    from lpo.models.flow_components import FlowComponents

    path = config.reward.path
    if isinstance(components, FlowComponents) and reward_kind == "lrm":
        from lpo.reward.lrm_mmdit_io import is_mmdit_lrm_folder, load_mmdit_lrm

        if not is_mmdit_lrm_folder(path):
            raise LpoError(f"reward.path {path} is not an MMDiT LRM, but {components.source} is a flow model; "
                           "train one with lpo lrm train --set base_model=THE_SD3_PIPELINE")
        reward = load_mmdit_lrm(path, components)
    elif reward_kind == "lrm":
        from lpo.reward.lrm_io import load_lrm

        reward = load_lrm(path, components)
    else:
        from lpo.reward.pixel_io import load_pixel_reward

        # The pixel model predicts x̂0 with the BASE denoiser: the policy's own U-Net / MMDiT with
        # its adapters off (LoRA), or the frozen reference copy (full fine-tune).
        if policy.reference_unet is None:
            base = components
        elif isinstance(components, FlowComponents):
            base = replace(components, transformer=policy.reference_unet)
        else:
            base = replace(components, unet=policy.reference_unet)
        reward = load_pixel_reward(path, base, expected_base=components.source)
        reward.decode_batch_size = config.reward.decode_batch_size
    check_finite_module(reward, f"the step reward {path}",
                        "retrain it (lpo lrm train with a lower lr) or set reward.path to another reward model")
    reward.requires_grad_(False)
    return reward.eval()


def _reward_cost(path: str, say: Callable[[str], None]) -> dict[str, Any] | None:
    from lpo.core.runs import read_cost

    try:
        return read_cost(path)
    except LpoError as err:
        say(f"warning: {err}; this run's cost will not include the reward model's training")
        return None


def run_training(
    method: str,
    preset: str,
    overrides: Sequence[str] = (),
    run_dir: Path | None = None,
    resume: bool = False,
    console: Any = None,
    callbacks: Sequence[Callable] = (),
    trackers: Sequence[Any] = (),
    auto_eval: Any = None,
) -> Any:
    """Train ``method`` from ``preset`` + overrides in ``run_dir`` (or runs/PRESET-TIMESTAMP); a TrainResult.

    callbacks: called with a :class:`~lpo.trainers.harness.CheckpointEvent` after every
    checkpoint and for the final model (main process), e.g. to evaluate it.
    trackers: extra accelerate ``GeneralTracker`` objects, besides ``run.trackers``.
    auto_eval: an :class:`~lpo.trainers.auto_eval.AutoEvalConfig`: evaluate every checkpoint
    and the final model inline (:mod:`lpo.trainers.auto_eval`); None: no evaluation.
    """
    from lpo.core.progress import stage_progress
    from lpo.trainers import TRAINERS
    from lpo.trainers.harness import make_accelerator

    config = resolve_config(method, preset, overrides)
    check_parts(config)
    evaluator = None
    if auto_eval is not None:
        from lpo.trainers.auto_eval import AutoEvaluator

        evaluator = AutoEvaluator(auto_eval, console=console)  # unknown benchmark / metric names fail here
    accelerator = make_accelerator(config.optim, config.run)
    is_main = accelerator.is_main_process
    say = (lambda message: console.print(message, highlight=False)) if (console is not None and is_main) else (lambda m: None)

    # 1. the run folder (refused before anything is loaded when a resume does not fit)
    extra = {"method": method, "label": getattr(config, "label", method), "preset": preset,
             "base_model": config.model.base}
    if TRAINERS.get(method).needs == "step_reward":
        extra["reward"] = config.reward.path
    run = _open_run(config, run_dir, resume, accelerator, extra)
    say(f"run folder [bold]{run.path}[/]")
    if resume:
        from lpo.core.runs import resume_mismatches

        for mismatch in resume_mismatches(run, accelerator.device):
            say(f"[yellow]warning:[/] {mismatch}")
    with run.discarded_on_error(accelerator):
        trainer = _build_trainer(method, config, run, accelerator, callbacks, trackers, evaluator, console, say)
    # a diagnosed failure (divergence, nothing trained) before any checkpoint leaves nothing to resume
    with run.discarded_on_error(accelerator, errors=(LpoError,)), \
            stage_progress(console if is_main else None) as progress:
        trainer.progress = progress if is_main else None
        return trainer.train(resume=resume)


def _load_base(config: Any, device: Any) -> Any:
    """The base model's components: a U-Net pipeline's, or a flow pipeline's (SD3)."""
    import torch

    from lpo.models.components import load_components
    from lpo.models.flow_components import is_flow_pipeline, load_flow_components
    from lpo.sampling.generate import resolve_model_name

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[config.model.dtype]
    name = resolve_model_name(config.model.base)
    if not is_flow_pipeline(name):
        return load_components(name, dtype=dtype, device=device, vae=config.model.vae)
    if config.model.vae is not None:
        raise LpoError("model.vae replaces a U-Net pipeline's VAE; flow models keep their own: leave it unset")
    return load_flow_components(name, dtype=dtype, device=device)


def _build_trainer(method: str, config: Any, run: Any, accelerator: Any, callbacks: Sequence[Callable],
                   trackers: Sequence[Any], evaluator: Any, console: Any, say: Callable[[str], None]) -> Any:
    """Load what ``method`` is handed (base model, policy, reward or pairs, prompts) and build its trainer."""
    from lpo.trainers import TRAINERS
    from lpo.trainers.harness import build_policy

    is_main = accelerator.is_main_process
    trainer_cls = TRAINERS.get(method)

    # 2. the base model on this process's device; frozen parts frozen
    components = _load_base(config, accelerator.device)
    for module in (components.vae, *components.text_encoders):
        module.requires_grad_(False)
    reward = None
    if trainer_cls.needs == "step_reward" and trainer_cls.reward_kind == "lrm":
        # an LRM needs no policy (the pixel model does: below); loaded first because the MMDiT LRM
        # copies the base transformer's blocks, before the policy's LoRA lands on them
        reward = _load_step_reward(config, trainer_cls.reward_kind, components, None)
    policy = build_policy(components.denoiser, config.policy, config.run.seed, config.model.dtype)
    if evaluator is not None:
        evaluator.log, evaluator.console = say, (console if is_main else None)
        evaluator.prepare(run.path, components.kind, record=is_main)  # every process: the same errors
        if accelerator.num_processes > 1:
            say(f"[yellow]note:[/] inline evaluation runs on the main process while the other {accelerator.num_processes - 1} "
                "wait (a long one can exceed torch.distributed's collective timeout); for long evaluations train with --no-eval "
                f"and run `lpo eval --watch {run.path}` elsewhere")
        callbacks = [*callbacks, evaluator]

    # 3. the method's own parts, then the trainer
    common = dict(run=run, accelerator=accelerator, callbacks=list(callbacks), trackers=list(trackers), log=say)
    if trainer_cls.needs == "pairs":
        from lpo.pairs.stream import read_pairs

        loaded = read_pairs(config.data.pairs, config.data.split, config.data.limit, stream=config.data.stream, log=say)
        say(loaded.summary())
        trainer = trainer_cls(config, components, policy, loaded.pairs, **common)
    else:
        if reward is None:
            reward = _load_step_reward(config, trainer_cls.reward_kind, components, policy)
        prompts = load_prompts(config.train.prompts)
        from lpo.models.prompts import warn_truncated

        warn_truncated(components.tokenizer, prompts, say)
        cost = _reward_cost(config.reward.path, say)  # used only when the run has no cost record yet
        trainer = trainer_cls(config, components, policy, reward, prompts, reward_cost=cost,
                              reward_source=str(config.reward.path), **common)
    return trainer
