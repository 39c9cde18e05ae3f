"""`lpo world eval`: name -> image source -> judged result -> a rich table."""

from __future__ import annotations

from lpo.core.errors import LpoError
from lpo.world.benchmark import (
    REFERENCE_SOURCES,
    GroundTruthSource,
    NoiseSource,
    PipelineSource,
    ShuffledSource,
    WorldEvalProtocol,
    WorldEvalResult,
    evaluate_source,
    world_prompts,
)
from lpo.world.judges import SCORE_NAMES


def evaluate_named_source(name: str, protocol: WorldEvalProtocol, console=None, device: str = "auto") -> WorldEvalResult:
    from lpo.core.progress import count_progress

    if name == "ground-truth":
        source = GroundTruthSource()
    elif name == "noise":
        source = NoiseSource()
    elif name == "shuffled":
        source = ShuffledSource([s.text() for s in world_prompts(protocol)])
    else:
        from lpo.sampling.generate import load_pipeline

        pipe, components = load_pipeline(name, device=device)
        if components.kind not in ("world", "world-flow"):
            raise LpoError(
                f"{name!r} is a {components.kind} pipeline; the world judges read only world images. "
                f"Use a world model (world, world:PRESET or a folder from `lpo world pretrain`) or one of: {', '.join(REFERENCE_SOURCES)}"
            )
        source = PipelineSource(pipe, protocol, name=name)
    with count_progress(console, f"judging {name}") as progress:
        return evaluate_source(source, protocol, progress)


def render_world_table(result: WorldEvalResult, console) -> None:
    from rich.table import Table

    p = result.protocol
    table = Table(
        title=f"world · {result.source} · {p.split} · {p.images_per_prompt} img/prompt · "
        f"DDIM {p.num_inference_steps} · CFG {p.guidance_scale} · seed {p.seed}",
    )
    table.add_column("category")
    table.add_column("n", justify="right")
    labels = {"alignment": "align", "soft_alignment": "soft", "aesthetic": "aesth", "clip": "clip", "utility": "utility"}
    for key in SCORE_NAMES:
        table.add_column(labels[key], justify="right")
    for category, res in result.categories.items():
        table.add_row(category, str(res.n_prompts), *(f"{res.mean[k]:.2f}±{res.ci95[k]:.2f}" for k in SCORE_NAMES))
    overall = result.overall
    table.add_row("[bold]mean", "", *(f"[bold]{overall[k]:.3f}" for k in SCORE_NAMES))
    console.print(table)
    console.print(
        "align: T2I-CompBench++-style category score · soft: attribute-level alignment · aesth: aesthetic proxy · "
        "clip: CLIP-score proxy · utility: hidden true preference"
    )
    console.print(f"n = prompts; ± = 95% interval over prompts; prompt set {result.prompt_set_hash}")


def render_comparison_table(results: list[WorldEvalResult], console) -> None:
    """One row per source: the category score per category, then the mean scores."""
    from rich.table import Table

    from lpo.world.grammar import CATEGORIES

    table = Table(title="world · category scores (align) and means, side by side")
    table.add_column("source")
    short = {"colour": "col", "shape": "shape", "texture": "tex", "spatial": "spat", "numeracy": "num", "complex": "cplx"}
    for category in CATEGORIES:
        table.add_column(short[category], justify="right")
    means = {"alignment": "align", "soft_alignment": "soft", "aesthetic": "aesth", "utility": "util"}
    for label in means.values():
        table.add_column(label, justify="right", style="bold")
    for result in results:
        table.add_row(
            result.source,
            *(f"{result.categories[c].mean['alignment']:.2f}" if c in result.categories else "—" for c in CATEGORIES),
            *(f"{result.overall[k]:.2f}" for k in means),
        )
    console.print(table)
