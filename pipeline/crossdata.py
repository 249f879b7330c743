"""`dfp evaluate CKPT A B ...`: one checkpoint on several shard sets, and the cross-dataset table.

Each set is evaluated by `evaluate.evaluate` into its own folder; the table's rows are read from those split
blocks. Everything thresholded uses the checkpoint's threshold (and its LLR calibration), tuned on the training
set's val split, never one tuned on a target set: that is what a transferred detector would do.

Where things go (all decided before anything runs, so a clash is reported before any set is evaluated):
- with `--out DIR`: `DIR/SET-SPLIT/` per set and `DIR/cross_dataset.json` + `.md`;
- without: `RUN/eval/SET-SPLIT/` per set (as a single `dfp evaluate`) and `RUN/eval/cross_dataset-SPLIT.json`
  + `.md` (`CKPT-` in front for a checkpoint other than best_model.pth).
A folder or table recording another evaluation is never written over: the folder gets the set's hash
(`evaluate.eval_folder`), the table `-HASH` of its checkpoint, split and list of sets. Re-running the same
evaluation replaces its own. The table itself (its rows, JSON and markdown, and `dfp tune` bringing the tables in
RUN/eval up to a new threshold) is `crosstable`'s.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .crosstable import TABLE, cross_document, table_lines, threshold_text, write_table
from .errors import InputError
from .evaluate import EVAL_DIR, _safe_name, _now, eval_folder, evaluate, evaluation_record, shards_digest
from .storage import resolved



def table_record(ckpt_path, shard_sets, split: str) -> dict:
    """What a table holds, by resolved paths; two tables are the same evaluation when all but `time` agree."""
    return {"checkpoint": str(Path(ckpt_path).resolve()), "split": split,
            "sets": [resolved(s) for s in shard_sets], "time": _now()}


def _same_table(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("checkpoint", "split", "sets"))


def _table_free(stem: Path, record: dict) -> bool:
    """Neither file there, or the JSON records this very evaluation."""
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    if not json_path.exists():
        return not md_path.exists()
    try:
        rec = json.loads(json_path.read_text(encoding="utf-8")).get("evaluation")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(rec, dict) and _same_table(rec, record)


def table_stem(record: dict, root: Path | None = None) -> Path:
    """The table's path without suffix (see the module docstring)."""
    key = "\n".join([record["checkpoint"], record["split"], *record["sets"]])
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    if root is not None:
        candidates = [Path(root) / TABLE, Path(root) / f"{TABLE}-{digest}"]
    else:
        ckpt = Path(record["checkpoint"])
        prefix = "" if ckpt.name == "best_model.pth" else f"{_safe_name(ckpt.stem)}-"
        base = ckpt.parent / EVAL_DIR
        candidates = [base / f"{prefix}{TABLE}-{record['split']}", base / f"{prefix}{TABLE}-{digest}-{record['split']}"]
    for stem in candidates:
        if _table_free(stem, record):
            return stem
    raise InputError(f"{candidates[0]}.json and {candidates[1]}.json hold other cross-dataset tables; "
                     "give another output folder with --out")


def set_names(records: list[dict]) -> list[str]:
    """The shard folder's name; SET-HASH (`shards_digest`) for every set whose name another set shares."""
    names = [r["set"] for r in records]
    return [f"{n}-{shards_digest(r['shards'])}" if names.count(n) > 1 else n for n, r in zip(names, records)]


def plan(ckpt_path, shard_sets, split: str, out=None) -> tuple[list[dict], list[Path], Path]:
    """(each set's evaluation record, each set's folder, the table's stem), or InputError before anything runs."""
    records = [evaluation_record(ckpt_path, s, split) for s in shard_sets]
    if len({r["shards"] for r in records}) < len(records):
        raise InputError("SHARDS: a shard set is given twice; give each set once")
    root = Path(out) if out is not None else None
    folders: list[Path] = []
    for r in records:
        folders.append(eval_folder(r, root, frozenset(folders)))
    return records, folders, table_stem(table_record(ckpt_path, shard_sets, split), root)


def _check_sets(ckpt_path, shard_sets, split: str) -> None:
    """Each set holds the checkpoint's modality and a non-empty split: checked for all before the first runs."""
    from . import checkpoint
    from .formats import read_manifest
    modality = checkpoint.load(ckpt_path, need=checkpoint.MODEL)["modality"]
    for s in shard_sets:
        manifest = read_manifest(s)
        if manifest["modality"] != modality:
            raise InputError(f"{ckpt_path} is a {modality} model but {s} holds {manifest['modality']} shards")
        if sum(manifest["splits"].get(split, {}).values()) == 0:
            raise InputError(f"{s}: split '{split}' is empty")


def cross_evaluate(ckpt_path, shard_sets, split="test", out=None, device="auto", backend="auto", batch_size=64,
                   log=print) -> dict:
    """Evaluate every set into its folder, then write and print the table; returns the table's document."""
    records, folders, stem = plan(ckpt_path, shard_sets, split, out)
    _check_sets(ckpt_path, shard_sets, split)
    metrics = [evaluate(ckpt_path, s, split, f, device, backend, batch_size, log) for s, f in zip(shard_sets, folders)]
    doc = cross_document(table_record(ckpt_path, shard_sets, split), set_names(records), records, folders, metrics)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = write_table(stem, doc)
    log(f"cross-dataset table, threshold {threshold_text(doc['chosen'])}:")
    log("\n".join(table_lines(doc)))
    log(f"written: {json_path} and {md_path}")
    return doc
