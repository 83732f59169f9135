"""The NumPy character-level trainer (rnnkit.reference.chardemo): it learns, and bad input is one
line on stderr with a non-zero exit code, never a traceback."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.reference.chardemo import DEFAULT_TEXT, main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--hidden", "16", "--steps", "150", "--seq-len", "12", "--sample-every", "50", "--sample-len", "30"]


def reports(out):
    """[(step, loss)] from the lines `step N  loss X  (...)`, and the samples (`  > ...`)."""
    losses = [(int(m[1]), float(m[2])) for m in re.finditer(r"^step +(\d+) +loss (\d+\.\d+)", out, re.M)]
    samples = [line[4:] for line in out.splitlines() if line.startswith("  > ")]
    return losses, samples


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_loss_goes_down_on_the_built_in_text(cell, capsys):
    assert main([*SMALL, "--cell", cell]) == 0
    losses, samples = reports(capsys.readouterr().out)
    assert [step for step, _ in losses] == [1, 50, 100, 150]
    V = len(set(DEFAULT_TEXT))
    first, last = losses[0][1], losses[-1][1]
    assert abs(first - math.log(V)) < 0.3  # an untrained model is close to a uniform guess
    assert last < 0.75 * first
    assert all(losses[i + 1][1] < losses[i][1] for i in range(len(losses) - 1))
    assert len(samples) == 4 and all(set(s) <= set(DEFAULT_TEXT) and len(s) == 31 for s in samples)


def test_learns_a_text_file_with_adagrad(tmp_path, capsys):
    text = tmp_path / "abc.txt"
    text.write_text("abcab\ncabcd " * 8, encoding="utf-8")
    args = ["--text", str(text), "--optimizer", "adagrad", "--lr", "0.1", "--cell", "rnn", *SMALL]
    assert main(args) == 0
    out = capsys.readouterr().out
    losses, samples = reports(out)
    assert out.startswith("96 characters, 6 distinct")
    assert losses[-1][1] < 0.5 * losses[0][1]
    assert samples and all(set(s) <= set("abcd ") for s in samples)  # a newline starts a new "  > " line


def test_same_seed_same_run(capsys):
    runs = []
    for _ in range(2):
        assert main([*SMALL, "--steps", "20", "--seed", "3"]) == 0
        runs.append(re.sub(r"\(\d+\.\d s\)", "", capsys.readouterr().out))  # all but the timings
    assert runs[0] == runs[1]


@pytest.mark.parametrize("args,code,message", [
    (["--text", "no/such/file.txt"], 1, "No such file or directory: 'no/such/file.txt'"),
    (["--text", "{empty}"], 1, "has 0 characters; it needs at least 2"),
    (["--text", "{latin1}"], 1, "can't decode byte"),
    (["--hidden", "0"], 2, "--hidden must be a positive integer; got 0"),
    (["--steps", "-5"], 2, "--steps must be a positive integer; got -5"),
    (["--seq-len", "0"], 2, "--seq-len must be a positive integer; got 0"),
    (["--layers", "0"], 2, "--layers must be a positive integer; got 0"),
    (["--sample-every", "0"], 2, "--sample-every must be a positive integer; got 0"),
    (["--lr", "0"], 2, "--lr must be a finite positive number; got 0.0"),
    (["--clip", "nan"], 2, "--clip must be a finite positive number; got nan"),
    (["--hidden", "x"], 2, "argument --hidden: invalid int value: 'x'"),
    (["--cell", "transformer"], 2, "argument --cell: invalid choice: 'transformer'"),
    (["--unknown"], 2, "unrecognized arguments: --unknown"),
])
def test_bad_input_is_one_line_on_stderr(args, code, message, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    args = [a.format(empty=tmp_path / "empty.txt", latin1=tmp_path / "latin1.txt") for a in args]
    assert main(args) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith("rnnkit numpy-demo: error: ")
    assert message in captured.err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--text FILE", "--hidden", "--steps", "--seq-len", "--lr", "--seed", "--sample-every"):
        assert option in out


def test_runs_as_a_program_without_torch_and_without_a_traceback():
    """`python -m reference.chardemo` with rnnkit's torch code out of reach, as a user would run it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src" / "rnnkit")}
    ok = subprocess.run([sys.executable, "-m", "reference.chardemo", *SMALL, "--steps", "5"],
                        capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "step      5  loss" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "reference.chardemo", "--text", "missing.txt"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("rnnkit numpy-demo: error: ") and "Traceback" not in bad.stderr
