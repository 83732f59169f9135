"""The rnnkit command, run as a user would: exit codes, output, no tracebacks."""
import subprocess
import sys

import pytest

import rnnkit
from rnnkit.cli import main


def rnnkit_cmd(*args):
    return subprocess.run([sys.executable, "-m", "rnnkit", *args], capture_output=True, text=True, timeout=120)


def test_version():
    result = rnnkit_cmd("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rnnkit {rnnkit.__version__}"


def test_info_lists_every_cell_with_its_equations(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for needle in ("h' = act(W_ih x + b_ih + W_hh h + b_hh)", "c' = f * c + i * g", "coupled", "peephole",
                   "layer_norm", "h' = (1 - z) * n + z * h", "reset_after=False", "softsign"):
        assert needle in out, needle


def test_demo_runs_every_layer_and_matches_torch(capsys):
    assert main(["demo", "--batch", "2", "--steps", "3", "--hidden", "4", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(("RNN", "LSTM", "GRU"))]
    assert len(rows) == 12
    diffs = [float(row.split()[-1]) for row in rows if not row.endswith("-")]
    assert len(diffs) == 5 and max(diffs) < 1e-5


@pytest.mark.parametrize("args,code,message", [
    (["demo", "--batch", "0"], 2, "--batch, --steps and --hidden must be positive; got 0"),
    (["demo", "--hidden", "x"], 2, "invalid int value: 'x'"),
    (["nonsense"], 2, "invalid choice: 'nonsense'"),
    ([], 2, "usage: rnnkit"),
])
def test_bad_usage_exits_2_without_traceback(args, code, message):
    result = rnnkit_cmd(*args)
    assert result.returncode == code
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
