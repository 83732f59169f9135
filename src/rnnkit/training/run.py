"""Train, evaluate and load: the Trainer built in one place, the run directory, checkpoints that load
without executing code, and the run's outputs (metrics.json, CSV/TensorBoard logs, PNG plots)."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import io
import json
import logging
import os
import pickle
import shutil
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .. import __version__
from .config import ConfigError, flag, from_dict
from .datamodule import TaskData
from .module import CHECKPOINT_KEY, TaskModule

RUN_DIR_ENV = "RNNKIT_RUN_DIR"  # how DDP worker processes learn the run directory the launcher chose


def _quiet_lightning() -> None:
    # In-memory batches make worker processes pointless; Lightning would suggest them at every run.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Resuming writes into the run's own directories on purpose.
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _is_worker() -> bool:
    """A DDP process started by Lightning's launcher (it sets LOCAL_RANK > 0 for them)."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


LOCK_FILE, PID_FILE = ".rnnkit.lock", ".rnnkit.pid"  # held by the process training in the run directory


@contextlib.contextmanager
def prepare_run_dir(task, cfg):
    """The run directory, held by this process until the block ends: new (or empty) unless resuming, never
    one that already holds a run, nor one another process is training in."""
    if _is_worker() and RUN_DIR_ENV in os.environ:  # the launcher process holds it
        yield Path(os.environ[RUN_DIR_ENV])
        return
    run_dir = Path(cfg.out or Path("runs") / f"{task.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not (run_dir / LOCK_FILE).exists():  # refused before anything is written into it
        _check_run_dir(run_dir, cfg.resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write to the output directory {run_dir}: {e.strerror or e}") from None
    with hold_run_dir(run_dir):
        _check_run_dir(run_dir, cfg.resume)  # again: another process may have started a run here meanwhile
        run_dir = run_dir.resolve()  # Lightning's callbacks resolve their paths; so do we
        os.environ[RUN_DIR_ENV] = str(run_dir)
        yield run_dir


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            raise ConfigError(f"--resume: no checkpoint to resume from at {last}")
    elif run_dir.exists() and any(p.name not in (LOCK_FILE, PID_FILE) for p in run_dir.iterdir()):
        raise ConfigError(f"output directory {run_dir} is not empty (it may hold a previous run); "
                          "choose another --out, or pass --resume to continue that run")


@contextlib.contextmanager
def hold_run_dir(run_dir: Path):
    """One process per run directory: an OS file lock (fcntl), which the kernel releases when the process
    ends, however it ends (a SIGKILL included), so a lock left by a dead process never blocks a new run.
    The holder's PID, in a file beside the lock, names it to a process refused."""
    from filelock import FileLock, Timeout

    lock = FileLock(run_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = f"PID {int((run_dir / PID_FILE).read_text())}"
        except (OSError, ValueError):
            holder = "PID unknown"
        raise ConfigError(f"run directory {run_dir} is in use by another rnnkit process ({holder}); wait for it "
                          "to end, or choose another --out") from None
    try:
        (run_dir / PID_FILE).write_text(f"{os.getpid()}\n")
        yield
    finally:
        (run_dir / PID_FILE).unlink(missing_ok=True)
        lock.release()


RESUME_MAY_CHANGE = ("accelerator", "checkpoint_every", "data_dir", "devices", "max_epochs", "max_time",
                     "num_workers", "progress")


def resume_config(task, out: str, given: dict):
    """The saved config of the run in `out`, with the options that may change on resume replaced. The
    other options may be given too (the original command repeated with --resume), with their saved values."""
    last = Path(out) / "checkpoints" / "last.ckpt"
    if not out or not last.is_file():
        raise ConfigError(f"--resume needs --out pointing at a run with {Path('checkpoints') / 'last.ckpt'}; "
                          f"found none at {last}")
    record = read_checkpoint(last).get(CHECKPOINT_KEY) or {}
    if record.get("task") != task.name:
        raise ConfigError(f"--resume: {last} is a run of task {record.get('task')!r}, not {task.name!r}")
    saved = dataclasses.asdict(from_dict(task.config_class, record["config"]))  # an option added since: its default
    changed = [f"--{flag(k)} {v!r} (the run has {saved[k]!r})" for k, v in given.items()
               if k not in (*RESUME_MAY_CHANGE, "out", "resume") and v != saved[k]]
    if changed:
        raise ConfigError(f"--resume continues the saved config; only {', '.join(RESUME_MAY_CHANGE)} may change "
                          f"(got {'; '.join(changed)})")
    return from_dict(task.config_class, {**saved, **given, "out": out, "resume": True})


def epochs_done(checkpoint: dict) -> int:
    """The epochs a Lightning checkpoint has finished, as Lightning counts them on resume."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return progress.get("completed", checkpoint.get("epoch", 0))


def _limit(value: float):
    """Lightning reads a float as a fraction and an int as a count of batches."""
    return int(value) if value > 1 else float(value)


def build_trainer(cfg, run_dir: Path | None, task, *, for_training: bool = True, batched: bool = False,
                  resumed_step: int | None = None) -> L.Trainer:
    """The one Trainer of every task: checkpoints, early stopping, CSV + TensorBoard logs, DDP."""
    _quiet_lightning()
    strategy = "auto"
    if cfg.devices > 1:
        strategy = "ddp"
        if cfg.accelerator != "gpu":  # processes share the CPU cores instead of each using all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.devices))
    bar = cfg.progress and _on_a_terminal()  # redrawn with carriage returns: it would flood a log file
    common = dict(accelerator=cfg.accelerator, devices=cfg.devices if for_training else 1, strategy=strategy,
                  enable_progress_bar=bar, enable_model_summary=False,
                  limit_val_batches=_limit(cfg.limit_eval_batches), limit_test_batches=_limit(cfg.limit_eval_batches),
                  deterministic="warn" if cfg.accelerator == "cpu" else False,
                  use_distributed_sampler=not batched)  # batched data shards itself (TaskData)
    if not for_training:
        return L.Trainer(logger=False, enable_checkpointing=False, **{**common, "strategy": "auto"})
    # Two checkpoint callbacks: Lightning's save_last only refreshes last.ckpt in epochs that improved best.
    checkpoints = run_dir / "checkpoints"
    callbacks = [_FiniteBest(dirpath=checkpoints, filename="best", monitor=task.monitor, mode=task.mode,
                             save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False),
                 ModelCheckpoint(dirpath=checkpoints, filename="last", save_top_k=1, enable_version_counter=False)]
    if cfg.checkpoint_every:
        callbacks.append(_StepCheckpoint(checkpoints / "last.ckpt", cfg.checkpoint_every))
    if cfg.patience > 0:
        callbacks.append(EarlyStopping(monitor=task.monitor, mode=task.mode, patience=cfg.patience))
    if cfg.lr_schedule != "none":
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if cfg.progress and not bar:
        callbacks.append(_ProgressLines())
    loggers = [_AppendingCSVLogger(run_dir, name="", version="", resumed_step=resumed_step),
               TensorBoardLogger(run_dir, name="tensorboard", version="")]
    return L.Trainer(max_epochs=cfg.max_epochs, max_time={"minutes": cfg.max_time} if cfg.max_time else None,
                     limit_train_batches=_limit(cfg.limit_train_batches), callbacks=callbacks, logger=loggers,
                     plugins=[AtomicCheckpointIO()], log_every_n_steps=50,
                     **common)  # per-step values: TaskModule writes them itself


def _on_a_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


class _ProgressLines(Callback):
    """Progress for a log file rather than a terminal: a plain line at the end of each epoch, with the
    validation metrics, and one every `every` seconds within a long epoch."""

    def __init__(self, every: float = 30.0):
        self.every, self.start, self.last = every, time.monotonic(), time.monotonic()

    def _say(self, trainer, where: str, metrics: dict) -> None:
        values = "  ".join(f"{k} {float(v):.4g}" for k, v in metrics.items() if torch.is_tensor(v) and v.numel() == 1)
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {where}  {values}  "
              f"({time.monotonic() - self.start:.0f} s)", flush=True)
        self.last = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero and time.monotonic() - self.last >= self.every:
            total = trainer.num_training_batches
            of = f"/{total}" if isinstance(total, int) else ""
            self._say(trainer, f"batch {batch_idx + 1}{of}", {k: v for k, v in trainer.callback_metrics.items()
                                                               if k.startswith("train")})

    def on_train_epoch_end(self, trainer, module) -> None:
        if trainer.is_global_zero:
            self._say(trainer, f"step {trainer.global_step}", dict(trainer.callback_metrics))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file in the same directory, then renamed over the old one:
    a crash or a kill during a save leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: torch.save(checkpoint, tmp), needed=lambda: _saved_size(checkpoint))


def write_atomically(path: Path, write, needed=None) -> None:
    """`write(tmp)` to a temporary file beside `path`, then renamed over it: a crash leaves the old file whole.
    A failed write (a full disk above all) raises an OSError in one line: the file, why, the bytes it
    needed (`needed()`, called only then) and the bytes free."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not any(s in str(e) for s in TORCH_WRITE_FAILED):
            raise
        tmp.unlink(missing_ok=True)  # before measuring the free space: its partial content is not kept
        raise _write_failed(path, e, needed) from None
    finally:
        tmp.unlink(missing_ok=True)


# What torch's zip writer says when a write fails (its C++ code sees no errno): "[enforce fail at
# inline_container.cc:...] . unexpected pos 704 vs 598" on a full disk, "file write failed" otherwise.
TORCH_WRITE_FAILED = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos")


def _write_failed(path: Path, error: Exception, needed) -> OSError:
    reason = (error.strerror or str(error)) if isinstance(error, OSError) else \
        f"torch: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
    if isinstance(error, OSError) and error.errno not in (None, errno.ENOSPC, errno.EDQUOT):
        return OSError(f"could not write {path}: {reason}")
    try:
        size = needed() if callable(needed) else needed
    except Exception:  # the size is a detail of the message; the failed write is the error
        size = None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    full = (isinstance(error, OSError) and error.errno is not None) or (None not in (size, free) and free < size)
    space = "; ".join(filter(None, [f"it needs {_bytes(size)}" if size is not None else "",
                                    f"{_bytes(free)} free in {path.parent}" if free is not None else ""]))
    kept = "; the previous file is unchanged" if path.exists() else ""
    return OSError(f"{'disk full: ' if full else ''}could not write {path} ({reason}){': ' + space if space else ''}"
                   f"{kept}")


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB ({n} bytes)" if n >= 1e5 else f"{n} bytes"


class _Counter(io.RawIOBase):
    """A file that keeps nothing but the number of bytes written to it."""

    def __init__(self):
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = memoryview(b).nbytes
        self.size += n
        return n


def _saved_size(checkpoint: dict) -> int:
    """The bytes torch.save writes for `checkpoint`, counted without storing them."""
    counter = _Counter()
    torch.save(checkpoint, counter)
    return counter.size


class _FiniteBest(ModelCheckpoint):
    """The best checkpoint, never taken from a model whose monitored metric or weights are not finite
    (Lightning would keep the first one it sees, NaN or not). A run resumed after its directory was moved finds
    its checkpoints where they are now (Lightning would keep the old paths, and test a file that is not there,
    or another run's)."""

    def load_state_dict(self, state_dict: dict) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and Path(old) != Path(self.dirpath):
            def moved(path):
                return str(Path(self.dirpath) / Path(path).name) if path and Path(path).parent == Path(old) else path
            state_dict = {**state_dict, "dirpath": self.dirpath,
                          **{k: moved(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                                  "last_model_path") if k in state_dict},
                          "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)

    def check_monitor_top_k(self, trainer, current=None) -> bool:
        if current is not None and not torch.isfinite(current):
            return False
        if not all(torch.isfinite(p).all() for p in trainer.lightning_module.parameters()):
            return False
        return super().check_monitor_top_k(trainer, current)


class _StepCheckpoint(Callback):
    """Writes last.ckpt every `every` training steps, so that a killed run resumes from mid-epoch."""

    def __init__(self, path: Path, every: int):
        self.path, self.every = path, every

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step % self.every == 0:
            trainer.save_checkpoint(self.path)


class _AppendingCSVLogger(CSVLogger):
    """A resumed run appends to metrics.csv (Lightning's writer deletes an existing file when created),
    keeping the rows of the steps before the checkpoint it resumed from (`resumed_step`): the
    interrupted run may have logged steps after it, which the resumed run logs again."""

    def __init__(self, *args, resumed_step: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resumed_step = resumed_step

    @property
    def experiment(self):
        path = Path(self.log_dir) / "metrics.csv"
        if self._experiment is not None or not path.is_file():
            return super().experiment
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        writer = super().experiment
        header = rows[0] if rows else []
        if self.resumed_step is not None and "step" in header:
            column = header.index("step")
            rows = [header] + [r for r in rows[1:] if r[column] and int(float(r[column])) < self.resumed_step]
        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        content = text.getvalue().encode()
        write_atomically(path, lambda tmp: tmp.write_bytes(content), needed=len(content))
        writer.metrics_keys = header
        return writer


def train(task, cfg) -> dict:
    """Train `task` with `cfg`; test the best checkpoint once at the end. Returns metrics.json's content."""
    cfg.validate()
    with prepare_run_dir(task, cfg) as run_dir:
        return _train(task, cfg, run_dir)


def _train(task, cfg, run_dir: Path) -> dict:
    last = run_dir / "checkpoints" / "last.ckpt"
    resumed_step = None
    if cfg.resume:
        checkpoint = read_checkpoint(last)
        resumed_step, done = checkpoint.get("global_step"), epochs_done(checkpoint)
        if cfg.max_epochs < done:
            raise ConfigError(f"--resume: the run in {run_dir} has already trained {done} epochs, more than "
                              f"--max-epochs {cfg.max_epochs}; give a --max-epochs of at least {done}")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    splits = task.splits(cfg)
    model = task.build_model(cfg, splits.extra)
    if not cfg.resume:
        task.pretrain(model, cfg, splits)
    module = TaskModule(task, cfg, model, splits.extra)
    data = TaskData(splits, cfg.batch_size, cfg.num_workers, cfg.seed)
    trainer = build_trainer(cfg, run_dir, task, batched=splits.batched, resumed_step=resumed_step)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=last if cfg.resume else None, weights_only=True)
    train_seconds = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path or str(last)
    val = trainer.validate(module, datamodule=data, ckpt_path=best, weights_only=True, verbose=False)[0]
    test = {}
    if splits.test is not None:
        test = trainer.test(module, datamodule=data, ckpt_path=best, weights_only=True, verbose=False)[0]
    result = {"task": task.name, "rnnkit": __version__, "torch": torch.__version__,
              "val": plain_metrics(val), "test": plain_metrics(test), "epochs": trainer.current_epoch,
              "steps": trainer.global_step, "skipped_steps": module.skipped_steps,
              "train_seconds": round(train_seconds, 2),
              "best_checkpoint": str(Path(best).relative_to(run_dir)) if best else None,
              "config": dataclasses.asdict(cfg)}
    if trainer.is_global_zero:
        result["artifacts"] = _write_outputs(task, cfg, module, splits, run_dir, result)
        write_json(run_dir / "metrics.json", result)
    return result


def plain_metrics(metrics: dict) -> dict:
    """Lightning's metrics (tensors or numbers) as plain floats of 7 significant digits, as metrics.json keeps them."""
    return {k: float(f"{float(v):.7g}") for k, v in metrics.items()}


def _write_outputs(task, cfg, module, splits, run_dir: Path, result: dict) -> list[str]:
    from ..analysis import plots

    rows = plots.read_metrics_csv(run_dir / "metrics.csv")
    written = [plots.plot_curves(rows, run_dir / "curves.png", title=f"{task.name}: training curves")]
    norms = [(int(r["step"]), float(r["grad_norm"])) for r in rows if r.get("grad_norm")]
    if norms:
        steps, values = zip(*norms)
        written.append(plots.plot_clipping(steps, values, cfg.clip_norm, run_dir / "clipping.png"))
    module.model.eval()
    written += task.report(module.model, cfg, splits, run_dir)
    return [str(Path(p).relative_to(run_dir)) for p in written]


def write_json(path: Path, content: dict) -> None:
    """Atomic: a reader (or a crash) never sees half a file."""
    data = (json.dumps(content, indent=2) + "\n").encode()
    write_atomically(path, lambda tmp: tmp.write_bytes(data), needed=len(data))


# -- loading ----------------------------------------------------------------------------------------

def read_checkpoint(path) -> dict:
    """A checkpoint file's content through torch's weights-only unpickler: tensors and plain values only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch comments on pickle protocols it is about to refuse anyway
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).partition("WeightsUnpickler error:")[2].strip().split("\n")[0] or type(e).__name__
        raise ValueError(f"{path} is not a checkpoint rnnkit can load: not a PyTorch checkpoint, or it holds "
                         f"objects besides tensors and plain values, which rnnkit never unpickles because that "
                         f"would run code ({detail})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} is not an rnnkit checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


def evaluate(loaded: "rnnkit.tasks.base.Loaded", data_dir: str | None = None, batch_size: int | None = None,
             progress: bool = True) -> tuple[str, dict]:
    """Metrics of a loaded checkpoint on its task's test set (the validation set for tasks without one)."""
    cfg = dataclasses.replace(loaded.cfg, devices=1, progress=progress, limit_eval_batches=1.0,
                              data_dir=data_dir or loaded.cfg.data_dir, batch_size=batch_size or loaded.cfg.batch_size)
    splits = loaded.task.splits(cfg)
    changed = sorted(k for k in set(splits.extra) | set(loaded.extra) if splits.extra.get(k) != loaded.extra.get(k))
    if changed:  # e.g. a vocabulary rebuilt from other files: its ids would not be the ones the weights learned
        raise ValueError(f"the data read now differ from the model's training data: its {', '.join(changed)} "
                         f"{'is' if len(changed) == 1 else 'are'} not the one saved in the checkpoint")
    module = TaskModule(loaded.task, cfg, loaded.model, loaded.extra)
    trainer = build_trainer(cfg, None, loaded.task, for_training=False, batched=splits.batched)
    data = TaskData(splits, cfg.batch_size)
    if splits.test is not None:
        return "test", plain_metrics(trainer.test(module, datamodule=data, verbose=False)[0])
    return "validation", plain_metrics(trainer.validate(module, datamodule=data, verbose=False)[0])
