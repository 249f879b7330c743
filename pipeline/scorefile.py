"""`dfp metrics`: one `metrics.json` split block from any score CSV, with the code `dfp train` uses.

The CSV's header names `label` (0/1, or real/fake and their synonyms such as bonafide/spoof) and `score`
(the probability of fake); `group` and `attack` are optional, `key` names rows in the ASVspoof 5 export, and
other columns are ignored, so dfp's own `predictions_*.csv` qualify. With a val file the threshold is tuned and
the LLR calibration fitted on val, then both are applied unchanged to the scores, exactly as in training.

Every input is read and checked before anything is written: a bad file is one `InputError` naming the file
and line.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import atomic
from .calibration import Calibration
from .dcf import DEFAULT_COSTS, CostModel
from .errors import InputError
from .datasets.sources import DEFAULT_CLASS_MAP
from .thresholds import DEFAULT_THRESHOLD

LABELS = DEFAULT_CLASS_MAP
ASVSPOOF5_HEADER = ("filename", "cm-score")
ASVSPOOF5_KEY_HEADER = ("filename", "cm-label")


class ScoreFile(NamedTuple):
    path: Path
    keys: list[str]
    labels: np.ndarray  # int64: real 0, fake 1
    scores: np.ndarray  # float64
    groups: list[str]
    attacks: list[str]
    lines: list[int]  # the file line of each row


def _label(path, line: int, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        cls = LABELS.get(text.strip().lower().replace("-", "").replace("_", "").replace(" ", ""))
    else:
        cls = {0.0: "real", 1.0: "fake"}.get(value)
    if cls is None:
        raise InputError(f"{path} line {line}: label {text!r}: use 0/1 or real/fake (also bonafide/spoof, ...)")
    return 0 if cls == "real" else 1


def _score(path, line: int, text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise InputError(f"{path} line {line}: score {text!r} is not a number") from None
    if not (math.isfinite(s) and 0.0 <= s <= 1.0):
        raise InputError(f"{path} line {line}: score {text!r} is not a probability of fake in [0, 1]")
    return s


def read_scores(path) -> ScoreFile:
    """The rows of a score CSV, checked; InputError naming the file and line of the first problem."""
    path = Path(path)
    keys, labels, scores, groups, attacks, lines = [], [], [], [], [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("label", "score") if c not in (reader.fieldnames or ())]
            if missing:
                raise InputError(f"{path} line 1: no {' or '.join(repr(c) for c in missing)} column in the header "
                                 f"{reader.fieldnames or []}")
            for row in reader:
                line = reader.line_num
                if None in row or row["label"] is None or row["score"] is None:
                    raise InputError(f"{path} line {line}: {len(reader.fieldnames)} columns in the header, "
                                     "a different number here")
                labels.append(_label(path, line, row["label"]))
                scores.append(_score(path, line, row["score"]))
                keys.append(row.get("key") or "")
                groups.append(row.get("group") or "")
                attacks.append(row.get("attack") or "")
                lines.append(line)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        raise InputError(f"{path}: not a CSV file: {e}") from None
    table = ScoreFile(path, keys, np.asarray(labels, np.int64), np.asarray(scores, np.float64), groups, attacks,
                      lines)
    _check_classes(table)
    _check_groups(table)
    return table


def _check_classes(t: ScoreFile) -> None:
    if not t.lines:
        raise InputError(f"{t.path}: no rows below the header")
    if t.labels.min() == t.labels.max():
        cls = "fake" if t.labels[0] else "real"
        raise InputError(f"{t.path} lines {t.lines[0]}-{t.lines[-1]}: every row is {cls}; AUC, EER and the DCF "
                         "need both classes")


def _check_groups(t: ScoreFile) -> None:
    """A group is the frames of one video here: both labels in one is an error, not a warning."""
    first: dict[str, tuple[int, int]] = {}
    for g, y, line in zip(t.groups, t.labels, t.lines):
        if not g:
            continue
        seen = first.setdefault(g, (int(y), line))
        if seen[0] != y:
            raise InputError(f"{t.path} line {line}: group {g!r} holds both real and fake samples (line {seen[1]} "
                             f"is {'fake' if seen[0] else 'real'}); a group must be one video")


def asvspoof5_names(t: ScoreFile) -> list[str]:
    """The `filename` of each row: its key, or `lineN` in a file without keys; InputError for a repeated key or
    one that tabs or line breaks would split."""
    names, seen = [], {}
    for key, line in zip(t.keys, t.lines):
        name = key or f"line{line}"
        if any(c in name for c in "\t\r\n"):
            raise InputError(f"{t.path} line {line}: key {key!r} holds a tab or line break, which the ASVspoof 5 "
                             "score file cannot hold")
        if name in seen:
            raise InputError(f"{t.path} line {line}: key {name!r} repeats line {seen[name]}; the ASVspoof 5 "
                             "score file needs one row per key")
        seen[name] = line
        names.append(name)
    return names


def asvspoof5_key_path(path) -> Path:
    """scores.tsv -> scores_keys.tsv: the key file the evaluation package reads beside the score file."""
    path = Path(path)
    return path.with_name(f"{path.stem}_keys{path.suffix}")


def write_asvspoof5(path, t: ScoreFile, names: list[str], calibration: Calibration) -> tuple[Path, Path]:
    """ASVspoof 5's Track 1 files (evaluation-package/README.md): `filename<TAB>cm-score` with the bona fide LLR
    (higher = more bona fide) and `filename<TAB>cm-label` with bonafide/spoof, each with its header."""
    llr = calibration.bonafide_llr(t.scores)
    scores = "".join(f"{n}\t{float(v)!r}\n" for n, v in zip(names, llr))
    keys = "".join(f"{n}\t{'spoof' if y else 'bonafide'}\n" for n, y in zip(names, t.labels))
    key_path = asvspoof5_key_path(path)
    atomic.write_text(path, "\t".join(ASVSPOOF5_HEADER) + "\n" + scores)
    atomic.write_text(key_path, "\t".join(ASVSPOOF5_KEY_HEADER) + "\n" + keys)
    return Path(path), key_path


def score_metrics(t: ScoreFile, val: ScoreFile | None = None, threshold: float | None = None, method: str = "f1",
                  costs: CostModel = DEFAULT_COSTS) -> tuple[dict, list[str]]:
    """A `metrics.json`-shaped document whose "test" is the block of `t` and "val" that of `val` (or None).

    With `val` and no `threshold` it is `build_metrics` itself, as in `dfp train`; a given `threshold` is
    applied as it is ("chosen" method "fixed"); without either the threshold is 0.5 ("default")."""
    from .metrics import build_metrics, split_report, val_calibration  # scikit-learn: not at import time

    attacks = {"val": val.attacks if val else None, "test": t.attacks}
    groups = {"val": val.groups if val else None, "test": t.groups}
    if val is not None and threshold is None:
        return build_metrics((val.labels, val.scores), (t.labels, t.scores), method, attacks=attacks,
                             groups=groups, costs=costs)
    chosen = ({"method": "fixed", "threshold": float(threshold)} if threshold is not None
              else {"method": "default", "threshold": DEFAULT_THRESHOLD})
    cal = val_calibration(val.labels, val.scores, costs) if val is not None else Calibration.identity()
    block = lambda s, f: split_report(f.labels, f.scores, DEFAULT_THRESHOLD, chosen["threshold"], attacks[s],
                                      groups[s], cal, costs)
    doc = {"val": block("val", val) if val is not None else None, "test": block("test", t),
           "thresholds": {chosen["method"]: chosen["threshold"]}, "chosen": chosen}
    return doc, []


def _row_keys(t: ScoreFile) -> list[str]:
    """A distinct key per row for the predictions file under --out: the key, else `lineN`, with the line added
    where a key repeats."""
    keys = [k or f"line{n}" for k, n in zip(t.keys, t.lines)]
    if len(set(keys)) < len(keys):
        keys = [f"{k} (line {n})" for k, n in zip(keys, t.lines)]
    return keys


def _write_run(out: Path, doc: dict, files: dict[str, ScoreFile | None], method: str) -> None:
    """A run directory `dfp report` understands: metrics.json, predictions_{val,test}.csv, plots and the report."""
    from .formats import SampleMeta
    from .predictions import write_predictions
    from .report import render_report

    out.mkdir(parents=True, exist_ok=True)
    for split, t in files.items():
        if t is not None:
            keys = _row_keys(t)
            meta = {k: SampleMeta(str(t.path), g, a) for k, g, a in zip(keys, t.groups, t.attacks)}
            write_predictions(out / f"predictions_{split}.csv", keys, t.labels, t.scores, meta)
    record = {**doc, "score_files": {s: str(t.path) if t else None for s, t in files.items()}}
    atomic.write_json(out / "metrics.json", record, allow_nan=False)
    atomic.write_json(out / "config.json", {"threshold_method": method})
    render_report(out)


def run(scores, val=None, threshold: float | None = None, method: str = "f1", costs: CostModel = DEFAULT_COSTS,
        json_out=None, out=None, export=None, log=print) -> dict:
    """`dfp metrics`: read and check every input, compute the split block, then print and write it."""
    from .report import console_summary

    t = read_scores(scores)
    v = read_scores(val) if val is not None else None
    names = asvspoof5_names(t) if export is not None else None
    doc, warnings = score_metrics(t, v, threshold, method, costs)
    block = doc["test"]
    for w in warnings:
        log(f"warning: {w}")
    n_fake = int(t.labels.sum())
    log(console_summary(f"{t.path}: {t.labels.size} samples ({t.labels.size - n_fake} real, {n_fake} fake)",
                        block, doc["chosen"]))
    if json_out is not None:
        log(f"written: {atomic.write_json(json_out, block, allow_nan=False)}")
    if export is not None:
        written = write_asvspoof5(export, t, names, Calibration.from_dict(block["llr"]))
        log(f"written: {written[0]} (scores) and {written[1]} (keys) for ASVspoof 5's evaluation package")
    if out is not None:
        _write_run(Path(out), doc, {"val": v, "test": t}, method)
        log(f"written: {out}")
    return block
