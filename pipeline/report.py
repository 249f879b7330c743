"""Plots, `training_results.txt` and a self-contained `report.html`, rendered from a run directory.

`render_report(RUN)` needs no model: it reads what training saved (`config.json`, `history.csv`,
`predictions_val.csv`, `predictions_test.csv`, `metrics.json`), renders every output it has the inputs
for, logs a warning for each one it skips, and never fails because an input is missing. When
`metrics.json` is missing but `predictions_val.csv` exists, the metrics are recomputed in memory
(method f1, or `config["threshold_method"]`) for the plots and the summary; `metrics.json` itself is not
written here. Every file is written atomically (temporary name + `os.replace`).

Figures are built on `matplotlib.figure.Figure` directly (Agg canvas, no pyplot global state), so
rendering is safe inside a training process and on machines without a display.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .formats import CLASSES, SPLITS
from .metrics import build_metrics, fallback_warning
from .predictions import Predictions, read_prediction_table
from .thresholds import DEFAULT_THRESHOLD, sweep

log = logging.getLogger(__name__)

DPI = 110
CLASS_COLORS = {"real": "#1f77b4", "fake": "#d62728"}
SPLIT_COLORS = {"train": "#7f7f7f", "val": "#1f77b4", "test": "#ff7f0e"}
METHOD_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#1f77b4", "#ff7f0e")
PLOTS = {  # file name -> caption in report.html, in report order
    "dataset_stats.png": "Samples per split and class",
    "training_curves.png": "Training curves",
    "confusion_matrix_default.png": "Confusion matrix at the default threshold 0.5",
    "confusion_matrix_optimal.png": "Confusion matrix at the tuned threshold",
    "roc_curve.png": "ROC curve",
    "pr_curve.png": "Precision-recall curve",
    "threshold_analysis.png": "Threshold analysis (val)",
}
SUMMARY_FILE = "training_results.txt"
HTML_FILE = "report.html"
METRIC_ROWS = (("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced Accuracy"), ("precision", "Precision"),
               ("recall", "Recall"), ("f1", "F1"), ("specificity", "Specificity"), ("mcc", "MCC"))
RULE = "=" * 80
THIN = "-" * 80


# ---------------------------------------------------------------------------------------------- files

def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> Path:
    """Atomic JSON (indent 2); NaN/inf are refused rather than written as invalid JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


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


# ------------------------------------------------------------------------------------ dataset stats

def imbalance_ratio(real: int, fake: int) -> float | None:
    """majority / minority; None when a class is absent."""
    lo, hi = min(real, fake), max(real, fake)
    return hi / lo if lo > 0 else None


def format_ratio(real: int, fake: int) -> str:
    if real + fake == 0:
        return "empty"
    r = imbalance_ratio(real, fake)
    if r is None:
        return f"single class ({'real' if fake == 0 else 'fake'} only)"
    if real == fake:
        return "1.00:1 (balanced)"
    return f"{r:.2f}:1 ({'real' if real > fake else 'fake'} majority)"


def _short_ratio(real: int, fake: int) -> str:
    r = imbalance_ratio(real, fake)
    return f"{r:.2f}:1" if r is not None else format_ratio(real, fake)


def split_counts(config: dict | None, metrics: dict | None = None) -> dict[str, dict[str, int]]:
    """{"train": {"real": n, "fake": k}, ...} from config["dataset"]["splits"]; for val/test missing
    there, from the confusion matrices in metrics.json (real = tn + fp, fake = fn + tp)."""
    out: dict[str, dict[str, int]] = {}
    splits = ((config or {}).get("dataset") or {}).get("splits") if isinstance(config, dict) else None
    if isinstance(splits, dict):
        for name, c in splits.items():
            if isinstance(c, dict):
                try:
                    out[str(name)] = {"real": int(c.get("real", 0)), "fake": int(c.get("fake", 0))}
                except (TypeError, ValueError):
                    continue
    for name in ("val", "test"):
        rep = (metrics or {}).get(name) if isinstance(metrics, dict) else None
        if name not in out and isinstance(rep, dict):
            try:
                (tn, fp), (fn, tp) = rep["default"]["confusion_matrix"]
                out[name] = {"real": int(tn + fp), "fake": int(fn + tp)}
            except (KeyError, TypeError, ValueError):
                pass
    order = {s: i for i, s in enumerate(SPLITS)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


# ------------------------------------------------------------------------------------- summary text

def _describe(value) -> str:
    """Free-form config values (str, dict, list) as one readable line."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_describe(v) if not isinstance(v, dict) else '(' + _describe(v) + ')'}"
                         for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    return str(value)


def _setup_items(config: dict) -> list[tuple[str, str]]:
    if not isinstance(config, dict):
        return []
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    items = []
    modality = dataset.get("modality", config.get("modality"))
    if modality:
        items.append(("Modality", str(modality)))
    for key, label in (("model", "Model"), ("loss", "Loss"), ("strategy", "Strategy"), ("sampler", "Sampler"),
                       ("epochs", "Epochs"), ("batch_size", "Batch size"), ("lr", "Learning rate"),
                       ("device", "Device"), ("threshold_method", "Threshold method")):
        if config.get(key) not in (None, "", {}):
            items.append((label, _describe(config[key])))
    return items


def _fmt(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _improvement(default_f1: float, tuned_f1: float) -> str:
    delta = tuned_f1 - default_f1
    if default_f1 > 0:
        return f"{delta / default_f1 * 100:+.2f}% ({default_f1:.4f} -> {tuned_f1:.4f}, {delta:+.4f} F1)"
    return f"{delta:+.4f} F1 ({default_f1:.4f} -> {tuned_f1:.4f}; relative change undefined)"


def report_notes(metrics: dict) -> list[str]:
    """Warnings recoverable from metrics.json alone (single-class splits, untuned threshold)."""
    notes = []
    if not isinstance(metrics, dict) or not metrics:
        return ["metrics.json is missing: no results to report"]
    chosen = metrics.get("chosen") or {}
    method = chosen.get("method")
    thresholds = metrics.get("thresholds") or {}
    val = metrics.get("val") or {}
    fallback = fallback_warning(chosen)
    if fallback:
        notes.append(fallback)
    if val and val.get("auc") is None:
        notes.append("val split has a single class: AUC/AP/EER are null" + ("" if fallback else
                     f"; threshold tuning is undefined and the default threshold {DEFAULT_THRESHOLD} is used"))
    elif not fallback and method and method != "default" and method not in thresholds:
        # a metrics.json without fallback keys names the requested method even where 0.5 was applied
        notes.append(f"threshold method {method} is undefined on val; the default threshold "
                     f"{DEFAULT_THRESHOLD} is used")
    test = metrics.get("test")
    if isinstance(test, dict) and test.get("auc") is None:
        notes.append("test split has a single class: AUC/AP/EER are null")
    return notes


def _split_block(name: str, rep: dict, chosen: dict) -> list[str]:
    d, t = rep["default"], rep["tuned"]
    method = chosen.get("method", "?")
    lines = [f"{name.upper()} RESULTS", THIN]
    for title, m in ((f"Results (threshold={d['threshold']:.4g}):", d),
                     (f"Results (threshold={t['threshold']:.4f}, tuned on val, method {method}):", t)):
        lines.append(title)
        lines += [f"   {label}: {m[key]:.4f}" for key, label in METRIC_ROWS]
        lines.append(f"   Confusion matrix [[TN, FP], [FN, TP]]: {m['confusion_matrix']}")
        lines.append("")
    lines.append(f"Improvement (F1, tuned vs 0.5): {_improvement(d['f1'], t['f1'])}")
    lines.append(f"AUC: {_fmt(rep.get('auc'))}   AP: {_fmt(rep.get('ap'))}   EER: {_fmt(rep.get('eer'))}")
    lines.append("")
    table = attack_table_lines(rep.get("by_attack"), t["threshold"])
    return lines + (table + [""] if table else [])


def _attack_rows(by_attack) -> list[tuple[str, dict]]:
    """The well-formed entries of a split's "by_attack", in their saved order (metrics.json may be hand-edited)."""
    if not isinstance(by_attack, dict):
        return []
    return [(str(name), r) for name, r in by_attack.items() if isinstance(r, dict) and "n" in r]


def attack_table_lines(by_attack, threshold: float) -> list[str]:
    """The per-attack table as text (training_results.txt and `dfp evaluate`'s console); [] without one."""
    rows = _attack_rows(by_attack)
    if not rows:
        return []
    w = max(len("Attack"), *(len(name) for name, _ in rows))
    lines = [f"Per attack (all reals against each attack's fakes; recall at threshold {threshold:.4f}):",
             f"   {'Attack':<{w}}  {'n':>7}  {'AUC':>7}  {'EER':>7}  {'Recall':>7}"]
    lines += [f"   {name:<{w}}  {r['n']:>7}  {_fmt(r.get('auc')):>7}  {_fmt(r.get('eer')):>7}  {_fmt(r.get('recall')):>7}"
              for name, r in rows]
    return lines


def summary_text(metrics: dict, config: dict) -> str:
    """The text of `training_results.txt`, also printed on the console at the end of training."""
    metrics = metrics if isinstance(metrics, dict) else {}
    config = config if isinstance(config, dict) else {}
    lines = [RULE, "DEEPFAKE DETECTION - TRAINING RESULTS", RULE]
    for label, value in _setup_items(config):
        lines.append(f"{label}: {value}")
    lines.append("")

    counts = split_counts(config, metrics)
    lines += ["DATASET STATISTICS", THIN]
    if counts:
        lines.append(f"{'Split':<8}{'Real':>10}{'Fake':>10}{'Total':>10}   Imbalance Ratio")
        for name, c in counts.items():
            lines.append(f"{name:<8}{c['real']:>10}{c['fake']:>10}{c['real'] + c['fake']:>10}   "
                         f"{format_ratio(c['real'], c['fake'])}")
        real = sum(c["real"] for c in counts.values())
        fake = sum(c["fake"] for c in counts.values())
        lines += ["", f"   Total: {real + fake}", f"   Real: {real}", f"   Fake: {fake}",
                  f"   Imbalance Ratio: {format_ratio(real, fake)}"]
    else:
        lines.append("   (no dataset statistics recorded)")
    lines.append("")

    chosen = metrics.get("chosen") or {}
    thresholds = metrics.get("thresholds") or {}
    if chosen:
        lines += ["THRESHOLD TUNING (on val only; a sample is fake when score >= threshold)", THIN]
        for k, v in thresholds.items():
            lines.append(f"   {k}: {v:.6f}" + ("   <- chosen" if k == chosen.get("method") else ""))
        lines.append(f"   Chosen: method {chosen.get('method')}, threshold {chosen.get('threshold', 0.5):.6f}")
        if chosen.get("fallback_reason"):
            lines.append(f"   Requested: method {chosen.get('requested')}, not applied: {chosen['fallback_reason']}")
        lines.append("")
    for name in ("val", "test"):
        rep = metrics.get(name)
        if isinstance(rep, dict) and "default" in rep and "tuned" in rep:
            lines += _split_block(name, rep, chosen)
    notes = report_notes(metrics)
    if notes:
        lines += ["WARNINGS", THIN] + [f"   - {n}" for n in notes] + [""]
    lines.append(RULE)
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- plots

def _figure(w: float, h: float, ncols: int = 1):
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def plot_training_curves(history: dict[str, np.ndarray]) -> Figure | None:
    epoch = history.get("epoch")
    if epoch is None or epoch.size == 0:
        return None

    def has(col):
        return col in history and np.any(np.isfinite(history[col]))

    if not any(has(c) for c in ("train_loss", "val_loss", "val_f1", "val_auc")):
        return None
    fig, (ax_loss, ax_score) = _figure(12, 4.6, ncols=2)
    for col, label, color in (("train_loss", "train loss", "#1f77b4"), ("val_loss", "val loss", "#ff7f0e")):
        if has(col):
            ax_loss.plot(epoch, history[col], marker="o", label=label, color=color)
    ax_loss.set(title="Loss per epoch", xlabel="Epoch", ylabel="Loss")
    for col, label, color in (("val_f1", "val F1 (threshold 0.5)", "#2ca02c"),
                              ("val_f1_tuned", "val F1 (at its F1-optimal threshold)", "#17becf"),
                              ("val_auc", "val ROC AUC", "#9467bd")):
        if has(col):
            ax_score.plot(epoch, history[col], marker="o", label=label, color=color)
    # dfp train keeps the epoch with the best tuned val F1 (the threshold is tuned anyway)
    best_col = "val_f1_tuned" if has("val_f1_tuned") else "val_f1"
    if has(best_col):
        f1 = np.where(np.isfinite(history[best_col]), history[best_col], -np.inf)
        i = int(np.argmax(f1))
        ax_score.axvline(epoch[i], color="grey", linestyle="--", linewidth=1,
                         label=f"best epoch {epoch[i]:g} (val F1 {history[best_col][i]:.4f})")
    ax_score.set(title="Validation scores per epoch", xlabel="Epoch", ylabel="Score", ylim=(0, 1.02))
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=9)
        if epoch.size <= 30:
            ax.set_xticks(epoch)
    fig.suptitle("Training curves", fontsize=13)
    return fig


def plot_confusion(m: dict, split: str, kind: str) -> Figure:
    cm = np.asarray(m["confusion_matrix"], dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    rates = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    fig, (ax,) = _figure(6.4, 5.4)
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{cm[i, j]:,}\n({rates[i, j] * 100:.1f}% of true {CLASSES[i]})", ha="center",
                    va="center", fontsize=11, color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks([0, 1], labels=[f"pred {c}" for c in CLASSES])
    ax.set_yticks([0, 1], labels=[f"true {c}" for c in CLASSES])
    ax.set(xlabel="Predicted class", ylabel="True class")
    fig.colorbar(im, ax=ax, label="Row rate (share of the true class)", shrink=0.85)
    ax.set_title(f"Confusion matrix, {split} split, {kind} threshold {m['threshold']:.4f}\n"
                 f"accuracy {m['accuracy']:.4f}   precision {m['precision']:.4f}   "
                 f"recall {m['recall']:.4f}   F1 {m['f1']:.4f}", fontsize=10)
    return fig


def _operating_point(y: np.ndarray, s: np.ndarray, t: float) -> dict:
    pred = s >= t
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    P, N = int(np.sum(y == 1)), int(np.sum(y == 0))
    return {"tpr": tp / P if P else math.nan, "fpr": fp / N if N else math.nan,
            "precision": tp / (tp + fp) if tp + fp else math.nan}


def _two_class(preds: dict) -> dict:
    return {k: v for k, v in preds.items() if v is not None and 0 < int(v[0].sum()) < v[0].size}


def _thresholds_for_points(metrics: dict) -> list[tuple[str, float, str]]:
    tuned = ((metrics or {}).get("chosen") or {}).get("threshold")
    method = ((metrics or {}).get("chosen") or {}).get("method", "tuned")
    pts = [("default 0.5", DEFAULT_THRESHOLD, "o")]
    if tuned is not None:
        pts.append((f"tuned {method} {tuned:.4f}", float(tuned), "*"))
    return pts


def plot_roc(preds: dict, metrics: dict) -> Figure | None:
    from sklearn.metrics import roc_auc_score, roc_curve

    usable = _two_class(preds)
    if not usable:
        return None
    fig, (ax,) = _figure(6.8, 6.0)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    for split, (y, s) in usable.items():
        color = SPLIT_COLORS.get(split, None)
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, color=color, linewidth=2, label=f"{split} (AUC = {roc_auc_score(y, s):.4f})")
        for label, t, marker in _thresholds_for_points(metrics):
            p = _operating_point(y, s, t)
            ax.plot(p["fpr"], p["tpr"], marker=marker, markersize=13 if marker == "*" else 9, color=color,
                    markeredgecolor="black", linestyle="none",
                    label=f"{split} @ {label}: TPR {p['tpr']:.3f}, FPR {p['fpr']:.3f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title="ROC curve (fake = positive class)",
           xlabel="False positive rate (real called fake)", ylabel="True positive rate (recall of fake)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_pr(preds: dict, metrics: dict) -> Figure | None:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    usable = _two_class(preds)
    if not usable:
        return None
    fig, (ax,) = _figure(6.8, 6.0)
    for split, (y, s) in usable.items():
        color = SPLIT_COLORS.get(split, None)
        precision, recall, _ = precision_recall_curve(y, s)
        ax.plot(recall, precision, color=color, linewidth=2,
                label=f"{split} (AP = {average_precision_score(y, s):.4f})")
        prevalence = float(y.mean())
        ax.axhline(prevalence, color=color, linestyle=":", linewidth=1,
                   label=f"{split} chance (fake share {prevalence:.3f})")
        for label, t, marker in _thresholds_for_points(metrics):
            p = _operating_point(y, s, t)
            if math.isnan(p["precision"]):
                continue
            ax.plot(p["tpr"], p["precision"], marker=marker, markersize=13 if marker == "*" else 9, color=color,
                    markeredgecolor="black", linestyle="none",
                    label=f"{split} @ {label}: P {p['precision']:.3f}, R {p['tpr']:.3f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.03), title="Precision-recall curve (fake = positive class)",
           xlabel="Recall (fake)", ylabel="Precision (fake)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_threshold_analysis(val: tuple[np.ndarray, np.ndarray], metrics: dict) -> Figure | None:
    y, s = val
    sw = sweep(y, s)  # ThresholdUndefined for a single class: the caller skips the plot
    fig, (ax,) = _figure(11, 5.6)
    x = sw["threshold"]
    for key, label, color in (("precision", "Precision", "#1f77b4"), ("recall", "Recall", "#ff7f0e"),
                              ("f1", "F1", "#2ca02c"), ("youden", "Youden's J (TPR - FPR)", "#d62728")):
        ax.plot(x, sw[key], label=label, color=color, linewidth=1.8)
    ax.axvline(DEFAULT_THRESHOLD, color="grey", linestyle="--", linewidth=1.2, label="default 0.5")
    chosen = (metrics or {}).get("chosen") or {}
    for i, (name, t) in enumerate(((metrics or {}).get("thresholds") or {}).items()):
        is_chosen = name == chosen.get("method")
        ax.axvline(t, color=METHOD_COLORS[i % len(METHOD_COLORS)], linestyle="-" if is_chosen else ":",
                   linewidth=2.4 if is_chosen else 1.6,
                   label=f"{name} = {t:.4f}" + (" (chosen)" if is_chosen else ""))
    lo, hi = float(min(0.0, x.min())), float(max(1.0, x.max()))
    ax.set(xlim=(lo, hi), ylim=(min(-0.05, float(sw["youden"].min()) - 0.05), 1.05),
           xlabel="Threshold (a sample is fake when score >= threshold)", ylabel="Metric value",
           title=f"Threshold analysis on val (n = {y.size:,}: {int((y == 0).sum()):,} real, "
                 f"{int(y.sum()):,} fake; thresholds tuned on val only)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    return fig


def plot_dataset_stats(counts: dict[str, dict[str, int]], modality: str | None = None) -> Figure | None:
    if not counts:
        return None
    names = list(counts)
    fig, (ax,) = _figure(max(6.5, 2.2 * len(names) + 3), 5.2)
    x = np.arange(len(names))
    width = 0.38
    top = max(max(c["real"], c["fake"]) for c in counts.values()) or 1
    for k, cls in enumerate(CLASSES):
        vals = [counts[n][cls] for n in names]
        bars = ax.bar(x + (k - 0.5) * width, vals, width, label=cls, color=CLASS_COLORS[cls])
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v + top * 0.01, f"{v:,}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, labels=[f"{n}\n{format_ratio(counts[n]['real'], counts[n]['fake'])}" for n in names])
    ax.set(ylabel="Samples", ylim=(0, top * 1.15), xlabel="Split (imbalance ratio majority:minority)")
    real = sum(c["real"] for c in counts.values())
    fake = sum(c["fake"] for c in counts.values())
    ratios = ", ".join(f"{n} {_short_ratio(counts[n]['real'], counts[n]['fake'])}" for n in names)
    ax.set_title(f"Dataset{' (' + modality + ')' if modality else ''}: {real + fake:,} samples, "
                 f"imbalance {format_ratio(real, fake)}\nper split: {ratios}", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="class")
    return fig


# --------------------------------------------------------------------------------------------- html

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #444;padding-bottom:.3em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f0f0f0}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:.9em}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em}
.up{color:#1a7f37}.down{color:#c62828}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _results_table(rep: dict) -> str:
    d, t = rep["default"], rep["tuned"]
    rows = []
    for key, label in METRIC_ROWS:
        delta = t[key] - d[key]
        cls = "up" if delta > 1e-12 else "down" if delta < -1e-12 else ""
        rows.append([_e(label), f"{d[key]:.4f}", f"{t[key]:.4f}", f'<span class="{cls}">{delta:+.4f}</span>'])
    for m, name in ((d, "default"), (t, "tuned")):
        (tn, fp), (fn, tp) = m["confusion_matrix"]
        rows.append([_e(f"TN / FP / FN / TP ({name})"), "", "", _e(f"{tn} / {fp} / {fn} / {tp}")])
    table = _table(["Metric", f"threshold {d['threshold']:.4g}", f"tuned {t['threshold']:.4f}", "change"], rows)
    curve = _table(["AUC", "AP", "EER"], [[_fmt(rep.get("auc")), _fmt(rep.get("ap")), _fmt(rep.get("eer"))]])
    return table + curve + _attack_table(rep)


def _attack_table(rep: dict) -> str:
    rows = _attack_rows(rep.get("by_attack"))
    if not rows:
        return ""
    t = rep["tuned"]["threshold"]
    body = [[_e(name), f"{r['n']:,}", _fmt(r.get("auc")), _fmt(r.get("eer")), _fmt(r.get("recall"))] for name, r in rows]
    return ("<h3>Per attack</h3><p>All reals of the split against the fakes of each attack (AUC, EER); recall of "
            f"that attack's fakes at the tuned threshold {t:.4f}.</p>" +
            _table(["Attack", "n (fakes)", "AUC", "EER", f"Recall @ {t:.4f}"], body))


def render_html(run_name: str, metrics: dict, config: dict, images: dict[str, bytes], summary: str) -> str:
    """One self-contained page: tables of the summary numbers and every PNG as a base64 data URI."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>dfp report: {_e(run_name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Deepfake detector training report: {_e(run_name)}</h1>",
             "<p>Labels: real = 0, fake = 1; fake is the positive class (precision, recall and F1 are the fake "
             "class's). A sample is called fake when score &gt;= threshold. Thresholds are tuned on val only "
             "and applied unchanged to test.</p>"]
    notes = report_notes(metrics)
    if notes:
        parts.append('<div class="warn"><strong>Warnings</strong><ul>' +
                     "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></div>")
    setup = _setup_items(config)
    if setup:
        parts += ["<h2>Setup</h2>", _table(["Setting", "Value"], [[_e(k), _e(v)] for k, v in setup])]
    counts = split_counts(config, metrics)
    if counts:
        rows = [[_e(n), f"{c['real']:,}", f"{c['fake']:,}", f"{c['real'] + c['fake']:,}",
                 _e(format_ratio(c["real"], c["fake"]))] for n, c in counts.items()]
        real = sum(c["real"] for c in counts.values())
        fake = sum(c["fake"] for c in counts.values())
        rows.append(["<strong>all</strong>", f"{real:,}", f"{fake:,}", f"{real + fake:,}", _e(format_ratio(real, fake))])
        parts += ["<h2>Dataset</h2>", _table(["Split", "Real", "Fake", "Total", "Imbalance ratio"], rows)]
    chosen = (metrics or {}).get("chosen") or {}
    if chosen:
        rows = [[_e(k), f"{v:.6f}", "&#10004; chosen" if k == chosen.get("method") else ""]
                for k, v in ((metrics or {}).get("thresholds") or {}).items()]
        parts += ["<h2>Thresholds (tuned on val)</h2>",
                  f"<p>Chosen: method <strong>{_e(chosen.get('method'))}</strong>, threshold "
                  f"<strong>{float(chosen.get('threshold', DEFAULT_THRESHOLD)):.6f}</strong></p>"]
        if chosen.get("fallback_reason"):
            parts.append(f'<p class="warn">Requested: method <strong>{_e(chosen.get("requested"))}</strong>, '
                         f"not applied: {_e(chosen['fallback_reason'])}</p>")
        if rows:
            parts.append(_table(["Method", "Threshold", ""], rows))
    for split in ("val", "test"):
        rep = (metrics or {}).get(split)
        if isinstance(rep, dict) and "default" in rep and "tuned" in rep:
            parts += [f"<h2>Results: {_e(split)}</h2>",
                      f"<p>F1 improvement, tuned vs 0.5: {_e(_improvement(rep['default']['f1'], rep['tuned']['f1']))}</p>",
                      _results_table(rep)]
    if images:
        parts.append("<h2>Plots</h2>")
        for name in PLOTS:
            if name in images:
                b64 = base64.b64encode(images[name]).decode("ascii")
                parts.append(f'<figure><img alt="{_e(PLOTS[name])}" src="data:image/png;base64,{b64}">'
                             f"<figcaption>{_e(PLOTS[name])} ({_e(name)})</figcaption></figure>")
    parts += [f"<h2>{_e(SUMMARY_FILE)}</h2>", f"<pre>{_e(summary)}</pre>", "</body></html>"]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------- driver

def _read_tables(run: Path) -> dict[str, Predictions | None]:
    """predictions_{val,test}.csv of a run; None for a split whose file is missing or unreadable."""
    tables: dict[str, Predictions | None] = {}
    for split in ("val", "test"):
        path = run / f"predictions_{split}.csv"
        tables[split] = None
        if path.exists():
            try:
                tables[split] = read_prediction_table(path)
            except (OSError, ValueError, KeyError) as e:
                log.warning("report: cannot read %s: %s", path.name, e)
    return tables


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
        try:
            metrics, _ = build_metrics(preds["val"], preds["test"], str(config.get("threshold_method", "f1")),
                                       attacks={split: t.attacks for split, t in tables.items() if t})
            log.warning("report: metrics recomputed from the predictions (metrics.json is missing)")
        except ValueError as e:
            log.warning("report: cannot compute metrics from the predictions: %s", e)
    history = None
    if (run / "history.csv").exists():
        try:
            history = read_history(run / "history.csv")
        except (OSError, ValueError) as e:
            log.warning("report: cannot read history.csv: %s", e)

    cm_split = next((s for s in ("test", "val") if isinstance((metrics or {}).get(s), dict)), None)
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    modality = dataset.get("modality", config.get("modality"))
    renderers = {
        "dataset_stats.png": lambda: plot_dataset_stats(split_counts(config, metrics),
                                                         str(modality) if modality else None),
        "training_curves.png": lambda: plot_training_curves(history) if history else None,
        "confusion_matrix_default.png": lambda: plot_confusion(metrics[cm_split]["default"], cm_split,
                                                               "default") if cm_split else None,
        "confusion_matrix_optimal.png": lambda: plot_confusion(metrics[cm_split]["tuned"], cm_split,
                                                               f"tuned ({metrics['chosen']['method']})")
        if cm_split else None,
        "roc_curve.png": lambda: plot_roc(preds, metrics),
        "pr_curve.png": lambda: plot_pr(preds, metrics),
        "threshold_analysis.png": lambda: plot_threshold_analysis(preds["val"], metrics)
        if preds["val"] is not None else None,
    }
    written: list[Path] = []
    images: dict[str, bytes] = {}
    for name, make in renderers.items():
        try:
            fig = make()
        except Exception as e:  # one broken input must not stop the rest of the report
            log.warning("report: skipping %s: %s: %s", name, type(e).__name__, e)
            continue
        if fig is None:
            log.warning("report: skipping %s: its inputs are missing", name)
            continue
        data = _png(fig)
        written.append(atomic_write_bytes(run / name, data))
        images[name] = data

    summary = summary_text(metrics or {}, config)
    written.append(atomic_write_text(run / SUMMARY_FILE, summary))
    written.append(atomic_write_text(run / HTML_FILE, render_html(run.resolve().name, metrics or {}, config,
                                                                  images, summary)))
    return written
