"""Which signals a checkpoint was trained or filtered with, and what that says about a metric.

Reward hacking shows up as a metric that rises because the model was optimised for it
(or for something trained on the same labels) while metrics it never saw stay flat or
fall. So every result record lists the checkpoint's **training signals** and the
leaderboard marks each metric cell of a trained row:

- ``optimised``: the run's reward or pair filter *is* this metric's scorer (MPCF's
  aesthetic filter and the ``laion_aesthetic`` column; the world LRM and the ``lrm_score``
  column computed with that same LRM folder);
- ``related``: the reward was trained on the labels this metric was trained on, or
  initialised from it (anything trained on Pick-a-Pic and ``pickscore``; an LRM trained
  on the world's simulated annotators, who judge the hidden utility, and
  ``world_utility``) — not the same scorer, but not independent evidence either;
- ``held out``: no signal of the run touches it (e.g. ``world_alignment``, the world's
  T2I-CompBench++-style category score, for an LPO run whose LRM learned annotator
  preferences from unfiltered pairs; every diversity measure).

Signals are a small vocabulary (:data:`SIGNALS`) used by the checkpoint registry's
``trained_with`` and derived from a run folder by following its files: the step reward
(``config.json`` ``reward.path``) → that reward's run (``run.json`` ``pairs``) → the pairs'
sidecar (``<pairs>.json``: an ``lpo mpcf`` output names its scorers and its input; an
``lpo pairs`` world output its annotators). Diffusion-DPO runs start at ``data.pairs``.
What cannot be followed (a moved file, a dataset id) is listed as such, never guessed.

Signal records are plain dicts: ``{"signal", "role", "description", "optimises",
"related", "ref"?}``; ``optimises`` / ``related`` hold metric names (``laion_aesthetic``)
or full column keys (``lrm_score@1+ab12cd34``) when only one version is the signal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lpo.core.errors import LpoError

ROLES = ("reward", "labels", "filter", "init")
MARKS = ("optimised", "related", "held out")


@dataclass(frozen=True)
class Signal:
    role: str
    description: str
    optimises: tuple[str, ...] = ()
    related: tuple[str, ...] = ()

    def record(self, name: str, ref: str | None = None) -> dict[str, Any]:
        out = {"signal": name, "role": self.role, "description": self.description,
               "optimises": list(self.optimises), "related": list(self.related)}
        if ref is not None:
            out["ref"] = ref
        return out


SIGNALS: dict[str, Signal] = {
    # Real mode: the released checkpoints' training (their papers and repositories).
    "pickapic-v1-labels": Signal("labels", "human preference labels of Pick-a-Pic v1", related=("pickscore",)),
    "pickapic-v2-labels": Signal("labels", "human preference labels of Pick-a-Pic v2 (contains v1)", related=("pickscore",)),
    "spo-step-model": Signal(
        "reward", "SPO's step-aware preference model (initialised from PickScore_v1, trained on Pick-a-Pic)",
        related=("pickscore",),
    ),
    "lrm": Signal("reward", "a Latent Reward Model (LPO's step reward)"),
    "pixel-step-model": Signal("reward", "a pixel-space step-aware preference model (SPO's step reward)"),
    "mpcf-laion-aesthetic": Signal("filter", "MPCF pair filter on the LAION aesthetic predictor", optimises=("laion_aesthetic",)),
    "mpcf-clip-h14": Signal(
        "filter", "MPCF pair filter on CLIP-ViT-H-14-laion2B cosine", optimises=("clip_cosine_h14",), related=("clip_score",),
    ),
    "mpcf-vqascore": Signal("filter", "MPCF pair filter on VQAScore (clip-flan-t5-xxl); no lpo metric is that scorer"),
    # World mode.
    "world-annotators": Signal(
        "labels", "the world's simulated annotators (Bradley-Terry on the hidden utility, with noise and biases)",
        related=("world_utility",),
    ),
    "world-aesthetic": Signal("filter", "MPCF pair filter on the world's aesthetic judge", optimises=("world_aesthetic",)),
    "world-clip": Signal("filter", "MPCF pair filter on the world's CLIP-score judge", optimises=("world_clip",)),
    "world-vqa": Signal("filter", "MPCF pair filter on the world's soft alignment judge (its VQAScore)", optimises=("world_soft_alignment",)),
}

# MPCF scorer names (lpo.pairs.gap_scores GAP_SCORERS and lpo.evals.metrics.gap) -> signals.
_MPCF_SCORERS = {
    "world-aesthetic": "world-aesthetic",
    "world-clip": "world-clip",
    "world-vqa": "world-vqa",
    "laion-aesthetic": "mpcf-laion-aesthetic",
    "laion_aesthetic": "mpcf-laion-aesthetic",
    "clip-score": "mpcf-clip-h14",
    "clip_cosine_h14": "mpcf-clip-h14",
    "vqascore": "mpcf-vqascore",
}


def signal_record(item: str | dict[str, Any], where: str = "trained_with") -> dict[str, Any]:
    """A signal id from :data:`SIGNALS`, or a custom ``{"signal", "role", ...}`` object, as a record."""
    if isinstance(item, str):
        if item not in SIGNALS:
            raise LpoError(f"{where}: unknown signal {item!r}; use one of {', '.join(SIGNALS)} or an object with signal/role/optimises")
        return SIGNALS[item].record(item)
    if not isinstance(item, dict) or not isinstance(item.get("signal"), str) or not item["signal"]:
        raise LpoError(f"{where}: a signal must be a name or an object with a 'signal' name, got {item!r}")
    unknown = sorted(set(item) - {"signal", "role", "description", "optimises", "related", "ref"})
    if unknown:
        raise LpoError(f"{where}: signal {item['signal']!r} has unknown fields {', '.join(unknown)}")
    base = SIGNALS.get(item["signal"])
    role = item.get("role", base.role if base else None)
    if role not in ROLES:
        raise LpoError(f"{where}: signal {item['signal']!r} needs a role, one of {', '.join(ROLES)}")
    out = {"signal": item["signal"], "role": role, "description": item.get("description", base.description if base else "")}
    for key in ("optimises", "related"):
        values = item.get(key, list(getattr(base, key)) if base else [])
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise LpoError(f"{where}: signal {item['signal']!r} {key} must be a list of metric names")
        out[key] = list(values)
    if "ref" in item:
        out["ref"] = str(item["ref"])
    return out


def mark(metric: str, version: str, signals: Sequence[dict[str, Any]] | None) -> str | None:
    """``optimised`` / ``related`` / ``held out`` for a metric column of a row; None when unknown."""
    if signals is None:
        return None
    key = f"{metric}@{version}"
    for kind in ("optimises", "related"):
        if any(metric in s.get(kind, ()) or key in s.get(kind, ()) for s in signals):
            return "optimised" if kind == "optimises" else "related"
    return "held out"


def describe(signals: Sequence[dict[str, Any]] | None) -> str:
    """One short line: ``reward lrm; labels world-annotators; filter world-aesthetic``."""
    if signals is None:
        return "unknown"
    if not signals:
        return "none"
    return "; ".join(f"{s['role']} {s['signal']}" for s in signals)


# --------------------------------------------------------------------------- from files


def training_signals(checkpoint) -> list[dict[str, Any]] | None:
    """The signals of a resolved :class:`lpo.evals.checkpoints.Checkpoint` (None: unknown)."""
    if checkpoint.kind == "reference":
        return []
    if checkpoint.trained_with is not None:
        return [dict(s) for s in checkpoint.trained_with]
    if checkpoint.run_path:
        return run_signals(Path(checkpoint.run_path))
    if checkpoint.method == "base" and (checkpoint.base_model or "").startswith("world") and not checkpoint.adapter_kind:
        return []  # the world's pretrained base model: no preference signal touched it
    # A bare hub id or folder may hold anything (an SPO pipeline is just a hub id): unknown.
    # Name it in the checkpoint registry with its trained_with to have it marked.
    return None


def run_signals(run_dir: Path) -> list[dict[str, Any]]:
    """Follow a training run's files to the signals it used (see the module docstring)."""
    config = _read_json(run_dir / "config.json") or {}
    out: list[dict[str, Any]] = []
    reward = config.get("reward")
    reward_path = reward.get("path") if isinstance(reward, dict) else reward
    if reward_path:
        out += reward_signals(Path(str(reward_path)))
    data = config.get("data")
    pairs = data.get("pairs") if isinstance(data, dict) else None
    if pairs:
        out += pairs_signals(str(pairs))
    return _unique(out)


def reward_signals(folder: Path) -> list[dict[str, Any]]:
    """A step reward folder: the reward itself, then what it was trained on."""
    from lpo.reward.lrm_mmdit_io import is_mmdit_lrm_folder

    folder = Path(folder)
    if (folder / "lrm_config.json").is_file() or is_mmdit_lrm_folder(folder):  # a U-Net's or an MMDiT's LRM
        from lpo.evals.metrics.lrm_score import lrm_metric_version

        signal = SIGNALS["lrm"].record("lrm", str(folder))
        signal["optimises"] = [f"lrm_score@{lrm_metric_version(folder)}"]  # only this LRM's own score
        out = [signal]
    elif folder.exists():
        out = [SIGNALS["pixel-step-model"].record("pixel-step-model", str(folder))]
    else:
        return [{**SIGNALS["lrm"].record("step-reward", str(folder)), "description": f"step reward {folder} (not found here)"}]
    run_dir = next((d for d in (folder, folder.parent) if (d / "run.json").is_file()), None)
    meta = _read_json(run_dir / "run.json") if run_dir else None
    if meta and meta.get("pairs"):
        for pairs in str(meta["pairs"]).split(","):
            out += pairs_signals(pairs.strip())
    return out


def pairs_signals(pairs: str, depth: int = 0) -> list[dict[str, Any]]:
    """Preference pairs: the filters an ``lpo mpcf`` output names, then its input's labels."""
    from lpo.pairs.format import sidecar_path

    sidecar = _read_json(sidecar_path(Path(pairs))) if depth < 8 else None
    provenance = (sidecar or {}).get("provenance") or {}
    out: list[dict[str, Any]] = []
    mpcf = provenance.get("mpcf")
    if isinstance(mpcf, dict):
        for role, scorer in (mpcf.get("scorers") or {}).items():
            name = str(scorer).split("@", 1)[0]
            if name in _MPCF_SCORERS:
                out.append(SIGNALS[_MPCF_SCORERS[name]].record(_MPCF_SCORERS[name], str(scorer)))
            else:  # an evaluation metric filled the role (lpo mpcf --metric-weights): that metric
                out.append({"signal": f"mpcf-{name}", "role": "filter", "description": f"MPCF {role} filter on {scorer}",
                            "optimises": [name], "related": [], "ref": str(scorer)})
        if provenance.get("input"):
            out += pairs_signals(str(provenance["input"]), depth + 1)
        return out
    if "annotators" in (provenance.get("config") or {}) or "label_agreement" in provenance:
        return [SIGNALS["world-annotators"].record("world-annotators", pairs)]
    return [{"signal": "preference-labels", "role": "labels", "ref": pairs, "optimises": [], "related": [],
             "description": f"preference labels of {pairs} (source not recorded here)"}]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _unique(signals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for s in signals:
        key = json.dumps(s, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out
