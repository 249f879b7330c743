"""The run directory of `dfp train`: a new run starts only in an empty or new folder, and one run writes it at a time.

A folder holding a run (finished, killed or running) is continued with --resume, or moved aside with
--overwrite (never deleted); a folder holding anything else is refused. Torch-free.
"""
from __future__ import annotations

import time
from pathlib import Path

from .errors import CheckpointError, InputError
from .lock import LOCK_FILE, FolderLock

# what `dfp train` writes first and last: any of them (or its temporary file) marks a run
RUN_MARKERS = ("config.json", "last.pth", "best_model.pth", "history.csv", "metrics.json")


def claim(folder: Path, resume: bool, overwrite: bool, log=print, shards: Path | None = None) -> FolderLock:
    """Lock `folder` for this run; a new run (not `resume`) also needs it empty, or `overwrite` moves its run aside.
    Returns the held lock; the caller releases it when the run ends."""
    if resume:
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint {folder / 'last.pth'} not found")
        return FolderLock(folder, "RUN").acquire()
    held = FolderLock(folder, "--out", create=True).acquire()
    try:
        markers, first = _contents(folder)
        if markers and overwrite:
            held = _move_aside(folder, held, shards, log)
        elif markers:
            raise InputError(f"--out {folder} already holds a run ({', '.join(markers)}): continue it with "
                             f"--resume {folder}, move it aside with --overwrite, or choose another --out")
        elif first is not None:
            raise InputError(f"--out {folder} is not empty and holds no dfp run ({first}): choose an empty or "
                             "new folder")
    except BaseException:
        held.release(failed=True)
        raise
    return held


def discard_unstarted(folder: Path) -> None:
    """A new run that failed before its first last.pth leaves nothing to resume: remove what it wrote
    (config.json, tb/), so the folder does not then count as a run the next attempt must --overwrite. The
    folder was empty when the run claimed it, so everything in it but the lock is this run's."""
    import shutil
    if not folder.is_dir() or (folder / "last.pth").exists():
        return
    for p in folder.iterdir():
        if p.name == LOCK_FILE:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _contents(folder: Path) -> tuple[list[str], str | None]:
    """The run files found in `folder`, and its first entry of any kind (None: empty but for a lock file)."""
    names = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
    markers = [n for n in RUN_MARKERS if n in names or f"{n}.partial" in names]
    return markers, (str(folder / names[0]) if names else None)


def _move_aside(folder: Path, held: FolderLock, shards: Path | None, log) -> FolderLock:
    """RUN -> RUN.old-TIME while its lock is held, then a fresh RUN locked before the old lock goes."""
    if shards is not None and folder.resolve() in (shards.resolve(), *shards.resolve().parents):
        raise InputError(f"--overwrite: --out {folder} holds SHARDS {shards}; choose another --out")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = folder.with_name(f"{folder.name}.old-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = folder.with_name(f"{folder.name}.old-{stamp}-{n}")
    folder.rename(aside)
    fresh = FolderLock(folder, "--out", create=True).acquire()
    (aside / LOCK_FILE).unlink(missing_ok=True)
    held.release()
    log(f"--overwrite: moved the previous run in {folder} to {aside}")
    return fresh
