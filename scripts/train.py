#!/usr/bin/env python
"""Thin wrapper: `python scripts/train.py ...` is `dfp train ...`; it also runs under torchrun:

    torchrun --nproc_per_node=8 scripts/train.py shards/mydata --out runs/exp1"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv.insert(1, "train")
    main()
