"""A trained model as a directory to share: `model.safetensors` (the weights), `config.json` (task,
config, rnnkit version) and `extra.json` (vocabulary, tokenizer, scaler...). Loading it reads no
pickle, so it can execute no code, and needs torch and safetensors only, not the training libraries.

    from rnnkit.tasks import load
    save_pretrained(load("runs/x/checkpoints/best.ckpt"), "my-model")
    model = from_pretrained("my-model").model            # eval mode
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from . import __version__
from ._files import make_ordinary

FORMAT = 1
WEIGHTS, CONFIG, EXTRA = "model.safetensors", "config.json", "extra.json"
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
           "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}  # safetensors' names -> torch's


def save_pretrained(loaded, directory) -> Path:
    """Write `loaded` (from `rnnkit.tasks.load` or `from_pretrained`) into `directory`, which must not exist
    or be empty: nothing already there is overwritten. The files appear together or not at all."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FileExistsError(f"{directory} already exists and is not an empty directory; choose another")
    try:
        extra = json.dumps(loaded.extra, indent=1)
    except TypeError as e:
        raise ValueError(f"the model's extra data cannot be written as JSON ({e})") from None
    config = {"format": FORMAT, "rnnkit": __version__, "task": loaded.task.name, "config": _config(loaded.cfg)}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        weights = {name: t.detach().contiguous().cpu() for name, t in loaded.model.state_dict().items()}
        save_file(weights, staging / WEIGHTS, metadata={"format": str(FORMAT), "task": loaded.task.name})
        (staging / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
        (staging / EXTRA).write_text(extra + "\n")
        for path in (staging, staging / WEIGHTS):  # mkdtemp's 0700 and safetensors' 0600 would outlive the rename
            make_ordinary(path)
        if directory.exists():
            directory.rmdir()  # empty, checked above
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def from_pretrained(directory):
    """The model saved by `save_pretrained`, rebuilt and in eval mode (a `rnnkit.tasks.base.Loaded`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .tasks import TASKS
    from .tasks.base import WeightsMismatch, check_weights, rebuild
    from .training.config import from_dict

    directory = Path(directory)
    for name in (WEIGHTS, CONFIG, EXTRA):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a saved rnnkit model: {name} is missing")
    config, extra = _read_json(directory / CONFIG), _read_json(directory / EXTRA)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{directory / CONFIG}: format {config.get('format') if isinstance(config, dict) else None!r}"
                         f"; this rnnkit reads format {FORMAT}")
    if config.get("task") not in TASKS:
        raise ValueError(f"{directory} holds a model of task {config.get('task')!r}, unknown to this rnnkit "
                         f"(tasks: {', '.join(TASKS)})")
    record = {"config": config["config"], "extra": extra, "version": config.get("rnnkit"), "task": config["task"]}
    task = TASKS[config["task"]]
    try:
        header = _header(directory / WEIGHTS)
        # the model the config describes is checked against the file's header before a byte is allocated:
        # a config.json (or extra.json) that makes the model larger than its weights is refused
        cfg = from_dict(task.config_class, record["config"])
        check_weights(task, cfg, extra, header, directory / WEIGHTS)
        weights = load_file(directory / WEIGHTS)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{directory / WEIGHTS} is not a readable safetensors file ({e})") from None
    except WeightsMismatch:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{directory}: its {task.name!r} model cannot be rebuilt from {CONFIG} and {EXTRA} "
                         f"(written by rnnkit {config.get('rnnkit')}): {type(e).__name__}: {e}") from None
    return rebuild(task, record, weights, directory)


def _header(path: Path) -> dict:
    """{name: (shape, dtype)} of the tensors in a safetensors file, from its header alone (no tensor is read)."""
    import torch
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        slices = {name: f.get_slice(name) for name in f.keys()}
        dtypes = {name: s.get_dtype() for name, s in slices.items()}
        return {name: (tuple(s.get_shape()), getattr(torch, _DTYPES[dtypes[name]]) if dtypes[name] in _DTYPES
                       else dtypes[name]) for name, s in slices.items()}


def _config(cfg) -> dict:
    """The config without where and how it was trained (paths, devices): what rebuilds the model."""
    import dataclasses

    local = {"out", "data_dir", "resume", "devices", "accelerator", "num_workers", "progress"}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in local}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
