"""``lpo data``: public preference datasets into the project's pairs format."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lpo.cli.common import stdout_console, user_errors

data_app = typer.Typer(no_args_is_help=True, help="Public preference data (Pick-a-Pic) into the pairs format, streamed.")


@data_app.command("pickapic")
@user_errors
def pickapic(
    out: Path = typer.Option(..., help="The pairs file to write (.parquet; a .json sidecar beside it)."),
    version: str = typer.Option("v1", "--version", help="v1 or v2."),
    source: Optional[str] = typer.Option(None, help="A hub id (a mirror) or a local folder of the parquet shards; "
                                                    "default: the known v1 mirror (v2 has none lpo could verify)."),
    split: str = typer.Option("train", help="train, val (validation_unique) or test (test_unique)."),
    limit: Optional[int] = typer.Option(None, help="Read at most this many rows."),
    keep_ties: bool = typer.Option(False, help="Keep tied pairs (the LRM trains on them; Diffusion-DPO does not)."),
) -> None:
    """Pick-a-Pic v1 / v2 into a pairs parquet by streaming: row checks, ties, repeated pairs, every drop counted."""
    from lpo.core.errors import LpoError
    from lpo.core.progress import count_progress
    from lpo.pairs.pickapic import convert_pickapic

    if limit is not None and limit < 1:
        raise LpoError(f"--limit must be >= 1, got {limit}")
    console = stdout_console()
    with count_progress(console, f"Pick-a-Pic {version} ({split}): rows read") as update:
        sidecar = convert_pickapic(version, out, source=source, split=split, limit=limit, keep_ties=keep_ties,
                                   progress=lambda rows, kept: update(rows, limit or rows))
    c = sidecar["counts"]
    dropped = ", ".join(f"{n} {reason}" for reason, n in c["skipped"].items()) or "none"
    console.print(f"wrote [bold]{out}[/]: {c['pairs']:,} pairs ({c['prompts']:,} prompts) of {c['rows']:,} rows; "
                  f"dropped: {dropped}", highlight=False)
    if sidecar["published_check"]:
        console.print(f"published count: {sidecar['published_check']}", highlight=False)
