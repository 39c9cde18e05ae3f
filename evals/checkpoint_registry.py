"""Named checkpoints: released models (and your own) by a short name, e.g. ``lpo eval dpo-sd15``.

Each entry says how to build the pipeline and how it was originally evaluated:

============  ==================================================================
field         meaning
============  ==================================================================
name          the short name (letters, digits, ``.``, ``_``, ``-``; no ``/``)
replaces      ``pipeline`` (``weights`` is a whole pipeline), ``unet`` (``weights``
              holds a ``UNet2DConditionModel`` swapped into ``base``) or ``lora``
              (a diffusers LoRA loaded onto ``base``)
weights       hub id or folder (relative paths: from the registry file's folder);
              ``world`` / ``world:PRESET`` for world pipelines
subfolder     inside ``weights`` (``unet``; ``lpo_sd15_merge/unet``)
base          for unet / lora: another entry's name (its pipeline and VAE are used)
              or a pipeline folder / hub id
vae           optional ``AutoencoderKL`` (hub id or folder) replacing the pipeline's;
              ``vae_subfolder`` inside it. Inherited from the base entry.
cfg           the CFG of the checkpoint's original evaluation (``lpo eval`` and
              ``lpo compare --cfg own`` use it unless told otherwise)
method        base / diffusion-dpo / spo / lpo / … ;  base_model: sd15 / sdxl / world …
trained_with  training signals (:mod:`lpo.evals.signals` names or objects)
published_as  the model's row in the published tables (:mod:`lpo.evals.reported`)
source        where the weights and the CFG come from
============  ==================================================================

Sources, later ones overriding earlier ones by name: the entries below, then
``$LPO_HOME/checkpoints.json``, then a file given with ``--registry PATH``. A file is
``{"checkpoints": [ {...}, ... ]}`` (or just the list). A malformed entry is a one-line
error naming the file, the entry and the field.

The built-in entries follow the official LPO evaluation script
(Kwai-Kolors/LPO ``evaluation/general_score_pap_val.py``: which repository, subfolder and
CFG each model is loaded with; DDIM 20 steps, seed 42, fp16): Diffusion-DPO and LPO
release U-Nets (``mhdang/dpo-*`` in ``unet/``, ``casiatao/LPO`` in
``lpo_sd15_merge/unet`` / ``lpo_sdxl_merge/unet``) for the base pipelines; SPO releases
whole pipelines; every SDXL model runs with the ``madebyollin/sdxl-vae-fp16-fix`` VAE.
That script's CFG is 7.5 for SD1.5 and its Diffusion-DPO, 5.0 for everything else
(SPO's own SD1.5 inference script defaults to 7.5; the LPO paper's 5.0 is kept, since
the published numbers in :mod:`lpo.evals.reported` were measured with it).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lpo.core.errors import LpoError
from lpo.models.families import is_model_alias
from lpo.core.paths import lpo_home

REPLACES = ("pipeline", "unet", "lora")
USER_FILE = "checkpoints.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_VAE_FP16 = "madebyollin/sdxl-vae-fp16-fix"
LPO_EVAL_SCRIPT = "Kwai-Kolors/LPO evaluation/general_score_pap_val.py"


@dataclass(frozen=True)
class CheckpointEntry:
    name: str
    replaces: str
    weights: str
    method: str = "base"
    base_model: str | None = None
    subfolder: str | None = None
    base: str | None = None
    vae: str | None = None
    vae_subfolder: str | None = None
    cfg: float | None = None
    trained_with: tuple[Any, ...] = ()
    published_as: str | None = None
    label: str | None = None
    source: str = ""
    origin: str = "built-in"  # where the entry was read: built-in or the registry file

    def describe_weights(self) -> str:
        return self.weights + (f" [{self.subfolder}]" if self.subfolder else "")


# The file keys of an entry (``origin`` is ours).
ENTRY_FIELDS = tuple(f.name for f in fields(CheckpointEntry) if f.name != "origin")
REQUIRED = ("name", "replaces", "weights")

_DPO = ("pickapic-v2-labels",)
_SPO = ("spo-step-model", "pickapic-v1-labels")
_LPO = ("lrm", "pickapic-v1-labels", "mpcf-laion-aesthetic", "mpcf-clip-h14", "mpcf-vqascore")

BUILTIN: tuple[CheckpointEntry, ...] = (
    CheckpointEntry(
        "sd15", "pipeline", SD15, base_model="sd15", cfg=7.5, published_as="SD1.5",
        source=f"Stable Diffusion 1.5 (hub {SD15}); CFG from {LPO_EVAL_SCRIPT}",
    ),
    CheckpointEntry(
        "sdxl", "pipeline", SDXL, base_model="sdxl", vae=SDXL_VAE_FP16, cfg=5.0, published_as="SDXL",
        source=f"SDXL base 1.0 (hub {SDXL}) with the fp16-safe VAE {SDXL_VAE_FP16}; CFG from {LPO_EVAL_SCRIPT}",
    ),
    CheckpointEntry(
        "dpo-sd15", "unet", "mhdang/dpo-sd1.5-text2image-v1", subfolder="unet", base="sd15", method="diffusion-dpo",
        base_model="sd15", cfg=7.5, trained_with=_DPO, published_as="SD1.5 Diffusion-DPO",
        source=f"Diffusion-DPO (arXiv 2311.12908), full U-Net fine-tune on Pick-a-Pic v2; CFG from {LPO_EVAL_SCRIPT}",
    ),
    CheckpointEntry(
        "dpo-sdxl", "unet", "mhdang/dpo-sdxl-text2image-v1", subfolder="unet", base="sdxl", method="diffusion-dpo",
        base_model="sdxl", cfg=5.0, trained_with=_DPO, published_as="SDXL Diffusion-DPO",
        source=f"Diffusion-DPO (arXiv 2311.12908), full U-Net fine-tune on Pick-a-Pic v2; CFG from {LPO_EVAL_SCRIPT}",
    ),
    CheckpointEntry(
        "spo-sd15", "pipeline", "SPO-Diffusion-Models/SPO-SD-v1-5_4k-p_10ep", method="spo", base_model="sd15",
        cfg=5.0, trained_with=_SPO, published_as="SD1.5 SPO",
        source=f"SPO (arXiv 2406.04314), whole pipeline (RockeyCoss/SPO inference script; its own default CFG 7.5); CFG 5.0 from {LPO_EVAL_SCRIPT}",
    ),
    CheckpointEntry(
        "spo-sdxl", "pipeline", "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", vae=SDXL_VAE_FP16, method="spo",
        base_model="sdxl", cfg=5.0, trained_with=_SPO, published_as="SDXL SPO",
        source=f"SPO (arXiv 2406.04314), whole pipeline with the fp16-safe VAE (RockeyCoss/SPO inference script); CFG from {LPO_EVAL_SCRIPT}",
    ),
    CheckpointEntry(
        "lpo-sd15", "unet", "casiatao/LPO", subfolder="lpo_sd15_merge/unet", base="sd15", method="lpo",
        base_model="sd15", cfg=5.0, trained_with=_LPO, published_as="SD1.5 LPO",
        source=f"LPO (arXiv 2502.01051), LoRA merged into the U-Net; CFG from {LPO_EVAL_SCRIPT}",
    ),
    CheckpointEntry(
        "lpo-sdxl", "unet", "casiatao/LPO", subfolder="lpo_sdxl_merge/unet", base="sdxl", method="lpo",
        base_model="sdxl", cfg=5.0, trained_with=_LPO, published_as="SDXL LPO",
        source=f"LPO (arXiv 2502.01051), LoRA merged into the U-Net; CFG from {LPO_EVAL_SCRIPT}",
    ),
)


# --------------------------------------------------------------------------- reading


def parse_entry(data: Any, where: str, folder: Path | None = None) -> CheckpointEntry:
    """One entry from a registry file, checked; relative local paths resolve against ``folder``."""
    if not isinstance(data, dict):
        raise LpoError(f"{where}: an entry must be a JSON object with name/replaces/weights, got {type(data).__name__}")
    label = f"{where}: entry {data.get('name')!r}" if isinstance(data.get("name"), str) else where
    unknown = sorted(set(data) - set(ENTRY_FIELDS))
    if unknown:
        raise LpoError(f"{label} has unknown field {unknown[0]!r}; known fields: {', '.join(ENTRY_FIELDS)}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise LpoError(f"{label} lacks {missing[0]!r}; every entry needs {', '.join(REQUIRED)}")
    for key in ENTRY_FIELDS:
        value = data.get(key)
        if key in ("cfg", "trained_with") or value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise LpoError(f"{label}: {key!r} must be a non-empty string, got {value!r}")
    if not NAME.match(data["name"]):
        raise LpoError(f"{label}: name must be letters, digits, '.', '_' or '-' (no '/', which hub ids use)")
    if data["replaces"] not in REPLACES:
        raise LpoError(f"{label}: replaces must be one of {', '.join(REPLACES)}, got {data['replaces']!r}")
    if data["replaces"] == "pipeline" and data.get("base"):
        raise LpoError(f"{label}: a 'pipeline' entry is whole and takes no base; use replaces unet or lora to build on one")
    if data["replaces"] != "pipeline" and not data.get("base"):
        raise LpoError(f"{label}: a {data['replaces']!r} entry needs a base (an entry name or a pipeline)")
    cfg = data.get("cfg")
    if cfg is not None and (isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg) or cfg < 0):
        raise LpoError(f"{label}: cfg must be a number >= 0, got {cfg!r}")
    trained = data.get("trained_with", [])
    if not isinstance(trained, list):
        raise LpoError(f"{label}: trained_with must be a list of signal names or objects")
    from lpo.evals.signals import signal_record

    for item in trained:
        signal_record(item, f"{label} trained_with")  # validates now, one line
    values = {k: data.get(k) for k in ENTRY_FIELDS if k in data}
    values["trained_with"] = tuple(trained)
    if cfg is not None:
        values["cfg"] = float(cfg)
    if folder is not None:
        for key in ("weights", "base", "vae"):
            values[key] = _relative(values.get(key), folder)
    return CheckpointEntry(**values, origin=where)


def _relative(ref: str | None, folder: Path) -> str | None:
    """A path written relative to the registry file, made absolute; names and hub ids unchanged."""
    if ref is None or ref.startswith(("/", "~")) or not ref.startswith(("./", "../")):
        return ref
    return str((folder / ref).resolve())


def read_registry_file(path: Path) -> list[CheckpointEntry]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise LpoError(f"checkpoint registry {path} does not exist; pass a JSON file with {{\"checkpoints\": [...]}}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise LpoError(f"checkpoint registry {path} is not valid JSON ({err}); fix the file") from None
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"checkpoints", "format", "version"})
        if unknown or not isinstance(data.get("checkpoints"), list):
            raise LpoError(f"checkpoint registry {path} must be {{\"checkpoints\": [ {{...}}, ... ]}} (or a list of entries)")
        data = data["checkpoints"]
    if not isinstance(data, list):
        raise LpoError(f"checkpoint registry {path} must hold a list of entries, got {type(data).__name__}")
    entries, seen = [], set()
    for number, item in enumerate(data, 1):
        entry = parse_entry(item, f"{path} entry {number}", path.parent)
        if entry.name in seen:
            raise LpoError(f"{path}: checkpoint {entry.name!r} is listed twice; keep one entry per name")
        seen.add(entry.name)
        entries.append(replace(entry, origin=str(path)))
    return entries


def user_registry_path() -> Path:
    return lpo_home() / USER_FILE


def load_registry(extra: Path | str | None = None) -> dict[str, CheckpointEntry]:
    """Every entry by name: built-in, then ``$LPO_HOME/checkpoints.json``, then ``extra``."""
    entries = {e.name: e for e in BUILTIN}
    files = [user_registry_path()] if user_registry_path().is_file() else []
    files += [Path(extra).expanduser()] if extra else []  # must exist: read_registry_file says so
    for path in files:
        for entry in read_registry_file(path):
            entries[entry.name] = entry
    for entry in entries.values():
        _base_chain(entry, entries)  # a base naming no entry / a cycle: fail at load, one line
    return entries


def _base_chain(entry: CheckpointEntry, entries: dict[str, CheckpointEntry]) -> list[CheckpointEntry]:
    """The entry and the entries under it (its base, the base's base, …)."""
    chain = [entry]
    while chain[-1].base and chain[-1].base in entries:
        base = entries[chain[-1].base]
        if base in chain:
            raise LpoError(f"checkpoint {entry.name!r} ({entry.origin}): its bases form a loop ({' -> '.join(e.name for e in chain)} -> {base.name})")
        chain.append(base)
    last = chain[-1]
    if last.base and NAME.match(last.base) and not _looks_like_pipeline(last.base):
        known = ", ".join(sorted(entries))
        raise LpoError(f"checkpoint {last.name!r} ({last.origin}): base {last.base!r} is no known checkpoint ({known}) nor a pipeline folder")
    return chain


def _looks_like_pipeline(ref: str) -> bool:
    return is_model_alias(ref) or Path(ref).expanduser().exists() or "/" in ref


def known_names(registry: dict[str, CheckpointEntry]) -> str:
    return ", ".join(sorted(registry))


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class Plan:
    """How to build an entry's pipeline: a base pipeline, optional U-Net / LoRA / VAE parts."""

    entry: CheckpointEntry
    pipeline: str  # hub id, folder, or world alias
    unet: str | None = None
    unet_subfolder: str | None = None
    lora: str | None = None
    lora_subfolder: str | None = None
    vae: str | None = None
    vae_subfolder: str | None = None
    base_model: str | None = None
    chain: tuple[str, ...] = field(default_factory=tuple)


def plan(entry: CheckpointEntry, registry: dict[str, CheckpointEntry]) -> Plan:
    """Resolve an entry's base chain into one :class:`Plan` (checked, nothing loaded)."""
    chain = _base_chain(entry, registry)
    bottom = chain[-1]
    if bottom.replaces == "pipeline":
        pipeline = bottom.weights
    else:
        pipeline = bottom.base  # a pipeline reference, not an entry
    vae = next(((e.vae, e.vae_subfolder) for e in chain if e.vae), (None, None))
    middle = [e for e in chain if e.replaces != "pipeline"]
    if len(middle) > 1:
        raise LpoError(
            f"checkpoint {entry.name!r} ({entry.origin}) stacks {' on '.join(e.name for e in middle)}; "
            "build a unet or lora entry directly on a pipeline entry"
        )
    families = [e.base_model for e in chain if e.base_model]
    if len(set(families)) > 1:
        raise LpoError(
            f"checkpoint {entry.name!r} ({entry.origin}) is a {entry.replaces} for {entry.base_model} but its base "
            f"{chain[1].name!r} is {chain[1].base_model}; set base to a {entry.base_model} pipeline"
        )
    unet = lora = None
    unet_sub = lora_sub = None
    if entry.replaces == "unet":
        unet, unet_sub = entry.weights, entry.subfolder
    elif entry.replaces == "lora":
        lora, lora_sub = entry.weights, entry.subfolder
    if entry.replaces == "pipeline" and entry.subfolder:
        raise LpoError(f"checkpoint {entry.name!r} ({entry.origin}): a whole pipeline takes no subfolder")
    return Plan(
        entry=entry, pipeline=pipeline, unet=unet, unet_subfolder=unet_sub, lora=lora, lora_subfolder=lora_sub,
        vae=vae[0], vae_subfolder=vae[1], base_model=families[0] if families else None,
        chain=tuple(e.name for e in chain),
    )


def check_lora_fits(lora: str, subfolder: str | None, pipeline: str, name: str) -> None:
    """Refuse a local LoRA whose layers do not fit the base pipeline's U-Net (one line).

    Reads only the safetensors header and the base U-Net's ``config.json`` (the U-Net is
    built on the meta device, no weights): every ``lora_A`` / ``lora_B`` must target a
    module the base has, with matching in / out features. LoRA files in other key layouts,
    or hub references, are checked when diffusers loads them.
    """
    from lpo.sampling.generate import resolve_model_name

    folder = Path(lora).expanduser() / (subfolder or "")
    base = Path(resolve_model_name(pipeline)).expanduser()
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    config_file = base / "unet" / "config.json"
    if not files or not config_file.is_file():
        return
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    from lpo.trainers.lora import parse_lora_key

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(json.loads(config_file.read_text()))
    modules = dict(unet.named_modules())
    with safe_open(str(files[0]), framework="pt") as handle:
        for key in handle.keys():
            parsed = parse_lora_key(key)
            if parsed is None:
                continue
            path, which = parsed
            shape = tuple(handle.get_slice(key).get_shape())
            module = modules.get(path)
            problem = None
            if module is None:
                problem = f"it targets {path}, which the base U-Net lacks"
            else:
                size_in = getattr(module, "in_features", getattr(module, "in_channels", None))
                size_out = getattr(module, "out_features", getattr(module, "out_channels", None))
                if which == "A" and shape[1] != size_in:
                    problem = f"{path} takes {size_in} inputs in the base U-Net but {shape[1]} in the LoRA"
                if which == "B" and shape[0] != size_out:
                    problem = f"{path} gives {size_out} outputs in the base U-Net but {shape[0]} in the LoRA"
            if problem:
                raise LpoError(
                    f"checkpoint {name!r}: the LoRA in {folder} does not fit its base {pipeline} ({problem}); "
                    "set base to the pipeline the LoRA was trained on"
                )


WIDE_TABLE_COLUMNS = 160  # below this a nine-column table wraps every cell into slivers


def registry_table(entries: dict[str, CheckpointEntry], width: int = WIDE_TABLE_COLUMNS):
    """The entries as a rich table (``lpo list checkpoints``): one column per field on a
    terminal at least WIDE_TABLE_COLUMNS wide, else two columns (name; the fields as lines
    of text), which stays readable at 80."""
    from rich.markup import escape
    from rich.table import Table

    title = "checkpoints (lpo eval NAME; add your own in $LPO_HOME/checkpoints.json or --registry FILE)"
    ordered = sorted(entries.values(), key=lambda e: (e.origin != "built-in", e.base_model or "", e.method != "base", e.name))

    def fields(entry: CheckpointEntry) -> dict[str, str]:
        source = entry.source if entry.origin == "built-in" else f"{entry.source} ({entry.origin})".strip()
        vae = entry.vae or ("(base's)" if entry.base and entry.base in entries and entries[entry.base].vae else "—")
        return {"method": entry.method, "base model": entry.base_model or "—", "replaces": entry.replaces,
                "weights [subfolder]": entry.describe_weights(), "base": entry.base or "—", "VAE": vae,
                "CFG": "—" if entry.cfg is None else f"{entry.cfg:g}", "source": source}

    if width >= WIDE_TABLE_COLUMNS:
        table = Table(title=title)
        for name in ("name", "method", "base model", "replaces", "weights [subfolder]", "base", "VAE", "CFG", "source"):
            table.add_column(escape(name), overflow="fold")
        for entry in ordered:
            table.add_row(entry.name, *(escape(v) for v in fields(entry).values()))
        return table
    table = Table(title=title, show_lines=True)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("method · base model · CFG · replaces / weights / base, VAE / source", overflow="fold")
    for entry in ordered:
        f = fields(entry)
        lines = [f"{f['method']} · {f['base model']} · CFG {f['CFG']} · replaces {f['replaces']}",
                 f"weights {f['weights [subfolder]']}"]
        if f["base"] != "—" or f["VAE"] != "—":
            lines.append(f"base {f['base']} · VAE {f['VAE']}")
        lines.append(f"[dim]{escape(f['source'])}[/]")
        table.add_row(entry.name, "\n".join(escape(line) if not line.startswith("[dim]") else line for line in lines))
    return table
