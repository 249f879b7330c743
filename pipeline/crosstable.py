"""The cross-dataset table of `dfp evaluate CKPT A B ...` (`crossdata`): one row per shard set, read from the split
block of that set's metrics.json, as JSON and as markdown; `refresh_tables` rebuilds a checkpoint's tables after
`dfp tune` moved its threshold (a table elsewhere, under `--out`, keeps the threshold it was made at, which it
records).

The JSON: {"evaluation": {checkpoint, split, sets, time}, "chosen": the checkpoint's threshold, "llr": its
calibration, "rows": [{name, shards, folder, n, real, fake, auc, video_auc, eer, min_dcf, threshold, accuracy, f1,
hter}]}.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import atomic

TABLE = "cross_dataset"
# (row key, column title) of the table, in order
COLUMNS = (("n", "n"), ("auc", "AUC"), ("video_auc", "video AUC"), ("eer", "EER"), ("min_dcf", "minDCF"),
           ("accuracy", "accuracy"), ("f1", "F1"), ("hter", "HTER"))


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


def threshold_text(chosen: dict) -> str:
    if chosen.get("method") == "default":
        return f"{chosen['threshold']:.4f} (the default: the checkpoint stores no threshold)"
    return f"{chosen['threshold']:.4f} ({chosen.get('method')}, stored in the checkpoint)"


def render_markdown(doc: dict) -> str:
    ev, llr = doc["evaluation"], doc.get("llr") or {}
    calibration = f"fitted on the training run's {llr['fitted_on']}" if llr.get("fitted_on") else "logit(score) itself"
    lines = [f"# Cross-dataset evaluation of {ev['checkpoint']} (split {ev['split']})", "",
             f"Threshold: {threshold_text(doc['chosen'])}, the same on every set. Accuracy, F1 and "
             "HTER = (FPR + FNR) / 2 are at that threshold; AUC, EER and minDCF need none. LLR calibration "
             f"(actDCF, Cllr, ECE in each set's metrics.json): {calibration}.", "",
             *table_lines(doc), "", "Sets:", ""]
    lines += [f"- {r['name']}: `{r['shards']}` -> `{r['folder']}`" for r in doc["rows"]]
    return "\n".join(lines) + "\n"


def cross_document(record: dict, names, records, folders, metrics: list[dict]) -> dict:
    split = record["split"]
    return {"evaluation": record, "chosen": metrics[0]["chosen"], "llr": metrics[0][split].get("llr"),
            "rows": [table_row(n, r, f, m[split]) for n, r, f, m in zip(names, records, folders, metrics)]}


def write_table(stem: Path, doc: dict) -> tuple[Path, Path]:
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    atomic.write_json(json_path, doc, default=str)
    atomic.write_text(md_path, render_markdown(doc))
    return json_path, md_path


def refresh_tables(ckpt_path, folder: Path, log=print) -> None:
    """Rebuild the tables in `folder` (the run's RUN/eval) of this checkpoint from their sets' folders (after
    `dfp tune` retargeted them). A table whose document or folders cannot be read is left as it is, with a warning."""
    ckpt = Path(ckpt_path).resolve()
    for path in sorted(Path(folder).glob(f"*{TABLE}*.json")):
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
        write_table(path.with_suffix(""), {**doc, "chosen": metrics[0]["chosen"], "rows": rows})
        log(f"updated: {path} and its .md")
