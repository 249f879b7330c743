"""Up-front checks of command-line values: each failure is one `UsageError` line naming the option.

Torch-free, so a bad invocation is rejected in a fraction of a second, before any file is written.
Keyword names are the commands' parameter names; `flag` turns them into the option as typed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _or(choices: Iterable[str]) -> str:
    *head, last = list(choices)
    return f"{', '.join(head)} or {last}" if head else last


def minimum(low: float, **values: Optional[float]) -> None:
    """Each given value (None: option not given) must be a finite number >= low."""
    for name, v in values.items():
        if v is None:
            continue
        if not math.isfinite(v):
            raise UsageError(f"{flag(name)} must be a finite number, got {v}")
        if v < low:
            raise UsageError(f"{flag(name)} must be at least {low}, got {v}")


def positive(**values: Optional[float]) -> None:
    """Each given value must be a finite number > 0."""
    for name, v in values.items():
        if v is not None and not (math.isfinite(v) and v > 0):
            raise UsageError(f"{flag(name)} must be a positive number, got {v}")


def choice(name: str, value: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise UsageError(f"{flag(name)} {value!r}: choose {_or(choices)}")


def device(value: str, name: str = "device") -> None:
    """auto, cpu, cuda or cuda:N; torch is imported only when CUDA is asked for, to see whether it is there."""
    kind, sep, index = value.partition(":")
    if kind not in DEVICES or (sep and (kind != "cuda" or not index.isdigit())):
        raise UsageError(f"{flag(name)} {value!r}: choose auto, cpu or cuda (or cuda:N)")
    if kind != "cuda":
        return
    import torch
    if not torch.cuda.is_available():
        raise UsageError(f"{flag(name)} {value}: no CUDA device is available here; use {flag(name)} cpu or auto")
    if sep and int(index) >= torch.cuda.device_count():
        raise UsageError(f"{flag(name)} {value}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")


def existing(label: str, path: Optional[Path], kind: str = "any") -> None:
    """An input path that must exist: kind 'dir', 'file' or 'any'. label: the option or argument as shown in help."""
    if path is None:
        return
    if not path.exists():
        what = {"dir": "folder", "file": "file"}.get(kind, "file or folder")
        raise UsageError(f"{label} {path}: {what} not found")
    if kind == "dir" and not path.is_dir():
        raise UsageError(f"{label} {path}: is a file; give a folder")
    if kind == "file" and path.is_dir():
        raise UsageError(f"{label} {path}: is a folder; give a file")


def checkpoint(path: Path, label: str = "CKPT") -> Path:
    """The checkpoint file to read: `path` itself, or the best_model.pth of the run folder `path` names."""
    if path.is_dir():
        best = path / "best_model.pth"
        if not best.is_file():
            raise UsageError(f"{label} {path}: folder without best_model.pth; give a checkpoint file or the "
                             f"folder of a finished dfp train run")
        return best
    existing(label, path, "file")
    return path


def shards(path, label: str = "SHARDS") -> None:
    """A shard folder from `dfp shard`, or its URL: its manifest is read, which is cheap and torch-free."""
    from .errors import FormatError, InputError
    from .formats import read_manifest
    from .storage import is_url
    if not is_url(path):
        existing(label, Path(path), "dir")
    try:
        read_manifest(path)
    except (FormatError, InputError) as e:
        raise UsageError(f"{label}: {e}") from None


def shard_sets(paths: Iterable, label: str = "SHARDS") -> None:
    """Every path a shard folder or URL (`shards`), and none given twice (compared by resolved path)."""
    from .storage import resolved
    seen: dict = {}
    for path in paths:
        shards(path, label)
        if resolved(path) in seen:
            raise UsageError(f"{label}: {path} is given twice (as {seen[resolved(path)]}); give each set once")
        seen[resolved(path)] = path


def cache(cache_dir: Optional[Path], cache_limit: str) -> None:
    """--cache-dir a folder (created if missing), --cache-limit a size such as 20G."""
    from .shardcache import parse_size
    output("--cache-dir", Path(cache_dir) if cache_dir else None, "dir")
    try:
        parse_size(cache_limit)
    except (ValueError, IndexError):
        raise UsageError(f"--cache-limit {cache_limit!r}: give a size such as 20G, 500M or 4096") from None


def _blocking_ancestor(path: Path) -> Optional[Path]:
    """The nearest existing ancestor when it is not a folder (so nothing can be created below it)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output(label: str, path: Optional[Path], kind: str) -> None:
    """A path to be written: kind 'dir' (a folder, created if missing) or 'file' (its folder is created if missing)."""
    if path is None:
        return
    if kind == "dir" and path.exists() and not path.is_dir():
        raise UsageError(f"{label} {path}: is a file; give a folder")
    if kind == "file" and path.is_dir():
        raise UsageError(f"{label} {path}: is a folder; give a file path")
    blocker = _blocking_ancestor(path)
    if blocker is not None:
        raise UsageError(f"{label} {path}: {blocker} is a file, so nothing can be written below it")


def threshold_method(value: str, name: str = "threshold_method") -> None:
    from .thresholds import parse_method
    try:
        parse_method(value)
    except ValueError as e:
        raise UsageError(f"{flag(name)}: {e}") from None


def focal_alpha(value: str) -> None:
    """A number <= 1 (negative: off) or 'auto'; the same rule as `losses.resolve_alpha`, without importing torch."""
    if value.strip().lower() == "auto":
        return
    try:
        alpha = float(value)
    except ValueError:
        raise UsageError(f"--focal-alpha {value!r}: give a number in [0, 1], a negative number (off) or 'auto'") from None
    if not alpha <= 1:
        raise UsageError(f"--focal-alpha {value!r}: must be in [0, 1] (or < 0 to disable)")


def class_weights(value: Optional[str]) -> None:
    """Every class named with a weight >= 0, at least one of them > 0."""
    if value is None:
        return
    from .sampling import class_probabilities, parse_class_weights
    try:
        weights = parse_class_weights(value)
        if not any(weights.values()):
            raise UsageError(f"--class-weights {value!r}: at least one weight must be above 0")
        class_probabilities([1, 1], weights)
    except ValueError as e:
        raise UsageError("--class-weights" + str(e).removeprefix("class weights")) from None


def model_name(value: Optional[str], modalities: Iterable[str] = ("image", "audio", "video"),
               name: str = "model") -> None:
    """A known model: dfp's own names (torch-free), or `timm:NAME` for images, whose name timm's registry is asked
    about (that imports timm and torch, so call this after the cheap checks)."""
    if value is None:
        return
    from .backbones import MODELS, TIMM, check_timm_name, is_timm, takes
    modalities = tuple(modalities)
    if is_timm(value) and "image" in modalities:
        if not takes(value, "image"):
            raise UsageError(f"{flag(name)} {value!r}: give a timm model name after timm:, e.g. timm:resnet18")
        from .errors import ModelError
        try:
            check_timm_name(value, flag(name))
        except ModelError as e:
            raise UsageError(str(e)) from None
        return
    names = [m for mod in modalities for m in MODELS[mod]]
    if value not in names:
        extra = " or timm:NAME (images)" if "image" in modalities else ""
        raise UsageError(f"{flag(name)} {value!r}: choose {_or(names)}{extra}")


def image_size_wxh(value: Optional[str], modality: str) -> Optional[tuple[int, int]]:
    """`synth --image-size N` (a square, as every other --image-size) or `WxH` -> (W, H), sides >= 8, images only."""
    if not value:
        return None
    if modality != "image":
        raise UsageError("--image-size applies to --modality image only")
    sides = value.lower().split("x")
    try:
        w, h = (int(v) for v in (sides * 2 if len(sides) == 1 else sides))
    except ValueError:
        raise UsageError(f"--image-size {value!r}: give a side N or WxH, e.g. 256 or 512x384") from None
    if min(w, h) < 8:
        raise UsageError(f"--image-size {value!r}: both sides must be at least 8")
    return w, h


def int_list(name: str, value: str, low: int = 1) -> tuple[int, ...]:
    """'20000,200000' -> (20000, 200000), each >= low."""
    try:
        items = tuple(int(x) for x in value.split(","))
    except ValueError:
        raise UsageError(f"{flag(name)} {value!r}: give comma-separated integers, e.g. 20000,200000") from None
    if min(items) < low:
        raise UsageError(f"{flag(name)} {value!r}: every size must be at least {low}")
    return items


def probe(freeze_backbone: bool, unfreeze_last: int, cache_embeddings: bool, cache_views: int) -> None:
    """--freeze-backbone, --unfreeze-last, --cache-embeddings and --cache-views, together."""
    minimum(0, unfreeze_last=unfreeze_last, cache_views=cache_views)
    if cache_embeddings and unfreeze_last:
        raise UsageError(f"--cache-embeddings needs a backbone that does not change; --unfreeze-last {unfreeze_last} "
                         "trains part of it: drop one of them")
    if cache_embeddings and not freeze_backbone:
        raise UsageError("--cache-embeddings needs a frozen backbone: add --freeze-backbone")
    if cache_views and not cache_embeddings:
        raise UsageError(f"--cache-views {cache_views}: views of cached embeddings; add --cache-embeddings "
                         "--freeze-backbone, or drop --cache-views")
