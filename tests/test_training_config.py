"""Task configs: flags generated from the dataclass, validation naming the option and value, saved configs."""
import argparse
import dataclasses

import pytest

from rnnkit.tasks.mnist import MNISTConfig
from rnnkit.training.config import ConfigError, add_arguments, from_arguments, from_dict, given_options


def parse(*argv):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser, MNISTConfig)
    return parser.parse_args(list(argv))


def test_every_field_has_a_flag_and_defaults_are_the_recipe():
    parser = argparse.ArgumentParser()
    add_arguments(parser, MNISTConfig)
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    assert flags == {f.name for f in dataclasses.fields(MNISTConfig)}
    cfg = from_arguments(MNISTConfig, parse())
    assert cfg == MNISTConfig()
    assert (cfg.cell, cfg.hidden, cfg.optimizer, cfg.lr, cfg.lr_schedule) == ("lstm", 128, "adam", 1e-3, "cosine")


def test_flags_set_fields_with_their_types():
    args = parse("--cell", "gru", "--hidden", "64", "--bidirectional", "--no-reset-after", "--lr", "0.01",
                 "--clip-norm", "0.5", "--limit-train-batches", "20", "--no-progress")
    assert given_options(MNISTConfig, args) == {"cell": "gru", "hidden": 64, "bidirectional": True,
                                                "reset_after": False, "lr": 0.01, "clip_norm": 0.5,
                                                "limit_train_batches": 20.0, "progress": False}
    cfg = from_arguments(MNISTConfig, args)
    cfg.validate()
    assert cfg.hidden == 64 and cfg.bidirectional and not cfg.reset_after


def test_bad_choice_and_type_are_rejected_by_the_parser():
    with pytest.raises(argparse.ArgumentError, match="invalid choice: 'transformer'"):
        parse("--cell", "transformer")
    with pytest.raises(argparse.ArgumentError, match="invalid int value: 'many'"):
        parse("--hidden", "many")


@pytest.mark.parametrize("changes, message", [
    ({"hidden": 0}, "--hidden must be >= 1; got 0"),
    ({"batch_size": -3}, "--batch-size must be >= 1; got -3"),
    ({"lr": 0.0}, "--lr must be > 0"),
    ({"lr": -1.0}, "--lr must be >= 0; got -1.0"),
    ({"clip_norm": float("nan")}, "--clip-norm must be a finite number; got nan"),
    ({"dropout": 1.0}, r"--dropout must lie in \[0, 1\); got 1.0"),
    ({"val_fraction": 0.0}, r"--val-fraction must lie in \(0, 1\); got 0.0"),
    ({"limit_train_batches": 2.5}, "--limit-train-batches must be a fraction .* got 2.5"),
    ({"nesterov": True}, "--nesterov needs --optimizer sgd and --momentum > 0"),
    ({"cell": "gru", "peephole": True}, "--peephole applies to --cell lstm only; got --cell gru"),
    ({"cell": "rnn", "reset_after": False}, "--no-reset-after applies to --cell gru only"),
    ({"activation": "relu"}, "--activation relu applies to --cell rnn only; got --cell lstm"),
    ({"proj_size": 128}, r"--proj-size must lie in \[0, --hidden=128\); got 128"),
    ({"optimizer": "lbfgs"}, "--optimizer must be one of adam, sgd, rmsprop, adagrad; got 'lbfgs'"),
])
def test_validation_names_the_option_and_the_value(changes, message):
    with pytest.raises(ConfigError, match=message):
        MNISTConfig(**changes).validate()


def test_sgd_nesterov_is_valid():
    MNISTConfig(optimizer="sgd", momentum=0.9, nesterov=True).validate()


def test_saved_config_round_trips_and_unknown_options_are_refused():
    cfg = MNISTConfig(hidden=32, bidirectional=True)
    assert from_dict(MNISTConfig, dataclasses.asdict(cfg)) == cfg
    with pytest.raises(ConfigError, match="does not know: warp_drive"):
        from_dict(MNISTConfig, {**dataclasses.asdict(cfg), "warp_drive": 1})
