"""Pinned CPU kernels and thread count, so that x86 machines of one kind compute alike (SPEC §6.4).

torch picks its CPU kernels for the processor at hand, and different kernels round
differently in the last bits. LPO's thresholds (keep a step when p_w − p_l > th_t) and
the annotators' tie margin turn such bits into other kept steps, other labels and other
weights, so the same command gave other numbers on another machine of the same kind.
Three libraries choose kernels, each from its own environment variable, read once when
torch loads them:

=====================  ==========================  ===================  =================
library                runs                        variable             pinned value
=====================  ==========================  ===================  =================
ATen                   elementwise ops,            ATEN_CPU_CAPABILITY  avx2
                       reductions, softmax
oneDNN                 convolutions                ONEDNN_MAX_CPU_ISA   AVX2
MKL                    matmuls (linear layers,     MKL_CBWR             COMPATIBLE
                       attention)
=====================  ==========================  ===================  =================

MKL gets ``COMPATIBLE``, not ``AVX2``: MKL's AVX2 branch holds on Intel CPUs only (on
AMD it runs its automatic choice), and machines of one kind may be either.

Policy (``LPO_CPU_ISA``):

- ``avx2`` (the default): the ``lpo`` command sets the three variables before torch is
  imported, each only if the user has not set it (a user's value stands and is
  recorded). Every process lpo or its tests start inherits them. Always, also for CUDA
  runs: it is decided before torch loads, when where the run will go is not yet known,
  and it touches CPU kernels only, so a CUDA run pays for its CPU-side work at most.
- ``native``: lpo sets nothing; the libraries use the CPU's fastest kernels, and the
  numbers may differ between CPU models.

Threads: float reductions split by the thread count, so results depend on it too. `lpo
bench` pins torch's thread count (``--threads``, default 2, the count of the committed
runs on 2-core machines) whatever the machine has.

Measured (world quick model, AMD EPYC with AVX2 and no AVX-512, torch 2.13 CPU): two runs
with equal settings were bit-identical; ``ATEN_CPU_CAPABILITY=default``,
``ONEDNN_MAX_CPU_ISA=SSE41`` and ``MKL_CBWR=COMPATIBLE`` each changed a U-Net forward,
sampled images and the weights after three AdamW steps; 1, 2 and 4 threads gave three
different sets of weights; 1 against 2 threads changed the LRM and LPO weights of a reduced
bench. The pin cost about 25 % more CPU time in sampling (MKL's compatible branch), nothing
measurable in U-Net training steps, and 12 % more CPU time over a reduced bench (43.0 s
against 38.3 s, one thread, twice each). ``MKL_CBWR=AVX2`` changed nothing on that AMD
CPU (it runs MKL's automatic branch there), which is why MKL is pinned to COMPATIBLE.
Not verified here: that an AVX-512 or Intel machine, pinned, gives the bits an AMD AVX2
machine gives (no second machine); ``lpo env`` on both and a reduced bench on each tell.

Library use: a program that imported torch before lpo cannot be pinned from inside.
:func:`dispatch_info` (in every run's metadata) then says ``pinned: false`` and why; set
the variables in the shell, or call :func:`pin` before importing torch.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, MutableMapping

from lpo.core.errors import LpoError

POLICY_VARIABLE = "LPO_CPU_ISA"
POLICIES = ("avx2", "native")
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}

# What this process's pin() did (one process, one pin): None until pin() runs.
_pin_state: dict[str, Any] | None = None
_threads_pinned: int | None = None


def policy(environ: MutableMapping[str, str] | None = None) -> str:
    """The dispatch policy named by ``LPO_CPU_ISA`` (``avx2`` when unset)."""
    environ = os.environ if environ is None else environ
    name = environ.get(POLICY_VARIABLE, "avx2").strip().lower() or "avx2"
    if name not in POLICIES:
        raise LpoError(
            f"{POLICY_VARIABLE}={environ[POLICY_VARIABLE]!r} is not a CPU dispatch policy; use avx2 (the default: "
            "kernels every x86-64 CPU with AVX2 runs alike) or native (the CPU's fastest kernels)"
        )
    return name


def pin(environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
    """Apply the policy to ``environ`` (``os.environ``) before torch is imported.

    Sets each variable of :data:`PINNED` the user has not set. If torch is already loaded
    this process cannot be pinned any more; then nothing is set (so that processes it
    starts compute as it does) and the state says so. Returns the state recorded in
    :func:`dispatch_info`.
    """
    global _pin_state
    environ = os.environ if environ is None else environ
    name = policy(environ)
    state: dict[str, Any] = {"policy": name, "set_by_lpo": [], "torch_imported_first": "torch" in sys.modules}
    if name == "avx2" and not state["torch_imported_first"]:
        for key, value in PINNED.items():
            if key not in environ:
                environ[key] = value
                state["set_by_lpo"].append(key)
    _pin_state = state
    return state


@contextmanager
def pinned_threads(threads: int) -> Iterator[int]:
    """Fix torch's intra-op thread count (float reductions split by it) for the block.

    The previous count is restored afterwards, so an in-process caller (tests, notebooks)
    keeps its own.
    """
    global _threads_pinned
    if threads < 1:
        raise LpoError(f"threads must be >= 1, got {threads}")
    import torch

    before, before_pinned = torch.get_num_threads(), _threads_pinned
    torch.set_num_threads(threads)
    _threads_pinned = threads
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
        _threads_pinned = before_pinned


def _initial_environment() -> dict[str, str] | None:
    """The environment this process started with (Linux), set before any Python ran."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo, None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def dispatch_info() -> dict[str, Any]:
    """The CPU kernels and threads this process computes with, for run metadata.

    ``pinned`` is true when all three variables were in place before torch loaded: set by
    :func:`pin` before the import, or present when the process started.
    """
    import torch

    env = {key: os.environ.get(key) for key in PINNED}
    try:
        name = policy()
    except LpoError:
        name = os.environ.get(POLICY_VARIABLE)
    info: dict[str, Any] = {
        "policy": name,
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": env,
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "threads_pinned": _threads_pinned,
    }
    state = _pin_state
    initial = _initial_environment() or {}
    if name == "native":
        pinned, note = False, f"{POLICY_VARIABLE}=native: the CPU's own kernels (numbers may differ between CPU models)"
    elif state is not None and not state["torch_imported_first"]:
        pinned, note = all(v is not None for v in env.values()), None
    elif all(initial.get(key) is not None for key in PINNED):
        pinned, note = True, None
    else:
        missing = [key for key in PINNED if initial.get(key) is None]
        pinned = False
        note = (f"{', '.join(missing)} not set before torch was imported: this process uses the CPU's own kernels; "
                "run through the lpo command, or set them in the shell (see lpo.core.cpu_dispatch)")
    if pinned and env["ATEN_CPU_CAPABILITY"] == "avx2" and info["aten_cpu_capability"] != "AVX2":
        note = f"this CPU lacks AVX2: ATen runs its {info['aten_cpu_capability']} kernels (other numbers than AVX2 CPUs)"
    info["pinned"] = pinned
    if state is not None:
        info["set_by_lpo"] = list(state["set_by_lpo"])
    if note:
        info["note"] = note
    return info
