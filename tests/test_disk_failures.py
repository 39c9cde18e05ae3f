"""Full and read-only disks (issue 13): one line naming the path and the fix, exit status 2,
no half-written files or .tmp folders left behind, and `lpo eval` finds out before it works.

Tests may run as root, where chmod does not stop writes: the failures are injected as the
OSError / RuntimeError the system and torch raise.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import lpo.core.io
from lpo.core.errors import LpoError
from lpo.core.io import atomic_directory, atomic_write_text, check_writable


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_and_leaves_no_tmp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(lpo.core.io.os, "fsync", _no_space)
    with pytest.raises(LpoError, match=r"could not write .*records.jsonl\): no space left on the device; free space there"):
        atomic_write_text(tmp_path / "records.jsonl", "x\n")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_folder_is_one_line_and_other_errors_stay_what_they_are(tmp_path):
    with pytest.raises(LpoError, match=r"the file system is read-only; write to a writable folder"):
        with atomic_directory(tmp_path / "model"):
            raise OSError(errno.EROFS, "Read-only file system")
    with pytest.raises(LpoError, match=r"no space left"):  # torch.save's way of saying it
        with atomic_directory(tmp_path / "model"):
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                               "data/3: file write failed")
    with pytest.raises(KeyError):  # a bug is not a disk problem
        with atomic_directory(tmp_path / "model"):
            raise KeyError("x")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_cannot_be_written_leaves_no_tmp_folder(tmp_path):
    from lpo.core.runs import RunFolder, write_checkpoint

    class FullDiskAccelerator:
        is_main_process = True

        def wait_for_everyone(self):
            pass

        def save_state(self, folder):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "optimizer.bin").write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1024 vs 512")

    run = RunFolder.create({"a": 1}, folder=tmp_path / "run")
    with pytest.raises(LpoError, match=r"could not write checkpoint 3 \(.*step-000003\): no space left on the device"):
        write_checkpoint(FullDiskAccelerator(), run, 3, None, {"step": 3}, keep=2)
    assert list(run.checkpoints_dir.iterdir()) == []


def test_check_writable_names_the_folder(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(LpoError, match=r"cannot write the results folder \(.*file/results\): Not a directory; pass a"):
        check_writable(tmp_path / "file" / "results", "the results folder")
    check_writable(tmp_path / "ok" / "results", "a folder")
    assert not (tmp_path / "ok").exists()  # nothing created: a later failure leaves no empty folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # and the probe is gone


def test_eval_checks_its_results_folder_before_generating(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import lpo.evals.harness as harness
    from lpo.cli import app

    monkeypatch.setattr(harness, "generate_images", lambda *a, **k: pytest.fail("generated before the check"))
    (tmp_path / "file").write_text("")
    out = CliRunner().invoke(app, ["eval", "world", "--max-prompts", "2", "--steps", "2", "--images-per-prompt", "1",
                                   "--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "file" / "r")])
    assert out.exit_code == 2 and "cannot write the results folder (--results-dir)" in out.output
    assert "Traceback" not in out.output


def test_a_failed_records_write_leaves_no_per_prompt_orphan(tmp_path, monkeypatch):
    from lpo.evals.harness import EvalConfig, EvalProtocol, run_eval

    real = lpo.core.io._atomic_write_bytes

    def full_for_records(path, data):
        if path.name.startswith("records"):
            _no_space()
        real(path, data)

    monkeypatch.setattr(lpo.core.io, "_atomic_write_bytes", full_for_records)
    config = EvalConfig(checkpoint="noise", max_prompts=2, cache_dir=tmp_path / "cache", results_dir=tmp_path / "results",
                        protocol=EvalProtocol(steps=2, images_per_prompt=1))
    with pytest.raises(LpoError, match=r"could not write .*records-v\d+.jsonl\): no space left"):
        run_eval(config)
    leftovers = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
    assert leftovers == []
