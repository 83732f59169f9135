"""How recognisable the generated digits are: a trained `rnnkit train digits` generator writes N digits of
each class and a trained `rnnkit train mnist` classifier labels them; prints per-digit and overall recognition.

    python benchmarks/digits_recognition.py DIGITS_CKPT MNIST_CKPT [--per-digit 100] [--temperature 1] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import sys

from rnnkit.tasks import load
from rnnkit.tasks.digits import load_classifier, recognition


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("generator", metavar="DIGITS_CKPT")
    parser.add_argument("classifier", metavar="MNIST_CKPT")
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="0 feeds back the mean row (one image per class); > 0 samples the pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.per_digit < 1 or not args.temperature >= 0:
        parser.error(f"--per-digit must be >= 1 and --temperature >= 0; got {args.per_digit}, {args.temperature}")
    try:
        generator = load(args.generator)
        if generator.task.name != "digits":
            raise ValueError(f"{args.generator} is a {generator.task.name!r} checkpoint, not a 'digits' one")
        per_class = recognition(generator.model, load_classifier(args.classifier), args.per_digit,
                                args.temperature, args.seed)
    except ValueError as e:
        print(f"digits_recognition: {e}", file=sys.stderr)
        return 1
    overall = sum(per_class) / len(per_class)
    print(f"recognised as the requested digit ({args.per_digit} per digit, temperature {args.temperature}):")
    for digit, fraction in enumerate(per_class):
        print(f"  {digit}: {fraction:.3f}")
    print(f"  overall: {overall:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"per_digit": per_class, "overall": overall, "per_digit_count": args.per_digit,
                       "temperature": args.temperature, "seed": args.seed}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
