"""`dfp train --resume RUN`: which flags a resumed run may change, and where in the plan it goes on.

The run's saved config is the base. A flag given on the command line either applies (it changes how the
rest of the run goes: more epochs, another batch size or learning-rate schedule, where the console and
checkpoints go) or is refused with one line naming it, because it would make the resumed run a
different experiment (another model, loss, seed, sampling, input size...). A flag given with the saved
value is fine either way.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import InputError

# how the rest of the run goes: may change on resume, recorded in config.json under "resumed"
CHANGEABLE = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "clip", "patience", "threshold_method")
# how the run is driven, never part of the experiment: taken from the command line as given
RUNTIME = ("resume", "out", "device", "progress", "report", "save_every", "workers", "tensorboard", "compile",
           "cache_dir", "cache_limit")


@dataclass
class Position:
    """Where a run stands: what a checkpoint records and `run_training` resumes from."""
    epoch: int = 0  # the epoch in progress (0-based)
    batch: int = 0  # its next batch, counted at `world_size` ranks of `batch_size`
    world_size: int = 1
    batch_size: int = 1
    best_f1: float = -1.0
    bad_epochs: int = 0
    history: list = field(default_factory=list)  # one row per finished epoch
    totals: dict = field(default_factory=dict)  # partial sums of the epoch in progress

    def record(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "world_size": self.world_size, "batch_size": self.batch_size,
                "best_f1": self.best_f1, "bad_epochs": self.bad_epochs, "history": list(self.history),
                "totals": dict(self.totals)}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "Position":
        p = ckpt.get("position")
        if p is None:  # written before positions were recorded: an epoch-end or sampler record
            s = ckpt.get("sampler") or {"epoch": int(ckpt["epoch"]) + 1, "batch": 0}
            p = {"epoch": s["epoch"], "batch": s["batch"], "best_f1": ckpt.get("best_f1", -1.0),
                 "bad_epochs": ckpt.get("bad_epochs", 0), "history": ckpt.get("history", []),
                 "world_size": 1, "batch_size": ckpt["config"]["batch_size"]}
        return cls(**{k: v for k, v in p.items() if k in cls.__dataclass_fields__})

    def remap(self, world_size: int, batch_size: int) -> int:
        """Carry a mid-epoch position to another world size or batch size; returns how many samples of this
        epoch's plan are run a second time (the new batches start at or before where the old ones stopped)."""
        done = self.batch * self.world_size * self.batch_size
        step = world_size * batch_size
        self.batch, self.world_size, self.batch_size = done // step, world_size, batch_size
        return done - self.batch * step


def merge_config(saved: dict, cfg, given: set[str] | None, cls):
    """The resumed run's config: the saved one, with the given flags applied or refused.
    `given=None` (a call from Python): every field that differs from the dataclass default counts as given."""
    base = cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})
    if given is None:
        given = {k for k, f in cls.__dataclass_fields__.items() if getattr(cfg, k) != f.default}
    changed = {}
    if "out" in given and cfg.out and Path(cfg.out).resolve() != Path(cfg.resume).resolve():
        raise InputError(f"--out {cfg.out}: --resume {cfg.resume} continues that run in its own directory; "
                         "leave --out out")
    for name in sorted(given):
        if name in RUNTIME or name not in cls.__dataclass_fields__:
            continue
        new, old = getattr(cfg, name), getattr(base, name)
        if new == old:
            continue
        if name == "shards":  # another path to the same shards is fine; their content is checked by the caller
            if Path(new).resolve() == Path(old).resolve():
                continue
        elif name not in CHANGEABLE:
            raise InputError(f"--{name.replace('_', '-')} {new}: a resumed run keeps the value it started with "
                             f"({old}); start a new run (--out) to change it")
        changed[name] = [old, new]
    runtime = {k: getattr(cfg, k) for k in RUNTIME if k != "out"}
    merged = replace(base, **{k: getattr(cfg, k) for k in changed}, **runtime, out=cfg.resume)
    return merged, changed


def shards_digest(manifest: dict) -> str:
    """One checksum of a shard folder's content: every shard's path and sha256, as its manifest records them.
    Re-packing with another --seed or --split changes it; moving or copying the folder does not."""
    rows = sorted((r["path"], r["sha256"]) for r in manifest["shards"])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def check_same_shards(ckpt: dict, digest: str, shards: str) -> None:
    """A resumed run trains on the shards it started with, wherever they are now; other shards (or the same
    folder re-packed) would mix former val/test samples into training."""
    want = ckpt.get("shards_digest")
    if want is None:  # a checkpoint from before digests were recorded: compare with the folder it names
        want = _digest_at(Path(ckpt["config"]["shards"]))
    if digest != want:
        raise InputError(f"SHARDS {shards}: the run was trained on other shards, or on this folder before it was "
                         "re-packed (the shards differ); resume with the same shards, or start a new run")


def _digest_at(folder: Path) -> str | None:
    from .formats import read_manifest
    try:
        return shards_digest(read_manifest(folder))
    except Exception:
        return None


def resume_log(ckpt: dict, changed: dict) -> list[dict]:
    """Every resume of the run so far, this one last, with the flags it changed (config.json "resumed")."""
    at = Position.from_checkpoint(ckpt)
    return [*ckpt.get("resumed", []), {"at_epoch": at.epoch + 1, "at_batch": at.batch, "changed": changed}]
