"""One run directory, one process: a second `rnnkit train` with the same --out is refused while the first
runs, naming its PID; the lock goes with the process however it ends (SIGKILL included)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnkit.tasks import get_task
from rnnkit.training import run

TINY = ["adding", "--length", "5", "--train-size", "64", "--test-size", "8", "--hidden", "4", "--batch-size", "16",
        "--patience", "0", "--no-progress", "--accelerator", "cpu"]


def rnnkit(*argv, cwd) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(run.RUN_DIR_ENV, None)
    return subprocess.Popen([sys.executable, "-m", "rnnkit", *map(str, argv)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, what: str, process: subprocess.Popen, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the first run ended before {what}: {process.communicate()[1]}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def first(tmp_path):
    """A real `rnnkit train` that goes on until it is killed, once it has written its last.ckpt."""
    out = tmp_path / "run"
    process = rnnkit("train", *TINY, "--max-epochs", "100000", "--out", out, cwd=tmp_path)
    try:
        wait_for(lambda: (out / "checkpoints" / "last.ckpt").is_file(), "its first checkpoint", process)
        yield process, out
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_a_second_run_in_the_same_directory_is_refused_naming_the_first(first, tmp_path):
    process, out = first
    for extra in ([], ["--resume", "--max-epochs", "1"]):
        second = rnnkit("train", *TINY, "--max-epochs", "1", "--out", out, *extra, cwd=tmp_path)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2 and "Traceback" not in err, err
        assert err.strip() == (f"rnnkit: error: run directory {out} is in use by another rnnkit process "
                               f"(PID {process.pid}); wait for it to end, or choose another --out")
    assert process.poll() is None  # the first run goes on


def test_the_lock_of_a_killed_run_is_released_and_the_run_resumes(first, tmp_path):
    process, out = first
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert (out / run.PID_FILE).read_text() == f"{process.pid}\n"  # left behind: nothing ran at its end
    more = run.epochs_done(run.read_checkpoint(out / "checkpoints" / "last.ckpt")) + 1  # it may have run a few epochs
    resumed = rnnkit("train", *TINY, "--out", out, "--resume", "--max-epochs", more, cwd=tmp_path)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert not (out / run.PID_FILE).exists()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    task = get_task("adding")
    cfg = task.config_class(out=str(tmp_path / "run"))
    with pytest.raises(RuntimeError, match="the run failed"):
        with run.prepare_run_dir(task, cfg):
            raise RuntimeError("the run failed")
    with run.prepare_run_dir(task, cfg) as run_dir:  # the same process takes it again: it was released
        assert (run_dir / run.PID_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(run.ConfigError, match=rf"in use by another rnnkit process \(PID {os.getpid()}\)"):
            with run.prepare_run_dir(task, cfg):
                pass
    os.environ.pop(run.RUN_DIR_ENV, None)
    assert not any(p.name not in (run.LOCK_FILE,) for p in (tmp_path / "run").iterdir())


def test_a_directory_holding_other_files_gets_no_lock_file(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    task = get_task("adding")
    with pytest.raises(run.ConfigError, match="is not empty"):
        with run.prepare_run_dir(task, task.config_class(out=str(tmp_path / "mine"))):
            pass
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
