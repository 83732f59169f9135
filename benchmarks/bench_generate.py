"""Generation speed of the character-level model: characters per second for one stream of a 2-layer
LSTM-512 sampling with its carried state, next to the time per step of the recurrent layer alone
(rnnkit's and torch.nn's, one character in, state carried), measured in the same run.

    python benchmarks/bench_generate.py [--hidden 512] [--layers 2] [--chars 2000] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from rnnkit.cli.bench import machine
from rnnkit.models import make_rnn
from rnnkit.models.language import CharLM, generate
from rnnkit.tasks.charlm import CharLMConfig


def per_step_ms(step, x, steps: int) -> float:
    """Milliseconds per call of `step(x, state) -> (output, state)`, the state carried."""
    state = None
    with torch.no_grad():
        for _ in range(20):
            _, state = step(x, state)
        start = time.perf_counter()
        for _ in range(steps):
            _, state = step(x, state)
    return (time.perf_counter() - start) / steps * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=65, help="vocabulary size (tiny Shakespeare: 65)")
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    cfg = CharLMConfig(hidden=args.hidden, layers=args.layers)
    model = CharLM(make_rnn(cfg, cfg.embedding), args.vocab, cfg.embedding).eval()
    prime = torch.tensor([0])
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        n = sum(1 for _ in generate(model, prime, args.chars, temperature=1.0,
                                    generator=torch.Generator().manual_seed(0)))
        rates.append(n / (time.perf_counter() - start))
    x = torch.randn(1, 1, cfg.embedding)
    ours_step = per_step_ms(model.rnn.step, x[:, 0], args.chars)
    ours = per_step_ms(model.rnn, x, args.chars)
    reference = torch.nn.LSTM(cfg.embedding, args.hidden, args.layers, batch_first=True).eval()
    theirs = per_step_ms(reference, x, args.chars)
    result = {
        **machine(), "model": f"{args.layers}-layer LSTM-{args.hidden}, vocabulary {args.vocab}",
        "chars_per_s": max(rates), "model_ms_per_char": 1e3 / max(rates),
        "rnnkit_step_ms": ours_step, "rnnkit_forward_ms_per_step": ours, "torch_nn_forward_ms_per_step": theirs,
    }
    print(f"{result['model']}, one stream; {result['cpu']}, {result['cores']} cores, torch {result['torch']}, {result['threads']} threads")
    print(f"  generation (embedding + layer + softmax + sampling): {result['chars_per_s']:8.0f} chars/s "
          f"({result['model_ms_per_char']:.3f} ms/char)")
    print(f"  rnnkit.LSTM.step(x_t, state) alone:                  {ours_step:8.3f} ms")
    print(f"  rnnkit.LSTM forward on a 1-step sequence:            {ours:8.3f} ms")
    print(f"  torch.nn.LSTM forward on a 1-step sequence:          {theirs:8.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
