"""Scoring splits and writing what a run or an evaluation keeps of them: the steps `dfp train` and `dfp evaluate`
share. `score_split` predicts a split on every rank and gathers it, `require_finite` stops on NaN scores, and
`write_outputs` writes predictions_SPLIT.csv per split, metrics.json and config.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import atomic
from .engine import Dist, all_gather_objects, gather_predictions, predict, reduce_sum
from .errors import TrainingError
from .predictions import attack_names, group_names, write_predictions


@dataclass
class Scored:
    """One split's gathered predictions, their sample metadata, and the samples lost on the way: `skipped`
    could not be decoded, `rescued` counts batches rebuilt around such samples."""
    keys: list[str]
    labels: np.ndarray
    scores: np.ndarray
    meta: dict
    skipped: int = 0
    rescued: int = 0

    def attacks(self):
        return attack_names(self.keys, self.meta)

    def groups(self):
        return group_names(self.keys, self.meta)


def score_split(net, loader, device, amp_dtype, d: Dist | None = None, progress: bool = True,
                desc: str = "eval") -> Scored:
    """Every sample of `loader`'s split, scored by `net`; with several ranks each scores its share and every rank
    gets the whole split."""
    d = d or Dist()
    before = (loader.skipped, loader.rescued_batches)
    keys, labels, scores, _ = predict(net, loader, device, amp_dtype, progress=progress, desc=desc)
    skipped, rescued = reduce_sum([loader.skipped - before[0], loader.rescued_batches - before[1]], d, device)
    keys, labels, scores = gather_predictions(keys, labels, scores, d)
    meta = all_gather_objects(loader.sample_meta(keys[d.rank::d.world_size]), d)
    return Scored(keys, labels, scores, {k: v for part in meta for k, v in part.items()}, int(skipped), int(rescued))


def require_finite(scores: np.ndarray, where: str, hint: str = "") -> None:
    """A NaN score comes from the model (weights that diverged, an overflow in reduced precision), not from the
    data or options the user gave: a failed run, TrainingError (exit 1), in `dfp train` and `dfp evaluate` alike."""
    if np.isnan(scores).any():
        raise TrainingError(f"{where}: the model produced NaN scores{hint}")


def write_outputs(out: Path, scored: dict[str, Scored], metrics: dict, config: dict) -> None:
    """predictions_SPLIT.csv for each scored split, then metrics.json and config.json."""
    for split, s in scored.items():
        write_predictions(out / f"predictions_{split}.csv", s.keys, s.labels, s.scores, s.meta)
    atomic.write_json(out / "metrics.json", metrics, default=str)
    atomic.write_json(out / "config.json", config, default=str)
