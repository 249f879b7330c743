"""DeepfakeBench's preprocessed frames: `--protocol` one of its dataset JSONs,
`{dataset: {label_name: {split: {[compression:] {video: {label, frames: [paths]}}}}}}`; every frame
is an image sample. Label names containing `real` are real; the split is the JSON's; group: the
video; attack: the label name of a fake. Frame paths are relative to INPUT or absolute (also from
another machine: the longest tail of the path found under INPUT is used)."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .sources import SPLIT_NAMES
from .common import Entry, join, not_listed, protocol_error, read_json, rel_to


class _Resolver:
    """Frame path as written in the JSON -> path under INPUT."""

    def __init__(self, root: Path, files):
        self.root, self.known, self.cut = root, {f.rel for f in files}, set()

    def __call__(self, frame: str) -> str:
        if not frame.startswith("/"):
            return frame[2:] if frame.startswith("./") else frame
        inside = rel_to(self.root, Path(frame))
        if inside is not None:
            return inside
        parts = frame.strip("/").split("/")
        for k in sorted(self.cut) + list(range(len(parts))):
            if k < len(parts) and "/".join(parts[k:]) in self.known:
                self.cut.add(k)
                return "/".join(parts[k:])
        return frame


def _items(path: Path, node) -> list:
    if not isinstance(node, dict):
        raise protocol_error(path, None, f"expected a JSON object, found {type(node).__name__} {str(node)[:60]!r}")
    return list(node.items())


def _videos(path: Path, tree: dict, compression: str):
    """(label name, split, video, frames) of every video in the JSON."""
    for dataset in tree.values():
        for label_name, splits in _items(path, dataset):
            for split, level in _items(path, splits):
                if split.lower() not in SPLIT_NAMES:
                    raise protocol_error(path, None, f"{label_name}: unknown split {split!r}")
                if level and not any(isinstance(v, dict) and "frames" in v for v in level.values()):
                    level = level.get(compression) or (next(iter(level.values())) if len(level) == 1 else {})
                for video, info in _items(path, level):
                    if not isinstance(info, dict) or not isinstance(info.get("frames"), list):
                        raise protocol_error(path, None, f"{label_name}/{split}/{video}: no 'frames' list")
                    yield label_name, SPLIT_NAMES[split.lower()], video, info["frames"]


def candidates(root: Path, files, opts):
    if opts.protocol is None:
        raise InputError("--dataset deepfakebench needs --protocol, one of DeepfakeBench's dataset JSON files")
    path = opts.protocol
    tree = read_json(path)
    if not isinstance(tree, dict):
        raise protocol_error(path, None, "expected {dataset: {label_name: {split: ...}}}")
    resolve, entries = _Resolver(root, files), []
    for label_name, split, video, frames in _videos(path, tree, opts.compression):
        cls = "real" if "real" in label_name.lower() else "fake"
        attack = label_name if cls == "fake" else None
        entries += [Entry(resolve(fr), cls, split, video, attack, f"{path.name} ({label_name}/{video})")
                    for fr in frames]
    own = rel_to(root, path)
    return join(files, entries, not_listed(path.name, {own} if own else set()))
