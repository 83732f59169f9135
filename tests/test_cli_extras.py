"""A core-only install (`pip install rnnkit`, no `train` extra): the commands that need the extra say which
one in one line and exit 1, without a traceback; `--help`, `info` and `demo` work with torch alone."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

# Put first on sys.path, it makes the train extra's packages impossible to import, as on a core-only install.
BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = {"lightning", "pytorch_lightning", "lightning_utilities", "torchmetrics", "tensorboard",
               "matplotlib", "PIL", "conllu", "sacrebleu", "tokenizers", "yaml"}
    FAKE = {FAKE}  # rnnkit modules that fail as if they imported a missing package at module level

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            if name in FAKE:
                raise ModuleNotFoundError(f"No module named {FAKE[name]!r}", name=FAKE[name])
            return None

    sys.meta_path.insert(0, Blocker())
""")

# Runs each command line in-process, as `rnnkit` would, and prints their (exit code, stdout, stderr).
DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from rnnkit.cli import main

    results = []
    for argv in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
            except BaseException as e:
                code = f"raised {type(e).__name__}: {e}"
        results.append((code, out.getvalue(), err.getvalue()))
    print(json.dumps(results))
""")

NEEDS_TRAIN = [["train", "mnist", "--out", "{tmp}/run"], ["eval", "{tmp}/x.ckpt"],
               ["predict", "{tmp}/x.ckpt", "a.png"], ["sample", "{tmp}/x.ckpt"],
               ["export", "{tmp}/x.ckpt", "--out", "{tmp}/model"], ["classify", "{tmp}/x.ckpt", "ok"]]
WORK_WITHOUT = [["--help"], ["info"], ["demo", "--batch", "2", "--steps", "3", "--hidden", "4", "--repeats", "1"],
                ["train", "mnist", "--help"]]


def _core_only(tmp_path, argvs, fake=None):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.replace("{FAKE}", repr(fake or {})))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "OMP_NUM_THREADS": "1"}
    argvs = [[a.format(tmp=tmp_path) for a in argv] for argv in argvs]
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argvs)], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(zip(map(tuple, argvs), json.loads(done.stdout.splitlines()[-1])))


def _says_which_extra(command, code, err):
    assert code == 1, (command, code, err)
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert f'rnnkit {command} needs the \'train\' extra: pip install "rnnkit[train]"' in err, err


def test_commands_that_need_the_train_extra_say_so_in_one_line(tmp_path):
    results = _core_only(tmp_path, NEEDS_TRAIN + WORK_WITHOUT)
    for argv, (code, out, err) in results.items():
        if list(argv) in [[a.format(tmp=tmp_path) for a in w] for w in WORK_WITHOUT]:
            assert code == 0, (argv, code, err)
            assert out.strip() and "Traceback" not in err
        else:
            _says_which_extra(argv[0], code, err)
            assert "(missing: lightning)" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "model").exists()  # nothing was started


def test_a_task_module_that_fails_to_import_still_leaves_info_working(tmp_path):
    """If a task recipe imports an extra's package at module level, the training commands are replaced by
    ones that say what is missing (the parser cannot list the tasks), and the rest keeps working."""
    results = _core_only(tmp_path, [["train", "mnist"], ["eval", "x.ckpt"], ["info"], ["--help"]],
                         fake={"rnnkit.tasks.pos": "conllu"})
    (train, _, train_err), (ev, _, ev_err), (info, info_out, _), (helped, help_out, _) = results.values()
    _says_which_extra("train", train, train_err)
    _says_which_extra("eval", ev, ev_err)
    assert "(missing: conllu)" in train_err
    assert info == 0 and "LSTM" in info_out and helped == 0 and "train" in help_out


def test_the_installed_command_exits_1_without_a_traceback(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.replace("{FAKE}", "{}"))
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "rnnkit", "train", "charlm"], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    _says_which_extra("train", done.returncode, done.stderr)


@pytest.mark.parametrize("module, extra", [("lightning.pytorch", "train"), ("onnxruntime", "onnx"), ("rnnkit.x", None)])
def test_each_optional_module_is_mapped_to_its_extra(module, extra):
    from rnnkit.cli.commands import _missing_extra

    message = _missing_extra("export", module)
    assert (message is None) if extra is None else (f'pip install "rnnkit[{extra}]"' in message)
