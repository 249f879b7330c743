"""The report's figures as PNG bytes: one function per figure, each returning a figure or None when its inputs
are missing, and `render_plots` to draw every one it can.

Figures are built on `matplotlib.figure.Figure` directly (Agg canvas, no pyplot global state), so rendering is
safe inside a training process and on machines without a display. matplotlib is imported on the first figure,
not with this module, so `import pipeline.report` stays cheap for commands that draw nothing.
"""
from __future__ import annotations

import io
import logging
import math
from typing import TYPE_CHECKING

import numpy as np

from ..formats import CLASSES
from ..thresholds import DEFAULT_THRESHOLD, sweep
from .counts import format_ratio, short_ratio, split_counts, totals

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__package__)

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
    "calibration.png": "Reliability diagram of the calibrated probability of fake",
}


def _figure(w: float, h: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def png_bytes(fig: Figure) -> bytes:
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
    chosen = (metrics or {}).get("chosen") or {}
    tuned, method = chosen.get("threshold"), chosen.get("method", "tuned")
    pts = [("default 0.5", DEFAULT_THRESHOLD, "o")]
    if tuned is not None and not chosen.get("requested"):  # after a fallback the applied point is the default
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


def plot_calibration(preds: dict, metrics: dict) -> Figure | None:
    """Share of fakes against the mean calibrated probability per equal-width bin, per split, with its ECE; the
    calibration is the split block's own (`llr`), so the figure shows what `ece` measured."""
    from ..calibration import ECE_BINS, Calibration, ece, reliability

    usable = {k: v for k, v in preds.items() if v is not None and isinstance((metrics or {}).get(k), dict)}
    if not usable:
        return None
    fig, (ax,) = _figure(6.8, 6.0)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for split, (y, s) in usable.items():
        rep = metrics[split]
        bins = int(rep.get("ece_bins") or ECE_BINS)
        p = Calibration.from_dict(rep.get("llr")).probability(s)
        r = reliability(y, p, bins)
        used = r["count"] > 0
        ax.plot(r["confidence"][used], r["frequency"][used], marker="o", color=SPLIT_COLORS.get(split),
                linewidth=1.8, label=f"{split} (ECE = {ece(y, p, bins):.4f}, {bins} bins)")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title="Reliability diagram (fake = positive class)",
           xlabel="Mean calibrated probability of fake in the bin", ylabel="Share of fakes in the bin")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
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
    real, fake = totals(counts)
    ratios = ", ".join(f"{n} {short_ratio(counts[n]['real'], counts[n]['fake'])}" for n in names)
    ax.set_title(f"Dataset{' (' + modality + ')' if modality else ''}: {real + fake:,} samples, "
                 f"imbalance {format_ratio(real, fake)}\nper split: {ratios}", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="class")
    return fig


def render_plots(config: dict, metrics: dict | None, preds: dict, history: dict | None) -> dict[str, bytes]:
    """{file name: PNG bytes} for every figure in PLOTS whose inputs exist; each skipped one is logged.

    `preds` maps "val"/"test" to (labels, scores) or None; `history` is read_history's columns or None."""
    cm_split = next((s for s in ("test", "val", "train") if isinstance((metrics or {}).get(s), dict)), None)
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
        "calibration.png": lambda: plot_calibration(preds, metrics),
    }
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
        images[name] = png_bytes(fig)
    return images
