"""A full disk while a run writes its files: the previous checkpoint (or metrics.json) survives, and the error
is one line saying the disk is full, which file, the bytes it needed and the bytes free."""
import errno
import os
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from clirun import rnnkit
from rnnkit.training import run

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_SAVE = torch.save
Usage = namedtuple("Usage", "total used free")


def save_to_a_full_disk(obj, f, *args, **kwargs):
    """torch.save on a full disk: the file exists, the write fails halfway (with torch's own message, from
    writing to /dev/full). A file object that is not a path (the size count) is written as usual."""
    if not isinstance(f, (str, os.PathLike)):
        return REAL_SAVE(obj, f, *args, **kwargs)
    Path(f).write_bytes(b"half a checkpoint")
    REAL_SAVE(obj, "/dev/full")
    raise AssertionError("/dev/full accepted the checkpoint")


@pytest.fixture
def full_disk(monkeypatch):
    monkeypatch.setattr(torch, "save", save_to_a_full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))


def test_a_checkpoint_on_a_full_disk_names_the_file_and_the_space(tmp_path, full_disk):
    io, path = run.AtomicCheckpointIO(), tmp_path / "last.ckpt"
    path.write_bytes(b"the previous checkpoint")
    checkpoint = {"weights": torch.ones(50_000)}
    with pytest.raises(OSError) as caught:
        io.save_checkpoint(checkpoint, path)
    message = str(caught.value)
    size = run._saved_size(checkpoint)
    assert size > 200_000
    assert message.startswith(f"disk full: could not write {path} (torch: [enforce fail at inline_container")
    assert f"it needs 0.2 MB ({size} bytes); 1000 bytes free in {tmp_path}" in message
    assert message.endswith("the previous file is unchanged") and "\n" not in message
    assert path.read_bytes() == b"the previous checkpoint" and os.listdir(tmp_path) == ["last.ckpt"]


def test_an_enospc_from_the_os_says_disk_full_even_without_sizes(tmp_path, monkeypatch):
    def enospc(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(OSError, match=r"^disk full: could not write .*last.ckpt \(No space left on device\)"):
        run.AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, tmp_path / "last.ckpt")
    assert os.listdir(tmp_path) == []


def test_other_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def denied(obj, f):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "save", denied)
    with pytest.raises(OSError, match=r"^could not write .*last.ckpt: Permission denied$"):
        run.AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, tmp_path / "last.ckpt")

    def unpicklable(obj, f):
        raise RuntimeError("cannot pickle this")

    monkeypatch.setattr(torch, "save", unpicklable)
    with pytest.raises(RuntimeError, match="^cannot pickle this$"):  # not a write failure: left as it is
        run.AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, tmp_path / "last.ckpt")


def test_metrics_json_on_a_full_disk_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    run.write_json(path, {"val": 1})

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 0))
    needed = len('{\n  "val": 2.5\n}\n')
    with pytest.raises(OSError, match=rf"disk full: .*metrics.json \(No space left on device\): it needs {needed} "
                                      r"bytes; 0 bytes free"):
        run.write_json(path, {"val": 2.5})
    assert path.read_text() == '{\n  "val": 1\n}\n' and os.listdir(tmp_path) == ["metrics.json"]


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"MNIST not found in {DATA}")
def test_train_on_a_full_disk_exits_1_with_one_line_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    monkeypatch.delenv(run.RUN_DIR_ENV, raising=False)
    flags = ["--data-dir", DATA, "--hidden", "8", "--limit-train-batches", "2", "--limit-eval-batches", "1",
             "--batch-size", "16", "--no-progress", "--out", tmp_path / "run"]
    code, _, err = rnnkit("train", "mnist", *flags, "--max-epochs", "1")
    assert code == 0, err
    monkeypatch.delenv(run.RUN_DIR_ENV, raising=False)
    checkpoints = tmp_path / "run" / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.iterdir()}
    monkeypatch.setattr(torch, "save", save_to_a_full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    code, _, err = rnnkit("train", "mnist", *flags, "--max-epochs", "2", "--resume")
    assert code == 1 and "Traceback" not in err, err
    line = err.strip()
    assert "\n" not in line and line.startswith(f"rnnkit: error: disk full: could not write {checkpoints}/"), err
    assert re.search(r"it needs \d+ bytes; 1000 bytes free in", line) and "the previous file is unchanged" in line
    assert {p.name: p.read_bytes() for p in checkpoints.iterdir()} == before
