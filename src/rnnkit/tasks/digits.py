"""One-to-many generation: from a class label an LSTM writes the 28 rows of an MNIST digit one row at a time,
each row fed back as the next input (`rnnkit train digits`, `rnnkit sample CKPT --digit 7`). Generated digits
are judged by a trained MNIST classifier (`--classifier`, benchmarks/digits_recognition.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import mnist
from ..models import make_rnn
from ..models.generator import RowGenerator
from ..training.config import ConfigError, RNNConfig, TrainConfig, opt
from ..training.data import Splits, TensorBatches
from .base import Task, recipe_default
from .mnist import MEAN, SIDE, STD

CLASSES = 10


@dataclass
class DigitsConfig(TrainConfig, RNNConfig):
    binarize: bool = opt(True, "train on binarised digits (pixel > 0.5: ink): the sampled rows fed back, which are "
                               "binary, then look like the rows the model was trained to continue (grey-level "
                               "training: 53% of sampled digits recognised; binarised: 90-92%)")
    hidden: int = recipe_default(RNNConfig, "hidden", 256)
    max_epochs: int = recipe_default(TrainConfig, "max_epochs", 30)
    clip_norm: float = recipe_default(TrainConfig, "clip_norm", 1.0)


def to_targets(images: torch.Tensor, binarize: bool = False) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> pixels (N, T=28, W=28) in [0, 1] (or {0, 1}), the BCE targets."""
    pixels = images.float() / 255
    return (pixels > 0.5).float() if binarize else pixels


class DigitsTask(Task):
    name = "digits"
    help = "one-to-many: generate MNIST digits of a given class row by row with an LSTM"
    config_class = DigitsConfig

    def splits(self, cfg) -> Splits:
        images, labels = mnist.load("train", cfg.data_dir or None)
        train, val = TensorBatches(labels, to_targets(images, cfg.binarize)).split(cfg.val_fraction)
        test_images, test_labels = mnist.load("test", cfg.data_dir or None)
        return Splits(train, val, TensorBatches(test_labels, to_targets(test_images, cfg.binarize)))

    def build_model(self, cfg, extra: dict) -> RowGenerator:
        if cfg.bidirectional:
            raise ConfigError("--bidirectional cannot generate: each row may only depend on the rows above it")
        return RowGenerator(make_rnn(cfg, SIDE + CLASSES), CLASSES, SIDE, SIDE)

    def onnx_graphs(self, loaded) -> dict:
        """(previous rows (B, S, 28), labels (B,), h0[, c0]) -> (logits of the next rows, hn[, cn]): generation
        starts from a row of zeros and feeds back sigmoid(logits) (or a sampled row) with the state."""
        from ..export import carrying_state

        axes = {"previous": {0: "batch", 1: "rows"}, "labels": {0: "batch"}, "logits": {0: "batch", 1: "rows"}}
        inputs = (torch.zeros(2, 3, SIDE), torch.tensor([3, 7]))
        return {"step": carrying_state(_RowsStep(loaded.model), loaded.model.rnn, inputs, ["previous", "labels"], axes)}

    def metrics(self, cfg, extra: dict):
        from torchmetrics import MeanSquaredError, MetricCollection

        # the loss (BCE) is logged already; the squared error of the teacher-forced mean rows reads in pixels
        return MetricCollection({"pixel_mse": MeanSquaredError()})

    def update_metrics(self, metrics, output, targets) -> None:
        metrics.update(torch.sigmoid(output).flatten(), targets.flatten())

    def report(self, model, cfg, splits, run_dir: Path) -> list[Path]:
        """A grid of generated digits: a row of 8 per class (temperature 1), and the mean-fed digit of each."""
        from ..analysis import plots

        generator = torch.Generator().manual_seed(cfg.seed)
        labels = torch.arange(CLASSES).repeat_interleave(8)
        images = model.generate(labels, 1.0, generator)[0]
        mean_images = model.generate(torch.arange(CLASSES), 0.0)[0]
        return [plots.plot_image_grid(images, [str(d) for d in labels.tolist()], run_dir / "samples.png", ncols=8,
                                      title="generated digits, 8 per class (sampled rows, temperature 1)"),
                plots.plot_image_grid(mean_images, [str(d) for d in range(CLASSES)], run_dir / "mean_digits.png",
                                      ncols=CLASSES, title="generated digits (mean rows fed back, temperature 0)")]

    def sample(self, loaded, args) -> None:
        """`rnnkit sample CKPT --digit D --count N [--out grid.png] [--classifier MNIST_CKPT]`."""
        digit = 0 if args.digit is None else args.digit
        if not 0 <= digit < CLASSES:
            raise ConfigError(f"--digit must be a class in 0..{CLASSES - 1}; got {digit}")
        classifier = load_classifier(args.classifier) if args.classifier else None
        generator = torch.Generator().manual_seed(args.seed)
        labels = torch.full((args.count,), digit, dtype=torch.long)
        images = loaded.model.generate(labels, args.temperature, generator)[0]  # (N, 28, 28)
        if args.out:
            from ..analysis import plots

            out = Path(args.out)
            if out.exists():
                raise ConfigError(f"--out {out} exists; choose a new file (nothing is overwritten)")
            plots.plot_image_grid(images, [str(digit)] * len(images), out,
                                  title=f"digit {digit}, temperature {args.temperature}")
            print(f"wrote {out}")
        else:
            for image in images:
                print(ascii_digit(image) + "\n")
        if classifier is not None:
            recognised = float((classify(classifier, images) == digit).float().mean())
            print(f"recognised as {digit} by the classifier: {recognised:.3f} of {len(images)}")


def load_classifier(path):
    """A trained `rnnkit train mnist` checkpoint's model (eval mode); another task's is refused."""
    from . import load

    loaded = load(path)
    if loaded.task.name != "mnist":
        raise ConfigError(f"--classifier must be an `rnnkit train mnist` checkpoint; {path} is a "
                          f"{loaded.task.name!r} checkpoint")
    return loaded.model


@torch.no_grad()
def classify(classifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes (N,) of images (N, 28, 28) in [0, 1], normalised as the classifier was trained."""
    inputs = (images - MEAN) / STD
    return torch.cat([classifier(inputs[i:i + batch_size])[0].argmax(-1) for i in range(0, len(inputs), batch_size)])


def recognition(model: RowGenerator, classifier, per_digit: int = 100, temperature: float = 1.0,
                seed: int = 0) -> list[float]:
    """The fraction of `per_digit` generated digits of each class that the classifier recognises as it."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(per_digit)
    predicted = classify(classifier, model.generate(labels, temperature, generator)[0])
    return (predicted == labels).float().view(CLASSES, per_digit).mean(1).tolist()


def ascii_digit(image: torch.Tensor) -> str:
    """A (28, 28) image in [0, 1] as 28 lines of text."""
    return "\n".join("".join(" .:*#"[min(4, int(v * 5))] for v in row.tolist()) for row in image)


class _RowsStep(torch.nn.Module):
    """RowGenerator.rows_step with the state flat, as ONNX inputs and outputs are."""

    def __init__(self, model: RowGenerator):
        super().__init__()
        self.model = model

    def forward(self, previous, labels, *state):
        logits, final = self.model.rows_step(previous, labels, state if len(state) > 1 else state[0])
        return (logits, *final) if isinstance(final, tuple) else (logits, final)
