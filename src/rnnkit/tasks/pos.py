"""The notes' many-to-many case: part-of-speech tagging with a bidirectional LSTM, since a word's tag depends
on the words on both sides. Words are embedded (lower-cased, digits as 0) beside character features that
carry rare and unknown words; trained on UD English EWT or any CoNLL-U files, run with `rnnkit tag`."""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import treebank
from ..data.store import DataError
from ..data.sentences import Examples, WordVocab, pad
from ..models import make_rnn
from ..models.tagger import CHAR_ENCODERS, IGNORE, CharFeatures, Tagger
from ..training.config import ConfigError, RNNConfig, TrainConfig, opt
from ..training.data import Splits, validation_split
from .base import Command, Task, TestFile, recipe_default

MAX_WORD_CHARS = 24  # longer words (URLs, e-mail addresses) keep their first and last 12 characters


@dataclass
class POSConfig(TrainConfig, RNNConfig):
    tagset: str = opt("upos", "which tag column to learn: universal (UPOS) or language-specific (XPOS)",
                      treebank.TAGSETS)
    train_file: str = opt("", "training CoNLL-U file (default: UD English EWT train from the data directory)")
    dev_file: str = opt("", "validation CoNLL-U file for early stopping (default: EWT dev; with --train-file "
                            "alone, --val-fraction of its sentences)")
    test_file: str = opt("", "test CoNLL-U file, evaluated once with the best checkpoint (default: EWT test; "
                             "with --train-file alone: none)")
    embedding: int = opt(100, "word embedding size", minimum=1)
    min_count: int = opt(1, "words seen fewer times in training are unknown (<unk>)", minimum=1)
    word_dropout: float = opt(0.25, "alpha: a training word seen c times becomes <unk> with probability "
                                    "alpha / (alpha + c) (0: off)", minimum=0)
    char_encoder: str = opt("cnn", "character-level features of each word", CHAR_ENCODERS)
    char_embedding: int = opt(32, "character embedding size", minimum=1)
    char_features: int = opt(64, "character features per word", minimum=1)
    hidden: int = recipe_default(RNNConfig, "hidden", 128)
    layers: int = recipe_default(RNNConfig, "layers", 2)
    bidirectional: bool = recipe_default(RNNConfig, "bidirectional", True)
    dropout: float = recipe_default(RNNConfig, "dropout", 0.33)
    batch_size: int = recipe_default(TrainConfig, "batch_size", 32)
    lr: float = recipe_default(TrainConfig, "lr", 2e-3)
    clip_norm: float = recipe_default(TrainConfig, "clip_norm", 5.0)
    max_epochs: int = recipe_default(TrainConfig, "max_epochs", 20)
    patience: int = recipe_default(TrainConfig, "patience", 4)
    lr_schedule: str = recipe_default(TrainConfig, "lr_schedule", "plateau")

    def validate(self) -> None:
        super().validate()
        if self.char_encoder == "lstm" and self.char_features % 2:
            raise ConfigError(f"--char-features must be even with --char-encoder lstm (two directions); "
                              f"got {self.char_features}")
        if (self.dev_file or self.test_file) and not self.train_file:
            raise ConfigError("--dev-file and --test-file need --train-file (the default is all of UD English EWT)")


def normalize(word: str) -> str:
    """The form looked up in the word vocabulary: lower case, every digit 0."""
    return "".join("0" if ch.isdigit() else ch for ch in word.lower())


def word_chars(word: str) -> str:
    return word if len(word) <= MAX_WORD_CHARS else word[:MAX_WORD_CHARS // 2] + word[-(MAX_WORD_CHARS // 2):]


class Encoder:
    """Sentences -> (word ids (T,), char ids (T, C), tag ids (T,)) with the vocabularies saved in `extra`."""

    def __init__(self, extra: dict):
        self.words = WordVocab(extra["words"])
        self.char_ids = {ch: i for i, ch in enumerate(extra["chars"])}  # 0 padding, 1 unknown
        self.tags = extra["tags"]
        self.tag_ids = {t: i for i, t in enumerate(self.tags)}

    def encode(self, words: list[str], tags: list[str] | None = None):
        ids = self.words.encode([normalize(w) for w in words])
        spelled = [[self.char_ids.get(ch, 1) for ch in word_chars(w)] for w in words]
        chars = torch.zeros(len(words), max(map(len, spelled)), dtype=torch.long)  # (T, C)
        for t, c in enumerate(spelled):
            chars[t, :len(c)] = torch.tensor(c)
        tag_ids = torch.full((len(words),), IGNORE) if tags is None else torch.tensor([self.tag_ids[t] for t in tags])
        return ids, chars, tag_ids


def collate(items: list) -> tuple:
    """Examples (words (T_i,), chars (T_i, C_i), tags (T_i,)) -> ((words (B, T), chars (B, T, C), lengths (B,)),
    tags (B, T)), the tags of padding IGNORE."""
    words, lengths = pad([it[0] for it in items])
    tags, _ = pad([it[2] for it in items], IGNORE)
    chars = torch.zeros(*words.shape, max(it[1].shape[1] for it in items), dtype=torch.long)  # (B, T, C)
    for b, (_, c, _) in enumerate(items):
        chars[b, :c.shape[0], :c.shape[1]] = c
    return (words, chars, lengths), tags


def vocabularies(sentences: list, others: list, min_count: int = 1) -> dict:
    """The word, character and tag lists built from the training sentences, and each word's count
    (for word dropout). Tags of `others` are appended: a dev/test tag never seen in training is
    scored, and always wrong."""
    counts = Counter(normalize(w) for s in sentences for w in s.words)
    words = WordVocab.build(counts, min_count).words
    chars = Counter(ch for s in sentences for w in s.words for ch in word_chars(w))
    tags = sorted({t for s in sentences for t in s.tags})
    tags += sorted({t for s in others for t in s.tags} - set(tags))
    return {"words": words, "chars": ["<pad>", "<unk>", *sorted(chars)], "tags": tags,
            "word_counts": [0, 0, *(counts[w] for w in words[2:])]}


class POSTask(Task):
    name = "pos"
    help = "part-of-speech tagging (CoNLL-U, UD English EWT) with a BiLSTM over words and characters"
    config_class = POSConfig
    monitor, mode = "val_acc", "max"
    commands = ()  # set below, after the functions they call
    test_file_help = "a CoNLL-U file (its tag column: the model's --tagset)"

    def splits(self, cfg) -> Splits:
        read = lambda path: treebank.read_conllu(path, cfg.tagset)
        if cfg.train_file:
            train = read(cfg.train_file)
            dev = read(cfg.dev_file) if cfg.dev_file else None
            test = read(cfg.test_file) if cfg.test_file else None
        else:
            paths = treebank.ewt_paths(cfg.data_dir or None)
            train, dev, test = read(paths["train"]), read(paths["dev"]), read(paths["test"])
        if dev is None:
            kept, held = validation_split(len(train), cfg.val_fraction)
            train, dev = [train[i] for i in kept.tolist()], [train[i] for i in held.tolist()]
        extra = vocabularies(train, dev + (test or []), cfg.min_count)
        encoder = Encoder(extra)
        data = lambda sentences: Examples([encoder.encode(s.words, s.tags) for s in sentences], collate)
        return Splits(data(train), data(dev), data(test) if test else None, extra=extra)

    def read_test_file(self, loaded, args) -> TestFile:
        """The sentences of a CoNLL-U file; a tag outside the model's tag list is refused (it has no output for
        it, so neither its loss nor its accuracy would mean anything)."""
        sentences = treebank.read_conllu(args.test_file, loaded.cfg.tagset)
        known = set(loaded.extra["tags"])
        for s in sentences:
            unknown = next((t for t in s.tags if t not in known), None)
            if unknown is not None:
                raise DataError(f"{args.test_file}: the sentence at line {s.line} has the {loaded.cfg.tagset.upper()} "
                                f"tag {unknown!r}, which the model does not have (its tags: "
                                f"{', '.join(loaded.extra['tags'])})")
        encoder = Encoder(loaded.extra)
        return TestFile(Examples([encoder.encode(s.words, s.tags) for s in sentences], collate), loaded.extra,
                        sentences)

    def build_model(self, cfg, extra: dict) -> Tagger:
        chars = None
        if cfg.char_encoder != "none":
            chars = CharFeatures(len(extra["chars"]), cfg.char_embedding, cfg.char_features, cfg.char_encoder)
        features = cfg.char_features if chars is not None else 0
        counts = torch.tensor(extra["word_counts"], dtype=torch.float)
        word_drop = cfg.word_dropout / (cfg.word_dropout + counts) if cfg.word_dropout > 0 else torch.zeros_like(counts)
        word_drop[:2] = 0  # padding and <unk> stay as they are
        return Tagger(make_rnn(cfg, cfg.embedding + features), len(extra["words"]), len(extra["tags"]),
                      cfg.embedding, chars, features, cfg.dropout, word_drop)

    def onnx_graphs(self, loaded) -> dict:
        """(words (B, T), chars (B, T, C), lengths (B,)) -> logits (B, T, K), ids from the exported extra data."""
        from ..export import Graph, Prediction

        words = torch.randint(2, len(loaded.extra["words"]), (2, 5))
        chars = torch.randint(2, max(3, len(loaded.extra.get("chars", []))), (2, 5, 4))
        lengths = torch.tensor([5, 3])
        axes = {"words": {0: "batch", 1: "time"}, "chars": {0: "batch", 1: "time", 2: "characters"},
                "lengths": {0: "batch"}, "logits": {0: "batch", 1: "time"}}
        return {"tagger": Graph(Prediction(loaded.model), (words, chars, lengths), ["words", "chars", "lengths"],
                                ["logits"], axes)}

    def metrics(self, cfg, extra: dict):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        return MetricCollection({"acc": MulticlassAccuracy(len(extra["tags"]), average="micro", ignore_index=IGNORE)})

    def update_metrics(self, metrics, output, targets) -> None:
        metrics.update(output.argmax(-1), targets)  # tokens, not sentences: padding carries IGNORE

    def report(self, model, cfg, splits, run_dir: Path) -> list[Path]:
        """The per-tag confusion matrix on the test set (the validation set when there is none)."""
        from ..analysis import plots

        data, name = (splits.test, "test") if splits.test is not None else (splits.val, "validation")
        tags = splits.extra["tags"]
        confusion = torch.zeros(len(tags) ** 2, dtype=torch.long)
        with torch.no_grad():
            for start in range(0, len(data), 256):
                inputs, targets = data.__getitems__(list(range(start, min(start + 256, len(data)))))
                predicted = model(_to(inputs, model))[0].argmax(-1).cpu()
                real = targets != IGNORE
                confusion += torch.bincount(targets[real] * len(tags) + predicted[real], minlength=len(tags) ** 2)
        confusion = confusion.view(len(tags), len(tags))
        accuracy = confusion.diag().sum().item() / max(1, confusion.sum().item())
        return [plots.plot_confusion(confusion, tags, run_dir / "confusion.png",
                                     title=f"{cfg.tagset.upper()} on the {name} set: true vs predicted tag "
                                           f"(accuracy {100 * accuracy:.2f}%)")]


def _to(inputs, model):
    device = next(model.parameters()).device
    return tuple(x.to(device) for x in inputs)


@torch.no_grad()
def tag_sentences(loaded, sentences: list[list[str]], batch_size: int = 64) -> list[list[str]]:
    """Tag tokenised sentences (lists of words) with a loaded pos checkpoint (`rnnkit.tasks.load`)."""
    for i, words in enumerate(sentences):
        if not words:
            raise ValueError(f"sentence {i + 1} has no words")
    encoder, model = Encoder(loaded.extra), loaded.model
    tagged = []
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start:start + batch_size]
        inputs, _ = collate([encoder.encode(words) for words in batch])
        predicted = model(_to(inputs, model))[0].argmax(-1).cpu()  # (B, T)
        tagged += [[encoder.tags[k] for k in row[:len(words)].tolist()] for row, words in zip(predicted, batch)]
    return tagged


def read_input_lines(sentence: str | None, stream=None) -> list[tuple[str, str]]:
    """(where, text) of each input: the sentence given, else each line of `stream` (stdin); an empty
    sentence or line is an error naming it."""
    if sentence not in (None, "-"):
        if not sentence.strip():
            raise ValueError("the sentence given is empty")
        return [("the sentence given", sentence)]
    stream = sys.stdin if stream is None else stream
    lines = [("<stdin> line " + str(n), line.rstrip("\r\n")) for n, line in enumerate(stream, 1)]
    empty = [where for where, text in lines if not text.strip()]
    if empty:
        raise ValueError(f"{empty[0]} is empty: give one sentence per line")
    if not lines:
        raise ValueError("no input: give a sentence, or lines on stdin")
    return lines


def _add_tag_arguments(parser) -> None:
    parser.add_argument("sentence", nargs="?", default=None,
                        help="words separated by spaces (punctuation as its own word); '-' or none: one "
                             "sentence per line from stdin")
    parser.add_argument("--json", action="store_true", help="print [{words, tags}] as JSON")


def _run_tag(loaded, args) -> int:
    lines = read_input_lines(args.sentence)
    sentences = [text.split() for _, text in lines]
    tagged = tag_sentences(loaded, sentences)
    if args.json:
        print(json.dumps([{"words": w, "tags": t} for w, t in zip(sentences, tagged)], indent=2))
    else:
        for words, tags in zip(sentences, tagged):
            print(" ".join(f"{w}/{t}" for w, t in zip(words, tags)))
    return 0


POSTask.commands = (Command("tag", "tag the words of sentences with a pos checkpoint (word/TAG ...)",
                            _add_tag_arguments, _run_tag),)
