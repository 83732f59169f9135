"""Time and memory of rnnkit's layers against torch.nn: `python benchmarks/bench_layers.py [--json FILE]`.

The same as `rnnkit bench` (the code lives in rnnkit/bench.py so the installed command has it).
"""
import sys

from rnnkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
