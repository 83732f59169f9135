"""`rnnkit train TASK --help` in sections, `--config FILE` (YAML, keys as the config's field names; flags given
override it) and `--print-config` (YAML that --config reads back to the same config)."""
import dataclasses
import json
import os

import pytest
import yaml

from clirun import rnnkit
from rnnkit.tasks import TASKS
from rnnkit.tasks.mnist import MNISTConfig
from rnnkit.training import run
from rnnkit.training.config import GROUPS, flag, read_config_file


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(run.RUN_DIR_ENV, raising=False)


def sections(help_text: str) -> dict:
    """{section title: [flags]} of an argparse help text."""
    found, title = {}, None
    for line in help_text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            found[title] = []
        elif title and line.startswith("  --"):
            found[title].append(line.split()[0].rstrip(","))
    return found


@pytest.mark.parametrize("name", TASKS)
def test_help_is_in_sections_with_every_option_once_and_no_empty_default(name):
    code, out, _ = rnnkit("train", name, "--help")
    assert code == 0
    found = sections(out)
    assert list(found) == ["options", f"{name} options", *GROUPS.values(), "config file"]
    flags = [f for title in found for f in found[title]]
    fields = [f"--{flag(f.name)}" for f in dataclasses.fields(TASKS[name].config_class)]
    assert sorted(flags) == sorted([*fields, "--config", "--print-config"])
    assert "--cell" in found["recurrent layer"] and "--peephole" in found["variants of the recurrent layer"]
    assert "--lr" in found["optimiser, regularisation and clipping"] and "--out" in found["data, output and hardware"]
    assert "(default: )" not in out and "(default: None)" not in out


@pytest.mark.parametrize("name", TASKS)
def test_print_config_round_trips_through_a_config_file(name, tmp_path):
    needed = {"forecast": {"series": "airline"}}.get(name, {})  # a forecast needs its data named
    flags = [a for k, v in needed.items() for a in (f"--{flag(k)}", v)]
    code, printed, err = rnnkit("train", name, "--print-config", "--seed", "7", "--max-epochs", "3", *flags)
    assert code == 0, err
    (tmp_path / "run.yaml").write_text(printed)
    code, again, err = rnnkit("train", name, "--config", tmp_path / "run.yaml", "--print-config")
    assert code == 0, err
    assert again == printed
    cls = TASKS[name].config_class
    assert cls(**read_config_file(tmp_path / "run.yaml", cls)) == cls(seed=7, max_epochs=3, **needed)
    assert not any(p.name != "run.yaml" for p in tmp_path.iterdir())  # printing starts nothing


def test_flags_given_override_the_file_and_the_file_overrides_the_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("hidden: 64\nmax_epochs: 3\nlr: 1e-4\nbidirectional: true\nclip_norm: 2\n")
    code, out, err = rnnkit("train", "mnist", "--config", tmp_path / "c.yaml", "--hidden", "16", "--no-bidirectional",
                            "--print-config")
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert (cfg["hidden"], cfg["max_epochs"], cfg["lr"], cfg["bidirectional"]) == (16, 3, 1e-4, False)
    assert cfg == dataclasses.asdict(MNISTConfig(hidden=16, max_epochs=3, lr=1e-4, clip_norm=2.0))


def test_a_config_file_drives_a_run(tmp_path):
    (tmp_path / "c.yaml").write_text("length: 5\ntrain_size: 64\ntest_size: 8\nhidden: 3\nbatch_size: 16\n"
                                     "max_epochs: 1\nprogress: false\naccelerator: cpu\n")
    code, _, err = rnnkit("train", "adding", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    saved = result["config"]
    assert (saved["hidden"], saved["train_size"], saved["max_epochs"], result["epochs"]) == (3, 64, 1, 1)
    os.environ.pop(run.RUN_DIR_ENV, None)


@pytest.mark.parametrize("content, message", [
    ("hidden: 64\nwarp_drive: 9\n", "c.yaml: unknown option 'warp_drive'"),
    ("max-epochs: 3\n", "c.yaml: unknown option 'max-epochs'; did you mean 'max_epochs'?"),
    ("readout: last\nbptt: 20\n", "c.yaml: unknown option 'bptt'"),  # a charlm option, not an mnist one
    ("hidden: big\n", "c.yaml: hidden must be an int; got 'big'"),
    ("hidden: 12.5\n", "c.yaml: hidden must be an int; got 12.5"),
    ("hidden: true\n", "c.yaml: hidden must be an int; got True"),
    ("lr: fast\n", "c.yaml: lr must be a float; got 'fast'"),
    ("bidirectional: 1\n", "c.yaml: bidirectional must be a bool; got 1"),
    ("cell: 3\n", "c.yaml: cell must be a str; got 3"),
    ("cell: transformer\n", "--cell must be one of rnn, lstm, gru; got 'transformer' (cell in "),
    ("cell: gru\npeephole: true\n", "--peephole applies to --cell lstm only; got --cell gru (peephole in "),
    ("hidden: 0\n", "(hidden in "),
    ("- hidden\n- 64\n", "c.yaml must hold a mapping of option names to values"),
    ("hidden: [64\n", "c.yaml is not valid YAML at line 2"),
])
def test_a_bad_config_file_is_refused_in_one_line_naming_key_and_value(tmp_path, content, message):
    (tmp_path / "c.yaml").write_text(content)
    code, out, err = rnnkit("train", "mnist", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 2 and message in err and "Traceback" not in err, err
    assert err.strip().count("\n") == 0 and not (tmp_path / "run").exists()


def test_a_missing_config_file_is_named(tmp_path):
    code, _, err = rnnkit("train", "mnist", "--config", tmp_path / "none.yaml", "--print-config")
    assert code == 2 and f"cannot read {tmp_path / 'none.yaml'}: No such file or directory" in err


def test_an_empty_config_file_is_the_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("# nothing yet\n")
    code, out, _ = rnnkit("train", "mnist", "--config", tmp_path / "c.yaml", "--print-config")
    assert code == 0 and yaml.safe_load(out) == dataclasses.asdict(MNISTConfig())


def test_a_bad_value_given_as_a_flag_is_not_blamed_on_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("cell: lstm\nhidden: 16\n")
    code, _, err = rnnkit("train", "mnist", "--config", tmp_path / "c.yaml", "--cell", "gru", "--peephole",
                          "--out", tmp_path / "run")
    assert code == 2 and "--peephole applies to --cell lstm only; got --cell gru" in err and "c.yaml" not in err, err
