"""Plots, `training_results.txt` and a self-contained `report.html`, rendered from a run directory.

`render_report(RUN)` needs no model: it reads what training saved (`config.json`, `history.csv`,
`predictions_val.csv`, `predictions_test.csv`, `metrics.json`), renders every output it has the inputs
for, logs a warning for each one it skips, and never fails because an input is missing. When
`metrics.json` is missing but `predictions_val.csv` exists, the metrics are recomputed in memory
(method f1, or `config["threshold_method"]`) for the plots and the summary; `metrics.json` itself is not
written here. Every file is written atomically (temporary name + `os.replace`).

One module per job: `plots` (figures and PNG encoding), `text` (training_results.txt and the per-attack table
lines), `html` (report.html), `counts` (samples per split and imbalance ratios). This module holds the readers,
the atomic writers and `render_report`. Importing the package loads neither matplotlib nor scikit-learn.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np

from .. import atomic
from ..formats import SPLITS
from ..predictions import Predictions, read_prediction_table
from .counts import format_ratio, split_counts
from .html import HTML_FILE, render_html
from .plots import (PLOTS, plot_confusion, plot_dataset_stats, plot_pr, plot_roc, plot_threshold_analysis,
                    plot_training_curves, png_bytes, render_plots)
from .text import SUMMARY_FILE, attack_table_lines, console_summary, report_notes, summary_text


__all__ = ["HTML_FILE", "PLOTS", "SUMMARY_FILE", "attack_table_lines", "console_summary",
           "format_ratio", "plot_confusion", "plot_dataset_stats", "plot_pr", "plot_roc",
           "plot_threshold_analysis", "plot_training_curves", "png_bytes", "read_history", "render_html",
           "render_plots", "render_report", "report_notes", "split_counts", "summary_text", "write_json"]

log = logging.getLogger(__name__)


def write_json(path: str | Path, obj) -> Path:
    """Atomic JSON (indent 2); NaN/inf are refused rather than written as invalid JSON."""
    return atomic.write_json(path, obj, allow_nan=False)


def read_history(path: str | Path) -> dict[str, np.ndarray]:
    """history.csv as {column: float array}; empty cells are NaN."""
    cols: dict[str, list[float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for name in reader.fieldnames or ():
            cols[name] = []
        for row in reader:
            for name in cols:
                cell = (row.get(name) or "").strip()
                try:
                    cols[name].append(float(cell) if cell else math.nan)
                except ValueError:
                    cols[name].append(math.nan)
    if "epoch" not in cols or not cols["epoch"]:
        raise ValueError(f"{path}: no epoch rows")
    return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def _load_json(path: Path):
    if not path.exists():
        log.warning("report: %s is missing", path.name)
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("report: cannot read %s: %s", path.name, e)
        return None


def _read_tables(run: Path) -> dict[str, Predictions | None]:
    """predictions_{train,val,test}.csv of a run or evaluation; None for a split whose file is missing or
    unreadable."""
    tables: dict[str, Predictions | None] = {}
    for split in SPLITS:
        path = run / f"predictions_{split}.csv"
        tables[split] = None
        if path.exists():
            try:
                tables[split] = read_prediction_table(path)
            except (OSError, ValueError, KeyError) as e:
                log.warning("report: cannot read %s: %s", path.name, e)
    return tables


def _read_history(run: Path) -> dict[str, np.ndarray] | None:
    if not (run / "history.csv").exists():
        return None
    try:
        return read_history(run / "history.csv")
    except (OSError, ValueError) as e:
        log.warning("report: cannot read history.csv: %s", e)
        return None


def _recompute_metrics(config: dict, tables: dict[str, Predictions | None], preds: dict) -> dict | None:
    """metrics.json's content from the saved predictions, for a run whose metrics.json is missing."""
    from ..metrics import build_metrics  # scikit-learn: only this path needs it at import time

    try:
        metrics, _ = build_metrics(preds["val"], preds["test"], str(config.get("threshold_method", "f1")),
                                   attacks={split: t.attacks for split, t in tables.items() if t},
                                   groups={split: t.groups for split, t in tables.items() if t})
    except ValueError as e:
        log.warning("report: cannot compute metrics from the predictions: %s", e)
        return None
    log.warning("report: metrics recomputed from the predictions (metrics.json is missing)")
    return metrics


def render_report(run_dir: str | Path) -> list[Path]:
    """(Re)render the plots, training_results.txt and report.html of a run; returns the files written."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    config = _load_json(run / "config.json")
    config = config if isinstance(config, dict) else {}
    metrics = _load_json(run / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else None
    tables = _read_tables(run)
    preds = {split: (t.labels, t.scores) if t else None for split, t in tables.items()}
    if metrics is None and preds["val"] is not None:
        metrics = _recompute_metrics(config, tables, preds)

    images = render_plots(config, metrics, preds, _read_history(run))
    written = [atomic.write_bytes(run / name, data) for name, data in images.items()]
    summary = summary_text(metrics or {}, config)
    written.append(atomic.write_text(run / SUMMARY_FILE, summary))
    written.append(atomic.write_text(run / HTML_FILE, render_html(run.resolve().name, metrics or {}, config,
                                                                  images, summary)))
    return written
