#!/usr/bin/env python
"""Thin wrapper: `python scripts/shard.py ...` is `dfp shard ...`"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv.insert(1, "shard")
    main()
