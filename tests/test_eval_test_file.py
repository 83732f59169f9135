"""`rnnkit eval --test-file`: for each task with a test-file reader (pos, sentiment, translate, forecast, mnist), a
tiny trained model scored on its own test file gives exactly the metrics of `rnnkit eval`, and on a small
hand-made file the metrics of the model run directly with vocabularies encoded by hand; bad files and options
exit non-zero with one line naming them."""
import gzip
import json
import math
import struct
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clirun import rnnkit
from rnnkit.data.parallel import date_pairs
from rnnkit.tasks import TASKS, load
from rnnkit.tasks.testfile import check_options
from rnnkit.training import run
from rnnkit.training.config import ConfigError
from test_forecast import series_csv
from test_pos import treebank
from test_sentiment import write_sst2

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def train(task, *argv):
    code, _, err = rnnkit("train", task, *argv, "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err


def metrics(ckpt, *argv):
    code, out, err = rnnkit("eval", ckpt, "--json", *argv)
    assert code == 0, err
    return json.loads(out)["metrics"]


def fails(ckpt, *argv) -> tuple[int, str]:
    code, out, err = rnnkit("eval", ckpt, *argv)
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return code, err


def encode(words, vocab):
    """Word ids by hand: the vocabulary's index, 1 (<unk>) for a word outside it."""
    return torch.tensor([vocab.index(w) if w in vocab else 1 for w in words])


# -- pos ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pos(tmp_path_factory):
    root = tmp_path_factory.mktemp("pos")
    files = [treebank(root / f"{name}.conllu", n, seed) for name, n, seed in (("train", 80, 1), ("dev", 16, 2),
                                                                                 ("test", 24, 3))]
    train("pos", "--train-file", files[0], "--dev-file", files[1], "--test-file", files[2], "--out", root / "run",
          "--hidden", "8", "--layers", "1", "--embedding", "6", "--char-features", "6", "--char-embedding", "4",
          "--max-epochs", "1", "--batch-size", "16")
    return root, root / "run" / "checkpoints" / "best.ckpt"


def conllu(path, sentences):
    lines = []
    for words in sentences:
        lines += [f"{i}\t{w}\t{w}\t{t}\t_\t_\t0\tdep\t_\t_" for i, (w, t) in enumerate(words, 1)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pos_own_test_file_gives_the_eval_metrics(pos):
    root, ckpt = pos
    assert metrics(ckpt, "--test-file", root / "test.conllu") == metrics(ckpt)


def test_pos_hand_made_file_against_the_model_run_directly(pos, tmp_path):
    _, ckpt = pos
    sentences = [[("The", "DET"), ("zebra", "NOUN"), ("sees", "VERB"), ("a", "DET"), ("dog", "NOUN"), (".", "PUNCT")],
                 [("a", "DET"), ("run", "NOUN"), ("likes", "VERB"), ("a", "DET"), ("Fish", "NOUN"), (".", "PUNCT")]]
    got = metrics(ckpt, "--test-file", conllu(tmp_path / "mine.conllu", sentences), "--batch-size", "8")
    loaded = load(ckpt)
    vocab, tags = loaded.extra["words"], loaded.extra["tags"]
    assert "zebra" not in vocab and "fish" in vocab  # lower-cased as in training; zebra is <unk>
    chars = {ch: i for i, ch in enumerate(loaded.extra["chars"])}
    T, C = 6, max(len(w) for s in sentences for w, _ in s)
    words = torch.stack([encode([w.lower() for w, _ in s], vocab) for s in sentences])  # (B, T)
    spelled = torch.zeros(2, T, C, dtype=torch.long)
    for b, s in enumerate(sentences):
        for t, (w, _) in enumerate(s):
            spelled[b, t, :len(w)] = torch.tensor([chars.get(ch, 1) for ch in w])
    targets = torch.tensor([[tags.index(t) for _, t in s] for s in sentences])
    with torch.no_grad():
        logits, loss = loaded.model((words, spelled, torch.tensor([T, T])), targets)
    assert got["test_acc"] == pytest.approx((logits.argmax(-1) == targets).float().mean().item(), abs=1e-6)
    assert got["test_loss"] == pytest.approx(F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item(), rel=1e-5)
    assert got["test_loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_pos_refuses_a_tag_the_model_lacks_and_a_malformed_file(pos, tmp_path):
    _, ckpt = pos
    code, err = fails(ckpt, "--test-file", conllu(tmp_path / "x.conllu", [[("the", "DET"), ("!", "INTJ")]]))
    assert code == 1 and "x.conllu" in err and "tag 'INTJ', which the model does not have" in err
    (tmp_path / "bad.conllu").write_text("1\tthe\tthe\tDET\n")
    code, err = fails(ckpt, "--test-file", tmp_path / "bad.conllu")
    assert code == 1 and "bad.conllu: line 1 has 4 tab-separated columns" in err
    code, err = fails(ckpt, "--test-file", tmp_path / "none.conllu")
    assert code == 1 and "CoNLL-U file " in err and "none.conllu does not exist" in err
    code, err = fails(ckpt, "--test-file", tmp_path)
    assert code == 1 and f"CoNLL-U file {tmp_path} is a directory, not a file" in err


# -- sentiment ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    write_sst2(root / "data", 200, 1)
    train("sentiment", "--data-dir", root / "data", "--out", root / "run", "--hidden", "6", "--embedding", "6",
          "--max-epochs", "1", "--batch-size", "32", "--val-fraction", "0.2")
    return root, root / "run" / "checkpoints" / "best.ckpt"


def test_sentiment_own_test_file_gives_the_eval_metrics(sentiment):
    root, ckpt = sentiment
    assert metrics(ckpt, "--test-file", root / "data" / "sst2" / "dev.tsv", "--header") == metrics(ckpt)


def test_sentiment_hand_made_file_against_the_model_run_directly(sentiment, tmp_path):
    _, ckpt = sentiment
    rows = [("A witty film.", 1), ("the plot is DULL and zzyzx", 0), ("boring movie", 1)]
    (tmp_path / "mine.txt").write_text("".join(f"{text}\t{label}\n" for text, label in rows))
    got = metrics(ckpt, "--test-file", tmp_path / "mine.txt")
    loaded = load(ckpt)
    vocab = loaded.extra["words"]
    tokens = [["a", "witty", "film", "."], ["the", "plot", "is", "dull", "and", "zzyzx"], ["boring", "movie"]]
    assert "zzyzx" not in vocab
    ids = torch.nn.utils.rnn.pad_sequence([encode(t, vocab) for t in tokens], batch_first=True)
    labels = torch.tensor([label for _, label in rows])
    with torch.no_grad():
        logits, _ = loaded.model((ids, torch.tensor([len(t) for t in tokens])))
    assert got["test_acc"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item(), abs=1e-6)
    assert got["test_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_sentiment_bad_rows_and_options(sentiment, tmp_path):
    root, ckpt = sentiment
    code, err = fails(ckpt, "--test-file", root / "data" / "sst2" / "dev.tsv")  # its header, read as a row
    assert code == 1 and "dev.tsv: line 1: label 'label' is not one of 0..1" in err
    (tmp_path / "bad.txt").write_text("a fine film\t1\nno label here\n")
    code, err = fails(ckpt, "--test-file", tmp_path / "bad.txt")
    assert code == 1 and "bad.txt: line 2 has no label" in err
    code, err = fails(ckpt, "--test-file", tmp_path / "bad.txt", "--test-target", tmp_path / "bad.txt")
    assert code == 2 and "--test-target applies to translate checkpoints; this is a sentiment checkpoint" in err
    code, err = fails(ckpt, "--header")
    assert code == 2 and "--header goes with --test-file" in err
    code, err = fails(ckpt, "--test-file", tmp_path / "bad.txt", "--batch-size", "0")
    assert code == 2 and "--batch-size must be >= 1; got 0" in err


# -- translate ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    root = tmp_path_factory.mktemp("translate")
    train("translate", "--corpus", "dates", "--synthetic-pairs", "200", "--hidden", "12", "--embedding", "8",
          "--max-epochs", "1", "--batch-size", "32", "--beam", "2", "--out", root / "run")
    return root, root / "run" / "checkpoints" / "best.ckpt"


def parallel_files(directory, pairs):
    (directory / "src.txt").write_text("".join(s + "\n" for s, _ in pairs))
    with gzip.open(directory / "tgt.txt.gz", "wt") as f:
        f.write("".join(t + "\n" for _, t in pairs))
    return ["--test-file", directory / "src.txt", "--test-target", directory / "tgt.txt.gz"]


def test_translate_own_test_file_gives_the_eval_metrics_with_bleu(translator, tmp_path):
    _, ckpt = translator
    expected = metrics(ckpt)
    assert {"test_loss", "test_ppl", "test_bleu_greedy", "test_exact_greedy", "test_bleu_beam2"} <= set(expected)
    assert metrics(ckpt, *parallel_files(tmp_path, date_pairs(50, 20_000))) == expected  # the test set: 200 // 4


def test_translate_hand_made_file_against_the_model_run_directly(translator, tmp_path):
    from rnnkit.data import parallel
    from rnnkit.tasks.translate import score, translate

    _, ckpt = translator
    pairs = [("5 march 1999", "1999 03 05"), ("zebra 7 , 2001", "2001 07 07"), ("12 / 10 / 1969", "1969 10 12")]
    got = metrics(ckpt, *parallel_files(tmp_path, pairs))
    loaded = load(ckpt)
    greedy = translate(loaded, [s for s, _ in pairs])
    exact = sum(h == t for h, (_, t) in zip(greedy, pairs)) / 3
    assert got["test_exact_greedy"] == pytest.approx(exact)
    assert got["test_bleu_greedy"] == score(greedy, [t for _, t in pairs])["bleu"]
    src_tok = parallel.load_tokenizer(loaded.extra["src_tokenizer"])
    tgt_tok = parallel.load_tokenizer(loaded.extra["tgt_tokenizer"])
    assert src_tok.encode("zebra").ids == [parallel.UNK_ID]
    src, lengths = parallel.pad(parallel.encode(src_tok, [s for s, _ in pairs]))
    tgt, _ = parallel.pad(parallel.encode(tgt_tok, [t for _, t in pairs]))
    with torch.no_grad():
        _, loss = loaded.model((src, lengths), tgt)
    assert got["test_loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert got["test_ppl"] == pytest.approx(math.exp(loss.item()), rel=1e-5)  # one batch: exp of its token mean


def test_translate_needs_its_target_file_of_as_many_lines(translator, tmp_path):
    _, ckpt = translator
    argv = parallel_files(tmp_path, [("5 march 1999", "1999 03 05")])
    code, err = fails(ckpt, *argv[:2])
    assert code == 2 and "needs --test-target" in err
    (tmp_path / "two.txt").write_text("a\nb\n")
    code, err = fails(ckpt, *argv[:2], "--test-target", tmp_path / "two.txt")
    assert code == 1 and "src.txt has 1 lines" in err and "two.txt has 2" in err


# -- forecast -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def forecaster(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast")
    path = series_csv(root / "s.csv")
    train("forecast", "--csv", path, "--target", "y", "--date", "date", "--window", 8, "--horizon", 2, "--hidden", 4,
          "--season", 7, "--max-epochs", 2, "--out", root / "run")
    return path, root / "run" / "checkpoints" / "best.ckpt"


def test_forecast_own_series_with_the_test_fraction_gives_the_eval_metrics(forecaster):
    path, ckpt = forecaster
    assert metrics(ckpt, "--test-file", path, "--test-fraction", "0.2") == metrics(ckpt)


def test_forecast_hand_made_series_against_the_model_run_directly(forecaster, tmp_path):
    _, ckpt = forecaster
    y = np.array([21.0, 23.5, 24.1, 22.0, 19.5, 18.2, 19.9, 22.3, 24.0, 23.1, 20.2, 18.5, 19.0, 21.7, 23.9])
    dates = np.datetime64("2005-03-01") + np.arange(len(y))
    (tmp_path / "mine.csv").write_text("date,y\n" + "".join(f"{d},{v}\n" for d, v in zip(dates, y)))
    got = metrics(ckpt, "--test-file", tmp_path / "mine.csv")
    loaded = load(ckpt)
    shift, scale = loaded.extra["shift"][0], loaded.extra["scale"][0]
    W, H = 8, 2
    at = np.arange(W, len(y) - H + 1)  # every window with W rows before it
    z = torch.tensor((y - shift) / scale, dtype=torch.float32)
    with torch.no_grad():
        out, _ = loaded.model(torch.stack([z[t - W:t, None] for t in at]))  # (n, H) scaled
    predicted = out.double().numpy() * scale + shift
    truth = np.stack([y[t:t + H] for t in at])
    persistence = np.stack([[y[t - 1]] * H for t in at])
    seasonal = np.stack([y[t - 7:t - 7 + H] for t in at])  # season 7 >= H: one season back
    rmse = lambda a: float(np.sqrt(np.mean((a - truth) ** 2)))  # noqa: E731
    assert got["test_rmse"] == pytest.approx(rmse(predicted), rel=1e-5)
    assert got["test_mae"] == pytest.approx(float(np.mean(np.abs(predicted - truth))), rel=1e-5)
    assert got["test_persistence_rmse"] == pytest.approx(rmse(persistence), rel=1e-5)
    assert got["test_seasonal_rmse"] == pytest.approx(rmse(seasonal), rel=1e-5)


def test_forecast_bad_series_and_options(forecaster, tmp_path):
    _, ckpt = forecaster
    (tmp_path / "other.csv").write_text("date,z\n2001-01-01,1\n")
    code, err = fails(ckpt, "--test-file", tmp_path / "other.csv")
    assert code == 1 and "other.csv" in err and "'y'" in err
    (tmp_path / "short.csv").write_text("date,y\n" + "".join(f"2001-01-{d:02d},{d}\n" for d in range(1, 10)))
    code, err = fails(ckpt, "--test-file", tmp_path / "short.csv")
    assert code == 1 and "short.csv: no window to score: the model reads 8 rows" in err and "9 rows" in err
    code, err = fails(ckpt, "--test-file", tmp_path / "short.csv", "--test-fraction", "1.5")
    assert code == 2 and "--test-fraction must lie in (0, 1]; got 1.5" in err


# -- mnist ----------------------------------------------------------------------------------------------------

needs_mnist = pytest.mark.skipif(not (DATA / "mnist" / "t10k-images-idx3-ubyte.gz").is_file(),
                                 reason="the MNIST files are not in shared/data")


def idx(path, array, magic):
    path.write_bytes(gzip.compress(struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()))
    return path


@needs_mnist
def test_mnist_test_files(tmp_path):
    from rnnkit.data.mnist import read_idx
    from rnnkit.tasks.mnist import to_inputs

    from rnnkit.tasks.mnist import MNISTConfig
    from rnnkit.training.module import CHECKPOINT_KEY, checkpoint_record

    task, cfg = TASKS["mnist"], MNISTConfig(hidden=6, data_dir=str(DATA), batch_size=1000)
    model = task.build_model(cfg, {})  # untrained: a checkpoint as training writes it, without the minutes
    ckpt = tmp_path / "mnist.ckpt"
    torch.save({CHECKPOINT_KEY: checkpoint_record(task, cfg, {}),
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    images, labels = DATA / "mnist" / "t10k-images-idx3-ubyte.gz", DATA / "mnist" / "t10k-labels-idx1-ubyte.gz"
    assert metrics(ckpt, "--test-file", images, "--test-labels", labels) == metrics(ckpt)
    five, their = read_idx(images)[:5], np.array([7, 2, 1, 0, 9], dtype=np.uint8)  # label 9 is wrong for the 5th
    got = metrics(ckpt, "--test-file", idx(tmp_path / "i.gz", five, 2051), "--test-labels",
                  idx(tmp_path / "l.gz", their, 2049))
    with torch.no_grad():
        logits, _ = load(ckpt).model(to_inputs(torch.from_numpy(five)))
    target = torch.from_numpy(their.astype(np.int64))
    assert got["test_acc"] == pytest.approx((logits.argmax(-1) == target).float().mean().item(), abs=1e-6)
    assert got["test_loss"] == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    code, err = fails(ckpt, "--test-file", images)
    assert code == 2 and "needs --test-labels" in err
    code, err = fails(ckpt, "--test-file", images, "--test-labels", idx(tmp_path / "l3.gz", their[:3], 2049))
    assert code == 1 and "has 10000 images but" in err and "l3.gz has 3 labels" in err


# -- options --------------------------------------------------------------------------------------------------

def eval_args(**given):
    return Namespace(**{"test_file": None, "test_target": None, "test_labels": None, "header": False,
                        "test_fraction": None, **given})


def test_options_are_checked_against_the_task():
    check_options(TASKS["forecast"], eval_args(test_file="s.csv", test_fraction=0.2))  # fine
    with pytest.raises(ConfigError, match="--test-file 'x.txt': charlm checkpoints have no test-file reader "
                                          r"\(--test-file takes mnist, translate, pos, sentiment, forecast"):
        check_options(TASKS["charlm"], eval_args(test_file="x.txt"))
    with pytest.raises(ConfigError, match="--test-fraction applies to forecast checkpoints; this is a pos"):
        check_options(TASKS["pos"], eval_args(test_file="x.conllu", test_fraction=0.5))
    with pytest.raises(ConfigError, match="--test-labels goes with --test-file, which was not given"):
        check_options(TASKS["mnist"], eval_args(test_labels="l.gz"))
