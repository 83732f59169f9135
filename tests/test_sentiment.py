"""The sentiment classifier: padding that changes nothing, the model against torch.nn with copied weights,
and `rnnkit train sentiment` + `rnnkit classify` end to end on a tiny SST-2-shaped data directory."""
import io
import json
import random
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clirun import rnnkit
from rnnkit.data.sentences import read_sst2
from rnnkit.tasks import get_task, load
from rnnkit.tasks.sentiment import SentimentConfig, classify, collate
from rnnkit.training import run


def classifier(readout="max", **options):
    cfg = SentimentConfig(hidden=6, embedding=5, readout=readout, dropout=0.0, word_dropout=0.0, embed_dropout=0.0,
                          **options)
    extra = {"words": ["<pad>", "<unk>"] + [f"w{i}" for i in range(18)], "labels": ["negative", "positive"]}
    return get_task("sentiment").build_model(cfg, extra).eval()


@pytest.mark.parametrize("readout", ["last", "final", "mean", "max"])
def test_padding_is_inert(readout):
    model, sentence = classifier(readout), torch.randint(2, 20, (4,))
    alone, _ = collate([(sentence, 0)])
    crowded, _ = collate([(torch.randint(2, 20, (13,)), 0), (sentence, 1), (torch.randint(2, 20, (2,)), 0)])
    with torch.no_grad():
        a, b = model(alone)[0][0], model(crowded)[0][1]
    assert crowded[0].shape[1] == 13
    assert a.argmax() == b.argmax() and torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("readout", ["last", "mean", "max"])
def test_classifier_equals_torch_nn_with_copied_weights(readout):
    model = classifier(readout, layers=2)
    reference = torch.nn.LSTM(5, 6, 2, batch_first=True, bidirectional=True)
    reference.load_state_dict(model.classifier.rnn.state_dict())
    texts = [torch.randint(2, 20, (n,)) for n in (3, 8, 5)]
    inputs, labels = collate([(t, i % 2) for i, t in enumerate(texts)])
    pool = {"last": lambda out: out[-1], "mean": lambda out: out.mean(0), "max": lambda out: out.amax(0)}[readout]
    with torch.no_grad():
        logits, loss = model(inputs, labels)
        expected = torch.stack([model.classifier.head(pool(reference(model.embed(t)[None])[0][0])) for t in texts])
    assert torch.allclose(logits, expected, atol=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(expected, labels).item(), rel=1e-6)


def test_word_dropout_replaces_words_by_unknown_in_training_only():
    model = classifier()
    model.word_drop.probs[2:] = 0.3
    ids = torch.randint(2, 20, (200, 50))
    dropped = model.word_drop.train()(ids) == 1
    assert dropped.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert torch.equal(model.word_drop.eval()(ids), ids)


@pytest.mark.parametrize("option, message", [("word_dropout", "--word-dropout must lie in [0, 1); got 1.0"),
                                             ("embed_dropout", "--embed-dropout must lie in [0, 1); got 1.0")])
def test_config_checks_the_dropouts(option, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        SentimentConfig(**{option: 1.0}).validate()


# -- end to end -------------------------------------------------------------------------------------------------

GOOD, BAD = ["great", "wonderful", "witty", "gorgeous"], ["dull", "awful", "boring", "tedious"]
FILL = ["a", "movie", "film", "the", "plot", "is", "and", "very"]


def write_sst2(directory, n, seed):
    rng = random.Random(seed)
    (directory / "sst2").mkdir(parents=True)
    for name, rows in (("train", n), ("dev", n // 5)):
        lines = ["sentence\tlabel"]
        for _ in range(rows):
            label = rng.randint(0, 1)
            words = rng.choices(FILL, k=rng.randint(1, 6)) + [rng.choice(GOOD if label else BAD)]
            rng.shuffle(words)
            lines.append(" ".join(words) + " \t" + str(label))
        (directory / "sst2" / f"{name}.tsv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    write_sst2(root / "data", 600, 1)
    code, out, err = rnnkit("train", "sentiment", "--data-dir", root / "data", "--out", root / "run", "--hidden", "12",
                            "--embedding", "8", "--lr", "0.02", "--max-epochs", "5", "--batch-size", "32",
                            "--val-fraction", "0.2", "--no-progress")
    run.os.environ.pop(run.RUN_DIR_ENV, None)
    assert code == 0, err
    return root / "run"


def test_training_learns_and_tests_on_dev(trained):
    result = json.loads((trained / "metrics.json").read_text())
    assert result["test"]["test_acc"] > 0.95  # the 120 dev rows, evaluated once


def test_classify_prints_probabilities_for_a_sentence_and_stdin(trained, monkeypatch):
    ckpt = trained / "checkpoints" / "best.ckpt"
    code, out, err = rnnkit("classify", ckpt, "A gorgeous, witty movie.")
    assert code == 0, err
    printed = re.fullmatch(r"positive  \(negative (0\.\d{3})  positive (0\.\d{3}|1\.000)\)  A gorgeous, witty movie\.\n", out)
    assert printed and float(printed[1]) + float(printed[2]) == pytest.approx(1.0, abs=2e-3)
    monkeypatch.setattr("sys.stdin", io.StringIO("the plot is dull\na wonderful film\n"))
    code, out, err = rnnkit("classify", ckpt, "--json")
    assert code == 0, err
    results = json.loads(out)
    assert [r["label"] for r in results] == ["negative", "positive"]
    assert all(sum(r["probabilities"].values()) == pytest.approx(1.0) for r in results)


@pytest.mark.parametrize("argv, stdin, message", [
    (["  "], "", "the sentence given is empty"),
    ([], "a great film\n \n", "<stdin> line 2 is empty"),
    (["-"], "", "no input"),
])
def test_classify_bad_input(trained, monkeypatch, argv, stdin, message):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code, _, err = rnnkit("classify", trained / "checkpoints" / "best.ckpt", *argv)
    assert code == 1 and message in err and "Traceback" not in err


def test_train_refuses_a_row_without_label_naming_file_and_line(tmp_path):
    write_sst2(tmp_path / "data", 20, 2)
    with open(tmp_path / "data" / "sst2" / "train.tsv", "a") as f:
        f.write("a row without its label\n")
    code, _, err = rnnkit("train", "sentiment", "--data-dir", tmp_path / "data", "--out", tmp_path / "run")
    assert code == 1 and "train.tsv: line 22 has no label" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def perturbed(ckpt, path, seed: int):
    """A copy of checkpoint `ckpt` at `path` with noise added to its weights: another model of the same data."""
    saved = torch.load(ckpt, weights_only=True)
    torch.manual_seed(seed)
    saved["state_dict"] = {k: v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v
                           for k, v in saved["state_dict"].items()}
    torch.save(saved, path)
    return path


def test_classify_ensemble_averages_the_checkpoints_probabilities(trained, tmp_path, monkeypatch):
    """`--ensemble CKPT2` prints the mean of the two models' probabilities; the second model here is the first
    with its weights perturbed, so the two disagree."""
    ckpt = trained / "checkpoints" / "best.ckpt"
    perturbed(ckpt, tmp_path / "other.ckpt", seed=0)

    def probabilities(*argv):
        monkeypatch.setattr("sys.stdin", io.StringIO("the plot is dull\na wonderful film\nit 's a movie\n"))
        code, out, err = rnnkit("classify", *argv, "--json")
        assert code == 0, err
        return torch.tensor([[r["probabilities"][k] for k in ("negative", "positive")] for r in json.loads(out)])

    one, other = probabilities(ckpt), probabilities(tmp_path / "other.ckpt")
    both = probabilities(ckpt, "--ensemble", tmp_path / "other.ckpt")
    assert (one - other).abs().max() > 1e-3
    torch.testing.assert_close(both, (one + other) / 2, rtol=0, atol=1e-6)


def test_classify_ensemble_with_a_missing_checkpoint_is_named(trained, tmp_path):
    code, _, err = rnnkit("classify", trained / "checkpoints" / "best.ckpt", "a film", "--ensemble",
                          tmp_path / "nothing.ckpt")
    assert code != 0 and "nothing.ckpt" in err and "Traceback" not in err


def test_the_ensemble_benchmark_scores_each_model_every_subset_and_all(trained, tmp_path):
    """benchmarks/sentiment_ensemble.py against a hand computation from `classify` on the dev rows."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import sentiment_ensemble
    finally:
        sys.path.pop(0)
    paths = [trained / "checkpoints" / "best.ckpt", *(perturbed(trained / "checkpoints" / "best.ckpt",
                                                                tmp_path / f"{i}.ckpt", seed=i) for i in (1, 2))]
    data = trained.parent / "data"
    assert sentiment_ensemble.main([*map(str, paths), "--data-dir", str(data), "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    rows = read_sst2("dev", data)
    labels = torch.tensor([row.label for row in rows])
    probs = [torch.tensor(classify(load(p), [row.text for row in rows])) for p in paths]

    def accuracy(indices):
        return (torch.stack([probs[i] for i in indices]).mean(0).argmax(1) == labels).float().mean().item()

    assert [result["accuracy"][str(p)] for p in paths] == pytest.approx([accuracy([i]) for i in range(3)])
    assert result["accuracy"]["ensemble"] == pytest.approx(accuracy([0, 1, 2]))
    pairs = [accuracy(pair) for pair in ((0, 1), (0, 2), (1, 2))]
    assert result["by_size"]["2"] == pytest.approx({"ensembles": 3, "min": min(pairs), "mean": sum(pairs) / 3,
                                                    "max": max(pairs)})
    assert sentiment_ensemble.main([str(tmp_path / "none.ckpt"), "--data-dir", str(data)]) == 1


def test_classify_takes_the_sentence_before_or_after_the_options(trained):
    """Plain argparse refuses a positional after an option; the task commands' parser takes both orders."""
    ckpt = trained / "checkpoints" / "best.ckpt"
    before = rnnkit("classify", ckpt, "a wonderful film", "--json", "--ensemble", ckpt)
    after = rnnkit("classify", ckpt, "--json", "--ensemble", ckpt, "a wonderful film")
    assert before[0] == after[0] == 0 and before[1] == after[1] and json.loads(after[1])[0]["text"] == "a wonderful film"
