"""The notes' encoder-decoder for translation: Multi30k (de, en, fr) with subword tokens, or synthetic
seq2seq tasks that train in seconds (reversing a sequence, rewriting dates). Trained with teacher
forcing; decoded greedily or with beam search; scored with corpus BLEU (sacrebleu) and perplexity;
run with `rnnkit translate CKPT "..."`."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import parallel
from ..data.store import DataError
from ..models import make_rnn
from ..models.attention import KINDS
from ..models.recurrent import rnn_output_size
from ..models.seq2seq import Seq2Seq, beam_search, greedy, max_length
from ..training.config import ConfigError, RNNConfig, TrainConfig, opt
from ..training.data import Splits
from .base import Command, Task, TestFile, recipe_default

CORPORA = ("multi30k", "reverse", "dates")


@dataclass
class TranslateConfig(TrainConfig, RNNConfig):
    corpus: str = opt("multi30k", "parallel text: Multi30k from the data directory, or a synthetic task "
                                  "(reverse a word sequence; rewrite a date as year month day)", CORPORA)
    src: str = opt("de", "Multi30k source language", parallel.LANGUAGES)
    tgt: str = opt("en", "Multi30k target language", parallel.LANGUAGES)
    vocab: int = opt(8000, "BPE vocabulary size of each side (Multi30k)", minimum=16)
    max_tokens: int = opt(0, "cut training sentences to this many tokens (0: keep all)", minimum=0)
    max_pairs: int = opt(0, "use at most this many training pairs (0: all)", minimum=0)
    synthetic_pairs: int = opt(4000, "training pairs of a synthetic task (validation and test: a quarter each)",
                               minimum=1)
    attention: str = opt("additive", "attention over the source: none (one context vector), additive "
                                     "(Bahdanau), dot or general (Luong)", KINDS)
    embedding: int = opt(256, "token embedding size (both sides)", minimum=1)
    teacher_forcing: float = opt(1.0, "probability that the decoder reads the true previous token in training "
                                      "(else its own prediction)", minimum=0)
    beam: int = opt(5, "beam size of the final evaluation (greedy is reported too)", minimum=1)
    alpha: float = opt(1.0, "beam search length normalisation: log p / length**alpha", minimum=0)
    hidden: int = recipe_default(RNNConfig, "hidden", 256)
    cell: str = recipe_default(RNNConfig, "cell", "gru")
    bidirectional: bool = recipe_default(RNNConfig, "bidirectional", True)
    dropout: float = recipe_default(RNNConfig, "dropout", 0.3)
    batch_size: int = recipe_default(TrainConfig, "batch_size", 64)
    clip_norm: float = recipe_default(TrainConfig, "clip_norm", 1.0)
    max_epochs: int = recipe_default(TrainConfig, "max_epochs", 15)
    patience: int = recipe_default(TrainConfig, "patience", 3)
    lr_schedule: str = recipe_default(TrainConfig, "lr_schedule", "plateau")

    def validate(self) -> None:
        super().validate()
        if self.src == self.tgt:
            raise ConfigError(f"--src and --tgt must differ; got {self.src!r} for both")
        if self.teacher_forcing > 1:
            raise ConfigError(f"--teacher-forcing is a probability in [0, 1]; got {self.teacher_forcing!r}")
        if self.attention == "dot":
            memory = (2 if self.bidirectional else 1) * (self.proj_size or self.hidden)
            if memory != (self.proj_size or self.hidden):
                raise ConfigError(f"--attention dot needs encoder outputs ({memory}) as wide as the decoder "
                                  f"state ({self.proj_size or self.hidden}): use --no-bidirectional or "
                                  f"--attention general")


class TranslateTask(Task):
    name = "translate"
    help = "sequence to sequence with attention (Multi30k translation, or synthetic tasks), BLEU"
    config_class = TranslateConfig
    monitor, mode = "val_loss", "min"
    test_file_help = "source sentences, one per line (.gz: gzip'd), with --test-target, their translations"
    test_file_options = ("test_target",)

    def splits(self, cfg) -> Splits:
        train, val, test = pairs(cfg)
        kind = "bpe" if cfg.corpus == "multi30k" else "word"
        src_tok = parallel.train_tokenizer([s for s, _ in train], kind, cfg.vocab)
        tgt_tok = parallel.train_tokenizer([t for _, t in train], kind, cfg.vocab)
        extra = {"corpus": cfg.corpus, "src_tokenizer": src_tok.to_str(), "tgt_tokenizer": tgt_tok.to_str(),
                 "src_vocab": src_tok.get_vocab_size(), "tgt_vocab": tgt_tok.get_vocab_size()}
        datasets = [pair_batches(src_tok, tgt_tok, train, cfg.max_tokens), pair_batches(src_tok, tgt_tok, val),
                    pair_batches(src_tok, tgt_tok, test)]
        return Splits(*datasets, extra=extra)

    def read_test_file(self, loaded, args) -> TestFile:
        """Parallel files (line i of --test-target translates line i of --test-file), tokenised by the
        checkpoint's tokenizers; test loss and perplexity, and BLEU from decoded_metrics."""
        if args.test_target is None:
            raise ConfigError(f"--test-file {args.test_file!r} of a translate checkpoint needs --test-target, "
                              "the file of its reference translations")
        items = parallel.read_parallel(args.test_file, args.test_target)
        if not items:
            raise DataError(f"{args.test_file} holds no lines to translate")
        src_tok = parallel.load_tokenizer(loaded.extra["src_tokenizer"])
        tgt_tok = parallel.load_tokenizer(loaded.extra["tgt_tokenizer"])
        return TestFile(pair_batches(src_tok, tgt_tok, items), loaded.extra, items)

    def decoded_metrics(self, loaded, cfg, items=None) -> dict:
        """Corpus BLEU and exact match of greedy and beam-search (--beam of the run) translations, as bleu.json."""
        test = pairs(cfg)[2] if items is None else items
        sources, references = [s for s, _ in test], [t for _, t in test]
        metrics, beams = {}, {"greedy": 1, **({f"beam{cfg.beam}": cfg.beam} if cfg.beam > 1 else {})}
        for name, beam in beams.items():
            scores = score(translate(loaded, sources, beam=beam, alpha=cfg.alpha), references)
            metrics.update({f"test_bleu_{name}": scores["bleu"], f"test_exact_{name}": scores["exact"]})
        return metrics

    def build_model(self, cfg, extra: dict) -> Seq2Seq:
        encoder = make_rnn(cfg, cfg.embedding)
        decoder = make_rnn(cfg, cfg.embedding + rnn_output_size(encoder), bidirectional=False)
        return Seq2Seq(encoder, decoder, extra["src_vocab"], extra["tgt_vocab"], cfg.embedding, cfg.attention,
                       cfg.dropout, cfg.teacher_forcing)

    def onnx_graphs(self, loaded) -> dict:
        """Two graphs: the encoder, (src (B, S), lengths (B,)) -> the memory the decoder reads and its
        initial state; and one decoder step, (previous token (B,), memory, state) -> (logits (B, V), state,
        attention weights (B, S)); greedy or beam decoding loops over the step outside the graph."""
        from ..export import Graph

        model = loaded.model
        src, lengths = torch.randint(4, model.src_embed.num_embeddings, (2, 6)), torch.tensor([6, 4])
        memory, state = model.encode(src, lengths)
        states = state if isinstance(state, tuple) else (state,)
        state_in, state_out = ["h", "c"][:len(states)], ["h_next", "c_next"][:len(states)]
        memory_names = ["outputs", "keys", "mask", "summary"] if model.attention is not None else \
            ["outputs", "mask", "summary"]
        source = {"outputs": {0: "batch", 1: "source"}, "keys": {0: "batch", 1: "source"},
                  "mask": {0: "batch", 1: "source"}, "summary": {0: "batch"}}
        batch1 = {name: {1: "batch"} for name in state_in + state_out}
        encoder = Graph(_Encoder(model), (src, lengths), ["src", "lengths"], memory_names + state_in,
                        {"src": {0: "batch", 1: "source"}, "lengths": {0: "batch"},
                         **{k: v for k, v in source.items() if k in memory_names}, **batch1})
        tensors = [getattr(memory, name) for name in memory_names]
        previous = torch.tensor([parallel.BOS_ID, parallel.BOS_ID])
        outputs = ["logits", *state_out] + (["weights"] if model.attention is not None else [])
        decoder = Graph(_DecoderStep(model, memory_names), (previous, *tensors, *states),
                        ["previous", *memory_names, *state_in], outputs,
                        {"previous": {0: "batch"}, "logits": {0: "batch"}, "weights": {0: "batch", 1: "source"},
                         **{k: v for k, v in source.items() if k in memory_names}, **batch1})
        return {"encoder": encoder, "decoder_step": decoder}

    def metrics(self, cfg, extra: dict):
        from torchmetrics import MetricCollection
        from torchmetrics.text import Perplexity

        return MetricCollection({"ppl": Perplexity(ignore_index=parallel.PAD_ID)})

    def report(self, model, cfg, splits, run_dir: Path) -> list[Path]:
        """Test-set translations (greedy and beam), their BLEU and exact match in bleu.json, and attention maps."""
        loaded = _Loaded(model, splits.extra)
        _, _, test = pairs(cfg)
        sources, references = [s for s, _ in test], [t for _, t in test]
        results, written = {}, []
        for name, beam in (("greedy", 1), (f"beam{cfg.beam}", cfg.beam)):
            hypotheses = translate(loaded, sources, beam=beam, alpha=cfg.alpha)
            path = run_dir / f"test_{name}.txt"
            path.write_text("".join(h + "\n" for h in hypotheses))
            results[name] = score(hypotheses, references)
            written.append(path)
        (run_dir / "bleu.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results), flush=True)
        written.append(run_dir / "bleu.json")
        if model.attention is not None:
            written.append(attention_picture(loaded, sources[:3], run_dir / "attention.png"))
        return written


class _Loaded:
    """The part of a loaded checkpoint that translate() uses, for a model still in memory."""

    def __init__(self, model, extra):
        self.model, self.extra = model, extra


def pairs(cfg) -> tuple[list, list, list]:
    """(train, val, test) lists of (source, target) sentences: Multi30k's splits (test: test_2016_flickr),
    or a synthetic task's, drawn with seeds of their own (the test set does not depend on --seed)."""
    if cfg.corpus == "multi30k":
        root = cfg.data_dir or None
        train, val, test = (parallel.read_multi30k(s, cfg.src, cfg.tgt, root) for s in ("train", "val", "test"))
    else:
        make = parallel.reverse_pairs if cfg.corpus == "reverse" else parallel.date_pairs
        n = cfg.synthetic_pairs
        train, val, test = make(n, cfg.seed), make(max(1, n // 4), 10_000 + cfg.seed), make(max(1, n // 4), 20_000)
    return (train[:cfg.max_pairs] if cfg.max_pairs else train), val, test


def pair_batches(src_tok, tgt_tok, pairs, max_tokens: int = 0) -> parallel.PairBatches:
    return parallel.PairBatches(parallel.encode(src_tok, [s for s, _ in pairs], max_tokens),
                                parallel.encode(tgt_tok, [t for _, t in pairs], max_tokens))


def score(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU (sacrebleu, its 13a tokenisation, case-insensitive as the model writes lower case) and
    the fraction of exact matches."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = sacrebleu.corpus_bleu(hypotheses, [references], lowercase=True)
    exact = sum(h.lower() == r.lower() for h, r in zip(hypotheses, references)) / max(1, len(references))
    return {"bleu": round(bleu.score, 2), "exact": round(exact, 4), "sentences": len(references)}


@torch.no_grad()
def translate(loaded, sentences: list[str], beam: int = 1, alpha: float = 1.0, max_len: int = 0,
              batch_size: int = 64) -> list[str]:
    """Detokenised translations of `sentences` by a loaded translate checkpoint (greedy when beam is 1)."""
    model = loaded.model
    was_training = model.training
    model.eval()
    src_tok = parallel.load_tokenizer(loaded.extra["src_tokenizer"])
    tgt_tok = parallel.load_tokenizer(loaded.extra["tgt_tokenizer"])
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(sentences), batch_size):
            src, lengths = parallel.pad(parallel.encode(src_tok, sentences[start:start + batch_size]))
            src = src.to(device)
            limit = max_len or max_length(src)
            if beam == 1:
                ids, _, _ = greedy(model, src, lengths, limit)
            else:
                ids, _ = beam_search(model, src, lengths, beam, limit, alpha)
            out += [parallel.decode(tgt_tok, row.tolist()) for row in ids]
    finally:
        model.train(was_training)
    return out


def attention_picture(loaded, sentences: list[str], out: Path) -> Path:
    """Greedy translations of `sentences` with the attention weights of each output token, as a PNG."""
    from ..analysis.attention import plot_attention

    model = loaded.model
    src_tok = parallel.load_tokenizer(loaded.extra["src_tokenizer"])
    tgt_tok = parallel.load_tokenizer(loaded.extra["tgt_tokenizer"])
    examples = []
    for sentence in sentences:
        src = parallel.encode(src_tok, [sentence])[0]
        ids, _, weights = greedy(model.eval(), src[None], torch.tensor([len(src)]), max_length(src[None]))
        ids = ids[0].tolist()
        n = ids.index(parallel.EOS_ID) + 1 if parallel.EOS_ID in ids else len(ids)
        examples.append(([src_tok.id_to_token(i) for i in src.tolist()], [tgt_tok.id_to_token(i) for i in ids[:n]],
                         weights[0, :n].cpu().tolist()))
    return plot_attention(examples, out, title="attention: output tokens (rows) over source tokens")


def _add_translate_arguments(parser) -> None:
    parser.add_argument("sentence", nargs="*", help="sentences to translate (none, or '-': one per line from stdin)")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    parser.add_argument("--alpha", type=float, default=1.0, help="length normalisation: log p / length**alpha")
    parser.add_argument("--max-len", type=int, default=0, help="most tokens per translation (0: 2 * source + 10)")


def _run_translate(loaded, args) -> int:
    if args.beam < 1:
        raise ConfigError(f"--beam must be >= 1; got {args.beam}")
    if args.max_len < 0:
        raise ConfigError(f"--max-len must be >= 0; got {args.max_len}")
    lines = args.sentence if args.sentence and args.sentence != ["-"] else sys.stdin.read().splitlines()
    lines = [line.strip() for line in lines if line.strip()]
    if not lines:
        raise ConfigError("nothing to translate: give sentences as arguments or one per line on stdin")
    for translation in translate(loaded, lines, beam=args.beam, alpha=args.alpha, max_len=args.max_len):
        print(translation)
    return 0


TranslateTask.commands = (Command("translate", "translate sentences with a translate checkpoint (one per line)",
                                  _add_translate_arguments, _run_translate),)


class _Encoder(torch.nn.Module):
    """Seq2Seq.encode with its results flat, as ONNX outputs are."""

    def __init__(self, model: Seq2Seq):
        super().__init__()
        self.model = model

    def forward(self, src, lengths):
        memory, state = self.model.encode(src, lengths)
        tensors = [memory.outputs] + ([memory.keys] if memory.keys is not None else []) + [memory.mask, memory.summary]
        return (*tensors, *(state if isinstance(state, tuple) else (state,)))


class _DecoderStep(torch.nn.Module):
    """Seq2Seq.step on the previous token, with the memory and the state flat, as ONNX inputs are."""

    def __init__(self, model: Seq2Seq, memory_names: list):
        super().__init__()
        self.model, self.memory_names = model, memory_names

    def forward(self, previous, *flat):
        from ..models.seq2seq import Memory

        k = len(self.memory_names)
        named = dict(zip(self.memory_names, flat[:k]))
        memory = Memory(named["outputs"], named.get("keys"), named["mask"], named["summary"])
        states = flat[k:]
        logits, state, weights = self.model.step(self.model.tgt_embed(previous), states if len(states) > 1
                                                 else states[0], memory)
        state = state if isinstance(state, tuple) else (state,)
        return (logits, *state) + ((weights,) if weights is not None else ())
