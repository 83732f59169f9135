"""Train steps of a standard LSTM with `lengths=` (padded batches of different lengths): rnnkit's engine
(impl="engine", the C++ sequence loop) against rnnkit's native path, which runs torch's packed-sequence
LSTM kernel as torch.nn.LSTM on a PackedSequence does. The same weights; median of interleaved repeats.

    python benchmarks/bench_lengths.py [--repeats 7]
"""
import argparse

import torch

import rnnkit
from rnnkit.cli.bench import _median_pair, machine

SHAPES = [  # (B, T, I, H, bidirectional): SST-2-like, POS-like, MNIST-like, long, wide
    (64, 30, 300, 256, True), (64, 30, 300, 256, False), (32, 50, 100, 128, True), (8, 40, 64, 128, True),
    (128, 28, 28, 128, False), (16, 100, 64, 512, False)]


def train_step(layer, x, lengths):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(x, lengths=lengths)[0].sum().backward()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    info = machine()
    print(f"rnnkit {info['rnnkit']}, torch {info['torch']}; {info['cpu']}, {info['threads']} threads; "
          f"median of {args.repeats}\n")
    print("| B | T | I | H | directions | packed torch kernel ms | engine ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for B, T, I, H, bidirectional in SHAPES:
        torch.manual_seed(0)
        native = rnnkit.LSTM(I, H, batch_first=True, bidirectional=bidirectional, impl="native")
        engine = rnnkit.LSTM(I, H, batch_first=True, bidirectional=bidirectional, impl="engine")
        engine.load_state_dict(native.state_dict())
        x = torch.randn(B, T, I)
        lengths = torch.randint(max(1, T // 4), T + 1, (B,))
        lengths[0] = T
        a, b = _median_pair(train_step(native, x, lengths), train_step(engine, x, lengths), args.repeats,
                            torch.device("cpu"))
        print(f"| {B} | {T} | {I} | {H} | {2 if bidirectional else 1} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
