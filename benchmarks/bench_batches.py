"""Standard GRU and RNN at batch sizes 1-256: rnnkit's engine (the C++ sequence loop) against torch.nn of the same
size, train step and inference, the ratios `dispatch.engine_is_faster` was decided from. Median of interleaved
repeats, as `rnnkit bench`.

    python benchmarks/bench_batches.py [--repeats 5] [--cases GRU,RNN] [--batches 1,4,16,64,256]
"""
import argparse
import os

import torch

import rnnkit
from rnnkit.cli.bench import _inference, _median_pair, _train_step, machine

CASES = {"GRU": (rnnkit.GRU, torch.nn.GRU), "RNN": (rnnkit.RNN, torch.nn.RNN)}
SIZES = [(100, 64, 256), (28, 28, 128)]  # (T, I, H): char LM, MNIST rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default="GRU,RNN")
    parser.add_argument("--batches", default="1,4,16,64,256")
    args = parser.parse_args()
    info = machine()
    print(f"rnnkit {info['rnnkit']}, torch {info['torch']}; {info['cpu']}, {info['threads']} threads; "
          f"load average before the run {', '.join(f'{v:.2f}' for v in os.getloadavg())}; median of {args.repeats}\n")
    print("| case | B | T | I | H | train ratio | infer ratio | engine train ms | torch.nn train ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    cpu = torch.device("cpu")
    for label in args.cases.split(","):
        ours_cls, ref_cls = CASES[label]
        for T, I, H in SIZES:
            for B in map(int, args.batches.split(",")):
                torch.manual_seed(0)
                ours = ours_cls(I, H, batch_first=True, impl="engine")
                ref = ref_cls(I, H, batch_first=True)
                x = torch.randn(B, T, I)
                train = _median_pair(_train_step(ours, x), _train_step(ref, x), args.repeats, cpu)
                ours.eval(), ref.eval()
                infer = _median_pair(_inference(ours, x), _inference(ref, x), args.repeats, cpu)
                print(f"| {label} | {B} | {T} | {I} | {H} | {train[0] / train[1]:.2f} | {infer[0] / infer[1]:.2f} | "
                      f"{train[0] * 1e3:.1f} | {train[1] * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
