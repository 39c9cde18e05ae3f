"""What ``lpo eval CHECKPOINT`` evaluates: resolve the argument, hash its content, read its run.

Accepted, in this order:

1. a reference image source offered by the benchmark (the world's ``ground-truth``,
   ``shuffled``, ``noise``), hashed by its name and the world version;
2. ``world`` / ``world:PRESET`` (the world base model's folder);
3. a diffusers pipeline folder (``model_index.json``); when it sits inside a run folder
   (``run.json`` in it or its parent) the run's id, method, base model and training cost
   come along;
4. a run folder (or its ``model/``): the merged pipeline it exported (``pipeline/``) if
   any, else its final policy ``model/`` applied to the run's base model
   (``config.json`` ``model.base``): a diffusers LoRA folder
   (``pytorch_lora_weights.safetensors``, loaded with ``load_lora_weights``) or a
   ``UNet2DConditionModel`` folder (a full fine-tune, swapped in);
   an intermediate checkpoint ``RUN/checkpoints/step-N/`` the same way from its own
   ``model/``, with the cost snapshot written with it;
5. a name from the checkpoint registry (:mod:`lpo.evals.checkpoint_registry`: the
   released SD1.5 / SDXL, Diffusion-DPO, SPO and LPO models, plus the user's entries),
   built as the entry says (whole pipeline, U-Net swapped in, or LoRA loaded; VAE
   override); its CFG, training signals and published row come along;
6. a hub id ``owner/name`` (real mode).

An existing path wins over a registry name of the same spelling. Anything else is an
error listing the known names.

The checkpoint hash keys the image cache and goes into every record: two records with
the same hash were produced by byte-identical weights. A folder's hash covers every file
(path and content); file hashes are memoised by (path, size, mtime) so re-evaluating a
multi-GB pipeline does not re-read it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpo.core.errors import LpoError
from lpo.models.components import _HUB_ID  # the same shape test the loader applies
from lpo.core.hashing import folder_hash
from lpo.models.families import alias_family

RUN_PIPELINE_SUBFOLDERS = ("pipeline",)  # lpo.trainers.harness.PIPELINE_DIR
RUN_MODEL_DIR = "model"  # lpo.trainers.harness.MODEL_DIR
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # lpo.trainers.lora.LORA_WEIGHTS_NAME


@dataclass
class Checkpoint:
    """A resolved checkpoint. ``path`` is None for reference sources; ``hub_id`` for hub models."""

    spec: str
    label: str
    content_hash: str
    kind: str  # "pipeline" | "reference"
    path: str | None = None
    hub_id: str | None = None
    # A run's policy on top of a base pipeline: "lora" (diffusers LoRA folder) or "unet".
    base: str | None = None
    adapter_kind: str | None = None
    adapter_path: str | None = None
    method: str = "base"
    base_model: str | None = None
    run_id: str | None = None
    run_path: str | None = None
    training_cost: dict[str, Any] | None = None
    optimised_reward: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    adapter_subfolder: str | None = None
    vae: str | None = None  # an AutoencoderKL replacing the pipeline's
    vae_subfolder: str | None = None
    guidance_scale: float | None = None  # the CFG of the checkpoint's original evaluation (registry)
    trained_with: list[dict[str, Any]] | None = None  # declared training signals (registry)
    registry: dict[str, Any] | None = None  # name, origin, source, published_as of a registry entry

    def as_dict(self) -> dict[str, Any]:
        adapter = {"base": self.base, "adapter_kind": self.adapter_kind, "adapter_path": self.adapter_path}
        if self.adapter_subfolder:
            adapter["adapter_subfolder"] = self.adapter_subfolder
        return {
            "spec": self.spec,
            "label": self.label,
            "hash": self.content_hash,
            "kind": self.kind,
            "path": self.path,
            "hub_id": self.hub_id,
            **(adapter if self.adapter_kind else {}),
            **({"vae": self.vae, "vae_subfolder": self.vae_subfolder} if self.vae else {}),
            **({"registry": self.registry} if self.registry else {}),
            **self.extra,  # e.g. an intermediate checkpoint's training step, a hub commit
        }

    @property
    def published_as(self) -> str | None:
        return (self.registry or {}).get("published_as")

    @property
    def model(self) -> str:
        """The pipeline :func:`lpo.sampling.generate.load_pipeline` takes (the base one under an adapter)."""
        if self.kind != "pipeline":
            raise ValueError(f"{self.spec} is a reference source, not a pipeline")
        return self.base or self.path or self.hub_id  # type: ignore[return-value]

    @functools.cached_property
    def sampler(self) -> str | None:
        """The protocol sampler of this checkpoint's family: flow-euler for a flow-matching
        (SD3-style) pipeline, ddim otherwise; None for a reference source."""
        if self.kind != "pipeline":
            return None
        from lpo.models.flow_components import is_flow_pipeline

        try:
            return "flow-euler" if is_flow_pipeline(self.model) else "ddim"
        except LpoError:  # an unreadable hub model: loading it gives the real error
            return "ddim"

    def load_pipeline(self, device: str, dtype: str):
        """The diffusers pipeline to sample: the folder / hub model, or the base with the run's policy."""
        from lpo.sampling.generate import build_pipeline, load_pipeline, resolve_device, resolve_dtype, resolve_model_name

        if self.adapter_kind == "unet" and self.sampler == "flow-euler":
            pipe = _flow_with_transformer(resolve_model_name(self.model), self.adapter_path, self.adapter_subfolder,
                                          resolve_device(device), resolve_dtype(dtype))
        elif self.adapter_kind == "unet" or self.vae:
            from lpo.models.components import load_components

            unet = self.adapter_path if self.adapter_kind == "unet" else None
            components = load_components(
                resolve_model_name(self.model), dtype=resolve_dtype(dtype), device=resolve_device(device),
                unet=unet, unet_subfolder=self.adapter_subfolder if unet else None,
                vae=self.vae, vae_subfolder=self.vae_subfolder,
            )
            pipe = build_pipeline(components)
            pipe.set_progress_bar_config(disable=True)
        else:
            pipe, components = load_pipeline(self.model, device=device, dtype=dtype)
        if self.adapter_kind == "lora":
            where = "the registry entry's base" if self.registry else "the run's model.base"
            try:
                kwargs = {"subfolder": self.adapter_subfolder} if self.adapter_subfolder else {}
                pipe.load_lora_weights(self.adapter_path, **kwargs)
            except (OSError, ValueError, RuntimeError, KeyError) as err:
                from lpo.core.io import one_line

                raise LpoError(
                    f"could not apply the LoRA in {self.adapter_path} to {self.model} ({one_line(err)}); "
                    f"{where} must be the pipeline it was trained on"
                ) from err
            from lpo.trainers.lora import check_lora_applied

            folder = Path(self.adapter_path) / (self.adapter_subfolder or "")
            check_lora_applied(_denoiser(pipe), folder, str(self.model), f"{where} must be the pipeline it was trained on")
        from lpo.core.finite import check_finite_module

        # A diverged run's weights would give normal-looking records for noise images.
        check_finite_module(_denoiser(pipe), f"the denoiser of checkpoint {self.spec}",
                            "it comes from a diverged run: retrain it with a lower optim.lr; lpo eval does not score it")
        return pipe


def _flow_with_transformer(model: str, folder: str, subfolder: str | None, device, dtype):
    """A flow pipeline with a run's fully fine-tuned transformer (``SD3Transformer2DModel`` folder) swapped in."""
    from dataclasses import replace

    from diffusers import SD3Transformer2DModel

    from lpo.models.flow_components import load_flow_components
    from lpo.sampling.generate import build_flow_pipeline

    components = load_flow_components(model, dtype=dtype, device=device)
    try:
        transformer = SD3Transformer2DModel.from_pretrained(folder, subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise LpoError(f"could not load the fine-tuned transformer in {folder} ({err}); it must come from a run on {model}") from err
    pipe = build_flow_pipeline(replace(components, transformer=transformer.to(device).eval()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _denoiser(pipe):
    """The pipeline's U-Net, or its transformer (flow-matching pipelines)."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


# --------------------------------------------------------------------------- resolution


def resolve_checkpoint(spec: str, benchmark=None, prompts=None, registry: Path | str | None = None) -> Checkpoint:
    """The :class:`Checkpoint` named by ``spec`` (see the module docstring for the rules);
    ``registry`` is a checkpoint registry file read after the shipped entries and the user's."""
    # 1. A reference source of the benchmark.
    source = benchmark.reference_source(spec, prompts or []) if benchmark is not None else None
    if source is not None:
        # The source's version says what its images depend on (the world's: "world<grammar
        # version>"); the prompt list is part of it too: "shuffled" draws each image from
        # the other prompts.
        prompt_list = hashlib.sha256("\n".join(prompts or []).encode()).hexdigest()
        digest = hashlib.sha256(f"reference|{spec}|{source.version}|{prompt_list}".encode()).hexdigest()[:16]
        return Checkpoint(spec=spec, label=spec, content_hash=digest, kind="reference", method="reference", base_model=None)

    # 2. Model-family aliases (world, world:PRESET).
    family = alias_family(spec)
    if family is not None:
        folder = family.resolve(spec)
        return Checkpoint(
            spec=spec, label=spec, content_hash=folder_hash(folder), kind="pipeline", path=str(folder), base_model=spec
        )

    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LpoError(f"{spec} is a file, not a pipeline; pass a diffusers pipeline folder (with model_index.json), world, or a run folder")
        if (path / "model_index.json").is_file():
            return _pipeline_folder(spec, path)
        if (path / "run.json").is_file():
            return _from_run_folder(spec, path)
        if path.name == RUN_MODEL_DIR and (path.parent / "run.json").is_file():
            return _from_run_folder(spec, path.parent)
        if (path / RUN_MODEL_DIR).is_dir() and (path.parent.parent / "run.json").is_file():
            return _from_run_checkpoint(spec, path)
        raise LpoError(
            f"{spec} is not a diffusers pipeline (no model_index.json); pass a folder saved with save_pretrained, "
            "world, a run folder, or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5"
        )

    from lpo.evals.checkpoint_registry import load_registry

    entries = load_registry(registry)
    if spec in entries:
        return from_registry(entries[spec], entries)
    if _HUB_ID.match(spec):
        digest, commit = _hub_hash(spec)
        return Checkpoint(
            spec=spec, label=spec, content_hash=digest, kind="pipeline", hub_id=spec, base_model=spec,
            extra={"hub_commit": commit},
        )
    raise LpoError(
        f"unknown checkpoint {spec!r}: not a folder, not world, not a hub id, and no registry entry "
        f"(known: {', '.join(sorted(entries))}; `lpo list checkpoints`)"
    )


def _ref_hash(ref: str, subfolder: str | None = None) -> str:
    """Content hash of a pipeline / component reference: a local folder's files (the
    subfolder's when given), a world alias's folder, or a hub repository's commit."""
    from lpo.sampling.generate import resolve_model_name

    path = Path(resolve_model_name(ref)).expanduser()
    if path.is_dir():
        target = path / subfolder if subfolder else path
        if not target.is_dir():
            raise LpoError(f"{path} has no subfolder {subfolder!r}; fix the checkpoint entry's subfolder")
        return folder_hash(target)
    if _HUB_ID.match(ref):
        digest = _hub_hash(ref)[0]
        return hashlib.sha256(f"{digest}|{subfolder}".encode()).hexdigest()[:16] if subfolder else digest
    raise LpoError(f"{ref!r} is neither a local folder nor a hub id; fix the checkpoint entry")


def from_registry(entry, entries) -> Checkpoint:
    """A registry entry as a :class:`Checkpoint` (hashes computed, nothing loaded).

    The hash is the one the same parts get elsewhere: a plain pipeline entry hashes as the
    folder / hub id itself, a U-Net or LoRA on a base as a run folder's policy does
    (``base|kind|part``), so the image cache is shared; a VAE override is folded in.
    """
    from lpo.evals.checkpoint_registry import check_lora_fits, plan
    from lpo.evals.signals import signal_record
    from lpo.sampling.generate import resolve_model_name

    p = plan(entry, entries)
    digest = _ref_hash(p.pipeline)
    part = p.unet or p.lora
    if part:
        kind = "unet" if p.unet else "lora"
        digest = hashlib.sha256(f"{digest}|{kind}|{_ref_hash(part, p.unet_subfolder or p.lora_subfolder)}".encode()).hexdigest()[:16]
    if p.vae:
        digest = hashlib.sha256(f"{digest}|vae|{_ref_hash(p.vae, p.vae_subfolder)}".encode()).hexdigest()[:16]
    if p.lora:
        check_lora_fits(p.lora, p.lora_subfolder, p.pipeline, entry.name)
    local = Path(resolve_model_name(p.pipeline)).expanduser()
    pipeline_path = str(local.resolve()) if local.is_dir() else None

    def local_or_hub(ref: str | None) -> str | None:
        if ref is None:
            return None
        path = Path(resolve_model_name(ref)).expanduser()
        return str(path.resolve()) if path.is_dir() else ref

    ckpt = Checkpoint(
        spec=entry.name, label=entry.label or entry.name, content_hash=digest, kind="pipeline",
        path=pipeline_path if not part else None, hub_id=None if (pipeline_path or part) else p.pipeline,
        base=(pipeline_path or p.pipeline) if part else None, adapter_kind=("unet" if p.unet else "lora") if part else None,
        adapter_path=local_or_hub(part), adapter_subfolder=p.unet_subfolder or p.lora_subfolder,
        vae=local_or_hub(p.vae), vae_subfolder=p.vae_subfolder, method=entry.method, base_model=p.base_model or p.pipeline,
        guidance_scale=entry.cfg,
        # declared signals; none declared: a base model has none, anything else is unknown
        trained_with=[signal_record(s, f"checkpoint {entry.name!r}") for s in entry.trained_with]
        if entry.trained_with else ([] if entry.method == "base" else None),
        registry={"name": entry.name, "origin": entry.origin, "source": entry.source, "published_as": entry.published_as,
                  "chain": list(p.chain)},
    )
    return ckpt


def _pipeline_folder(spec: str, folder: Path) -> Checkpoint:
    ckpt = Checkpoint(spec=spec, label=spec, content_hash=folder_hash(folder), kind="pipeline", path=str(folder.resolve()))
    run_dir = next((d for d in (folder, folder.parent, folder.parent.parent) if (d / "run.json").is_file()), None)
    if run_dir is not None:
        _read_run(ckpt, run_dir)
    return ckpt


def _from_run_checkpoint(spec: str, folder: Path) -> Checkpoint:
    """An intermediate checkpoint ``RUN/checkpoints/step-N``: its ``model/`` on the run's base
    model, with the cost snapshot the trainer wrote at that step (not the finished run's)."""
    from lpo.core.runs import read_cost

    run_dir = folder.parent.parent
    ckpt = _from_run_folder(spec, run_dir, model=folder / RUN_MODEL_DIR)
    try:
        ckpt.training_cost = read_cost(folder)  # folder/cost.json (its parent has none)
    except LpoError:
        ckpt.training_cost = None  # an older trainer wrote no snapshot: no cost beats a wrong one
    step = folder.name.rpartition("-")[2]
    ckpt.extra.pop("steps_trained", None)  # the finished run's, not this checkpoint's
    ckpt.extra["step"] = int(step) if step.isdigit() else step
    ckpt.label = f"{ckpt.label}@{ckpt.extra['step']}" if ckpt.label != spec else ckpt.label
    return ckpt


def _from_run_folder(spec: str, run_dir: Path, model: Path | None = None) -> Checkpoint:
    """A run's final policy: its merged ``pipeline/``, else ``model/`` on the run's base model
    (or ``model``, an intermediate checkpoint's policy folder)."""
    if model is None:
        for name in RUN_PIPELINE_SUBFOLDERS:
            if (run_dir / name / "model_index.json").is_file():
                return _pipeline_folder(spec, run_dir / name)
    model = model if model is not None else run_dir / RUN_MODEL_DIR
    if (model / LORA_WEIGHTS).is_file():
        adapter_kind = "lora"
    elif (model / "config.json").is_file() and (model / "diffusion_pytorch_model.safetensors").is_file():
        adapter_kind = "unet"
    else:
        looked = ", ".join(f"{run_dir / n}/" for n in (*RUN_PIPELINE_SUBFOLDERS, RUN_MODEL_DIR))
        raise LpoError(
            f"run folder {run_dir} has no final model yet (looked for {looked}); "
            "let the run finish (or resume it), or pass a pipeline folder"
        )
    base = _run_base_model(run_dir)
    from lpo.sampling.generate import resolve_model_name

    base_path = Path(resolve_model_name(base))
    if base_path.is_dir():
        base_hash = folder_hash(base_path)
    elif _HUB_ID.match(base):
        base_hash = _hub_hash(base)[0]
    else:
        raise LpoError(f"run {run_dir} was trained on {base!r}, which is not here; restore it or pass a pipeline folder")
    digest = hashlib.sha256(f"{base_hash}|{adapter_kind}|{folder_hash(model)}".encode()).hexdigest()[:16]
    ckpt = Checkpoint(
        spec=spec, label=spec, content_hash=digest, kind="pipeline", base=base if not base_path.is_dir() else str(base_path.resolve()),
        adapter_kind=adapter_kind, adapter_path=str(model.resolve()),
    )
    _read_run(ckpt, run_dir)
    return ckpt


def _run_base_model(run_dir: Path) -> str:
    from lpo.core.runs import RunFolder

    config = RunFolder.open(run_dir).read_config()
    model = config.get("model")
    base = model.get("base") if isinstance(model, dict) else model
    if not base:
        raise LpoError(f"{run_dir}/config.json names no base model (model.base); the run folder is damaged")
    return str(base)


def _read_run(ckpt: Checkpoint, run_dir: Path) -> None:
    """Fill run id, method, base model, optimised reward and training cost from a run folder."""
    from lpo.core.runs import RunFolder, read_cost

    run = RunFolder.open(run_dir)
    meta = run.read_run()
    try:
        config = run.read_config()
    except LpoError:
        config = {}
    ckpt.run_id = str(meta.get("name") or run_dir.name)
    ckpt.run_path = str(run_dir.resolve())
    ckpt.method = str(meta.get("method") or config.get("method") or config.get("trainer") or ckpt.method)
    model = meta.get("base_model") or config.get("base_model") or config.get("model")
    if isinstance(model, dict):  # the trainers' nested model config
        model = model.get("base")
    ckpt.base_model = str(model) if model else ckpt.base_model
    ckpt.label = str(meta.get("label") or ckpt.label) if ckpt.label == ckpt.spec else ckpt.label
    reward = meta.get("reward") or config.get("reward")
    if isinstance(reward, dict):  # the step reward the run optimised (LPO's LRM, SPO's pixel model)
        reward = reward.get("path")
    ckpt.optimised_reward = str(reward) if reward else None
    if meta.get("preset"):
        ckpt.extra["preset"] = str(meta["preset"])
    result = run_dir / "result.json"
    if result.is_file():  # a finished run: how far it trained (intermediate checkpoints carry "step")
        try:
            steps = json.loads(result.read_text()).get("steps")
        except (OSError, ValueError):
            steps = None
        if isinstance(steps, int):
            ckpt.extra["steps_trained"] = steps
    try:
        ckpt.training_cost = read_cost(run_dir)
    except LpoError:
        ckpt.training_cost = None


def _hub_hash(hub_id: str) -> tuple[str, str]:
    """(hash, commit) of a hub model: the hash of id + the repository commit it resolves to
    now (asked from the hub, or read from the local snapshot when offline)."""
    commit = None
    try:
        from huggingface_hub import HfApi

        commit = HfApi().model_info(hub_id).sha
    except Exception:  # offline, private or unknown: try the local cache
        try:
            from huggingface_hub import snapshot_download

            commit = Path(snapshot_download(hub_id, local_files_only=True)).name
        except Exception:
            commit = None
    if not commit:
        raise LpoError(
            f"could not resolve hub model {hub_id!r} (no network answer and not in the local cache); "
            "check the id and network, or pass a local pipeline folder"
        )
    return hashlib.sha256(f"hub|{hub_id}|{commit}".encode()).hexdigest()[:16], commit
