#!/usr/bin/env python
"""Thin wrapper: `python scripts/bench.py ...` is `dfp bench ...`"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[1:1] = ["bench", "all"] if len(sys.argv) < 2 or sys.argv[1].startswith("-") else ["bench"]
    main()
