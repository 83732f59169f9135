"""SST-2 dev accuracy of several `rnnkit train sentiment` checkpoints, each alone and as an ensemble that
averages their class probabilities. Each model has its own vocabulary; the dev sentences are read once.

    python benchmarks/sentiment_ensemble.py CKPT [CKPT ...] [--data-dir ../shared/data] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from rnnkit.data.sentences import read_sst2
from rnnkit.tasks.sentiment import classify, load_sentiment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT")
    parser.add_argument("--data-dir", default=None, help="holds sst2/dev.tsv (default: $RNNKIT_DATA)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    try:
        rows = read_sst2("dev", args.data_dir)
        labels = torch.tensor([row.label for row in rows])
        probabilities = {}
        for path in args.checkpoints:
            probabilities[path] = torch.tensor(classify(load_sentiment(path), [row.text for row in rows]))
    except (OSError, ValueError) as e:
        print(f"sentiment_ensemble: {e}", file=sys.stderr)
        return 1
    accuracy = {path: (p.argmax(1) == labels).float().mean().item() for path, p in probabilities.items()}
    mean = torch.stack(list(probabilities.values())).mean(0)
    accuracy["ensemble"] = (mean.argmax(1) == labels).float().mean().item()
    for name, value in accuracy.items():
        print(f"{value:.4f}  {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dev_sentences": len(rows), "accuracy": accuracy}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
