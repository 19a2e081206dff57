"""Write the digits example models and datasets used in the README's walkthrough.

Usage:
    python examples/make_digits_models.py OUTDIR

Writes digits_mlp.onnx, digits_mlp.ts (TorchScript), digits_mlp.pt2 (torch.export), digits_eval.npz (arrays
`input` and `labels`) and digits_calib.npz (array `input`) into OUTDIR. Trains for a few seconds on a CPU;
nothing is downloaded (the digits ship with scikit-learn).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.digits import build_digits_models  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, build the files, print their paths; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path, help="folder to write the models and datasets into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    paths = build_digits_models(args.outdir, seed=args.seed, epochs=args.epochs)
    for path in paths.values():
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
