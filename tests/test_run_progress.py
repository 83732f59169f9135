"""Progress: Lightning's bar on a terminal; plain lines, one per epoch, when the output goes to a file (the
bar redraws itself with carriage returns, hundreds of them per epoch in a log)."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

from rnnkit.training import run

TINY = ["train", "adding", "--length", "5", "--train-size", "256", "--test-size", "8", "--hidden", "4",
        "--batch-size", "16", "--patience", "0", "--accelerator", "cpu", "--max-epochs", "2"]


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(run.RUN_DIR_ENV, None)
    return env


def test_a_run_logged_to_a_file_has_no_progress_bar_but_a_line_per_epoch(tmp_path):
    with open(tmp_path / "log.txt", "w") as log:
        done = subprocess.run([sys.executable, "-m", "rnnkit", *TINY, "--out", str(tmp_path / "run")], cwd=tmp_path,
                              env=_env(), stdout=log, stderr=subprocess.STDOUT, timeout=120)
    text = (tmp_path / "log.txt").read_text()
    assert done.returncode == 0, text
    assert text.count("\r") == 0, text
    lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[:2] for line in lines] == [["epoch 1/2", "step 15"], ["epoch 2/2", "step 30"]], text
    assert all("val_loss" in line for line in lines)


def test_a_terminal_gets_the_progress_bar(tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    chunks = []
    reader = threading.Thread(target=lambda: _drain(master, chunks), daemon=True)
    reader.start()
    done = subprocess.run([sys.executable, "-m", "rnnkit", *TINY, "--out", str(tmp_path / "run")], cwd=tmp_path,
                          env=_env(), stdout=slave, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(slave)
    reader.join(timeout=10)
    text = b"".join(chunks).decode(errors="replace")
    assert done.returncode == 0, done.stderr
    assert text.replace("\r\n", "\n").count("\r") > 10 and "Epoch 0: 100%" in text, text  # tqdm's bar, redrawn
    assert "epoch 1/2  step" not in text


def test_no_progress_prints_neither(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rnnkit", *TINY, "--no-progress", "--out", str(tmp_path / "run")],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr and "epoch 1/2" not in done.stdout


def _drain(fd, chunks):
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the terminal closed
            return
        if not data:
            return
        chunks.append(data)
