"""The evaluation's processes: one without accelerate, or those ``accelerate launch`` started.

The harness shards its (prompt, image) jobs round-robin over them (``jobs[index::count]``),
gathers the scores and lets the main process write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lpo.core.errors import LpoError


@dataclass
class Processes:
    """This process's place among the evaluation's processes (one without accelerate)."""

    index: int = 0
    count: int = 1
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def gather(self, items: list) -> list:
        if self.state is None:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)


def eval_processes(device: str) -> Processes:
    # accelerate launch / torchrun set WORLD_SIZE; a plain run stays free of any distributed state.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes()
    import torch
    from accelerate import PartialState

    # Without cpu=True accelerate treats CPU processes as unrelated single runs (gloo unused).
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if state.num_processes != world_size:
        # Each process would evaluate everything and write its own copy of the records.
        raise LpoError(
            f"launched as {world_size} processes but accelerate joined {state.num_processes}; "
            "launch with `accelerate launch --num_processes N` (GPUs) or torchrun, or run one process"
        )
    return Processes(state.process_index, state.num_processes, state)
