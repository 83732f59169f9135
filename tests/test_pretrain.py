"""Language-model pretraining of a text model's embedding and recurrent layer (models/pretrain.py): the
loss against a hand-written loop over the words, that it learns, that it is refused where directions mix,
and `rnnkit train sentiment --pretrain-epochs` end to end (unlabelled text files included)."""
import gzip
import json

import pytest
import torch

import rnnkit
from clirun import rnnkit as cli
from rnnkit.data.sentences import read_text_files, whole_sentences
from rnnkit.data.store import DataError
from rnnkit.models.pretrain import LanguageModelHead, pretrain
from rnnkit.tasks.sentiment import SentimentConfig
from rnnkit.training import run
from rnnkit.training.config import ConfigError
from rnnkit.training.module import CHECKPOINT_KEY
from test_sentiment import write_sst2


@pytest.mark.parametrize("bidirectional", [False, True])
def test_head_loss_equals_a_loop_over_words(bidirectional):
    """Forward output at t scores word t+1, backward output at t word t-1, padding never counts."""
    torch.manual_seed(0)
    V, B, T = 30, 3, 6
    rnn = rnnkit.LSTM(4, 5, batch_first=True, bidirectional=bidirectional, dtype=torch.float64)
    head = LanguageModelHead(rnn, V).double()
    lengths = torch.tensor([6, 4, 1])
    ids = torch.randint(2, V, (B, T)) * (torch.arange(T) < lengths[:, None])
    output = torch.randn(B, T, 10 if bidirectional else 5, dtype=torch.float64)
    terms = []
    for b in range(B):
        for t in range(int(lengths[b])):
            forward, backward = output[b, t, :5], output[b, t, 5:]
            if t + 1 < lengths[b]:
                terms.append(head.softmax.log_prob(forward[None])[0, ids[b, t + 1]])
            if bidirectional and t > 0:
                terms.append(head.softmax.log_prob(backward[None])[0, ids[b, t - 1]])
    expected = -torch.stack(terms).mean()
    torch.testing.assert_close(head(output, ids, lengths), expected, rtol=1e-10, atol=1e-10)


def test_pretraining_learns_the_language_and_keeps_the_rest():
    """A corpus where each word determines the next: the loss falls far below a uniform guess; the
    embedding and the recurrent layer change, and the model's other parts do not."""
    torch.manual_seed(0)
    V = 12
    sentences = [torch.tensor([2 + (s + k) % (V - 2) for k in range(n)]) for s in range(40) for n in (3, 5, 8)]
    embed = torch.nn.Embedding(V, 8)
    rnn = rnnkit.LSTM(8, 16, batch_first=True, bidirectional=True)
    before = [p.detach().clone() for p in (*embed.parameters(), *rnn.parameters())]
    losses = pretrain(embed, rnn, V, sentences, epochs=30, batch_size=16, lr=0.02, log=lambda line: None)
    assert losses[0] > 1.5 and losses[-1] < 0.2  # log(10) = 2.3 nats per word for a uniform guess
    after = [*embed.parameters(), *rnn.parameters()]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    assert embed.training and rnn.training


def test_pretraining_refuses_a_bidirectional_stack():
    rnn = rnnkit.LSTM(4, 5, 2, batch_first=True, bidirectional=True)
    with pytest.raises(ValueError, match="bidirectional stack of 2 layers"):
        LanguageModelHead(rnn, 20)
    with pytest.raises(ValueError, match="--pretrain-epochs: a language model reads each direction"):
        SentimentConfig(pretrain_epochs=1, layers=2).validate()
    with pytest.raises(ValueError, match="sentences of at least 2 words"):
        pretrain(torch.nn.Embedding(5, 4), rnnkit.LSTM(4, 5, batch_first=True), 5, [torch.tensor([2])], epochs=1,
                 batch_size=2)


def test_pretrain_text_needs_pretraining():
    with pytest.raises(ConfigError, match="--pretrain-text 'a.txt' needs --pretrain-epochs > 0"):
        SentimentConfig(pretrain_text="a.txt").validate()


def test_text_files_plain_and_gzip(tmp_path):
    (tmp_path / "a.txt").write_text("Doesn't it work?\n\n  \nA second line.\n")
    (tmp_path / "b.txt.gz").write_bytes(gzip.compress("Third one\n".encode()))
    assert read_text_files(f"{tmp_path / 'a.txt'}, {tmp_path / 'b.txt.gz'}") == [
        ["does", "n't", "it", "work", "?"], ["a", "second", "line", "."], ["third", "one"]]
    (tmp_path / "bad.txt").write_bytes(b"fine\nnot \xff fine\n")
    with pytest.raises(DataError, match=r"bad.txt: line 2 is not valid UTF-8"):
        read_text_files(str(tmp_path / "bad.txt"))
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"bad.gz: not a readable gzip file"):
        read_text_files(str(tmp_path / "bad.gz"))
    with pytest.raises(FileNotFoundError, match=r"text file .*missing.txt does not exist"):
        read_text_files(str(tmp_path / "missing.txt"))


def test_whole_sentences_are_the_phrases_no_other_contains():
    phrases = [["a", "b", "c"], ["b", "c"], ["d"], ["a", "b", "c"], ["d", "e"], ["c", "a"]]
    assert whole_sentences(phrases) == [0, 4, 5]


def test_train_sentiment_pretrains_on_sentences_and_text(tmp_path):
    write_sst2(tmp_path / "data", 300, 2)
    (tmp_path / "more.txt").write_text("a wonderful plot and a dull film\nzebra words join the vocabulary\n")
    code, out, err = cli("train", "sentiment", "--data-dir", tmp_path / "data", "--out", tmp_path / "run",
                         "--hidden", "8", "--embedding", "6", "--max-epochs", "1", "--batch-size", "32",
                         "--pretrain-epochs", "2", "--pretrain-text", tmp_path / "more.txt", "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    assert "language-model pretraining on" in out and "pretraining epoch 2/2" in out
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["config"]["pretrain_epochs"] == 2
    saved = run.read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")[CHECKPOINT_KEY]
    assert "zebra" in saved["extra"]["words"]  # a word of the text file only
    code, out, err = cli("train", "sentiment", "--out", tmp_path / "run", "--resume", "--max-epochs", "2",
                         "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    assert "pretraining" not in out  # a resumed run continues from its checkpoint


def test_train_sentiment_names_a_missing_text_file(tmp_path):
    write_sst2(tmp_path / "data", 50, 3)
    code, out, err = cli("train", "sentiment", "--data-dir", tmp_path / "data", "--out", tmp_path / "run",
                         "--pretrain-epochs", "1", "--pretrain-text", tmp_path / "nope.txt", "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code != 0 and "nope.txt does not exist" in err and "Traceback" not in err
