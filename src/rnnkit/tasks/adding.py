"""The adding problem: a long-range task on which a vanilla RNN's gradient vanishes and LSTM/GRU learn."""
from __future__ import annotations

from dataclasses import dataclass

from ..data.synthetic import adding_problem
from ..models import make_rnn
from ..models.regressor import SequenceRegressor
from ..training.config import RNNConfig, TrainConfig, opt
from ..training.data import Splits, TensorBatches
from .base import Task, recipe_default

TEST_SEED = 1_000_000  # the test sequences never depend on --seed, nor overlap the training ones


@dataclass
class AddingConfig(TrainConfig, RNNConfig):
    length: int = opt(100, "sequence length T: the two marked values can be up to T steps apart", minimum=2)
    train_size: int = opt(20_000, "training sequences (a fraction --val-fraction of them validates)", minimum=2)
    test_size: int = opt(2_000, "test sequences", minimum=2)
    max_epochs: int = recipe_default(TrainConfig, "max_epochs", 30)
    clip_norm: float = recipe_default(TrainConfig, "clip_norm", 1.0)
    patience: int = recipe_default(TrainConfig, "patience", 10)


class AddingTask(Task):
    name = "adding"
    help = "the adding problem (long-range dependencies): vanilla RNN vs LSTM/GRU"
    config_class = AddingConfig
    monitor, mode = "val_mse", "min"

    def splits(self, cfg) -> Splits:
        train, val = TensorBatches(*adding_problem(cfg.train_size, cfg.length, seed=cfg.seed)).split(cfg.val_fraction)
        return Splits(train, val, TensorBatches(*adding_problem(cfg.test_size, cfg.length, seed=TEST_SEED)))

    def build_model(self, cfg, extra: dict) -> SequenceRegressor:
        return SequenceRegressor(make_rnn(cfg, 2), 1, "last", cfg.dropout)

    def metrics(self, cfg, extra: dict):
        from torchmetrics import MeanSquaredError, MetricCollection

        return MetricCollection({"mse": MeanSquaredError()})

    def onnx_graphs(self, loaded) -> dict:
        from ..export import many_to_one

        return {"regressor": many_to_one(loaded.model, 2, "sequence", "prediction")}

    def update_metrics(self, metrics, output, targets) -> None:
        metrics.update(output.view(-1), targets)
