"""`rnnkit eval --test-file`: a checkpoint scored on a test set read from any file of its task's format, by the
task's own reader and metrics and the Trainer's test loop, as at the end of training; vocabularies, tokenizers
and scalers come from the checkpoint (a word it never saw reads as <unk>, as in training)."""
from __future__ import annotations

import dataclasses

from ..training.config import ConfigError

# The options that go with --test-file (argparse dest -> flag); a task reads those in its test_file_options.
OPTIONS = {"test_target": "--test-target", "test_labels": "--test-labels", "header": "--header",
           "test_fraction": "--test-fraction"}


def check_options(task, args) -> None:
    """ConfigError naming an option given without --test-file, or to a task whose reader does not take it."""
    from . import TASKS

    given = [dest for dest in OPTIONS if getattr(args, dest, None) not in (None, False)]
    if args.test_file is None:
        if given:
            raise ConfigError(f"{OPTIONS[given[0]]} goes with --test-file, which was not given")
        return
    if not task.test_file_help:
        readers = ", ".join(t.name for t in TASKS.values() if t.test_file_help)
        raise ConfigError(f"--test-file {args.test_file!r}: {task.name} checkpoints have no test-file reader "
                          f"(--test-file takes {readers} checkpoints)")
    for dest in given:
        if dest not in task.test_file_options:
            takers = ", ".join(t.name for t in TASKS.values() if dest in t.test_file_options)
            raise ConfigError(f"{OPTIONS[dest]} applies to {takers} checkpoints; this is a {task.name} checkpoint")


def evaluate_file(loaded, args, progress: bool = True) -> tuple[dict, list]:
    """(metrics, raw items) of a loaded checkpoint on `args.test_file`; the metrics are named and rounded as
    those of `training.run.evaluate` (test_loss, test_acc, ...)."""
    from ..training.data import Splits
    from ..training.datamodule import TaskData
    from ..training.module import TaskModule
    from ..training.run import build_trainer, plain_metrics

    check_options(loaded.task, args)
    test = loaded.task.read_test_file(loaded, args)
    if len(test.data) == 0:
        raise ConfigError(f"--test-file {args.test_file}: no example to score")
    cfg = dataclasses.replace(loaded.cfg, devices=1, progress=progress, limit_eval_batches=1.0,
                              batch_size=args.batch_size or loaded.cfg.batch_size)
    module = TaskModule(loaded.task, cfg, loaded.model, test.extra)
    trainer = build_trainer(cfg, None, loaded.task, for_training=False)
    data = TaskData(Splits(test.data, test.data, test.data, extra=loaded.extra), cfg.batch_size)
    return plain_metrics(trainer.test(module, datamodule=data, verbose=False)[0]), test.items
