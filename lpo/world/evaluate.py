"""`lpo world eval`: name -> image source -> judged result -> a rich table."""

from __future__ import annotations

from lpo.errors import LpoError
from lpo.world.benchmark import (
    REFERENCE_SOURCES,
    GroundTruthSource,
    NoiseSource,
    PipelineSource,
    WorldEvalProtocol,
    WorldEvalResult,
    evaluate_source,
)
from lpo.world.judges import SCORE_NAMES


def evaluate_named_source(name: str, protocol: WorldEvalProtocol, console=None, device: str = "auto") -> WorldEvalResult:
    from lpo.progress import count_progress

    if name == "ground-truth":
        source = GroundTruthSource()
    elif name == "noise":
        source = NoiseSource()
    else:
        from lpo.generate import load_pipeline

        pipe, components = load_pipeline(name, device=device)
        if components.kind != "world":
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
        table.add_row(category, str(res.n_prompts), *(f"{res.mean[k]:.3f}±{res.ci95[k]:.3f}" for k in SCORE_NAMES))
    overall = result.overall
    table.add_row("[bold]mean", "", *(f"[bold]{overall[k]:.3f}" for k in SCORE_NAMES))
    console.print(table)
    console.print(
        "align: T2I-CompBench++-style category score · soft: attribute-level alignment · aesth: aesthetic proxy · "
        "clip: CLIP-score proxy · utility: hidden true preference"
    )
    console.print(f"n = prompts; ± = 95% interval over prompts; prompt set {result.prompt_set_hash}")
