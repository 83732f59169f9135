"""Files rnnkit writes for the user get the mode an ordinary open() gives (0o666 & ~umask; directories 0o777 &
~umask), also those made through private temporaries: `rnnkit export` (safetensors directory and ONNX files)
and save_pretrained, under several umasks."""
import os
import stat

import pytest
import torch

from clirun import rnnkit
from rnnkit import _files
from rnnkit.pretrained import save_pretrained
from rnnkit.tasks import TASKS
from rnnkit.tasks.base import Loaded
from rnnkit.training.module import CHECKPOINT_KEY, checkpoint_record


@pytest.fixture(params=[0o022, 0o077, 0o002])
def mask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def tiny(task="mnist"):
    task = TASKS[task]
    cfg = task.config_class(hidden=4)
    return Loaded(task, cfg, task.build_model(cfg, {}).eval(), {}, {})


def test_umask_is_read_without_changing_it(mask):
    assert _files.umask() == mask and os.umask(mask) == mask
    assert _files.ordinary_mode() == 0o666 & ~mask and _files.ordinary_mode(directory=True) == 0o777 & ~mask


def test_save_pretrained_writes_with_the_umask(mask, tmp_path):
    directory = save_pretrained(tiny(), tmp_path / "m")
    assert mode(directory) == 0o777 & ~mask
    assert {p.name: mode(p) for p in directory.iterdir()} == {
        name: 0o666 & ~mask for name in ("model.safetensors", "config.json", "extra.json")}


def test_rnnkit_export_writes_with_the_umask(mask, tmp_path):
    loaded = tiny()
    ckpt = tmp_path / "m.ckpt"
    torch.save({CHECKPOINT_KEY: checkpoint_record(loaded.task, loaded.cfg, {}),
                "state_dict": {f"model.{k}": v for k, v in loaded.model.state_dict().items()}}, ckpt)
    code, _, err = rnnkit("export", ckpt, "--out", tmp_path / "shared")
    assert code == 0, err
    assert mode(tmp_path / "shared") == 0o777 & ~mask and mode(tmp_path / "shared" / "model.safetensors") == 0o666 & ~mask
    code, _, err = rnnkit("export", ckpt, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 0, err
    assert mode(tmp_path / "m.onnx") == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "m.onnx", "shared"]  # no temporaries left


def test_make_ordinary_fixes_a_private_temporary(mask, tmp_path):
    import tempfile

    fd, name = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    assert mode(name) == 0o600
    _files.make_ordinary(name)
    assert mode(name) == 0o666 & ~mask
    directory = tempfile.mkdtemp(dir=tmp_path)
    _files.make_ordinary(directory)
    assert mode(directory) == 0o777 & ~mask
