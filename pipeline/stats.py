"""Class counts, imbalance ratio, severity and the seed's recommended techniques."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

from .formats import CLASSES, MANIFEST, SPLITS, read_manifest

# What a preview of a raw input cannot know without packing it.
BEFORE_DECODING = ("counted before decoding: files that fail to decode (corrupt media) and, with dfp shard --faces, "
                   "files without a face are still in the counts above (--faces splits only the files with a face)")

# The seed's best-practice table.
RECOMMENDED = {
    "mild": ["focal loss", "threshold tuning"],
    "moderate": ["focal loss", "weighted sampler", "minority-class augmentation", "threshold tuning"],
    "severe": ["focal loss", "weighted sampler", "minority-class augmentation", "SMOTE on embeddings",
               "threshold tuning"],
}


def imbalance_ratio(counts: dict[str, int]) -> float:
    """Larger class count over smaller: 1.0 when the counts are equal, inf when one class has no samples, nan when
    neither has any. The one ratio every caller words (stats, training's strategy, the report)."""
    values = [counts.get(c, 0) for c in CLASSES]
    lo, hi = min(values), max(values)
    if hi == 0:
        return float("nan")
    return math.inf if lo == 0 else hi / lo


def severity(ratio: float) -> str:
    if ratio < 2:
        return "mild"
    return "moderate" if ratio <= 5 else "severe"


def minority_class(counts: dict[str, int]) -> str | None:
    """The class with fewer samples (a class with none is the minority); None when the counts are equal, empty
    included: a balanced split has no minority, so nothing is done for one (the loader's minority augmentation)."""
    values = {c: counts.get(c, 0) for c in CLASSES}
    if len(set(values.values())) == 1:
        return None
    return min(CLASSES, key=values.__getitem__)


def majority_class(counts: dict[str, int]) -> str | None:
    """The other class than `minority_class`; None where that is None."""
    low = minority_class(counts)
    return None if low is None else next(c for c in CLASSES if c != low)


def stats_from_splits(splits: dict[str, dict[str, int]], modality: str, source: str) -> dict:
    total = {c: sum(s.get(c, 0) for s in splits.values()) for c in CLASSES}
    basis = splits.get("train") if sum(splits.get("train", {}).values()) else total
    ratio = imbalance_ratio(basis)
    sev = severity(ratio)
    return {
        "source": source, "modality": modality, "splits": splits, "total": total,
        "per_split_ratio": {s: imbalance_ratio(c) for s, c in splits.items()},
        "imbalance_ratio": ratio, "majority": majority_class(basis),
        "minority": minority_class(basis), "severity": sev, "recommended": RECOMMENDED[sev],
    }


def dataset_stats(path: str | Path, class_map: str | None = None, dataset: str = "folders",
                  protocol: str | None = None, params=None) -> dict:
    """Statistics of a shard folder (from its manifest) or of a raw input: what `dfp shard` with the same
    params would pack, planned by the same function (`shards._plan`: discover, limit per class, split),
    before any file is decoded."""
    from .storage import is_url
    if is_url(path) or (Path(path) / MANIFEST).is_file():
        m = read_manifest(path)
        return stats_from_splits(m["splits"], m["modality"], f"shards {path}")
    from .shards import ShardParams, _plan, _reason_kind
    from .splits import empty_class_warnings
    path = Path(path)
    params = params or ShardParams(class_map=class_map, dataset=dataset, protocol=protocol)
    plan = _plan(path, replace(params, faces=False))  # the face step is packing's: a preview decodes nothing
    splits = {s: {k: 0 for k in CLASSES} for s in SPLITS}
    attacks: dict[str, dict[str, int]] = {}
    for c in plan.cands:
        splits[c.split][c.cls] += 1
        if c.attack is not None:
            per = attacks.setdefault(c.split, {})
            per[c.attack] = per.get(c.attack, 0) + 1
    out = stats_from_splits(splits, plan.modality, f"input {path} ({params.dataset})")
    out["attacks"] = {s: dict(sorted(attacks[s].items())) for s in SPLITS if s in attacks}
    out["not_packable"] = len(plan.rejects)
    out["not_packable_reasons"] = dict(sorted(Counter(_reason_kind(r["reason"]) for r in plan.rejects).items()))
    out["warnings"] = empty_class_warnings(splits, plan.fractions, plan.presplit, plan.cands,
                                           any(c.group for c in plan.cands))
    return out


def _fmt_ratio(r: float) -> str:
    return "n/a" if r != r else ("inf" if math.isinf(r) else f"{r:.2f}:1")


def format_stats(st: dict) -> str:
    lines = [f"Dataset statistics ({st['source']}, modality {st['modality']})"]
    for split, c in st["splits"].items():
        lines.append(f"  {split:5s}  real {c['real']:>8d}  fake {c['fake']:>8d}  ratio {_fmt_ratio(st['per_split_ratio'][split])}")
    t = st["total"]
    lines.append(f"  total  real {t['real']:>8d}  fake {t['fake']:>8d}")
    for split, per in st.get("attacks", {}).items():
        lines.append(f"  {split:5s}  fake by attack: " + ", ".join(f"{a} {n}" for a, n in per.items()))
    if "not_packable" in st:
        why = ", ".join(f"{k}: {v}" for k, v in st.get("not_packable_reasons", {}).items())
        lines.append(f"  rejected before decoding: {st['not_packable']} files" + (f" ({why})" if why else "")
                     + "; dfp shard lists them in rejects.jsonl with the reason")
        lines.append(f"  {BEFORE_DECODING}")
    which = (f"{st['majority']}:{st['minority']}" if st["minority"]
             else "no samples" if math.isnan(st["imbalance_ratio"]) else "balanced")
    lines.append(f"Imbalance ratio: {_fmt_ratio(st['imbalance_ratio'])} ({which}), severity: {st['severity']}")
    lines.append("Recommended: " + " + ".join(st["recommended"]))
    lines += st.get("warnings", [])
    if "audit" in st:
        a = st["audit"]
        lines.append(a["line"] if "line" in a else f"Shortcut audit: skipped ({a['skipped']})")
    return "\n".join(lines)


def json_safe(st: dict) -> dict:
    """Replace inf/nan (not valid JSON) with None."""
    def fix(v):
        if isinstance(v, float) and (math.isinf(v) or v != v):
            return None
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v
    return fix(st)
