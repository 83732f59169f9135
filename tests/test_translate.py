"""The translate task end to end on the synthetic dates task: it learns (exact match >= 95% on its test
set, greedy and beam), `rnnkit translate` reads arguments and stdin, bad options exit 2 with one line."""
import io
import json

import pytest

from clirun import rnnkit
from rnnkit.data.parallel import date_pairs
from rnnkit.tasks.translate import score

DATES = ["--corpus", "dates", "--synthetic-pairs", "1500", "--hidden", "48", "--embedding", "24", "--dropout", "0",
         "--lr", "1e-2", "--batch-size", "32", "--max-epochs", "4", "--beam", "3", "--seed", "0", "--no-progress"]


@pytest.fixture(scope="module")
def dates_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dates") / "run"
    code, stdout, stderr = rnnkit("train", "translate", *DATES, "--out", out)
    assert code == 0, stderr
    return out


def test_the_dates_task_is_learned(dates_run):
    results = json.loads((dates_run / "bleu.json").read_text())
    assert results["greedy"]["exact"] >= 0.95 and results["beam3"]["exact"] >= 0.95
    assert results["greedy"]["sentences"] == 375
    lines = (dates_run / "test_greedy.txt").read_text().splitlines()
    assert score(lines, [t for _, t in date_pairs(375, 20_000)])["exact"] == results["greedy"]["exact"]
    assert (dates_run / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_translate_command_reads_arguments_and_stdin(dates_run, monkeypatch):
    ckpt = dates_run / "checkpoints" / "best.ckpt"
    code, out, err = rnnkit("translate", ckpt, "march 7 , 2001", "12 / 10 / 1969", "--beam", "3")
    assert code == 0, err
    assert out.splitlines() == ["2001 03 07", "1969 10 12"]
    monkeypatch.setattr("sys.stdin", io.StringIO("5 june 1999\n\n"))
    code, out, err = rnnkit("translate", ckpt)
    assert (code, out) == (0, "1999 06 05\n"), err
    code, out, err = rnnkit("translate", ckpt, "5 june 1999", "--beam", "0")
    assert code == 2 and "--beam must be >= 1; got 0" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags,message", [
    (["--src", "en", "--tgt", "en"], "--src and --tgt must differ"),
    (["--attention", "dot"], "--attention dot needs encoder outputs (256) as wide as the decoder state (128)"),
    (["--teacher-forcing", "1.5"], "--teacher-forcing is a probability"),
])
def test_bad_options_exit_2_with_one_line(flags, message, tmp_path):
    code, _, err = rnnkit("train", "translate", "--hidden", "128", *flags, "--out", tmp_path / "run")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
