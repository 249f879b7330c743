"""Every error `dfp` turns into one line and an exit code: 2 for bad input, 1 for a check or run that failed.

Imports nothing of dfp's (and no torch), so the command line can map exceptions to exit codes cheaply.
"""
from __future__ import annotations

import os
import sys


class UsageError(Exception):
    """Bad arguments found after parsing: one line, exit 2."""


class InputError(Exception):
    """Bad input or arguments: reported as one line, exit code 2."""


class FormatError(Exception):
    """A shard folder that is missing or not in the `dfp-shards/1` format: exit 2."""


class ModelError(ValueError):
    """Unknown model, modality/model mismatch, unusable weights: one line, meant for the console (exit code 2)."""


class CheckpointError(Exception):
    """An unreadable or foreign checkpoint: one line, exit 2."""


class TrainingError(Exception):
    """A run that failed, not bad input: training cannot go on (the loss keeps being non-finite), or a model's
    scores are NaN, in `dfp train` and `dfp evaluate` alike (`scoring.require_finite`): one line, exit 1."""


class LoaderError(RuntimeError):
    """DALI failed on a batch in which every sample decodes on its own: a pipeline fault, not bad data; exit 1."""


class MediaError(Exception):
    """One input file cannot be packed or scored; str(e) is its reason in rejects.jsonl or `dfp predict`'s error
    column. No exit code: it names one file among many, and the run goes on without that file."""


BAD_INPUT = (UsageError, InputError, FormatError, ModelError, CheckpointError)
CHECK_FAILED = (TrainingError, LoaderError)


def exit_code(e: BaseException) -> int | None:
    """2 for bad input, 1 for a failed check or run, None for anything else (a bug: let it show its traceback)."""
    if isinstance(e, BAD_INPUT):
        return 2
    if isinstance(e, CHECK_FAILED):
        return 1
    return None


def warn(message: str, rank: int | None = None) -> None:
    """`warning: message` on stderr from rank 0 only: under torchrun every rank meets the same condition, and the
    counts a run reports are summed over the ranks on rank 0. `rank`: the caller's own where it has one, else
    torchrun's RANK."""
    if rank is None:
        rank = int(os.environ.get("RANK") or 0)
    if rank == 0:
        print(f"warning: {message}", file=sys.stderr)
