"""The notes' character-level language model: trained with truncated BPTT over parallel streams of
text (the state carried from window to window, h_0 = 0 at each epoch start), then sampled one
character at a time."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..data import text
from ..models import make_rnn
from ..models.language import CharLM, generate
from ..training.config import ConfigError, RNNConfig, TrainConfig, opt
from ..training.data import Splits
from .base import Task, recipe_default

CORPORA = ("stdlib", "tinyshakespeare")


@dataclass
class CharLMConfig(TrainConfig, RNNConfig):
    corpus: str = opt("stdlib", "training text: the running Python's standard library sources (offline), or "
                                "tiny Shakespeare (from the data directory)", CORPORA)
    text: str = opt("", "train on this UTF-8 text file instead of --corpus")
    max_chars: int = opt(0, "use at most this many characters of the text (0: all; the stdlib corpus "
                            "is capped at its first 2 million)", minimum=0)
    embedding: int = opt(64, "character embedding size", minimum=1)
    bptt: int = opt(100, "truncated BPTT: time steps per window; the state is carried across windows", minimum=1)
    sample_length: int = opt(300, "characters sampled before training, after each epoch and at the end", minimum=0)
    hidden: int = recipe_default(RNNConfig, "hidden", 256)
    layers: int = recipe_default(RNNConfig, "layers", 2)
    dropout: float = recipe_default(RNNConfig, "dropout", 0.1)
    batch_size: int = recipe_default(TrainConfig, "batch_size", 32)
    lr: float = recipe_default(TrainConfig, "lr", 2e-3)
    clip_norm: float = recipe_default(TrainConfig, "clip_norm", 5.0)
    max_epochs: int = recipe_default(TrainConfig, "max_epochs", 30)
    patience: int = recipe_default(TrainConfig, "patience", 3)
    lr_schedule: str = recipe_default(TrainConfig, "lr_schedule", "plateau")

    def validate(self) -> None:
        super().validate()
        if self.bidirectional:
            raise ConfigError("--bidirectional: a language model is autoregressive, it predicts each character "
                              "from the ones before it; a backward direction would read the answer")


class CharLMTask(Task):
    name = "charlm"
    help = "character-level language model (truncated BPTT), sampled with `rnnkit sample`"
    config_class = CharLMConfig
    monitor, mode = "val_nats", "min"
    carries_state = True

    def splits(self, cfg) -> Splits:
        corpus = text.read_text_file(cfg.text) if cfg.text else text.load_corpus(cfg.corpus, cfg.data_dir or None)
        if cfg.max_chars:
            corpus = corpus[:cfg.max_chars]
        train_text, val_text = text.split_text(corpus, cfg.val_fraction)
        vocab = text.Vocabulary.from_text(train_text)
        val_text = "".join(ch for ch in val_text if ch in vocab)  # characters never seen in training cannot be scored
        train = text.Windows(text.streams(vocab.encode(train_text), cfg.batch_size), cfg.bptt)
        val_streams = max(1, min(cfg.batch_size, len(val_text) // (cfg.bptt + 1)))
        val = text.Windows(text.streams(vocab.encode(val_text), val_streams), cfg.bptt)
        return Splits(train, val, None, extra={"vocab": vocab.to_list()}, batched=True)

    def build_model(self, cfg, extra: dict) -> CharLM:
        rnn = make_rnn(cfg, cfg.embedding, bidirectional=False)
        return CharLM(rnn, len(extra["vocab"]), cfg.embedding, cfg.dropout)

    def metrics(self, cfg, extra: dict):
        from torchmetrics import MeanMetric, MetricCollection

        return MetricCollection({"nats": MeanMetric(), "bpc": MeanMetric()})

    def onnx_graphs(self, loaded) -> dict:
        """(ids, state) -> (logits, state), one step or many; the vocabulary is in the exported extra data."""
        from ..export import language_model_step

        return {"step": language_model_step(loaded.model)}

    def update_metrics(self, metrics, output, targets) -> None:
        """Mean over characters, not over windows (the last window of a pass may be shorter)."""
        nats = torch.nn.functional.cross_entropy(output.flatten(0, 1), targets.flatten(), reduction="none")
        metrics["nats"].update(nats)
        metrics["bpc"].update(nats / math.log(2))

    def on_validation_end(self, module, epoch: int) -> None:
        vocab = text.Vocabulary.from_list(module.extra["vocab"])
        print(f"\n--- sample after epoch {epoch} ---\n{sample_text(module.model, vocab, module.cfg)}\n", flush=True)

    def on_train_start(self, module) -> None:
        vocab = text.Vocabulary.from_list(module.extra["vocab"])
        print(f"--- sample before training ---\n{sample_text(module.model, vocab, module.cfg)}\n", flush=True)

    def report(self, model, cfg, splits, run_dir: Path) -> list[Path]:
        vocab = text.Vocabulary.from_list(splits.extra["vocab"])
        path = run_dir / "samples.txt"
        path.write_text(sample_text(model, vocab, cfg) + "\n")
        return [path]

    def sample(self, loaded, args) -> None:
        """Stream characters to stdout as they are generated (`rnnkit sample`)."""
        if args.prime == "":
            raise ConfigError("--prime must hold at least one character (the default is a newline)")
        chars = generate_text(loaded, args.prime, args.length, args.temperature, args.top_k, args.seed)
        first = next(chars)  # the prime is checked before anything is printed
        sys.stdout.write(first)
        for ch in chars:
            sys.stdout.write(ch)
            sys.stdout.flush()
        sys.stdout.write("\n")


def generate_text(loaded, prime: str | None = None, length: int = 500, temperature: float = 0.8, top_k: int = 0,
                  seed: int = 0) -> Iterator[str]:
    """Yield the prime, then `length` generated characters one at a time, from a loaded charlm
    checkpoint (`rnnkit.tasks.load(path)`). The default prime is a newline (or the vocabulary's
    first character if it has none); characters outside the vocabulary are refused, named."""
    vocab = text.Vocabulary.from_list(loaded.extra["vocab"])
    if prime is None:
        prime = "\n" if "\n" in vocab else vocab.chars[0]
    unknown = vocab.unknown(prime)
    if unknown:
        raise ValueError(f"the prime has characters the model never saw in training: "
                         f"{', '.join(map(repr, unknown[:10]))}; its vocabulary has {len(vocab)} characters")
    if not prime:
        raise ValueError("the prime must hold at least one character")
    if top_k > len(vocab):
        raise ConfigError(f"--top-k must be at most the vocabulary size, {len(vocab)}; got {top_k}")
    return _stream(loaded.model, vocab, prime, length, temperature, top_k, seed)


def _stream(model, vocab, prime, length, temperature, top_k, seed) -> Iterator[str]:
    yield prime
    generator = torch.Generator().manual_seed(seed)
    for next_id in generate(model, vocab.encode(prime), length, temperature, top_k, generator):
        yield vocab.chars[next_id]


def sample_text(model, vocab, cfg, prime: str = "\n", temperature: float = 0.8, seed: int = 0) -> str:
    prime = prime if all(ch in vocab for ch in prime) else vocab.chars[0]
    return "".join(_stream(model, vocab, prime, cfg.sample_length, temperature, 0, seed))
