"""One grouped, stratified, seeded split assignment, shared by every input layout.

A group (`Candidate.group`, or the file itself when it has none) is the unit that never straddles
splits. Groups may span classes (an FF++ pair, a DFDC fake with its original, one speaker): such a
group is placed with the class it holds most of, so a group that holds one class only is placed
exactly as before cross-class groups existed.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .formats import CLASSES, SPLITS


def _key(c) -> str:
    return c.group if c.group is not None else c.source


def _cut(sizes: list[int], bounds: np.ndarray) -> list[int]:
    """Split index of each group, in the seeded order: a group goes where its middle falls."""
    total, done, where = sum(sizes), 0, []
    for n in sizes:
        where.append(min(int(np.searchsorted(bounds, (done + n / 2) / total, side="right")), 2))
        done += n
    return where


def _fill_empty_splits(where: list[int], fractions: tuple[float, float, float]) -> None:
    """Give every split in use (fraction > 0) at least one group, in the order train, val, test, as
    long as another split can spare one: the split with the most groups gives its last group in
    the seeded order. Nothing moves when no split is empty."""
    for s in range(3):
        if fractions[s] <= 0 or s in where:
            continue
        donor, n = max(Counter(where).items(), key=lambda kv: (kv[1], -kv[0]))
        if n < 2:
            return
        where[max(i for i, w in enumerate(where) if w == donor)] = s


def _groups_by_class(candidates: list) -> dict[str, dict[str, list]]:
    groups: dict[str, list] = {}
    for c in candidates:
        if c.split is None:
            groups.setdefault(_key(c), []).append(c)
    by_class: dict[str, dict[str, list]] = {}
    for key, members in groups.items():
        counts = Counter(c.cls for c in members)
        cls = max(counts, key=lambda k: (counts[k], k))
        by_class.setdefault(cls, {})[key] = members
    return by_class


def assign_splits(candidates: list, fractions: tuple[float, float, float], seed: int) -> None:
    """Seeded, stratified per class, grouped: candidates sharing a group land in the same split.

    Only candidates without a split are assigned. Groups are shuffled per class and cut at the
    cumulative fractions, so each class keeps its share in every split (to the granularity of its
    groups). A class with at least as many groups as splits in use has a group in each of them, so
    val and test never lack a class that the input has enough of; with fewer groups, train is
    served first, then val.
    """
    by_class = _groups_by_class(candidates)
    bounds = np.cumsum(fractions)
    for ci, cls in enumerate(sorted(by_class)):
        groups = by_class[cls]
        names = sorted(groups)
        order = np.random.default_rng([seed, ci]).permutation(len(names))
        where = _cut([len(groups[names[i]]) for i in order], bounds)
        _fill_empty_splits(where, fractions)
        for i, s in zip(order, where):
            for c in groups[names[i]]:
                c.split = SPLITS[s]


def resolve_splits(candidates: list, fractions: tuple[float, float, float], val_fraction: float, seed: int) -> bool:
    """Give every candidate a split; returns whether the input came with splits of its own.

    Without any given split, `fractions` cut everything. With given splits, they are kept; when
    none of them is val, val is carved out of train and the candidates without a split
    (`val_fraction` of them, grouped and stratified); otherwise the candidates without a split are
    cut by `fractions`."""
    presplit = any(c.split is not None for c in candidates)
    if not presplit:
        assign_splits(candidates, fractions, seed)
        return False
    if not any(c.split == "val" for c in candidates):
        fixed = {_key(c) for c in candidates if c.split not in (None, "train")}
        for c in candidates:
            if c.split == "train" and _key(c) not in fixed:
                c.split = None
        assign_splits(candidates, (1.0 - val_fraction, val_fraction, 0.0), seed)
    else:
        assign_splits(candidates, fractions, seed)
    return True


# What a split without one class costs, for the warning.
_EMPTY_COST = {"train": "the model never sees that class", "val": "the threshold cannot be tuned on it",
               "test": "its metrics leave that class out"}


def empty_class_warnings(counts: dict, fractions: tuple[float, float, float], presplit: bool,
                         cands: list, grouped: bool) -> list[str]:
    """One line per split in use that ended up without a class (too few files or groups of it, or
    its files rejected); a pre-split input's splits are in use when they hold any sample."""
    lines = []
    for i, split in enumerate(SPLITS):
        if not (sum(counts[split].values()) if presplit else fractions[i] > 0):
            continue
        for cls in CLASSES:
            if counts[split][cls]:
                continue
            packed = sum(counts[s][cls] for s in SPLITS)
            if presplit:
                why = f"none packed from the input's {split} split"
            elif grouped:
                groups = len({_key(c) for c in cands if c.cls == cls})
                why = f"only {packed} {cls} files packed, in {groups} groups"
            else:
                why = f"only {packed} {cls} files packed"
            lines.append(f"warning: split '{split}' has no '{cls}' samples ({why}); {_EMPTY_COST[split]}")
    return lines
