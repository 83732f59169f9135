"""The rnnkit command, run as a user would: exit codes, output, no tracebacks."""
import subprocess
import sys

import pytest
import torch

import rnnkit
from rnnkit.kernels.cpu import fused
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
                   "layer_norm", "h' = (1 - z) * n + z * h", "reset_after=False", "softsign",
                   "minGRU:   z = sigmoid(W_z x + b_z)", "native    PyTorch's fused kernel"):
        assert needle in out, needle
    status = "available, cached in" if fused.library() is not None else "not available ("
    assert f"== Fused CPU kernels (rnnkit/kernels/cpu)\n{status}" in out
    if fused.sequence_available():
        sums = {"blas": "PyTorch's BLAS", "rnnkit": "rnnkit's kernel"}[fused.sums_kernel(torch.float32)]
        assert f"the weight gradients are summed on {sums}, the faster of the two here" in out


def test_demo_runs_every_layer_and_matches_torch(capsys):
    assert main(["demo", "--batch", "2", "--steps", "3", "--hidden", "4", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(("RNN", "LSTM", "GRU"))]
    assert len(rows) == 13  # every variant of rnnkit.nn.variants.VARIANTS
    diffs = [float(row.split()[-1]) for row in rows if not row.endswith("-")]
    assert len(diffs) == 5 and max(diffs) < 1e-5


@pytest.mark.parametrize("args,code,message", [
    (["demo", "--batch", "0"], 2, "--batch, --steps and --hidden must be positive; got 0"),
    (["demo", "--hidden", "x"], 2, "invalid int value: 'x'"),
    (["nonsense"], 2, "invalid choice: 'nonsense'"),
    (["numpy-demo", "--hidden", "0"], 2, "--hidden"),
    (["numpy-demo", "--text", "/nonexistent/file.txt"], 1, "/nonexistent/file.txt"),
    (["bench", "--shapes", "Z"], 2, "--shapes takes a comma-separated subset of A,B,C,D; got 'Z'"),
    (["bench", "--cases", "LSTM,Nope"], 2, "unknown --cases ['Nope']"),
    ([], 2, "usage: rnnkit"),
])
def test_bad_usage_exits_2_without_traceback(args, code, message):
    result = rnnkit_cmd(*args)
    assert result.returncode == code
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_numpy_demo_learns(capsys):
    assert main(["numpy-demo", "--hidden", "16", "--steps", "60", "--sample-every", "30", "--sample-len", "10"]) == 0
    losses = [float(line.split("loss")[1].split()[0]) for line in capsys.readouterr().out.splitlines()
              if line.startswith("step")]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_bench_prints_a_ratio_table(capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--shapes", "A", "--cases", "GRU reset_before", "--repeats", "1", "--no-memory",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| GRU reset_before | A | engine |" in table and "torch " in table
    import json
    row = json.loads(out.read_text())["time"][0]
    assert row["train_ratio"] == row["train_s"] / row["train_ref_s"]
