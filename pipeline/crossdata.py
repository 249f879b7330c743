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
evaluation replaces its own. `dfp tune` brings the tables in RUN/eval up to its new threshold (`refresh_tables`);
a table elsewhere (`--out`) keeps the threshold it was made at, which it records.

The JSON: {"evaluation": {checkpoint, split, sets, time}, "chosen": the checkpoint's threshold, "llr": its
calibration, "rows": [{name, shards, folder, n, real, fake, auc, video_auc, eer, min_dcf, threshold, accuracy, f1,
hter}]}; each row is read from its folder's metrics.json.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import atomic
from .errors import InputError
from .evaluate import EVAL_DIR, _safe_name, _now, eval_folder, evaluate, evaluation_record, shards_digest
from .storage import resolved

TABLE = "cross_dataset"
# (row key, column title) of the table, in order
COLUMNS = (("n", "n"), ("auc", "AUC"), ("video_auc", "video AUC"), ("eer", "EER"), ("min_dcf", "minDCF"),
           ("accuracy", "accuracy"), ("f1", "F1"), ("hter", "HTER"))


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


def hter(confusion: list) -> float | None:
    """(FPR + FNR) / 2 from [[tn, fp], [fn, tp]]; None when a class is absent."""
    (tn, fp), (fn, tp) = confusion
    if not (tn + fp) or not (fn + tp):
        return None
    return (fp / (tn + fp) + fn / (fn + tp)) / 2


def table_row(name: str, record: dict, folder: Path, block: dict) -> dict:
    """One set's row from its split block; thresholded figures are those at the checkpoint's threshold."""
    tuned = block["tuned"]
    (tn, fp), (fn, tp) = tuned["confusion_matrix"]
    video = block.get("video")
    return {"name": name, "shards": record["shards"], "folder": str(folder), "n": tn + fp + fn + tp,
            "real": tn + fp, "fake": fn + tp, "auc": block.get("auc"),
            "video_auc": video.get("auc") if isinstance(video, dict) else None, "eer": block.get("eer"),
            "min_dcf": block.get("min_dcf"), "threshold": tuned["threshold"], "accuracy": tuned["accuracy"],
            "f1": tuned["f1"], "hter": hter(tuned["confusion_matrix"])}


def _cell(value) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def table_lines(doc: dict) -> list[str]:
    """The table as markdown rows (also what the console prints)."""
    esc = lambda text: str(text).replace("|", "\\|")
    lines = ["| set | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    lines += [f"| {esc(r['name'])} | " + " | ".join(_cell(r[k]) for k, _ in COLUMNS) + " |" for r in doc["rows"]]
    return lines


def _threshold_text(chosen: dict) -> str:
    if chosen.get("method") == "default":
        return f"{chosen['threshold']:.4f} (the default: the checkpoint stores no threshold)"
    return f"{chosen['threshold']:.4f} ({chosen.get('method')}, stored in the checkpoint)"


def render_markdown(doc: dict) -> str:
    ev, llr = doc["evaluation"], doc.get("llr") or {}
    calibration = f"fitted on the training run's {llr['fitted_on']}" if llr.get("fitted_on") else "logit(score) itself"
    lines = [f"# Cross-dataset evaluation of {ev['checkpoint']} (split {ev['split']})", "",
             f"Threshold: {_threshold_text(doc['chosen'])}, the same on every set. Accuracy, F1 and "
             "HTER = (FPR + FNR) / 2 are at that threshold; AUC, EER and minDCF need none. LLR calibration "
             f"(actDCF, Cllr, ECE in each set's metrics.json): {calibration}.", "",
             *table_lines(doc), "", "Sets:", ""]
    lines += [f"- {r['name']}: `{r['shards']}` -> `{r['folder']}`" for r in doc["rows"]]
    return "\n".join(lines) + "\n"


def cross_document(record: dict, names, records, folders, metrics: list[dict]) -> dict:
    split = record["split"]
    return {"evaluation": record, "chosen": metrics[0]["chosen"], "llr": metrics[0][split].get("llr"),
            "rows": [table_row(n, r, f, m[split]) for n, r, f, m in zip(names, records, folders, metrics)]}


def cross_evaluate(ckpt_path, shard_sets, split="test", out=None, device="auto", backend="auto", batch_size=64,
                   log=print) -> dict:
    """Evaluate every set into its folder, then write and print the table; returns the table's document."""
    records, folders, stem = plan(ckpt_path, shard_sets, split, out)
    _check_sets(ckpt_path, shard_sets, split)
    metrics = [evaluate(ckpt_path, s, split, f, device, backend, batch_size, log) for s, f in zip(shard_sets, folders)]
    doc = cross_document(table_record(ckpt_path, shard_sets, split), set_names(records), records, folders, metrics)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = _write_table(stem, doc)
    log(f"cross-dataset table, threshold {_threshold_text(doc['chosen'])}:")
    log("\n".join(table_lines(doc)))
    log(f"written: {json_path} and {md_path}")
    return doc


def _write_table(stem: Path, doc: dict) -> tuple[Path, Path]:
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    atomic.write_json(json_path, doc, default=str)
    atomic.write_text(md_path, render_markdown(doc))
    return json_path, md_path


def refresh_tables(ckpt_path, log=print) -> None:
    """Rebuild the RUN/eval tables of this checkpoint from their sets' folders (after `dfp tune` retargeted
    them). A table whose document or folders cannot be read is left as it is, with a warning."""
    ckpt = Path(ckpt_path).resolve()
    for path in sorted((ckpt.parent / EVAL_DIR).glob(f"*{TABLE}*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc["evaluation"]["checkpoint"] != str(ckpt):
                continue
            split = doc["evaluation"]["split"]
            metrics = [json.loads((Path(r["folder"]) / "metrics.json").read_text(encoding="utf-8"))
                       for r in doc["rows"]]
            rows = [table_row(r["name"], {"shards": r["shards"]}, Path(r["folder"]), m[split])
                    for r, m in zip(doc["rows"], metrics)]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log(f"warning: {path} still shows the old threshold: {type(e).__name__}: {e}")
            continue
        _write_table(path.with_suffix(""), {**doc, "chosen": metrics[0]["chosen"], "rows": rows})
        log(f"updated: {path} and its .md")
