"""`lpo world guided-eval`: what LRM-guided sampling (SPEC §5.4) buys in the world, and at what cost.

On N test prompts × M seeds it samples the world base model with every method below on
the *same* per-image seeds (η = 1 for all, since guided sampling needs a stochastic step;
x_T and the plain step noise are shared, see lpo.sampling.guided) and judges every image with the
world's exact judges:

    plain              stochastic DDIM, η = 1                     N U-Net calls / image
    guided-best        branch K per step, continue from LRM argmax   N U-Net, N·K LRM
    guided-softmax     ... from k ~ softmax(S/τ)                     N U-Net, N·K LRM
    guided-random      ... from a uniform pick (control)             N U-Net, N·K LRM
    guided-worst       ... from the LRM argmin (control)             N U-Net, N·K LRM
    best-of-k-lrm      K plain trajectories, the final image the LRM
                       (at t = 0) prefers                          K·N U-Net, K LRM
    best-of-k-judge    the same K trajectories, the image with the
                       highest *true utility* (an oracle ceiling,
                       not a method: it reads the hidden judge)    K·N U-Net, K judge

Statistics treat the prompt as the unit: an image's scores are averaged over its prompt's
seeds first, and standard errors (of means and of paired differences between methods on
the same prompts and seeds) are over prompts.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from lpo.core.errors import LpoError
from lpo.sampling.guided import GuidanceConfig, lrm_scorer
from lpo.sampling.guided_generation import (
    GeneratedImages,
    SamplerSettings,
    best_of_k_final,
    decode_latents,
    final_candidates,
    guided_generate,
    plain_generate,
)

METHODS = (
    "plain", "guided-best", "guided-softmax", "guided-random", "guided-worst", "best-of-k-lrm", "best-of-k-judge",
)
DEFAULT_METHODS = ("plain", "guided-best", "guided-random", "guided-worst", "best-of-k-lrm", "best-of-k-judge")
# Baselines every method is compared with (paired), plus the step-level vs final-image question.
BASELINES = ("plain", "guided-random")
EXTRA_COMPARISONS = (("guided-best", "best-of-k-lrm"),)
REPORTED = ("utility", "alignment", "soft_alignment", "aesthetic")


@dataclass(frozen=True)
class GuidedEvalProtocol:
    split: str = "test"
    num_prompts: int = 64
    seeds_per_prompt: int = 2
    num_candidates: int = 4
    temperature: float = 1.0  # τ of guided-softmax
    lrm_timestep: str = "current"
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 1.0
    seed: int = 42
    batch_size: int = 32
    methods: tuple[str, ...] = DEFAULT_METHODS

    def __post_init__(self) -> None:
        for name, value in (("num_prompts", self.num_prompts), ("seeds_per_prompt", self.seeds_per_prompt)):
            if value < 1:
                raise LpoError(f"{name} must be >= 1, got {value}")
        if self.num_candidates < 2:
            raise LpoError(f"num_candidates={self.num_candidates}; guided sampling compares K >= 2 candidates")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise LpoError(f"unknown methods {unknown or '(none given)'}; choose from {', '.join(METHODS)}")
        object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))
        SamplerSettings(self.num_inference_steps, self.guidance_scale, self.eta, batch_size=self.batch_size)
        GuidanceConfig(self.num_candidates, "softmax", self.temperature, self.lrm_timestep)

    @property
    def settings(self) -> SamplerSettings:
        return SamplerSettings(self.num_inference_steps, self.guidance_scale, self.eta, batch_size=self.batch_size)

    def guidance(self, select: str) -> GuidanceConfig:
        return GuidanceConfig(self.num_candidates, select, self.temperature, self.lrm_timestep)


def judge_scorer(components) -> Callable[[Sequence[str]], Callable[[Tensor, Tensor], Tensor]]:
    """A scorer factory reading the world's true utility of decoded final latents (the oracle)."""
    from lpo.world.judges import judge

    def make(prompts: Sequence[str]):
        def score(candidates: Tensor, timesteps: Tensor) -> Tensor:
            batch, k = candidates.shape[:2]
            images = decode_latents(components.vae, candidates.flatten(0, 1))
            flat_prompts = [p for p in prompts for _ in range(k)]
            return torch.tensor([judge(im, p).utility for im, p in zip(images, flat_prompts)]).view(batch, k)

        return score

    return make


def paired_difference(a: np.ndarray, b: np.ndarray, prompt_ids: np.ndarray) -> dict[str, float]:
    """Mean of a − b over images and its standard error over prompts (per-prompt means first)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    per_prompt = np.array([diff[prompt_ids == p].mean() for p in np.unique(prompt_ids)])
    n = len(per_prompt)
    se = float(per_prompt.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(per_prompt.mean()), "se": se, "n_prompts": n}


def _mean_se(values: np.ndarray, prompt_ids: np.ndarray) -> tuple[float, float]:
    stats = paired_difference(values, np.zeros_like(values, dtype=np.float64), prompt_ids)
    return stats["mean"], stats["se"]


def run_guided_eval(
    components, lrm, protocol: GuidedEvalProtocol, progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Sample every method on the same prompts and seeds, judge, and summarise (a JSON-ready dict)."""
    from lpo.sampling.generate import image_seed
    from lpo.world.benchmark import WorldEvalProtocol, world_prompts
    from lpo.core.hashing import prompt_set_hash
    from lpo.world.grammar import WORLD_VERSION
    from lpo.world.judges import judge

    if components.kind != "world":
        raise LpoError(f"guided-eval needs a world model (the judges read only world images), got a {components.kind} model")
    specs = world_prompts(WorldEvalProtocol(split=protocol.split, max_prompts=protocol.num_prompts))
    jobs = [(spec, m) for spec in specs for m in range(protocol.seeds_per_prompt)]
    prompts = [spec.text() for spec, _ in jobs]
    seeds = [image_seed(protocol.seed, spec.text(), m) for spec, m in jobs]
    prompt_ids = np.array([i for i, _ in enumerate(specs) for _ in range(protocol.seeds_per_prompt)])
    settings = protocol.settings
    lrm.requires_grad_(False)
    by_lrm = lrm_scorer(lrm)

    def bar(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda done, total: progress(name, done, total))

    results: dict[str, GeneratedImages] = {}
    seconds: dict[str, float] = {}
    finals = None
    for method in protocol.methods:
        start = time.perf_counter()
        if method == "plain":
            results[method] = plain_generate(components, prompts, seeds, settings, bar(method))
        elif method.startswith("guided-"):
            select = method.removeprefix("guided-")
            results[method] = guided_generate(
                components, prompts, seeds, by_lrm, protocol.guidance(select), settings, bar(method), name=method
            )
        else:  # best-of-k-*: both pick from the same K trajectories per image
            if finals is None:
                finals = final_candidates(components, prompts, seeds, protocol.num_candidates, settings, bar("best-of-k trajectories"))
            scorer = by_lrm if method == "best-of-k-lrm" else judge_scorer(components)
            results[method] = best_of_k_final(
                components, prompts, seeds, protocol.num_candidates, scorer, settings, candidates=finals, name=method
            )
        seconds[method] = time.perf_counter() - start

    # judge every image
    scores: dict[str, dict[str, np.ndarray]] = {}
    per_image = []
    for method, generated in results.items():
        judged = [judge(image, spec) for image, (spec, _) in zip(generated.images, jobs)]
        scores[method] = {key: np.array([getattr(j, key) for j in judged]) for key in REPORTED}
        for (spec, m), seed, j in zip(jobs, seeds, judged):
            per_image.append({"method": method, "prompt": spec.text(), "category": spec.category, "index": m, "seed": seed, **j.as_dict()})

    summary = {}
    for method, generated in results.items():
        row = {}
        for key in REPORTED:
            row[key], row[f"{key}_se"] = _mean_se(scores[method][key], prompt_ids)
        row.update({f"{k}_per_image": v for k, v in generated.counts.per_image().items()})
        if method == "best-of-k-judge":
            row["lrm_calls_per_image"] = 0.0
            row["judge_calls_per_image"] = float(protocol.num_candidates)
        if method.startswith("guided-") and generated.choices is not None and generated.choices.numel():
            # how often the pick is the plain sampler's own candidate (0); 1/K for a random pick
            row["fraction_candidate0"] = float((generated.choices == 0).float().mean())
            # spread of the LRM's scores among one step's candidates: what a softmax τ is measured against
            spread = generated.scores.amax(dim=-1) - generated.scores.amin(dim=-1)
            row["mean_score_range"] = float(spread.mean())
        row["seconds"] = seconds[method]
        summary[method] = row
    differences = {}
    comparisons = [(m, base) for base in BASELINES for m in scores if m != base] + list(EXTRA_COMPARISONS)
    for a, b in comparisons:
        if a in scores and b in scores:
            differences[f"{a} - {b}"] = {key: paired_difference(scores[a][key], scores[b][key], prompt_ids) for key in REPORTED}

    from lpo.core.io import run_metadata

    return {
        "world_version": WORLD_VERSION,
        "model": components.source,
        "lrm": None,  # the caller records the LRM folder
        "protocol": asdict(protocol),
        "prompt_set_hash": prompt_set_hash([s.text() for s in specs]),
        "n_prompts": len(specs),
        "n_images": len(jobs),
        "statistics": "means over images (= over prompts, balanced); SE over prompts of per-prompt means; "
        "differences paired on identical prompts and seeds",
        "best_of_k_scorers": {"best-of-k-lrm": "LRM at t=0 on the final latent", "best-of-k-judge": "true utility (oracle)"},
        "unet_calls": "denoiser evaluations per image; a CFG pair (batched cond+uncond) counts once; unet_passes counts both",
        "methods": summary,
        "differences": differences,
        "per_image": per_image,
        "metadata": run_metadata(),
    }


def guided_eval_job(
    model: str, lrm_path: Path, protocol: GuidedEvalProtocol, out: Path | None, device: str = "auto", console=None,
    unet: Path | None = None,
) -> dict:
    """Load the world model and the LRM (which must be built on it), run, and write the JSON atomically.

    ``unet``: a trained U-Net folder (a full fine-tune's ``model/``) sampled in place of the
    base one; the LRM stays the one built on the base model, as in training.
    """
    from lpo.sampling.generate import resolve_device, resolve_model_name
    from lpo.core.io import atomic_write_json
    from lpo.reward.lrm_io import load_lrm
    from lpo.models.components import load_components
    from rich.progress import Progress

    components = load_components(resolve_model_name(model), device=resolve_device(device), unet=unet)
    if components.kind != "world":
        raise LpoError(f"{model!r} is a {components.kind} model; guided-eval judges world images: use world or a world folder")
    lrm = load_lrm(lrm_path, components)
    with Progress(console=console, disable=console is None) as bars:
        tasks: dict[str, int] = {}

        def progress(name: str, done: int, total: int) -> None:  # one bar per method
            if name not in tasks:
                tasks[name] = bars.add_task(name, total=total)
            bars.update(tasks[name], completed=done)

        result = run_guided_eval(components, lrm, protocol, progress=progress)
    result["lrm"] = str(lrm_path)
    result["unet"] = None if unet is None else str(unet)
    if out is not None:
        atomic_write_json(out, result)
    return result


def render_guided_eval(result: dict, console) -> None:
    """One row per method: utility and alignment (±SE), paired differences, cost per image."""
    from rich.table import Table

    p = result["protocol"]
    table = Table(
        title=f"world · LRM-guided sampling · {result['n_prompts']} {p['split']} prompts × {p['seeds_per_prompt']} seeds · "
        f"K={p['num_candidates']} · DDIM {p['num_inference_steps']} η={p['eta']} · CFG {p['guidance_scale']}"
    )
    for name, justify in (("method", "left"), ("utility", "right"), ("align", "right"), ("Δutil vs plain", "right"),
                          ("Δutil vs random", "right"), ("U-Net/img", "right"), ("LRM/img", "right")):
        table.add_column(name, justify=justify)
    diffs = result["differences"]

    def diff(a: str, b: str) -> str:
        if a == b:
            return "—"
        d = diffs.get(f"{a} - {b}", {}).get("utility")
        return "" if d is None else f"{d['mean']:+.3f}±{d['se']:.3f}"

    for method, row in result["methods"].items():
        lrm_calls = row.get("lrm_calls_per_image", 0.0)
        lrm_text = f"{lrm_calls:g}" if "judge_calls_per_image" not in row else f"({row['judge_calls_per_image']:g} judge)"
        table.add_row(
            method,
            f"{row['utility']:.3f}±{row['utility_se']:.3f}",
            f"{row['alignment']:.3f}±{row['alignment_se']:.3f}",
            diff(method, "plain"),
            diff(method, "guided-random"),
            f"{row['unet_calls_per_image']:g}",
            lrm_text,
        )
    console.print(table)
    console.print(
        "± = standard error over prompts (paired on identical seeds for Δ); U-Net/img counts a CFG pair once; "
        "best-of-k-judge reads the hidden utility (an oracle ceiling, not a method)"
    )
