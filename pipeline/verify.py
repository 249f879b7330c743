"""`dfp verify`: a shard folder re-read against its manifest, every sample decoded as the loaders decode it.

Each shard's size and checksum, index file and sample count, and each sample's class, metadata and payload are
checked against the manifest; problems come back one line each, and the walk stops after the shard at which they
reach `max_problems`. The checks of one shard (`check_shard`) are apart from the walk over the set (`verify_set`),
so that `dfp verify URL` (`remote_verify`) runs the same checks on each shard it fetches, and reports the same lines.
"""
from __future__ import annotations

import json
import os
import re
from contextlib import nullcontext
from pathlib import Path

from .formats import CLASSES, SPLITS, read_index_entries, read_manifest, read_shard


def _decode_check(modality: str, sample: dict[str, bytes], exts: list[str]) -> str | None:
    """The loaders' test of each member (`jpeg_check` for JPEGs), so verify lists what they skip."""
    from .media.audio import decode_flac
    from .media.image import decode_jpeg, jpeg_check
    try:
        for ext in exts:
            if ext not in sample:
                return f"missing member .{ext}"
            if ext.endswith("jpg"):
                err = jpeg_check(sample[ext])
                if err:
                    return f"decode failed: .{ext}: {err}"
            elif ext.endswith("png"):  # --image-codec png: PIL reads them in both loaders
                arr = decode_jpeg(sample[ext])
                if arr.ndim != 3 or arr.shape[2] != 3:
                    return f".{ext} decodes to shape {arr.shape}"
            elif ext == "flac":
                x, _ = decode_flac(sample[ext])
                if x.size == 0:
                    return ".flac has no audio"
    except Exception as e:
        return f"decode failed: {type(e).__name__}: {e}"
    return None


def _verify_shard_file(path: Path, row: dict, problems: list[str]):
    """Checksum, size, index and sample count of one shard; its samples, or None when it cannot be read."""
    if not path.is_file():
        problems.append(f"{row['path']}: missing")
        return None
    try:
        digest, samples = read_shard(path)
    except Exception:  # a damaged tar cannot match the recorded checksum anyway
        digest = None
    if path.stat().st_size != row["bytes"] or digest != row["sha256"]:
        problems.append(f"{row['path']}: checksum mismatch (the shard changed after it was written)")
        return None
    try:
        idx = _read_index(path.with_suffix(".idx"), row["path"][:-4] + ".idx")
    except Exception as e:
        problems.append(f"{row['path']}: unreadable index ({e})")
        return None
    if len(samples) != row["samples"]:
        problems.append(f"{row['path']}: {len(samples)} samples, manifest says {row['samples']}")
    if [{m.ext: (m.offset, m.size) for m in ms} for _, ms in samples] != idx:
        problems.append(f"{row['path'].replace('.tar', '.idx')}: does not match the tar")
    return samples


def _read_index(path: Path, name: str) -> list[dict]:
    """The index, its errors naming it by its path in the set: the same line wherever the set was read from."""
    try:
        f = open(path, encoding="ascii")
    except OSError as e:
        raise OSError(f"{name}: {e.strerror}") from None
    with f:
        return [comps for _, comps in read_index_entries(f, name)]


def _read_samples(path: Path, samples):
    with open(path, "rb") as f:
        for key, members in samples:
            data = {}
            for m in members:
                f.seek(m.offset)
                data[m.ext] = f.read(m.size)
            yield key, data


def _verify_sample(row: dict, key: str, data: dict, modality: str, exts, problems: list[str]) -> None:
    """Class file, metadata and a full decode of one sample."""
    if data.get("cls") != str(CLASSES.index(row["class"])).encode():
        problems.append(f"{row['path']}: sample {key} has class {data.get('cls')!r}, shard is {row['class']}")
    try:
        meta = json.loads(data.get("json", b"{}"))
        if meta.get("class") != row["class"] or not meta.get("source"):
            problems.append(f"{row['path']}: sample {key} metadata disagrees with its shard")
    except json.JSONDecodeError:
        problems.append(f"{row['path']}: sample {key} has unreadable metadata")
    err = _decode_check(modality, data, exts)
    if err:
        # a decoder's message may quote a repr with its memory address, which would make one damage a new line
        # on every run (and a URL's verify differ from the folder's)
        problems.append(f"{row['path']}: sample {key}: {re.sub(r' at 0x[0-9a-fA-F]+', '', err)}")


def check_shard(path: Path, row: dict, manifest: dict, problems: list[str], bar=None) -> int | None:
    """Every check of one shard, read from `path` (its .idx beside it) and named by its manifest row: the sample
    count, or None when the shard cannot be read."""
    samples = _verify_shard_file(path, row, problems)
    if samples is None:
        return None
    for key, data in _read_samples(path, samples):
        _verify_sample(row, key, data, manifest["modality"], manifest["payload"], problems)
        if bar:
            bar.update(1)
    return len(samples)


def verify_set(manifest: dict, local_shard, progress: bool = True, max_problems: int = 20) -> tuple[list[str], dict]:
    """The set-wide walk: each row's shard checked where `local_shard(row)` (a context manager) puts it, then the
    manifest's split counts. Returns (problems, counts)."""
    problems: list[str] = []
    seen = {s: {c: 0 for c in CLASSES} for s in SPLITS}
    rows = manifest["shards"]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(r["samples"] for r in rows), unit="sample", desc="verifying", dynamic_ncols=True)
    try:
        for row in rows:
            with local_shard(row) as path:
                n = check_shard(path, row, manifest, problems, bar)
            if n is None:
                continue
            seen[row["split"]][row["class"]] += n
            if len(problems) >= max_problems:
                break
    finally:
        if bar:
            bar.close()
    if not problems and seen != manifest["splits"]:
        problems.append(f"manifest counts {manifest['splits']} differ from the shards' {seen}")
    return problems, seen


def verify_shards(shards_dir: str | os.PathLike, progress: bool = True, max_problems: int = 20) -> tuple[list[str], dict]:
    """Re-hash, re-count and decode every sample. Returns (problems, counts)."""
    root = Path(shards_dir)
    return verify_set(read_manifest(root), lambda row: nullcontext(root / row["path"]), progress, max_problems)
