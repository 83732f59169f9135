"""The one LightningModule that trains every task model (`forward(inputs, targets=None) -> (output, loss)`):
optimisers from the notes, L1/L2, gradient clipping by global norm with ‖g‖ and k = ‖g‖/τ logged."""
from __future__ import annotations

import dataclasses
import math

import lightning as L
import torch
from torch import nn

from .. import __version__

CHECKPOINT_KEY = "rnnkit"  # where a checkpoint keeps the task, its config and its extra data
CHECKPOINT_FORMAT = 1
RNG_KEY = "rnnkit_rng_state"
NORMS_PER_WRITE = 50


class TaskModule(L.LightningModule):
    """Wraps a task model; `task` supplies metrics (a torchmetrics collection) and the monitor name."""

    def __init__(self, task, cfg, model: nn.Module, extra: dict | None = None):
        super().__init__()
        self.task, self.cfg, self.model, self.extra = task, cfg, model, extra or {}
        metrics = task.metrics(cfg, self.extra)
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        self._carried = {}  # stage -> recurrent state carried to the next window (truncated BPTT)
        self._norms = []  # (step, gradient norm before clipping) not yet written to the loggers

    def forward(self, inputs, targets=None):
        return self.model(inputs, targets)

    def _run(self, batch, stage: str):
        """The model on one batch. For tasks that carry state (task.carries_state), the model gets
        (inputs, state from the previous window) and returns (output, state); the state is kept
        detached, so gradients stop at the window edge: truncated BPTT."""
        inputs, targets = batch
        if not self.task.carries_state:
            return self.model(inputs, targets)
        (output, state), loss = self.model((inputs, self._carried.get(stage)), targets)
        self._carried[stage] = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        return output, loss

    def on_train_start(self):
        if self.trainer.is_global_zero:
            self.task.on_train_start(self)

    def on_validation_epoch_end(self):
        trainer = self.trainer
        if trainer.is_global_zero and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.task.on_validation_end(self, self.current_epoch)

    def on_train_epoch_start(self):
        self._carried.pop("train", None)  # each epoch reads the streams from their start, h_0 = 0

    def on_validation_epoch_start(self):
        self._carried.pop("val", None)

    def on_test_epoch_start(self):
        self._carried.pop("test", None)

    def training_step(self, batch, batch_idx):
        _, targets = batch
        _, loss = self._run(batch, "train")
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(targets))
        if self.cfg.l1 > 0:
            loss = loss + self.cfg.l1 * sum(p.abs().sum() for n, p in self.model.named_parameters() if "weight" in n)
        return loss

    def _evaluate(self, batch, metrics, stage: str):
        _, targets = batch
        output, loss = self._run(batch, stage)
        self.log(f"{stage}_loss", loss, on_epoch=True, prog_bar=stage == "val", sync_dist=True,
                 batch_size=len(targets))
        self.task.update_metrics(metrics, output, targets)
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_metrics, "test")

    def configure_optimizers(self):
        cfg, params = self.cfg, self.model.parameters()
        common = dict(lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(params, **common)
        elif cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
        elif cfg.optimizer == "rmsprop":
            optimizer = torch.optim.RMSprop(params, momentum=cfg.momentum, **common)
        elif cfg.optimizer == "adagrad":
            optimizer = torch.optim.Adagrad(params, **common)
        else:
            raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
        if cfg.lr_schedule == "cosine":
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.max_epochs)
            return {"optimizer": optimizer, "lr_scheduler": schedule}
        if cfg.lr_schedule == "plateau":
            schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=self.task.mode, factor=0.5,
                                                                  patience=max(1, cfg.patience // 2))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "monitor": self.task.monitor}}
        return optimizer

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by global norm: with k = ‖g‖/τ, gradients are scaled by 1/k when k > 1 (the notes' rule).
        The norm before clipping is recorded at every step (and k when clipping is on)."""
        tau = self.cfg.clip_norm
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tau if tau > 0 else math.inf)
        self._norms.append((self.global_step, norm.detach()))
        if len(self._norms) >= NORMS_PER_WRITE:
            self._write_norms()

    def on_train_epoch_end(self):
        self._write_norms()

    def _write_norms(self) -> None:
        """Straight to the loggers, a batch at a time: self.log costs ~0.6 ms a call in Lightning, which
        two calls per step would add to every training step."""
        if not self._norms:
            return
        steps, norms = zip(*self._norms)
        self._norms = []
        tau = self.cfg.clip_norm
        for step, norm in zip(steps, torch.stack(norms).tolist()):
            row = {"grad_norm": norm, **({"clip_ratio": norm / tau} if tau > 0 else {})}
            for logger in self.loggers:
                logger.log_metrics(row, step=step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_record(self.task, self.cfg, self.extra)
        checkpoint[RNG_KEY] = torch.get_rng_state()  # dropout continues with the same draws on resume

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if RNG_KEY in checkpoint:
            torch.set_rng_state(checkpoint[RNG_KEY])


def checkpoint_record(task, cfg, extra: dict) -> dict:
    """What eval/predict need besides the weights: plain values only, so loading executes no code."""
    return {"format": CHECKPOINT_FORMAT, "version": __version__, "task": task.name,
            "config": dataclasses.asdict(cfg), "extra": extra}
