"""Samples per split and class, and the imbalance ratio as the report words it (text, HTML and the stats plot)."""
from __future__ import annotations

import math

from ..formats import SPLITS
from ..stats import imbalance_ratio, majority_class


def format_ratio(real: int, fake: int) -> str:
    counts = {"real": real, "fake": fake}
    r = imbalance_ratio(counts)
    if math.isnan(r):
        return "empty"
    major = majority_class(counts)
    if math.isinf(r):
        return f"single class ({major} only)"
    return f"{r:.2f}:1 ({major} majority)" if major else f"{r:.2f}:1 (balanced)"


def short_ratio(real: int, fake: int) -> str:
    r = imbalance_ratio({"real": real, "fake": fake})
    return f"{r:.2f}:1" if math.isfinite(r) else format_ratio(real, fake)


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


def totals(counts: dict[str, dict[str, int]]) -> tuple[int, int]:
    """(real, fake) summed over the splits."""
    return sum(c["real"] for c in counts.values()), sum(c["fake"] for c in counts.values())
