"""SST-2 dev accuracy of several `rnnkit train sentiment` checkpoints, each alone and as an ensemble that
averages their class probabilities (what `rnnkit classify CKPT --ensemble CKPT2 ...` prints), and, for each
smaller ensemble size k, the lowest, mean and highest accuracy over every k of the checkpoints. Each model has
its own vocabulary; the dev sentences are read once.

    python benchmarks/sentiment_ensemble.py CKPT [CKPT ...] [--data-dir ../shared/data] [--json FILE]
"""
from __future__ import annotations

import argparse
import itertools
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

    def accuracy_of(paths) -> float:
        mean = torch.stack([probabilities[p] for p in paths]).mean(0)
        return (mean.argmax(1) == labels).float().mean().item()

    accuracy = {path: accuracy_of([path]) for path in probabilities}
    accuracy["ensemble"] = accuracy_of(list(probabilities))
    for name, value in accuracy.items():
        print(f"{value:.4f}  {name}")
    by_size = {}
    for k in range(2, len(probabilities)):
        values = [accuracy_of(subset) for subset in itertools.combinations(probabilities, k)]
        by_size[k] = {"ensembles": len(values), "min": min(values), "mean": sum(values) / len(values),
                      "max": max(values)}
        print(f"{k} models, {len(values)} ensembles: {by_size[k]['min']:.4f} lowest, {by_size[k]['mean']:.4f} mean, "
              f"{by_size[k]['max']:.4f} highest")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dev_sentences": len(rows), "accuracy": accuracy, "by_size": by_size}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
