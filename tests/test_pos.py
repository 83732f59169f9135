"""The POS tagger: the masked loss and accuracy against a hand computation, padding that changes nothing,
the model against torch.nn with copied weights, and `rnnkit train pos` + `rnnkit tag` end to end."""
import io
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from clirun import rnnkit
from rnnkit.models.tagger import IGNORE, CharFeatures, Tagger, WordDropout, tagging_loss
from rnnkit.tasks import get_task
from rnnkit.tasks.pos import POSConfig, collate
from rnnkit.training import run


def tagger(char_encoder="cnn", words=20, chars=12, tags=5, layers=2):
    cfg = POSConfig(hidden=6, layers=layers, embedding=5, char_encoder=char_encoder, char_embedding=4,
                    char_features=6, dropout=0.0, word_dropout=0.0)
    extra = {"words": ["<pad>", "<unk>"] + [f"w{i}" for i in range(words - 2)],
             "word_counts": [0, 0] + [1] * (words - 2),
             "chars": ["<pad>", "<unk>"] + [chr(97 + i) for i in range(chars - 2)],
             "tags": [f"T{i}" for i in range(tags)]}
    return get_task("pos").build_model(cfg, extra).eval()


def example(length, chars=12, longest_word=6):
    """(word ids (T,), char ids (T, C), tags (T,)) with random content."""
    word_lengths = torch.randint(1, longest_word + 1, (length,))
    spelled = torch.zeros(length, int(word_lengths.max()), dtype=torch.long)
    for t, n in enumerate(word_lengths.tolist()):
        spelled[t, :n] = torch.randint(1, chars, (n,))
    return torch.randint(1, 20, (length,)), spelled, torch.randint(0, 5, (length,))


def test_masked_loss_and_accuracy_by_hand():
    logits = torch.randn(2, 3, 4)
    targets = torch.tensor([[2, 0, IGNORE], [1, IGNORE, IGNORE]])
    real = [(0, 0), (0, 1), (1, 0)]
    by_hand = -sum(math.log(math.exp(logits[b, t, targets[b, t]]) / sum(math.exp(v) for v in logits[b, t].tolist()))
                   for b, t in real) / len(real)
    assert tagging_loss(logits, targets).item() == pytest.approx(by_hand, rel=1e-6)
    metrics = get_task("pos").metrics(POSConfig(), {"tags": list("abcd")})
    get_task("pos").update_metrics(metrics, logits, targets)
    correct = sum(int(logits[b, t].argmax() == targets[b, t]) for b, t in real)
    assert metrics.compute()["acc"].item() == pytest.approx(correct / 3)


@pytest.mark.parametrize("char_encoder", ["cnn", "lstm", "none"])
def test_padding_is_inert(char_encoder):
    """One sentence in batches padded to different lengths (words and characters) gets the same output."""
    model, sentence = tagger(char_encoder), example(5, longest_word=3)
    alone = collate([sentence])
    crowded = collate([example(11, longest_word=9), sentence, example(2)])
    with torch.no_grad():
        a = model(alone[0])[0][0]                                         # (5, K)
        b = model(crowded[0])[0][1, :5]
    assert crowded[0][0].shape[1] == 11 and crowded[0][1].shape[2] == 9  # really padded further
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert torch.allclose(a, b, atol=1e-6)


def test_tagger_equals_torch_nn_with_copied_weights():
    model = tagger("none")
    reference = torch.nn.LSTM(5, 6, 2, batch_first=True, bidirectional=True)
    reference.load_state_dict(model.rnn.state_dict())
    batch = [example(n) for n in (4, 7)]
    (inputs, targets) = collate(batch)
    with torch.no_grad():
        logits, loss = model(inputs, targets)
        for b, (words, _, tags) in enumerate(batch):
            expected = model.head(reference(model.embed(words)[None])[0])[0]  # (T, K), unpadded
            assert torch.allclose(logits[b, :len(words)], expected, atol=1e-6)
        flat = torch.cat([model.head(reference(model.embed(w)[None])[0])[0] for w, _, _ in batch])
        assert loss.item() == pytest.approx(F.cross_entropy(flat, torch.cat([t for _, _, t in batch])).item(), rel=1e-6)


def test_character_features_against_torch_nn_word_by_word():
    chars = torch.tensor([[3, 4, 5, 0, 0], [6, 0, 0, 0, 0], [2, 7, 8, 9, 10]])   # (N, C), 0 after each word
    cnn, lstm = CharFeatures(12, 4, 6, "cnn"), CharFeatures(12, 4, 6, "lstm")
    reference = torch.nn.LSTM(4, 3, batch_first=True, bidirectional=True)
    reference.load_state_dict(lstm.lstm.state_dict())
    with torch.no_grad():
        for word, cnn_row, lstm_row in zip(chars, cnn(chars), lstm(chars)):
            word = word[word != 0]
            conv = cnn.conv(cnn.embed(word).T[None])[0]                         # (F, n), the word alone
            assert torch.allclose(cnn_row, conv.amax(1), atol=1e-6)
            _, (h, _) = reference(lstm.embed(word)[None])                       # h: (2, 1, 3)
            assert torch.allclose(lstm_row, torch.cat([h[0, 0], h[1, 0]]), atol=1e-6)


def test_word_dropout_follows_alpha_over_alpha_plus_count():
    cfg = POSConfig(word_dropout=0.25, char_encoder="none", hidden=4, embedding=3)
    extra = {"words": ["<pad>", "<unk>", "once", "often"], "word_counts": [0, 0, 1, 99], "chars": ["<pad>", "<unk>"],
             "tags": ["A"]}
    model = get_task("pos").build_model(cfg, extra)
    assert model.word_drop.probs.tolist() == pytest.approx([0, 0, 0.25 / 1.25, 0.25 / 99.25])
    ids = torch.tensor([[2] * 20000 + [3] * 20000 + [0] * 100])
    dropped = WordDropout.forward(model.word_drop.train(), ids) == 1
    assert dropped[0, :20000].float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert dropped[0, 20000:40000].float().mean().item() == pytest.approx(0.0025, abs=0.002)
    assert not dropped[0, 40000:].any()
    assert torch.equal(model.word_drop.eval()(ids), ids)


def test_the_model_checks_its_input_width():
    with pytest.raises(ValueError, match="reads 7 features per token; the tagger gives 5 .words. \\+ 0"):
        Tagger(torch.nn.LSTM(7, 3, batch_first=True), 10, 3, 5)


# -- end to end -------------------------------------------------------------------------------------------------

NOUNS, VERBS, ADJS = ["cat", "dog", "bird", "fish"], ["sees", "likes", "finds"], ["big", "small", "red"]


def treebank(path, n, seed):
    """Sentences "the ADJ NOUN VERB a NOUN ." where 'run' is a NOUN after a determiner and a VERB after a noun:
    only the context tells which."""
    rng, lines = random.Random(seed), []
    for _ in range(n):
        words = [("the", "DET"), (rng.choice(ADJS), "ADJ")] * rng.randint(0, 1) or [("the", "DET")]
        words += [(rng.choice(NOUNS + ["run"]), "NOUN"), (rng.choice(VERBS + ["run"]), "VERB"), ("a", "DET"),
                  (rng.choice(NOUNS + ["run"]), "NOUN"), (".", "PUNCT")]
        lines += [f"{i}\t{w}\t{w}\t{t}\t{t[:2]}\t_\t0\tdep\t_\t_" for i, (w, t) in enumerate(words, 1)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pos")
    files = [treebank(root / f"{name}.conllu", n, seed) for name, n, seed in (("train", 300, 1), ("dev", 40, 2),
                                                                                 ("test", 40, 3))]
    code, out, err = rnnkit("train", "pos", "--train-file", files[0], "--dev-file", files[1], "--test-file", files[2],
                            "--out", root / "run", "--hidden", "16", "--layers", "1", "--embedding", "8",
                            "--char-features", "8", "--char-embedding", "8", "--lr", "0.02", "--max-epochs", "6",
                            "--batch-size", "16", "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    return root / "run"


def test_training_learns_the_tags_and_draws_the_confusion_matrix(trained):
    result = json.loads((trained / "metrics.json").read_text())
    assert result["test"]["test_acc"] > 0.98
    assert "confusion.png" in result["artifacts"] and (trained / "confusion.png").is_file()


def test_tag_command_tags_a_sentence_and_stdin_lines(trained, monkeypatch):
    ckpt = trained / "checkpoints" / "best.ckpt"
    code, out, err = rnnkit("tag", ckpt, "the run sees a run .")
    assert code == 0, err
    assert out.split() == ["the/DET", "run/NOUN", "sees/VERB", "a/DET", "run/NOUN", "./PUNCT"]
    monkeypatch.setattr("sys.stdin", io.StringIO("the dog run a fish .\nthe big cat likes a dog .\n"))
    code, out, err = rnnkit("tag", ckpt, "--json")
    assert code == 0, err
    tagged = json.loads(out)
    assert [t["tags"][2] for t in tagged] == ["VERB", "NOUN"] and tagged[1]["words"][1] == "big"


@pytest.mark.parametrize("argv, stdin, code, message", [
    (["   "], "", 1, "the sentence given is empty"),
    (["-"], "the cat sees a dog .\n\nthe dog .\n", 1, "<stdin> line 2 is empty: give one sentence per line"),
    ([], "", 1, "no input: give a sentence, or lines on stdin"),
])
def test_tag_bad_input(trained, monkeypatch, argv, stdin, code, message):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    got, _, err = rnnkit("tag", trained / "checkpoints" / "best.ckpt", *argv)
    assert got == code and message in err and "Traceback" not in err


def test_train_refuses_malformed_conllu_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tthe\tthe\tDET\tDT\t_\t0\troot\t_\t_\n2\tcat\tcat\tNOUN\n")
    code, _, err = rnnkit("train", "pos", "--train-file", bad, "--out", tmp_path / "run")
    assert code == 1 and "bad.conllu: line 2 has 4 tab-separated columns" in err and "Traceback" not in err
    code, _, err = rnnkit("train", "pos", "--dev-file", bad, "--out", tmp_path / "run2")
    assert code == 2 and "--dev-file and --test-file need --train-file" in err


def test_tag_refuses_a_checkpoint_of_another_task(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abc abc abc " * 50)
    code, _, err = rnnkit("train", "charlm", "--text", text, "--out", tmp_path / "lm", "--hidden", "4", "--layers", "1",
                          "--max-epochs", "1", "--sample-length", "1", "--no-progress", "--bptt", "10")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    code, _, err = rnnkit("tag", tmp_path / "lm" / "checkpoints" / "best.ckpt", "the cat")
    assert code == 2 and "`rnnkit tag` runs pos checkpoints" in err
