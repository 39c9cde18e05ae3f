"""Rich progress bars for long work (training stages, generation)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@contextmanager
def stage_progress(console) -> Iterator[Callable[[str, int, int, float], None]]:
    """Yields ``update(stage, step, total, loss)``; one bar per stage."""
    with _progress(console) as progress:
        tasks: dict[str, int] = {}

        def update(stage: str, step: int, total: int, loss: float) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total, info="")
            progress.update(tasks[stage], completed=step, info=f"loss {loss:.4f}")

        yield update


@contextmanager
def count_progress(console, description: str) -> Iterator[Callable[[int, int], None]]:
    """Yields ``update(done, total)`` for one bar; a no-op when ``console`` is None."""
    if console is None:
        yield lambda done, total: None
        return
    with _progress(console) as progress:
        task = progress.add_task(description, total=None, info="")

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update
