"""Task configs as dataclasses: the training options every task shares, the recurrent-layer options,
and the command-line flags generated from them (one flag per field, help from the field's metadata).

A task's config class inherits from both and overrides defaults; its defaults are the recipe.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A config value is invalid: a usage error (exit code 2 on the command line)."""


def opt(default, help: str, choices: tuple | None = None, cli: bool = True, minimum: float | None = None):
    """A config field with its command-line help, and the choices or minimum `validate` checks."""
    return field(default=default, metadata={"help": help, "choices": choices, "cli": cli, "minimum": minimum})


@dataclass
class RNNConfig:
    """The recurrent layer of a task model: cell, size, depth and the variants of rnnkit's layers."""

    cell: str = opt("lstm", "recurrent cell", ("rnn", "lstm", "gru"))
    hidden: int = opt(128, "hidden units per direction", minimum=1)
    layers: int = opt(1, "stacked recurrent layers", minimum=1)
    bidirectional: bool = opt(False, "read the sequence in both directions")
    dropout: float = opt(0.0, "dropout between layers and before the output layer (vertical connections only)")
    activation: str = opt("tanh", "activation of the candidate and output (RNN: its nonlinearity)",
                          ("tanh", "softsign", "relu"))
    peephole: bool = opt(False, "LSTM: diagonal peephole connections")
    coupled: bool = opt(False, "LSTM: coupled input-forget gate (CIFG)")
    layer_norm: bool = opt(False, "LSTM: layer-normalised gates and cell")
    forget_bias: float = opt(0.0, "LSTM: initial forget-gate bias (0 keeps torch.nn's init)")
    proj_size: int = opt(0, "LSTM: project h to this many units (0: no projection)")
    reset_after: bool = opt(True, "GRU: reset gate after the recurrent product (torch.nn/cuDNN); "
                                  "--no-reset-after for the original form")
    recurrent_dropout: float = opt(0.0, "variational dropout on h entering the recurrence")


@dataclass
class TrainConfig:
    """Options of the generic training stack (optimiser, clipping, early stopping, run control)."""

    out: str = opt("", "run directory (default: runs/TASK-DATE-TIME)")
    data_dir: str = opt("", "data directory (default: $RNNKIT_DATA, else the user cache directory)")
    seed: int = opt(0, "random seed (a CPU run with the same seed is reproducible)")
    optimizer: str = opt("adam", "optimiser", ("adam", "sgd", "rmsprop", "adagrad"))
    lr: float = opt(1e-3, "learning rate", minimum=0)
    momentum: float = opt(0.0, "momentum (sgd, rmsprop)", minimum=0)
    nesterov: bool = opt(False, "Nesterov momentum (sgd; needs --momentum > 0)")
    weight_decay: float = opt(0.0, "L2 penalty (the optimiser's weight decay)", minimum=0)
    l1: float = opt(0.0, "L1 penalty on the weight matrices, added to the loss", minimum=0)
    lr_schedule: str = opt("none", "learning-rate schedule: cosine decay over --max-epochs, or halve "
                                   "on a validation plateau", ("none", "cosine", "plateau"))
    clip_norm: float = opt(0.0, "clip the global gradient norm to this threshold tau (0: off)", minimum=0)
    on_nonfinite: str = opt("skip", "a training step whose gradient (or loss) is NaN or infinite: skip it, "
                                    "counted in metrics.json, or stop the run with an error", ("skip", "stop"))
    batch_size: int = opt(128, "examples per batch (per process)", minimum=1)
    max_epochs: int = opt(20, "maximum number of epochs", minimum=1)
    max_time: float = opt(0.0, "stop after this many minutes (0: no limit)", minimum=0)
    patience: int = opt(5, "early stopping: epochs without validation improvement (0: off)", minimum=0)
    val_fraction: float = opt(0.1, "fraction of the training data held out for validation")
    limit_train_batches: float = opt(1.0, "batches per training epoch: a fraction (<= 1) or a count")
    limit_eval_batches: float = opt(1.0, "batches per validation/test pass: a fraction (<= 1) or a count")
    accelerator: str = opt("auto", "hardware to run on", ("auto", "cpu", "gpu"))
    devices: int = opt(1, "processes (data-parallel DDP when > 1; gloo on CPU)", minimum=1)
    num_workers: int = opt(0, "data-loading worker processes", minimum=0)
    progress: bool = opt(True, "show a progress bar")
    resume: bool = opt(False, "continue the run in --out from its last checkpoint")
    checkpoint_every: int = opt(0, "also write checkpoints/last.ckpt every N training steps, so that a killed run "
                                   "resumes from mid-epoch (0: at the end of each epoch only)", minimum=0)

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
    lstm_only = [name for name in ("peephole", "coupled", "layer_norm") if getattr(cfg, name)]
    lstm_only += ["forget_bias"] * (cfg.forget_bias != 0) + ["proj_size"] * (cfg.proj_size != 0)
    if cfg.cell != "lstm" and lstm_only:
        raise ConfigError(f"--{flag(lstm_only[0])} applies to --cell lstm only; got --cell {cfg.cell}")
    if cfg.cell != "gru" and not cfg.reset_after:
        raise ConfigError(f"--no-reset-after applies to --cell gru only; got --cell {cfg.cell}")
    if cfg.activation == "relu" and cfg.cell != "rnn":
        raise ConfigError(f"--activation relu applies to --cell rnn only; got --cell {cfg.cell}")
    if not 0 <= cfg.proj_size < cfg.hidden:
        raise ConfigError(f"--proj-size must lie in [0, --hidden={cfg.hidden}); got {cfg.proj_size}")


def flag(name: str) -> str:
    return name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per config field. Defaults are SUPPRESSed: the namespace holds only the flags given,
    so `from_arguments` can tell a flag given from a default (needed to resume a run)."""
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        if not f.metadata.get("cli", True):
            continue
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})".replace("%", "%%")  # argparse formats help
        kind = hints[f.name]
        names = [f"--{flag(f.name)}"]
        if kind is bool:
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            choices = f.metadata.get("choices")
            metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper()
            parser.add_argument(*names, dest=f.name, type=kind, default=argparse.SUPPRESS, choices=choices,
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
