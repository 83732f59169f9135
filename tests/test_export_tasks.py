"""`rnnkit export --format onnx` for every task model: onnxruntime runs each graph at batch sizes and
lengths other than the traced ones and agrees with PyTorch within 1e-4."""
from pathlib import Path

import numpy as np
import pytest
import torch

from clirun import rnnkit
from rnnkit.tasks import load

ort = pytest.importorskip("onnxruntime")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = ["--hidden", "8", "--max-epochs", "1", "--limit-train-batches", "2", "--limit-eval-batches", "1",
        "--no-progress"]
RUNS = {
    "mnist": ["mnist", "--data-dir", DATA, "--batch-size", "8", "--bidirectional", "--layers", "2"],
    "adding": ["adding", "--length", "12", "--train-size", "64", "--test-size", "16", "--cell", "gru"],
    "charlm": ["charlm", "--max-chars", "3000", "--bptt", "16", "--batch-size", "4", "--sample-length", "0"],
    "charlm-gru": ["charlm", "--max-chars", "3000", "--bptt", "16", "--batch-size", "4", "--sample-length", "0",
                   "--cell", "gru"],
    "forecast": ["forecast", "--series", "airline", "--data-dir", DATA, "--max-epochs", "1"],
    "pos": ["pos", "--data-dir", DATA, "--batch-size", "8"],
    "pos-lstm-chars": ["pos", "--data-dir", DATA, "--batch-size", "8", "--char-encoder", "lstm"],
    "sentiment": ["sentiment", "--data-dir", DATA, "--batch-size", "8", "--readout", "max"],
    "sentiment-frozen": ["sentiment", "--data-dir", DATA, "--batch-size", "8", "--vectors", "VECTORS",
                         "--freeze-vectors", "--embedding", "5"],
    "digits": ["digits", "--data-dir", DATA, "--batch-size", "8"],
    "copy": ["copy", "--length", "6", "--train-size", "64", "--test-size", "16", "--cell", "rnn"],
    "translate": ["translate", "--corpus", "reverse", "--synthetic-pairs", "64", "--embedding", "8"],
    "translate-plain": ["translate", "--corpus", "reverse", "--synthetic-pairs", "64", "--embedding", "8",
                        "--attention", "none", "--cell", "gru", "--no-bidirectional"],
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (the loaded checkpoint, {graph name: onnxruntime session})."""
    root = tmp_path_factory.mktemp("export")
    result = {}
    vectors = root / "vectors.txt"  # a word of SST-2's training set and one never in it
    vectors.write_text("good 1 0 -1\nzyzzyva 0.5 0.5 0.5\n")
    for name, flags in RUNS.items():
        if "--data-dir" in flags and not DATA.is_dir():
            continue
        flags = [vectors if flag == "VECTORS" else flag for flag in flags]
        code, _, err = rnnkit("train", *flags, *TINY, "--out", root / name)
        assert code == 0, err
        ckpt = root / name / "checkpoints" / "best.ckpt"
        code, out, err = rnnkit("export", ckpt, "--format", "onnx", "--out", root / f"{name}.onnx")
        assert code == 0, err
        files = sorted(root.glob(f"{name}.onnx")) + sorted(root.glob(f"{name}.*.onnx"))
        result[name] = (load(ckpt), {f.name: ort.InferenceSession(str(f)) for f in files})
    return result


def _close(got, expected, what):
    expected = expected.detach().numpy()
    assert got.shape == expected.shape, f"{what}: {got.shape} != {expected.shape}"
    assert np.abs(got - expected).max() <= 1e-4, f"{what}: max abs diff {np.abs(got - expected).max():.2e}"


@pytest.mark.parametrize("name, features", [("mnist", 28), ("adding", 2)])
def test_many_to_one_graphs_with_lengths(exported, name, features):
    if name not in exported:
        pytest.skip(f"data not found in {DATA}")
    loaded, sessions = exported[name]
    (session,) = sessions.values()
    for batch, time in ((3, 11), (1, 4)):
        x = torch.randn(batch, time, features)
        lengths = torch.randint(1, time + 1, (batch,))
        lengths[0] = time
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy(), "lengths": lengths.numpy()})
        with torch.no_grad():
            _close(got, loaded.model((x, lengths))[0], f"{name} B={batch} T={time}")


def test_forecaster_graph(exported):
    if "forecast" not in exported:
        pytest.skip(f"data not found in {DATA}")
    loaded, sessions = exported["forecast"]
    (session,) = sessions.values()
    x = torch.randn(5, loaded.cfg.window, 1)
    (got,) = session.run(None, {"window": x.numpy()})
    with torch.no_grad():
        _close(got, loaded.model(x)[0], "forecast")


@pytest.mark.parametrize("name", ["charlm", "charlm-gru", "copy"])
def test_language_model_step_carries_its_state(exported, name):
    loaded, sessions = exported[name]
    (session,) = sessions.values()
    vocab = loaded.model.head.out_features
    state_names = [i.name for i in session.get_inputs()[1:]]
    batch = 3
    layers, hidden = loaded.cfg.layers, loaded.cfg.hidden
    feeds_state = [np.zeros((layers, batch, hidden), np.float32) for _ in state_names]
    torch_state = None
    for time in (6, 1, 1):  # a prefix, then one character at a time with the state fed back
        ids = torch.randint(vocab, (batch, time))
        logits, *feeds_state = session.run(None, {"ids": ids.numpy(), **dict(zip(state_names, feeds_state))})
        with torch.no_grad():
            (expected, torch_state), _ = loaded.model((ids, torch_state))
        _close(logits, expected, f"{name} logits T={time}")
        for got, want in zip(feeds_state, torch_state if isinstance(torch_state, tuple) else (torch_state,)):
            _close(got, want, f"{name} state")


def test_onnx_export_never_overwrites(exported, tmp_path):
    kept = tmp_path / "model.onnx"
    kept.write_text("mine")
    ckpt = next(iter(exported.values()))[0]
    code, _, err = rnnkit("export", "--format", "onnx", "--out", kept, Path(ckpt.cfg.out) / "checkpoints/best.ckpt")
    assert code == 2 and "already exists" in err and kept.read_text() == "mine"


@pytest.mark.parametrize("name", ["pos", "pos-lstm-chars"])
def test_tagger_graph(exported, name):
    if name not in exported:
        pytest.skip(f"data not found in {DATA}")
    loaded, sessions = exported[name]
    (session,) = sessions.values()
    for batch, time, width in ((3, 9, 7), (1, 2, 3)):
        words = torch.randint(len(loaded.extra["words"]), (batch, time))
        chars = torch.randint(len(loaded.extra["chars"]), (batch, time, width))
        lengths = torch.randint(1, time + 1, (batch,))
        lengths[0] = time
        (got,) = session.run(None, {"words": words.numpy(), "chars": chars.numpy(), "lengths": lengths.numpy()})
        with torch.no_grad():
            _close(got, loaded.model((words, chars, lengths))[0], f"{name} B={batch} T={time}")


@pytest.mark.parametrize("name", ["sentiment", "sentiment-frozen"])
def test_sentiment_graph(exported, name):
    """The frozen-vector embedding too (fixed columns for every word, trained ones for the training words)."""
    if name not in exported:
        pytest.skip(f"data not found in {DATA}")
    loaded, sessions = exported[name]
    (session,) = sessions.values()
    for batch, time in ((4, 13), (1, 1)):
        ids = torch.randint(len(loaded.extra["words"]), (batch, time))
        ids[0, 0] = len(loaded.extra["words"]) - 1  # with --freeze-vectors: a word known from the vectors only
        lengths = torch.randint(1, time + 1, (batch,))
        (got,) = session.run(None, {"ids": ids.numpy(), "lengths": lengths.numpy()})
        with torch.no_grad():
            _close(got, loaded.model((ids, lengths))[0], f"{name} B={batch} T={time}")


def test_digit_generator_step_continues_generation(exported):
    """Feeding back the mean rows through the exported step reproduces the model's own generation."""
    if "digits" not in exported:
        pytest.skip(f"data not found in {DATA}")
    loaded, sessions = exported["digits"]
    (session,) = sessions.values()
    labels = torch.tensor([0, 4, 9])
    images, logits = loaded.model.generate(labels, temperature=0.0)
    state = [np.zeros((1, 3, loaded.cfg.hidden), np.float32) for _ in session.get_inputs()[2:]]
    names = [i.name for i in session.get_inputs()[2:]]
    row = np.zeros((3, 1, 28), np.float32)
    for t in range(28):
        step_logits, *state = session.run(None, {"previous": row, "labels": labels.numpy(), **dict(zip(names, state))})
        _close(step_logits[:, 0], logits[:, t], f"digits row {t}")
        row = images[:, t:t + 1].numpy()


@pytest.mark.parametrize("name", ["translate", "translate-plain"])
def test_encoder_and_decoder_step_decode_like_the_model(exported, name):
    """Greedy decoding looped over the exported decoder step: the model's own logits and tokens."""
    from rnnkit.data.parallel import BOS_ID, EOS_ID
    from rnnkit.models.seq2seq import greedy

    loaded, sessions = exported[name]
    encoder, step = sessions[f"{name}.encoder.onnx"], sessions[f"{name}.decoder_step.onnx"]
    src = torch.randint(4, loaded.model.src_embed.num_embeddings, (3, 9))
    lengths = torch.tensor([9, 5, 2])
    feeds = dict(zip([o.name for o in encoder.get_outputs()],
                     encoder.run(None, {"src": src.numpy(), "lengths": lengths.numpy()})))
    step_inputs = [i.name for i in step.get_inputs()][1:]  # the memory, then the state
    state_names = [n for n in step_inputs if n in ("h", "c")]
    with torch.no_grad():
        expected, _, _ = greedy(loaded.model, src, lengths, 12)
        memory, state = loaded.model.encode(src, lengths)
        first, _, _ = loaded.model.step(loaded.model.tgt_embed(torch.full((3,), BOS_ID)), state, memory)
    token, got = np.full(3, BOS_ID), []
    for t in range(expected.shape[1]):
        logits, *rest = step.run(None, {"previous": token, **{n: feeds[n] for n in step_inputs}})
        if t == 0:
            _close(logits, first, f"{name} first step")
        feeds.update(zip(state_names, rest))
        token = logits.argmax(-1)
        got.append(token)
    got = np.stack(got, 1)
    after_end = (np.cumsum(got == EOS_ID, axis=1) - (got == EOS_ID)) > 0  # greedy pads after </s>
    assert (np.where(after_end, 0, got) == np.where(after_end, 0, expected.numpy())).all()
