"""What a task is: a config class (its defaults are the recipe), its data, its model and its metrics."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import torch

from ..training.config import from_dict


@dataclasses.dataclass(frozen=True)
class Command:
    """A command a task adds to `rnnkit` that runs one of its checkpoints (e.g. `rnnkit tag CKPT ...`).

    The CLI adds the `CKPT` positional argument, loads the checkpoint, checks that it is one of this
    task's, and calls `run(loaded, args)`, which returns the exit code. `add_arguments(parser)` adds
    the command's own arguments."""

    name: str
    help: str
    add_arguments: Callable
    run: Callable


def recipe_default(config_class: type, name: str, default):
    """Override an inherited config field's default, keeping its help text and choices."""
    inherited = {f.name: f for f in dataclasses.fields(config_class)}[name]
    return dataclasses.field(default=default, metadata=inherited.metadata)


class Task:
    """One task of rnnkit. Subclasses set the class attributes and implement splits/build_model/metrics."""

    name: str = ""
    help: str = ""
    config_class: type = object
    monitor: str = "val_loss"  # the validation metric for early stopping and the best checkpoint
    mode: str = "min"
    carries_state: bool = False  # truncated BPTT: the state of one batch starts the next (see TaskModule)
    commands: tuple[Command, ...] = ()  # the task's own commands on its checkpoints (see Command)
    test_file_help: str = ""  # what `rnnkit eval --test-file` reads for this task ("": no --test-file)
    test_file_options: tuple[str, ...] = ()  # the other eval options its reader takes (argparse dests)

    def splits(self, cfg):
        """The train/val/test data (training.data.Splits) for `cfg`."""
        raise NotImplementedError

    def build_model(self, cfg, extra: dict):
        """The model, `forward(inputs, targets=None) -> (output, loss)`; `extra` comes from splits()."""
        raise NotImplementedError

    def metrics(self, cfg, extra: dict):
        """A torchmetrics MetricCollection, updated by `update_metrics` on each validation/test batch.
        Import torchmetrics here, not at the top of the task's module: a saved model is rebuilt through
        its task (`rnnkit.pretrained`) where only torch is installed."""
        raise NotImplementedError

    def update_metrics(self, metrics, output, targets) -> None:
        metrics.update(output, targets)

    def pretrain(self, model, cfg, splits) -> None:
        """Called once before a new run trains (not when it resumes), e.g. to pretrain `model` as a language
        model on `splits.unlabelled`."""

    def on_train_start(self, module) -> None:
        """Called once before training, in the process that writes the run's outputs."""

    def on_validation_end(self, module, epoch: int) -> None:
        """Called after each validation pass during training (e.g. to print a sample)."""

    def report(self, model, cfg, splits, run_dir: Path) -> list[Path]:
        """Task-specific pictures written at the end of training (paths of the files written)."""
        return []

    def predict(self, loaded, items: list[str], args) -> list[dict]:
        raise NotImplementedError(f"task {self.name!r} has no predict command")

    def sample(self, loaded, args) -> None:
        raise NotImplementedError(f"task {self.name!r} has no sample command")

    def read_test_file(self, loaded, args) -> "TestFile":
        """`rnnkit eval --test-file`: the examples of `args.test_file` (and the files of the options in
        `test_file_options`), encoded with the checkpoint's vocabularies as training encoded its test set."""
        raise NotImplementedError(f"task {self.name!r} has no --test-file")

    def decoded_metrics(self, loaded, cfg, items: list | None = None) -> dict:
        """Metrics of what the model generates (e.g. BLEU of translations), which the batched test loop does not
        compute, on `items` (TestFile.items) or else the task's own test set; `rnnkit eval` adds them."""
        return {}

    def onnx_graphs(self, loaded) -> dict:
        """The ONNX graphs of the task's model, {name: rnnkit.export.Graph}: `rnnkit export --format onnx`
        writes one file per graph (a single graph to the path given)."""
        raise NotImplementedError(f"task {self.name!r} has no ONNX export")


@dataclasses.dataclass
class TestFile:
    """A test set read from a user's files (`Task.read_test_file`): the examples (a Dataset whose batches the
    task's model reads), the extra data the metrics are built from (the checkpoint's) and the raw items for
    `Task.decoded_metrics`."""

    data: object
    extra: dict
    items: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Loaded:
    """A trained model with what runs it: its task, config (`cfg`), `extra` data (e.g. a vocabulary) and
    the saved `record` (task, config, extra, rnnkit version). The model is in eval mode."""

    task: Task
    cfg: object
    model: torch.nn.Module
    extra: dict
    record: dict


def rebuild(task: Task, record: dict, weights: dict, source) -> Loaded:
    """The task's model rebuilt from a saved record ({"config", "extra", "version"}) and its weights, once
    `check_weights` has found that the weights are those of the config's model (nothing allocated before)."""
    extra = record.get("extra", {})
    try:
        cfg = from_dict(task.config_class, record.get("config", {}))
        check_weights(task, cfg, extra, {k: (tuple(v.shape), v.dtype) for k, v in weights.items()}, source)
        model = task.build_model(cfg, extra)
        model.load_state_dict(weights)
    except WeightsMismatch:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{source}: its {task.name!r} model cannot be rebuilt from the saved config and weights "
                         f"(written by rnnkit {record.get('version')}): {type(e).__name__}: {e}") from None
    return Loaded(task, cfg, model.eval(), extra, record)


class WeightsMismatch(ValueError):
    """Saved weights that are not those of the model the saved config describes."""


def expected_weights(task: Task, cfg, extra: dict) -> dict:
    """{name: (shape, dtype)} of the state dict of the model `cfg` and `extra` describe, built on the meta
    device: shapes only, no memory, however large the config says the model is."""
    with torch.device("meta"):
        model = task.build_model(cfg, extra)
    return {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}


def check_weights(task: Task, cfg, extra: dict, saved: dict, source) -> None:
    """WeightsMismatch naming the first tensor that the config's model lacks, that the saved weights lack, or
    whose shape or dtype differ; `saved` is {name: (shape, dtype)}, e.g. from a safetensors header."""
    try:
        expected = expected_weights(task, cfg, extra)
    except RuntimeError as e:  # sizes whose element count overflows 64 bits: not even a meta tensor has them
        raise WeightsMismatch(f"{source}: the saved config ({_sizes(cfg)}) describes tensors too large to exist, "
                              f"not the weights saved with it ({e})") from None
    for verb, names, what in (("hold", set(saved) - set(expected), "does not have"),
                              ("lack", set(expected) - set(saved), "has")):
        if names:
            shown = ", ".join(sorted(names)[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise WeightsMismatch(f"{source}: the weights {verb} {shown}, which the model of the saved config "
                                  f"({_sizes(cfg)}) {what}")
    for name, (shape, dtype) in expected.items():
        got_shape, got_dtype = saved[name]
        if tuple(got_shape) != shape or got_dtype != dtype:
            raise WeightsMismatch(f"{source}: {name} is {dtype} {list(shape)} by the saved config "
                                  f"({_sizes(cfg)}) but {got_dtype} {list(got_shape)} in the weights")


def _sizes(cfg) -> str:
    """The config's size options, for messages."""
    values = dataclasses.asdict(cfg)
    return ", ".join(f"{k} {values[k]}" for k in ("hidden", "layers", "embedding", "proj_size") if values.get(k))


def load_checkpoint(path, tasks: dict) -> Loaded:
    """Read an rnnkit checkpoint of one of `tasks` ({name: Task}) with torch's weights-only unpickler: no code in
    the file ever runs."""
    from ..training.module import CHECKPOINT_FORMAT, CHECKPOINT_KEY
    from ..training.run import read_checkpoint

    path = Path(path)
    checkpoint = read_checkpoint(path)
    record = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(record, dict) or "task" not in record or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not an rnnkit checkpoint (no '{CHECKPOINT_KEY}' record with task and config)")
    if record.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {record.get('format')!r}; this rnnkit reads format "
                         f"{CHECKPOINT_FORMAT} (written by rnnkit {record.get('version')})")
    if record["task"] not in tasks:
        raise ValueError(f"{path} is a checkpoint of task {record['task']!r}, unknown to this rnnkit "
                         f"(tasks: {', '.join(tasks)})")
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    return rebuild(tasks[record["task"]], record, weights, path)
