"""``lpo convert``: original checkpoints of the evaluation models into the folders lpo loads."""

from __future__ import annotations

from pathlib import Path

import typer

from lpo.cli.common import stdout_console, user_errors

convert_app = typer.Typer(no_args_is_help=True, help="Original metric checkpoints into transformers folders.")


@convert_app.command("blip-vqa")
@user_errors
def blip_vqa(
    source: Path = typer.Argument(..., help="BLIP's VQA checkpoint, e.g. model_base_vqa_capfilt_large.pth (480 px)."),
    out: Path = typer.Option(..., help="The folder to write (BlipForQuestionAnswering + tokenizer)."),
    config: str = typer.Option("Salesforce/blip-vqa-capfilt-large", help="A transformers BLIP VQA folder or hub id "
                               "describing the same architecture (its config and tokenizer)."),
) -> None:
    """BLIP's original VQA checkpoint at its native size, for T2I-CompBench++'s BLIP-VQA (colour, shape, texture)."""
    from lpo.core.errors import LpoError
    from lpo.evals.metrics.blip_convert import convert_blip_vqa

    if not source.is_file():
        raise LpoError(f"no checkpoint at {source}; pass BLIP's model_base_vqa_capfilt_large.pth")
    folder = convert_blip_vqa(source, out, config_ref=config)
    stdout_console().print(f"wrote [bold]{folder}[/] (BLIP VQA at its native size); evaluate with "
                           f"--metric-weights compbench_blip_vqa={folder} (or t2i_compbench={folder})", highlight=False)
