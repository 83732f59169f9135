"""The notes' exercise: an image of 28x28 pixels is a sequence of 28 rows of 28 pixels; a (bidirectional)
LSTM reads the rows and a linear layer classifies its last time step's output."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import mnist
from ..models import READOUTS, SequenceClassifier, make_rnn
from ..training.config import ConfigError, RNNConfig, TrainConfig, opt
from ..training.data import Splits, TensorBatches
from .base import Task, TestFile, recipe_default

MEAN, STD = 0.1307, 0.3081  # of the MNIST training pixels scaled to [0, 1]
SIDE = 28


@dataclass
class MNISTConfig(TrainConfig, RNNConfig):
    readout: str = opt("last", "what the classifier reads: the last step's output (as in the notes), each "
                               "direction's final state, or the mean or max over steps", READOUTS)
    max_epochs: int = recipe_default(TrainConfig, "max_epochs", 20)
    lr_schedule: str = recipe_default(TrainConfig, "lr_schedule", "cosine")
    clip_norm: float = recipe_default(TrainConfig, "clip_norm", 1.0)


def to_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> normalised rows (N, T=28, I=28)."""
    return (images.float() / 255 - MEAN) / STD


class MNISTTask(Task):
    name = "mnist"
    help = "classify MNIST digits row by row with a (bidirectional) RNN/LSTM/GRU"
    config_class = MNISTConfig
    monitor, mode = "val_acc", "max"
    test_file_help = "a gzip'd IDX file of 28x28 images (as t10k-images-idx3-ubyte.gz), with --test-labels its labels"
    test_file_options = ("test_labels",)

    def splits(self, cfg) -> Splits:
        images, labels = mnist.load("train", cfg.data_dir or None)
        train, val = TensorBatches(to_inputs(images), labels).split(cfg.val_fraction)
        test_images, test_labels = mnist.load("test", cfg.data_dir or None)
        return Splits(train, val, TensorBatches(to_inputs(test_images), test_labels))

    def read_test_file(self, loaded, args) -> TestFile:
        if args.test_labels is None:
            raise ConfigError(f"--test-file {args.test_file!r} of an mnist checkpoint needs --test-labels, the IDX "
                              "file of its labels")
        images, labels = mnist.read_pair(args.test_file, args.test_labels)
        return TestFile(TensorBatches(to_inputs(images), labels), loaded.extra)

    def build_model(self, cfg, extra: dict) -> SequenceClassifier:
        return SequenceClassifier(make_rnn(cfg, SIDE), 10, cfg.readout, cfg.dropout)

    def metrics(self, cfg, extra: dict):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        return MetricCollection({"acc": MulticlassAccuracy(num_classes=10, average="micro")})

    def report(self, model, cfg, splits, run_dir: Path) -> list[Path]:
        """A confusion matrix and a grid of misclassified test digits."""
        from ..analysis import plots

        inputs, labels = splits.test.inputs, splits.test.targets
        predicted = predict_classes(model, inputs)
        confusion = torch.bincount(labels * 10 + predicted, minlength=100).reshape(10, 10)
        wrong = (predicted != labels).nonzero().flatten()[:64]
        images = (inputs[wrong] * STD + MEAN).clamp(0, 1)
        titles = [f"{labels[i]}→{predicted[i]}" for i in wrong.tolist()]
        return [plots.plot_confusion(confusion, [str(d) for d in range(10)], run_dir / "confusion.png",
                                     title="test set: true vs predicted digit"),
                plots.plot_image_grid(images, titles, run_dir / "misclassified.png",
                                      title=f"misclassified test digits (true→predicted), {len(wrong)} shown")]

    def onnx_graphs(self, loaded) -> dict:
        from ..export import many_to_one

        return {"classifier": many_to_one(loaded.model, SIDE, "rows", "logits")}  # rows (B, T, 28), normalised

    def predict(self, loaded, items: list[str], args) -> list[dict]:
        images = torch.stack([read_digit(path) for path in items])
        with torch.no_grad():
            probs = loaded.model(to_inputs(images))[0].softmax(-1)
        return [{"input": path, "class": int(p.argmax()), "probabilities": [round(float(v), 4) for v in p]}
                for path, p in zip(items, probs)]


@torch.no_grad()
def predict_classes(model, inputs: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return torch.cat([model(inputs[i:i + batch_size])[0].argmax(-1) for i in range(0, len(inputs), batch_size)])


def read_digit(path: str) -> torch.Tensor:
    """Any image PIL reads -> a (28, 28) uint8 MNIST-like digit: light on dark, centred.

    Dark-on-light images (judged by the border) are inverted. A 28x28 image is otherwise used as it
    is; a larger one is cropped to its ink, scaled to fit 20x20 and centred by its centre of mass in
    28x28, as the MNIST digits were prepared.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            gray = image.convert("L")
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image (PIL cannot identify it)") from None
    pixels = torch.from_numpy(np.array(gray, dtype=np.uint8))  # (H, W)
    border = torch.cat([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).float().mean()
    if border > 127:
        pixels, gray = 255 - pixels, Image.fromarray((255 - pixels).numpy())
    if pixels.shape == (SIDE, SIDE):
        return pixels
    ink = (pixels > 50).nonzero()
    if len(ink) == 0:
        return torch.from_numpy(np.array(gray.resize((SIDE, SIDE)), dtype=np.uint8))
    (top, left), (bottom, right) = ink.min(0).values.tolist(), ink.max(0).values.tolist()
    crop = gray.crop((left, top, right + 1, bottom + 1))
    scale = 20 / max(crop.width, crop.height)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.LANCZOS)
    digit = torch.from_numpy(np.array(crop, dtype=np.float32))  # (h, w)
    rows, cols = torch.arange(crop.height).float(), torch.arange(crop.width).float()
    mass = digit.sum().clamp(min=1)
    cy, cx = (digit.sum(1) * rows).sum() / mass, (digit.sum(0) * cols).sum() / mass
    top = int(round(SIDE / 2 - float(cy))) if crop.height < SIDE else 0
    left = int(round(SIDE / 2 - float(cx))) if crop.width < SIDE else 0
    top, left = min(max(top, 0), SIDE - crop.height), min(max(left, 0), SIDE - crop.width)
    out = torch.zeros(SIDE, SIDE)
    out[top:top + crop.height, left:left + crop.width] = digit
    return out.round().clamp(0, 255).to(torch.uint8)
