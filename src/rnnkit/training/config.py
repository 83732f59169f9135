"""Task configs as dataclasses: the training options every task shares, the recurrent-layer options,
and the command-line flags generated from them (one flag per field, help from the field's metadata).

A task's config class inherits from both and overrides defaults; its defaults are the recipe.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A config value is invalid: a usage error (exit code 2 on the command line)."""


def opt(default, help: str, choices: tuple | None = None, cli: bool = True, minimum: float | None = None,
        group: str | None = None):
    """A config field with its command-line help, and the choices or minimum `validate` checks. `group`
    is its section of `--help` (one of GROUPS; a task's own options go in the task's section)."""
    return field(default=default, metadata={"help": help, "choices": choices, "cli": cli, "minimum": minimum,
                                            "group": group})


# The sections of `rnnkit train TASK --help`, in order, after the task's own options.
GROUPS = {"model": "recurrent layer", "variants": "variants of the recurrent layer",
          "optimiser": "optimiser, regularisation and clipping", "run": "run length, early stopping and checkpoints",
          "data": "data, output and hardware"}


@dataclass
class RNNConfig:
    """The recurrent layer of a task model: cell, size, depth and the variants of rnnkit's layers."""

    cell: str = opt("lstm", "recurrent cell", ("rnn", "lstm", "gru"), group="model")
    hidden: int = opt(128, "hidden units per direction", minimum=1, group="model")
    layers: int = opt(1, "stacked recurrent layers", minimum=1, group="model")
    bidirectional: bool = opt(False, "read the sequence in both directions", group="model")
    dropout: float = opt(0.0, "dropout between layers and before the output layer (vertical connections only)",
                         group="model")
    activation: str = opt("tanh", "activation of the candidate and output (RNN: its nonlinearity)",
                          ("tanh", "softsign", "relu"), group="variants")
    peephole: bool = opt(False, "LSTM: diagonal peephole connections", group="variants")
    coupled: bool = opt(False, "LSTM: coupled input-forget gate (CIFG)", group="variants")
    layer_norm: bool = opt(False, "LSTM: layer-normalised gates and cell", group="variants")
    forget_bias: float = opt(0.0, "LSTM: initial forget-gate bias (0 keeps torch.nn's init)", group="variants")
    proj_size: int = opt(0, "LSTM: project h to this many units (0: no projection)", group="variants")
    reset_after: bool = opt(True, "GRU: reset gate after the recurrent product (torch.nn/cuDNN); "
                                  "--no-reset-after for the original form", group="variants")
    recurrent_dropout: float = opt(0.0, "variational dropout on h entering the recurrence", group="variants")


@dataclass
class TrainConfig:
    """Options of the generic training stack (optimiser, clipping, early stopping, run control)."""

    out: str = opt("", "run directory (default: runs/TASK-DATE-TIME)", group="data")
    data_dir: str = opt("", "data directory (default: $RNNKIT_DATA, else the user cache directory)", group="data")
    seed: int = opt(0, "random seed (a CPU run with the same seed is reproducible)", group="data")
    optimizer: str = opt("adam", "optimiser", ("adam", "sgd", "rmsprop", "adagrad"), group="optimiser")
    lr: float = opt(1e-3, "learning rate", minimum=0, group="optimiser")
    momentum: float = opt(0.0, "momentum (sgd, rmsprop)", minimum=0, group="optimiser")
    nesterov: bool = opt(False, "Nesterov momentum (sgd; needs --momentum > 0)", group="optimiser")
    weight_decay: float = opt(0.0, "L2 penalty (the optimiser's weight decay)", minimum=0, group="optimiser")
    l1: float = opt(0.0, "L1 penalty on the weight matrices, added to the loss", minimum=0, group="optimiser")
    lr_schedule: str = opt("none", "learning-rate schedule: cosine decay over --max-epochs, or halve "
                                   "on a validation plateau", ("none", "cosine", "plateau"), group="optimiser")
    clip_norm: float = opt(0.0, "clip the global gradient norm to this threshold tau (0: off)", minimum=0,
                           group="optimiser")
    on_nonfinite: str = opt("skip", "a training step whose gradient (or loss) is NaN or infinite: skip it, "
                                    "counted in metrics.json, or stop the run with an error", ("skip", "stop"),
                            group="optimiser")
    batch_size: int = opt(128, "examples per batch (per process)", minimum=1, group="run")
    max_epochs: int = opt(20, "maximum number of epochs", minimum=1, group="run")
    max_time: float = opt(0.0, "stop after this many minutes (0: no limit)", minimum=0, group="run")
    patience: int = opt(5, "early stopping: epochs without validation improvement (0: off)", minimum=0, group="run")
    val_fraction: float = opt(0.1, "fraction of the training data held out for validation", group="data")
    limit_train_batches: float = opt(1.0, "batches per training epoch: a fraction (<= 1) or a count", group="run")
    limit_eval_batches: float = opt(1.0, "batches per validation/test pass: a fraction (<= 1) or a count", group="run")
    accelerator: str = opt("auto", "hardware to run on", ("auto", "cpu", "gpu"), group="data")
    devices: int = opt(1, "processes (data-parallel DDP when > 1; gloo on CPU)", minimum=1, group="data")
    num_workers: int = opt(0, "data-loading worker processes", minimum=0, group="data")
    progress: bool = opt(True, "show progress: a bar on a terminal, a line per epoch in a log file", group="data")
    resume: bool = opt(False, "continue the run in --out from its last checkpoint", group="run")
    checkpoint_every: int = opt(0, "also write checkpoints/last.ckpt every N training steps, so that a killed run "
                                   "resumes from mid-epoch (0: at the end of each epoch only)", minimum=0, group="run")

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid option and the value received."""
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"--{flag(f.name)} must be one of {', '.join(choices)}; got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{flag(f.name)} must be a finite number; got {value!r}")
            minimum = f.metadata.get("minimum")
            if minimum is not None and value < minimum:
                raise ConfigError(f"--{flag(f.name)} must be >= {minimum}; got {value!r}")
        if self.lr == 0:
            raise ConfigError("--lr must be > 0; got 0")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ConfigError(f"--nesterov needs --optimizer sgd and --momentum > 0; got --optimizer "
                              f"{self.optimizer} --momentum {self.momentum}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must lie in (0, 1); got {self.val_fraction!r}")
        for name in ("limit_train_batches", "limit_eval_batches"):
            value = getattr(self, name)
            if value <= 0 or (value > 1 and value != int(value)):
                raise ConfigError(f"--{flag(name)} must be a fraction in (0, 1] or a whole number of "
                                  f"batches; got {value!r}")
        if isinstance(self, RNNConfig):
            _validate_rnn(self)


def _validate_rnn(cfg: RNNConfig) -> None:
    for name in ("dropout", "recurrent_dropout"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ConfigError(f"--{flag(name)} must lie in [0, 1); got {getattr(cfg, name)!r}")
    from ..models.recurrent import variant_values  # torch: loaded only when a config is checked
    from ..nn.variants import OPTIONS, misapplied

    values = variant_values(cfg)
    values.pop("nonlinearity"), values.pop("activation")  # one --activation for every cell: checked below
    for name in misapplied(cfg.cell, values):
        given = f"--no-{flag(name)}" if values[name] is False else f"--{flag(name)}"
        raise ConfigError(f"{given} applies to --cell {' or '.join(OPTIONS[name].layers)} only; got --cell {cfg.cell}")
    if cfg.activation == "relu" and cfg.cell != "rnn":
        raise ConfigError(f"--activation relu applies to --cell rnn only; got --cell {cfg.cell}")
    if not 0 <= cfg.proj_size < cfg.hidden:
        raise ConfigError(f"--proj-size must lie in [0, --hidden={cfg.hidden}); got {cfg.proj_size}")


# A task that redefines a shared option (another default or help text) keeps it in the shared section.
BASE_GROUPS = {f.name: f.metadata["group"] for cls in (RNNConfig, TrainConfig) for f in dataclasses.fields(cls)}


def flag(name: str) -> str:
    return name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, config_class: type, task_title: str = "task options") -> None:
    """One flag per config field, in sections: the task's own options (`task_title`), then GROUPS.
    Defaults are SUPPRESSed: the namespace holds only the flags given, so `from_arguments` can tell a flag
    given from a default (needed to resume a run)."""
    hints = typing.get_type_hints(config_class)
    by_group = {None: [], **{g: [] for g in GROUPS}}
    for f in dataclasses.fields(config_class):
        if f.metadata.get("cli", True):
            by_group[f.metadata.get("group") or BASE_GROUPS.get(f.name)].append(f)
    for group, fields in by_group.items():
        if not fields:
            continue
        section = parser.add_argument_group(task_title if group is None else GROUPS[group])
        for f in fields:
            _add_flag(section, f, hints[f.name])


def _add_flag(section, f: dataclasses.Field, kind: type) -> None:
    help_text = f.metadata.get("help", "")
    if f.default not in ("", None):  # an empty default is said by the help text, if at all
        help_text += f" (default: {f.default})"
    help_text = help_text.replace("%", "%%")  # argparse formats help
    names = [f"--{flag(f.name)}"]
    if kind is bool:
        section.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                             default=argparse.SUPPRESS, help=help_text)
    else:
        choices = f.metadata.get("choices")
        metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper()
        section.add_argument(*names, dest=f.name, type=kind, default=argparse.SUPPRESS, choices=choices,
                             metavar=metavar, help=help_text)


def from_arguments(config_class: type, args: argparse.Namespace):
    """The config with the flags given on the command line; the others keep the class defaults."""
    return config_class(**given_options(config_class, args))


def given_options(config_class: type, args: argparse.Namespace) -> dict:
    """The options given as flags (the namespace holds no defaults, see `add_arguments`)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {k: v for k, v in vars(args).items() if k in names}


def from_dict(config_class: type, values: dict):
    """Rebuild a config saved in a checkpoint; options unknown to this version are an error."""
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"the saved config has options this rnnkit does not know: {', '.join(unknown)}")
    return config_class(**values)


# -- config files (`rnnkit train TASK --config FILE`, `--print-config`) ------------------------------

def read_config_file(path, config_class: type) -> dict:
    """The options of a YAML file whose keys are the config's field names (as `--print-config` writes them),
    each checked against the field's type; the values are not validated here (`validate` does that)."""
    import yaml  # the train extra's: this module otherwise needs the standard library only

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"--config {path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold a mapping of option names to values (as --print-config "
                          f"writes); got a {type(values).__name__}")
    hints = typing.get_type_hints(config_class)
    names = [f.name for f in dataclasses.fields(config_class)]
    options = {}
    for key, value in values.items():
        if key not in names:
            near = difflib.get_close_matches(str(key).replace("-", "_"), names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else " (`--print-config` lists the options)"
            raise ConfigError(f"--config {path}: unknown option {key!r}{hint}")
        options[key] = _typed(key, value, hints[key], path)
    return options


def _typed(key: str, value, kind: type, path):
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"--config {path}: {key} must be {'a' if kind is not int else 'an'} {kind.__name__}; "
                      f"got {value!r}")


def to_yaml(cfg, header: str = "") -> str:
    """The config as YAML that `read_config_file` reads back to the same config, after a comment `header`."""
    import yaml

    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True, width=1000)
