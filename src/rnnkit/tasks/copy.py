"""The copy task (Hochreiter & Schmidhuber 1997; the form of Arjovsky et al. 2016): read K symbols, wait T
steps, and after a delimiter write the K symbols back. Many-to-many: the loss is on every step (blanks
before the recall), so a memoryless model scores K*log(A)/(T+2K) and only memory beats it."""
from __future__ import annotations

from dataclasses import dataclass

from ..data.synthetic import BLANK, copy_baseline, copy_task
from ..models import make_rnn
from ..models.language import CharLM
from ..training.config import RNNConfig, TrainConfig, opt
from ..training.data import Splits, TensorBatches
from .base import Task, recipe_default

TEST_SEED = 1_000_000  # the test sequences never depend on --seed, nor overlap the training ones


@dataclass
class CopyConfig(TrainConfig, RNNConfig):
    length: int = opt(50, "delay T: blanks between the last symbol and the end of the recall cue", minimum=1)
    symbols: int = opt(10, "K: symbols to remember and copy", minimum=1)
    alphabet: int = opt(8, "A: the symbols are drawn from this many", minimum=2)
    train_size: int = opt(20_000, "training sequences (a fraction --val-fraction of them validates)", minimum=2)
    test_size: int = opt(2_000, "test sequences", minimum=2)
    max_epochs: int = recipe_default(TrainConfig, "max_epochs", 30)
    clip_norm: float = recipe_default(TrainConfig, "clip_norm", 1.0)
    patience: int = recipe_default(TrainConfig, "patience", 10)


class CopyTask(Task):
    name = "copy"
    help = "the copy task (long-range memory): recall K symbols after T blanks, RNN vs LSTM/GRU"
    config_class = CopyConfig
    monitor, mode = "val_recall_acc", "max"

    def splits(self, cfg) -> Splits:
        data = copy_task(cfg.train_size, cfg.length, cfg.seed, cfg.symbols, cfg.alphabet)
        train, val = TensorBatches(*data).split(cfg.val_fraction)
        test = TensorBatches(*copy_task(cfg.test_size, cfg.length, TEST_SEED, cfg.symbols, cfg.alphabet))
        return Splits(train, val, test)

    def build_model(self, cfg, extra: dict) -> CharLM:
        # the language model's embedding -> RNN -> linear over ids, read as a many-to-many tagger over tokens;
        # its loss is the mean cross-entropy over every step, the Arjovsky form
        vocab = cfg.alphabet + 2
        return CharLM(make_rnn(cfg, vocab), vocab, vocab)

    def onnx_graphs(self, loaded) -> dict:
        from ..export import language_model_step

        return {"step": language_model_step(loaded.model)}

    def metrics(self, cfg, extra: dict):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        return MetricCollection({"recall_acc": MulticlassAccuracy(num_classes=cfg.alphabet + 2, average="micro")})

    def update_metrics(self, metrics, output, targets) -> None:
        logits, _ = output                      # (B, T+2K, V)
        recall = targets != BLANK               # (B, T+2K): the last K steps, whose targets are symbols
        metrics.update(logits[recall], targets[recall])

    def on_train_start(self, module) -> None:
        cfg = module.cfg
        print(f"copy task: T={cfg.length}, K={cfg.symbols}, A={cfg.alphabet}; memoryless baseline "
              f"{copy_baseline(cfg.length, cfg.symbols, cfg.alphabet):.4f} nats/step, recall accuracy "
              f"{1 / cfg.alphabet:.3f}")
