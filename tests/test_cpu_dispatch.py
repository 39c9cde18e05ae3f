"""The pinned CPU kernels (lpo.core.cpu_dispatch): the policy, its opt-out, and that the `lpo`
entry point applies it before torch loads and every run's metadata records it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lpo.core import cpu_dispatch
from lpo.core.cpu_dispatch import PINNED, pin
from lpo.core.errors import LpoError


@pytest.fixture
def torch_not_loaded(monkeypatch):
    """pin() as it runs in a fresh `lpo` process (torch not imported yet); state restored after."""
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(cpu_dispatch, "_pin_state", cpu_dispatch._pin_state)


def test_pin_sets_each_unset_variable_and_keeps_the_users(torch_not_loaded):
    environ = {"MKL_CBWR": "AUTO"}
    state = pin(environ)
    assert environ == {**PINNED, "MKL_CBWR": "AUTO"}
    assert state == {"policy": "avx2", "set_by_lpo": ["ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"],
                     "torch_imported_first": False}


def test_native_opts_out_and_an_unknown_policy_is_a_one_line_error(torch_not_loaded):
    environ = {"LPO_CPU_ISA": "native"}
    assert pin(environ)["set_by_lpo"] == [] and environ == {"LPO_CPU_ISA": "native"}
    with pytest.raises(LpoError, match=r"LPO_CPU_ISA='avx512' is not a CPU dispatch policy; use avx2 .* or native"):
        pin({"LPO_CPU_ISA": "avx512"})


def test_pin_after_torch_was_imported_sets_nothing_and_says_so(monkeypatch):
    import torch  # noqa: F401  (as in a notebook that imported torch first)

    monkeypatch.setattr(cpu_dispatch, "_pin_state", cpu_dispatch._pin_state)
    environ: dict[str, str] = {}
    assert pin(environ)["torch_imported_first"] is True and environ == {}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PINNED and k != "LPO_CPU_ISA"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _lpo_env(**extra: str) -> dict:
    """`lpo env` in a fresh process started as the console script starts it (lpo.cli:main)."""
    done = subprocess.run([sys.executable, "-m", "lpo.cli", "env"], env=_clean_env(**extra), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)["hardware"]["cpu_dispatch"]


def test_the_lpo_command_pins_before_torch_loads_and_reports_it():
    info = _lpo_env()
    assert info["pinned"] is True and info["policy"] == "avx2"
    assert info["env"] == PINNED and info["set_by_lpo"] == list(PINNED)
    assert info["aten_cpu_capability"] == "AVX2"  # every x86 CPU these runs use has AVX2
    assert info["torch_threads"] == 1 and "cpu_model" in info


def test_a_users_variable_wins_and_native_pins_nothing():
    # ATEN_CPU_CAPABILITY reaches torch: the user's choice is what runs, and is recorded
    info = _lpo_env(ATEN_CPU_CAPABILITY="default")
    assert info["env"]["ATEN_CPU_CAPABILITY"] == "default" and info["aten_cpu_capability"] == "DEFAULT"
    assert info["pinned"] is True and "ATEN_CPU_CAPABILITY" not in info["set_by_lpo"]
    native = _lpo_env(LPO_CPU_ISA="native")
    assert native["pinned"] is False and set(native["env"].values()) == {None} and "native" in native["note"]
    bad = subprocess.run([sys.executable, "-m", "lpo.cli", "env"], env=_clean_env(LPO_CPU_ISA="avx9"),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "LPO_CPU_ISA='avx9'" in bad.stderr


def test_library_use_that_imported_torch_first_is_recorded_as_not_pinned():
    code = "import json, torch; from lpo.core.io import run_metadata; print(json.dumps(run_metadata()['hardware']))"
    done = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout)["cpu_dispatch"]
    assert info["pinned"] is False and "not set before torch was imported" in info["note"]


def test_this_test_process_is_pinned_like_its_subprocesses():
    from lpo.core.io import run_metadata

    info = run_metadata()["hardware"]["cpu_dispatch"]
    assert info["pinned"] is (cpu_dispatch.policy() == "avx2")  # LPO_CPU_ISA=native pytest: unpinned throughout
    assert info["env"] == {k: os.environ.get(k) for k in PINNED}


def test_pinned_threads_holds_the_count_for_the_block_and_restores_it(tmp_path):
    import torch
    from typer.testing import CliRunner

    from lpo.cli import app
    from lpo.core.cpu_dispatch import dispatch_info, pinned_threads

    before = torch.get_num_threads()
    with pinned_threads(before + 1):
        assert torch.get_num_threads() == before + 1 and dispatch_info()["threads_pinned"] == before + 1
    assert torch.get_num_threads() == before and dispatch_info()["threads_pinned"] is None
    result = CliRunner().invoke(app, ["bench", "--threads", "0", "--out", str(tmp_path / "bench")])
    assert result.exit_code == 2 and "threads must be >= 1, got 0" in result.output
    assert not (tmp_path / "bench").exists() and torch.get_num_threads() == before
