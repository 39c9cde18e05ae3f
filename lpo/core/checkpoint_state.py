"""A checkpoint's ``state/`` folder, restored without running code from it.

``accelerate.Accelerator.load_state`` reads three kinds of file:

- tensors and plain containers (``optimizer.bin``, ``scheduler.bin``, ``scaler.pt``,
  ``random_states_*.pkl``) through ``torch.load(weights_only=True)``, whose unpickler only
  builds tensors, numbers, strings and containers (plus the numpy RNG types accelerate
  allows): a planted object is refused with ``UnpicklingError``, which
  :func:`load_checkpoint_state` turns into one line; a refused RNG file is skipped by
  accelerate (lpo draws every random number from keyed generators, so weights do not
  depend on it);
- models in ``model*.safetensors`` (safe by construction);
- objects registered with ``register_for_checkpointing`` in ``custom_checkpoint_*.pkl``,
  read with ``weights_only=False``: unpickling them runs whatever code the file names.

So lpo registers nothing with accelerate: the lr schedule (the only custom object) is
written as ``lr_schedule.json`` by a save hook and read back by a load hook
(:func:`register_schedule_checkpointing`), and a ``state/`` folder that holds a
``custom_checkpoint_*.pkl`` is refused before accelerate opens any file (an older lpo
wrote one; anyone else's is not ours to run).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

from lpo.core.deepspeed_setup import load_state_kwargs, refuse_other_launch, weights_only_deepspeed_loads
from lpo.core.errors import LpoError
from lpo.core.io import atomic_write_json, one_line

SCHEDULE_NAME = "lr_schedule.json"
_CUSTOM_PICKLE = re.compile(r"^custom_checkpoint_\d+\.pkl$")


def refuse_custom_pickles(folder: Path) -> None:
    """LpoError when ``folder`` holds accelerate custom-state pickles (they would be unpickled unrestricted)."""
    found = sorted(p.name for p in Path(folder).iterdir() if _CUSTOM_PICKLE.match(p.name)) if Path(folder).is_dir() else []
    if found:
        raise LpoError(
            f"{folder} holds {', '.join(found)}: pickled state, which this lpo does not load (unpickling can run code; "
            "older lpo versions wrote it); start a new run, or resume with the lpo version that wrote the checkpoint"
        )


def register_schedule_checkpointing(accelerator: Any, schedule: Any) -> None:
    """Save / load ``schedule.state_dict()`` as JSON with accelerate's state (instead of a custom pickle)."""

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        if accelerator.is_main_process:
            atomic_write_json(Path(output_dir) / SCHEDULE_NAME, schedule_state(schedule))

    def load_hook(models: list, input_dir: str) -> None:
        path = Path(input_dir) / SCHEDULE_NAME
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise LpoError(f"could not read {path} ({one_line(err)}); the checkpoint is incomplete: resume from an "
                           "earlier one or start over") from err
        schedule.load_state_dict(state)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def schedule_state(schedule: Any) -> dict[str, Any]:
    """The schedule's state dict, which must be plain JSON (numbers, lists, dicts): a LambdaLR's
    lr_lambdas are stored as their ``__dict__`` (empty for transformers' schedules)."""
    state = schedule.state_dict()
    try:
        json.dumps(state, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"the lr schedule's state is not plain JSON ({err}); it cannot be checkpointed safely") from err
    return state


def load_checkpoint_state(accelerator: Any, folder: Path) -> None:
    """``accelerator.load_state(folder)`` with every pickle read weights-only, refusals as one line."""
    refuse_custom_pickles(folder)
    refuse_other_launch(accelerator, folder)
    try:
        with weights_only_deepspeed_loads(accelerator):
            accelerator.load_state(str(folder), load_kwargs={"weights_only": True}, **load_state_kwargs(accelerator))
    except pickle.UnpicklingError as err:
        raise LpoError(
            f"{folder} holds a file that is not plain tensors ({one_line(err)[:120]}); lpo does not unpickle objects "
            "from checkpoints: resume from a checkpoint this lpo wrote, or start a new run"
        ) from err
