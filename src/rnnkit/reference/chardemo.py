"""A character-level language model trained from scratch in NumPy (`rnnkit numpy-demo`).

Each character of a text is a one-hot vector; a recurrent stack reads them one at a time and a
linear softmax head predicts the next character at every step (many-to-many). The text is read
as one stream in windows of --seq-len characters with truncated BPTT, the state carried from
window to window and reset at the start of each pass; gradients are clipped by global norm and
the weights updated by Adam (or Adagrad) after every window. It prints the loss, in nats per
character, and a sample drawn from the model as it learns.

    python -m rnnkit.reference.chardemo --cell gru --hidden 32 --steps 500
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .cells import GRUCell, LSTMCell, RNNCell
from .losses import init_head, softmax
from .recurrent import Recurrent
from .training import Adagrad, Adam, clip_grad_norm, truncated_bptt

DEFAULT_TEXT = (
    "A recurrent network reads a sequence one step at a time. At every step it mixes the new "
    "input with its hidden state, a summary of all it has read so far, and hands that state on "
    "to the next step. To learn, it unrolls the loop through time and sends the error back along "
    "the same path: backpropagation through time. On the way back the gradient is multiplied by "
    "one Jacobian per step, so over long spans it can vanish or explode; the gated cells, the "
    "LSTM and the GRU, keep a path along which it survives."
)
CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}
OPTIMIZERS = {"adam": Adam, "adagrad": Adagrad}


class UsageError(ValueError):
    """A bad option value: exit code 2. Problems with the text itself exit with 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)  # one line on stderr, not argparse's usage block and exit


def add_arguments(parser):
    """The demo's options, for a parser of its own or a subcommand's."""
    parser.add_argument("--text", metavar="FILE", help="a UTF-8 text file to learn (default: a paragraph about RNNs)")
    parser.add_argument("--cell", choices=sorted(CELLS), default="lstm", help="the recurrent cell (default: lstm)")
    parser.add_argument("--hidden", type=int, default=64, help="H, hidden units per layer (default: 64)")
    parser.add_argument("--layers", type=int, default=1, help="L, stacked layers (default: 1)")
    parser.add_argument("--steps", type=int, default=1500, help="training windows, one update each (default: 1500)")
    parser.add_argument("--seq-len", type=int, default=25, help="k, characters per truncated-BPTT window (default: 25)")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam", help="(default: adam)")
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate (default: 0.01)")
    parser.add_argument("--clip", type=float, default=5.0, help="tau, the global gradient-norm threshold (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the samples (default: 0)")
    parser.add_argument("--sample-every", type=int, default=250, help="report and sample every N steps (default: 250)")
    parser.add_argument("--sample-len", type=int, default=120, help="characters per sample (default: 120)")


def build_parser(prog="rnnkit numpy-demo"):
    parser = _Parser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def check_args(args):
    for name in ("hidden", "layers", "steps", "seq_len", "sample_every", "sample_len"):
        value = getattr(args, name)
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer; got {value}")
    for name in ("lr", "clip"):
        value = getattr(args, name)
        if not value > 0 or not np.isfinite(value):
            raise UsageError(f"--{name} must be a finite positive number; got {value}")


def read_text(path):
    """The text to learn: the file at `path`, or DEFAULT_TEXT. Needs two characters at least."""
    text = DEFAULT_TEXT if path is None else Path(path).read_text(encoding="utf-8")
    if len(text) < 2:
        where = "the text" if path is None else f"--text {path}"
        raise ValueError(f"{where} has {len(text)} characters; it needs at least 2 (an input and its next character)")
    return text


def one_hot(indices, V):
    """(T,) integers -> (T, 1, V): a batch of one sequence."""
    x = np.zeros((len(indices), 1, V))
    x[np.arange(len(indices)), 0, indices] = 1
    return x


def sample(net, params, head, first, n, V, rng):
    """n character indices drawn from the model, one at a time, after the character `first`."""
    state, ix, drawn = None, first, []
    for _ in range(n):
        out, state, _ = net.forward(params, one_hot([ix], V), state)    # (1, 1, D*H)
        p = softmax(out[0, 0] @ head["weight"].T + head["bias"])        # (V,)
        ix = rng.choice(V, p=p)
        drawn.append(ix)
    return drawn


def run(args):
    """Train as `args` (from add_arguments) say, printing as it goes. Returns 0."""
    check_args(args)
    text = read_text(args.text)
    chars = sorted(set(text))
    V = len(chars)
    index = {ch: i for i, ch in enumerate(chars)}
    data = np.array([index[ch] for ch in text])
    x, targets = one_hot(data[:-1], V), data[1:, None]                  # (N-1, 1, V), (N-1, 1)

    rng = np.random.default_rng(args.seed)
    net = Recurrent(CELLS[args.cell](args.hidden), V, args.layers)
    params = net.init_params(rng)
    head = init_head(rng, args.hidden, V)
    optimizer, head_optimizer = (OPTIMIZERS[args.optimizer](p, lr=args.lr) for p in (params, head))
    n_params = sum(w.size for w in (*params.values(), *head.values()))
    print(f"{len(text)} characters, {V} distinct; {args.cell}, {args.layers} x {args.hidden} units, "
          f"{n_params} parameters; {args.optimizer} lr {args.lr}, windows of {args.seq_len}, clip {args.clip}")
    print(f"a uniform guess scores ln V = {np.log(V):.3f} nats per character")

    step, losses, t0 = 0, [], time.perf_counter()
    while step < args.steps:
        for window in truncated_bptt(net, params, head, x, targets, args.seq_len):  # one pass, from a zero state
            clip_grad_norm([*window.grads.values(), *window.d_head.values()], args.clip)
            optimizer.step(window.grads)
            head_optimizer.step(window.d_head)
            step += 1
            losses.append(window.loss / len(targets[window.start:window.start + args.seq_len]))  # per character
            if step == 1 or step % args.sample_every == 0 or step == args.steps:
                print(f"step {step:6d}  loss {np.mean(losses):.3f}  ({time.perf_counter() - t0:.1f} s)")
                drawn = sample(net, params, head, data[0], args.sample_len, V, rng)
                print("  > " + (text[0] + "".join(chars[i] for i in drawn)).replace("\n", "\n  > "))
                losses = []
            if step == args.steps:
                break
    return 0


def main(argv=None):
    """`rnnkit numpy-demo [options]`: returns 0, or 2 for a bad option, 1 for an unusable text."""
    parser = build_parser()
    try:
        return run(parser.parse_args(argv))
    except UsageError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # a missing or unreadable file, not UTF-8, too short
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:  # --help
        return e.code


if __name__ == "__main__":
    sys.exit(main())
