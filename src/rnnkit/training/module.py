"""The one LightningModule that trains every task model (`forward(inputs, targets=None) -> (output, loss)`):
optimisers from the notes, L1/L2, gradient clipping by global norm with ‖g‖ and k = ‖g‖/τ logged."""
from __future__ import annotations

import dataclasses
import math
import warnings

import lightning as L
import torch
from torch import nn

from .. import __version__

CHECKPOINT_KEY = "rnnkit"  # where a checkpoint keeps the task, its config and its extra data
CHECKPOINT_FORMAT = 1
RNG_KEY = "rnnkit_rng_state"
SKIPPED_KEY = "rnnkit_skipped_steps"
EPOCH_KEY = "rnnkit_epoch_state"
ROWS_PER_WRITE = 50
PROGRESS_EVERY = 20


class NonFiniteError(RuntimeError):
    """A training step produced NaN or infinite gradients and the run was asked to stop (--on-nonfinite stop)."""


class TaskModule(L.LightningModule):
    """Wraps a task model; `task` supplies metrics (a torchmetrics collection) and the monitor name."""

    def __init__(self, task, cfg, model: nn.Module, extra: dict | None = None):
        super().__init__()
        self.task, self.cfg, self.model, self.extra = task, cfg, model, extra or {}
        metrics = task.metrics(cfg, self.extra)
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        self._carried = {}  # stage -> recurrent state carried to the next window (truncated BPTT)
        self._steps = []  # (step, {name: value}) of training steps not yet written to the loggers
        self._epoch_loss = torch.zeros(2)
        self.skipped_steps = 0  # steps skipped because their gradients were not finite

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

    def on_validation_epoch_start(self):
        self._carried.pop("val", None)

    def on_test_epoch_start(self):
        self._carried.pop("test", None)

    def training_step(self, batch, batch_idx):
        _, targets = batch
        _, loss = self._run(batch, "train")
        self._steps.append((self.global_step, {"train_loss_step": loss.detach()}))
        finite = torch.isfinite(loss.detach())  # a skipped step stays out of the epoch's mean (no sync here)
        n = loss.new_tensor(len(targets)) * finite
        self._epoch_loss += torch.stack([torch.where(finite, loss.detach(), 0.0) * n, n])
        if batch_idx % PROGRESS_EVERY == 0:  # for the progress bar only; the loggers get every step
            self.log("train_loss", loss, prog_bar=True, logger=False)
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
        if not torch.isfinite(norm):  # NaN/inf anywhere in the gradients (a NaN loss makes them all NaN)
            self._non_finite(norm)
        if not self._steps or self._steps[-1][0] != self.global_step:
            self._steps.append((self.global_step, {}))
        row = self._steps[-1][1]
        row["grad_norm"] = norm.detach()
        if tau > 0:
            row["clip_ratio"] = norm.detach() / tau
        if len(self._steps) >= ROWS_PER_WRITE:
            self._write_steps()

    def _non_finite(self, norm) -> None:
        """Skip this step (no parameter changes: the optimiser skips parameters without gradients) or stop."""
        step = self.global_step
        if self.cfg.on_nonfinite == "stop":
            raise NonFiniteError(f"training step {step}: the gradient norm is {norm.item()}, not finite; stopped "
                                 "(--on-nonfinite stop). The checkpoints written so far are unchanged.")
        for p in self.model.parameters():
            p.grad = None
        self.skipped_steps += 1
        warnings.warn(f"training step {step}: the gradient norm is {norm.item()}, not finite; step skipped "
                      f"({self.skipped_steps} so far)", RuntimeWarning, stacklevel=2)

    def on_train_epoch_start(self):
        self._carried.pop("train", None)  # each epoch reads the streams from their start, h_0 = 0
        self._epoch_loss = torch.zeros(2, device=self.device)  # (sum of loss * batch size, examples)

    def on_train_epoch_end(self):
        self._write_steps()
        total = self.trainer.strategy.reduce(self._epoch_loss, reduce_op="sum")  # over all processes
        if total[1] > 0:
            self._write({"train_loss_epoch": (total[0] / total[1]).item()}, self.global_step - 1)

    def _write_steps(self) -> None:
        """Per-step values go straight to the loggers, a batch at a time: self.log costs ~0.6 ms a call
        in Lightning, and writing to the loggers at every step as much again; at a few milliseconds a
        step, that was a fifth of the training time."""
        rows, self._steps = self._steps, []
        if rows:
            values = iter(torch.stack([v.float() for _, row in rows for v in row.values()]).tolist())  # one copy
            for step, row in rows:
                self._write({name: next(values) for name in row}, step)

    def _write(self, metrics: dict, step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics({**metrics, "epoch": self.current_epoch}, step=step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_record(self.task, self.cfg, self.extra)
        checkpoint[RNG_KEY] = torch.get_rng_state()  # dropout continues with the same draws on resume
        checkpoint[SKIPPED_KEY] = self.skipped_steps
        # What a run resumed from mid-epoch needs to go on exactly: the epoch's running loss and the state
        # carried from the last window (truncated BPTT). At an epoch's end both restart anyway.
        checkpoint[EPOCH_KEY] = {"loss": self._epoch_loss.cpu(), "carried": self._carried.get("train")}
        if self.trainer.state.fn == "fit":  # the logs reach disk up to the step saved
            self._write_steps()
            for logger in self.loggers:
                logger.save()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if RNG_KEY in checkpoint:
            torch.set_rng_state(checkpoint[RNG_KEY])
        self.skipped_steps = int(checkpoint.get(SKIPPED_KEY, 0))
        if EPOCH_KEY in checkpoint:
            self._epoch_loss = checkpoint[EPOCH_KEY]["loss"].to(self.device)
            carried = checkpoint[EPOCH_KEY]["carried"]
            if carried is not None:
                self._carried["train"] = tuple(c.to(self.device) for c in carried) if isinstance(
                    carried, (tuple, list)) else carried.to(self.device)


def checkpoint_record(task, cfg, extra: dict) -> dict:
    """What eval/predict need besides the weights: plain values only, so loading executes no code."""
    return {"format": CHECKPOINT_FORMAT, "version": __version__, "task": task.name,
            "config": dataclasses.asdict(cfg), "extra": extra}
