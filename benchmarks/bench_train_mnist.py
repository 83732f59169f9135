"""Throughput of `rnnkit train mnist` against a plain PyTorch loop with torch.nn.LSTM doing the same epoch.

Both train the same model size on the same training split with the same batch size, optimiser and
clipping, then run one validation pass; the plain loop has none of the stack (no logging, progress
bar, checkpoints, metrics). Timed: a steady-state epoch of each, i.e. the second epoch of an
rnnkit run (training, validation, logging and checkpointing included; the run's one-off start-up,
which a longer run pays once, is left out) against an epoch of the plain loop after one warm-up
epoch. Reported: seconds per epoch and their ratio (target <= 1.15).

    python benchmarks/bench_train_mnist.py --data-dir ../shared/data [--repeats 2] [--hidden 128] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import lightning as L
import torch
import torch.nn.functional as F

from rnnkit.cli.bench import machine
from rnnkit.tasks import get_task
from rnnkit.training import run
from rnnkit.training.data import TensorBatches


def plain_epoch(cfg, train: TensorBatches, val: TensorBatches) -> float:
    """One epoch of a hand-written loop: torch.nn.LSTM + Linear, Adam, clipping, then validation."""
    torch.manual_seed(cfg.seed)
    lstm = torch.nn.LSTM(28, cfg.hidden, cfg.layers, batch_first=True, bidirectional=cfg.bidirectional)
    head = torch.nn.Linear((2 if cfg.bidirectional else 1) * cfg.hidden, 10)
    params = list(lstm.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    start = time.perf_counter()
    for index in torch.randperm(len(train)).split(cfg.batch_size):
        x, y = train.inputs[index], train.targets[index]
        loss = F.cross_entropy(head(lstm(x)[0][:, -1]), y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        optimizer.step()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(val), cfg.batch_size):
            correct += (head(lstm(val.inputs[i:i + cfg.batch_size])[0][:, -1]).argmax(-1)
                        == val.targets[i:i + cfg.batch_size]).sum().item()
    return time.perf_counter() - start


class EpochTimer(L.Callback):
    """Wall time from the start of each training epoch to the end of its validation and checkpoints."""

    def __init__(self):
        self.seconds, self._start = [], 0.0

    def on_train_epoch_start(self, trainer, module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.seconds.append(time.perf_counter() - self._start)


def rnnkit_epoch(task, cfg) -> float:
    """The second epoch of `rnnkit train mnist` with `cfg` (max_epochs=2)."""
    timer, build = EpochTimer(), run.build_trainer

    def build_with_timer(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.callbacks.append(timer)  # runs after the checkpoint callbacks
        return trainer

    run.build_trainer = build_with_timer
    try:
        run.train(task, cfg)
    finally:
        run.build_trainer = build
    return timer.seconds[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("RNNKIT_DATA", ""))
    parser.add_argument("--repeats", type=int, default=2, help="measurements of each; the best is reported")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--json", help="also write the result as JSON")
    args = parser.parse_args(argv)

    task = get_task("mnist")
    plain_seconds, stack_seconds = [], []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            cfg = task.config_class(out=out, data_dir=args.data_dir, hidden=args.hidden, max_epochs=2,
                                    bidirectional=args.bidirectional, progress=False, patience=0, seed=repeat)
            splits = task.splits(cfg)
            plain_epoch(cfg, splits.train, splits.val)  # warm-up
            plain_seconds.append(plain_epoch(cfg, splits.train, splits.val))
            stack_seconds.append(rnnkit_epoch(task, cfg))
            os.environ.pop(run.RUN_DIR_ENV, None)
    result = {
        **machine(), "model": f"{'Bi' if args.bidirectional else ''}LSTM-{args.hidden}",
        "plain_s_per_epoch": min(plain_seconds), "rnnkit_s_per_epoch": min(stack_seconds),
        "ratio": min(stack_seconds) / min(plain_seconds),
    }
    print(f"{result['model']}, one steady-state epoch (train + validation), {result['cpu']}, {result['cores']} cores, "
          f"torch {result['torch']}, {result['threads']} threads:")
    print(f"  plain torch.nn loop   {result['plain_s_per_epoch']:7.1f} s")
    print(f"  rnnkit train mnist    {result['rnnkit_s_per_epoch']:7.1f} s   ratio {result['ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
