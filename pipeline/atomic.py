"""Files written whole or not at all: written under a temporary name beside the target, then renamed over it.

A kill at any moment leaves the old file or the new one, never a half-written one under the real name.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temporary path to write; when the block ends without error it is renamed over `path`,
    otherwise removed. For files written piece by piece (CSV writers, `torch.save`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as e:
        cause = _unnamed_os_error(e)
        if cause is None:
            raise
        # a full disk seen through a file object (or torch's wrapper of it) names no file: name the target
        raise OSError(cause.errno, cause.strerror, str(path)) from e
    finally:
        tmp.unlink(missing_ok=True)


def _unnamed_os_error(e: BaseException | None) -> OSError | None:
    while e is not None:
        if isinstance(e, OSError):
            return e if e.filename is None and e.errno else None
        e = e.__cause__ or e.__context__
    return None


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, **dumps) -> Path:
    """Indented two spaces, with a final newline; `dumps` goes to `json.dumps` (e.g. `default=str`)."""
    return write_text(path, json.dumps(obj, indent=2, **dumps) + "\n")
