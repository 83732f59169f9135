"""Train-step time of MinGRU and MinLSTM, parallel scan vs their own step loop vs torch.nn.GRU.

    python benchmarks/bench_minimal.py [--json FILE] [--quick] [--repeats N] [--device cpu]

A train step is forward + backward of `output.sum()` (batch-first, B=16, I=H=256); each time is the
median of repeats, the five layers interleaved within each repeat so they see the same machine
state, after one warm-up each. Ratios above 1 mean the parallel scan is faster.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from rnnkit.cli.bench import machine
from rnnkit.nn.minimal import MinGRU, MinLSTM

B, I, H = 16, 256, 256
LENGTHS = (128, 512, 2048)
# label: builds a layer on a device
LAYERS = {
    "MinGRU parallel": lambda device: MinGRU(I, H, batch_first=True, device=device, mode="parallel"),
    "MinGRU sequential": lambda device: MinGRU(I, H, batch_first=True, device=device, mode="sequential"),
    "MinLSTM parallel": lambda device: MinLSTM(I, H, batch_first=True, device=device, mode="parallel"),
    "MinLSTM sequential": lambda device: MinLSTM(I, H, batch_first=True, device=device, mode="sequential"),
    "torch.nn.GRU": lambda device: torch.nn.GRU(I, H, batch_first=True, device=device),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(layer, x):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(x)[0].sum().backward()
    return run


def time_length(T: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of one train step of every layer at sequence length T."""
    torch.manual_seed(0)
    x = torch.randn(B, T, I, device=device)
    steps = {label: train_step(build(device), x) for label, build in LAYERS.items()}
    for run in steps.values():
        run()  # warm-up
    times = {label: [] for label in steps}
    for _ in range(repeats):
        for label, run in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            run()
            _sync(device)
            times[label].append(time.perf_counter() - t0)
    return {label: statistics.median(ts) for label, ts in times.items()}


def rows_for(T: int, seconds: dict[str, float]) -> list[dict]:
    gru = seconds["torch.nn.GRU"]
    rows = []
    for model in ("MinGRU", "MinLSTM"):
        par, seq = seconds[f"{model} parallel"], seconds[f"{model} sequential"]
        rows.append({"T": T, "model": model, "parallel_s": par, "sequential_s": seq, "torch_gru_s": gru,
                     "sequential_over_parallel": seq / par, "torch_gru_over_parallel": gru / par})
    return rows


def format_table(result: dict) -> str:
    m = result["machine"]
    load = ", ".join(f"{v:.2f}" for v in result["load_average"])
    lines = [f"rnnkit {m['rnnkit']}, torch {m['torch']}, Python {m['python']}; {m['cpu']}, {m['cores']} cores, "
             f"{m['threads']} threads; device {result['device']}; load average before the run {load}",
             f"train step (forward + backward), B={B}, I={I}, H={H}, batch_first; median of {result['repeats']}",
             "",
             "| T | model | parallel ms | sequential ms | torch.nn.GRU ms | sequential / parallel | torch.nn.GRU / parallel |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['T']} | {r['model']} | {r['parallel_s'] * 1e3:.1f} | {r['sequential_s'] * 1e3:.1f} | "
                     f"{r['torch_gru_s'] * 1e3:.1f} | {r['sequential_over_parallel']:.2f} | "
                     f"{r['torch_gru_over_parallel']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    parser.add_argument("--quick", action="store_true", help="T = 128 and 512 only, 3 repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per layer (default 5, quick 3)")
    parser.add_argument("--device", default="cpu", help="torch device to time on (default cpu)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    if repeats < 1:
        parser.error(f"--repeats must be >= 1; got {repeats}")
    device = torch.device(args.device)
    lengths = LENGTHS[:2] if args.quick else LENGTHS
    result = {"machine": machine(), "load_average": os.getloadavg(), "device": str(device), "repeats": repeats,
              "B": B, "I": I, "H": H, "rows": []}
    for T in lengths:
        result["rows"] += rows_for(T, time_length(T, repeats, device))
        print(f"T={T} done", flush=True)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
