"""`--cache-embeddings`: a frozen backbone's embedding of every train / val / test sample, computed once into
RUN/embeddings/SPLIT.pt, and loaders that hand them to the head for every epoch.

Each file holds (views, samples, D) float32 embeddings in the split's index order, which samples decoded, their
labels, and the key it was computed for: the shards' digest (`resume.shards_digest`), the model, a sha256 of the
backbone's tensors (so the weights file, the pretrained tag or the seeded random start alike), the input
preparation, the precision and the views. A file whose key differs, or that does not load, is recomputed and
the console says why; it is never used silently.

Train embeddings are those of the evaluation transform (one view), or with `--cache-views K` K views through
the training augmentation (view v: the training loader's epoch v of a natural-order plan). The head then trains
on the weighted plan `EpochSampler` draws, exactly as an uncached run would, taking one of the K views of each
drawn sample at random (keyed by seed, epoch and plan position, so a resumed epoch takes the same ones).
Under torchrun each rank embeds its share and every rank gets all rows; rank 0 writes.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import atomic
from .engine import Dist, all_gather_objects, autocast
from .errors import FormatError
from .sampling import eval_indices, rank_slice

FORMAT = "dfp-embeddings/1"
DIR = "embeddings"
SPLITS = ("train", "val", "test")


class HeadNet(nn.Module):
    """The Detector's head over cached embeddings: (B, D) -> (B,) logits; its parameters are the model's."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.head(e).squeeze(-1)


@dataclass
class Embeddings:
    emb: torch.Tensor  # (views, N, D) float32, on the CPU
    present: np.ndarray  # (N,) bool: decoded (in every view)
    labels: np.ndarray  # (N,) class ids


def weights_digest(module: nn.Module) -> str:
    """sha256 over a module's tensors (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def cache_key(cfg, weights: str, shards: str, preprocess: dict, precision: str, split: str) -> dict:
    views = cfg.cache_views if split == "train" else 0
    key = {"format": FORMAT, "split": split, "shards": shards, "model": cfg.model,
           "frame_backbone": cfg.frame_backbone if cfg.model == "frame_pool" else None, "weights": weights,
           "preprocess": preprocess, "max_samples_per_class": cfg.max_samples_per_class, "seed": cfg.seed,
           "views": views, "minority_augment": cfg.minority_augment if views else None, "precision": precision}
    return json.loads(json.dumps(key))  # tuples as lists: the form a saved key comes back in


def _keys_digest(index) -> str:
    return hashlib.sha256(b"\n".join(bytes(k) for k in index.keys)).hexdigest()


@torch.no_grad()
def extract(embed, loader, device, amp_dtype, d: Dist) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(keys, labels, (rows, D) float32 embeddings) of everything `loader` yields, on every rank all ranks' rows."""
    keys, feats, labels = [], [], []
    for x, y, k in loader:
        with autocast(device, amp_dtype):
            e = embed(x)
        feats.append(e.float().cpu().numpy())
        labels.append(y.cpu().numpy())
        keys += list(k)
    f = np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
    lab = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
    if d.enabled:
        parts = all_gather_objects((keys, f, lab), d)
        keys = [x for p in parts for x in p[0]]
        f = np.concatenate([p[1] for p in parts if len(p[1])] or [f[:0]])
        lab = np.concatenate([p[2] for p in parts])
    return keys, f, lab


def _place(index, dim: int, views: int, rows: list[tuple[list[str], np.ndarray]]) -> Embeddings:
    """Rows of (keys, embeddings) per view into index order."""
    n = len(index)
    pos = {k: i for i, k in enumerate(index.keys.astype(str))}
    emb = torch.zeros(views, n, dim, dtype=torch.float32)
    seen = np.zeros((views, n), bool)
    for v, (keys, f) in enumerate(rows):
        at = np.fromiter((pos[k] for k in keys), np.int64, len(keys))
        if len(at):
            emb[v, torch.from_numpy(at)] = torch.from_numpy(np.ascontiguousarray(f, np.float32))
            seen[v, at] = True
    return Embeddings(emb, seen.all(axis=0), np.asarray(index.labels, np.int64))


def compute(embed, loader, views_loader, views: int, dim: int, device, amp_dtype, d: Dist) -> Embeddings:
    """One un-augmented view from `loader`, or `views` augmented ones from the training-mode `views_loader`."""
    if not views:
        keys, f, _ = extract(embed, loader, device, amp_dtype, d)
        return _place(loader.index, dim, 1, [(keys, f)])
    rows = []
    for v in range(views):
        views_loader.set_epoch(v)
        keys, f, _ = extract(embed, views_loader, device, amp_dtype, d)
        rows.append((keys, f))
    return _place(views_loader.index, dim, views, rows)


def save(path: Path, key: dict, index, e: Embeddings) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as tmp, open(tmp, "wb") as fh:
        torch.save({"format": FORMAT, "key": key, "keys_digest": _keys_digest(index), "emb": e.emb,
                    "present": torch.from_numpy(e.present), "labels": torch.from_numpy(e.labels)}, fh)


def load(path: Path, key: dict, index) -> tuple[Embeddings | None, str]:
    """The file's embeddings when they were computed for `key` and this index; else (None, why not)."""
    if not path.is_file():
        return None, "not computed yet"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        return None, f"{path} does not load ({type(e).__name__}): recomputing"
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        return None, f"{path} is not a dfp embedding cache: recomputing"
    saved = obj.get("key") or {}
    differ = sorted(k for k in set(key) | set(saved) if key.get(k) != saved.get(k))
    if differ:
        return None, f"{path} was computed with different {', '.join(differ)}: recomputing"
    emb, present = obj.get("emb"), obj.get("present")
    if obj.get("keys_digest") != _keys_digest(index) or not torch.is_tensor(emb) or emb.dim() != 3 \
            or emb.shape[1] != len(index) or not torch.is_tensor(present) or len(present) != len(index):
        return None, f"{path} does not hold this split's samples: recomputing"
    return Embeddings(emb.float(), present.numpy().astype(bool), np.asarray(index.labels, np.int64)), ""


class CachedLoader:
    """The `Loader` contract over cached embeddings: yields (embeddings (B, D), labels, keys) on the device.
    With a `sampler`, this rank's batches of the epoch's weighted plan; without, every row once across ranks
    (for the train split, every view of every sample: what SMOTE balances)."""

    def __init__(self, data: Embeddings, index, device, batch_size: int, rank: int = 0, world_size: int = 1,
                 sampler=None, seed: int = 0):
        self.data, self.index, self.device = data, index, torch.device(device)
        self.batch_size, self.rank, self.world_size, self.sampler, self.seed = batch_size, rank, world_size, \
            sampler, seed
        self.epoch, self.start_batch, self.skipped, self.rescued_batches = 0, 0, 0, 0
        views, n = data.emb.shape[:2]
        if sampler is None:
            self._rows = eval_indices(views * n, rank, world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        if self.sampler is not None:
            return len(self.sampler) - self.start_batch
        return -(-len(self._rows) // self.batch_size)

    def _train_batches(self):
        s, views = self.sampler, self.data.emb.shape[0]
        idx = rank_slice(s.plan(self.epoch), self.rank, self.world_size, s.batch_size, self.start_batch)
        # the view of each padded plan position, drawn for the whole plan: the same on every rank and on resume
        pos = (np.arange(self.start_batch * s.batch_size, self.start_batch * s.batch_size + len(idx)) *
               self.world_size + self.rank)
        pick = np.random.default_rng([self.seed, self.epoch, 7]).integers(views, size=len(s) * s.batch_size *
                                                                          self.world_size)[pos]
        for b in range(0, len(idx), s.batch_size):
            yield pick[b:b + s.batch_size], idx[b:b + s.batch_size]

    def _eval_batches(self):
        n = self.data.emb.shape[1]
        for b in range(0, len(self._rows), self.batch_size):
            rows = self._rows[b:b + self.batch_size]
            yield rows // n, rows % n

    def __iter__(self):
        for view, idx in (self._train_batches() if self.sampler is not None else self._eval_batches()):
            ok = self.data.present[idx]
            self.skipped += int((~ok).sum())
            if not ok.all():
                if not ok.any():
                    if self.sampler is not None:
                        raise FormatError(f"a whole batch of {len(idx)} samples failed to decode in "
                                          f"{self.index.root}; run `dfp verify` on the shards")
                    continue
                if self.sampler is not None:  # keep the batch shape, as the image loaders do
                    rep = np.flatnonzero(ok)[np.arange(len(idx)) % int(ok.sum())]
                    view, idx = view[rep], idx[rep]
                else:
                    view, idx = view[ok], idx[ok]
            x = self.data.emb[torch.from_numpy(view), torch.from_numpy(idx)]
            y = torch.from_numpy(self.data.labels[idx].astype(np.float32))
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), \
                [self.index.key(int(i)) for i in idx]
        self.start_batch = 0

    def sample_meta(self, keys: list[str]):
        from .loaders import Loader
        return Loader.sample_meta(self, keys)


def prepare(cfg, model, real_loaders, views_loader, shards: str, preprocess: dict, precision: str, device,
            amp_dtype, d: Dist, out: Path, say) -> tuple[dict, dict]:
    """Every split's embeddings, from RUN/embeddings when they are there for this key, else computed (and
    written by rank 0). `real_loaders[split]`: the split's evaluation loader. Returns ({split: Embeddings},
    config.json's "embedding_cache")."""
    from .models import embed_and_head
    embed, head = embed_and_head(model)
    model.eval()
    weights = weights_digest(embed)
    data, record = {}, {"dir": str(out / DIR), "weights_sha256": weights, "views": cfg.cache_views}
    for split in SPLITS:
        loader = real_loaders[split]
        key = cache_key(cfg, weights, shards, preprocess, precision, split)
        path = out / DIR / f"{split}.pt"
        got, why = load(path, key, loader.index)
        if d.enabled and not all(all_gather_objects(got is not None, d)):
            got = None  # every rank uses the file, or none does
        if got is not None:
            say(f"embeddings: {split} from {path} ({got.emb.shape[1]} samples x {got.emb.shape[0]} view(s))")
            data[split] = got
            record[split] = {"reused": True, "samples": int(got.emb.shape[1])}
            continue
        if path.exists():
            say(f"embeddings: {why}")
        t0 = time.perf_counter()
        views = key["views"]
        got = compute(embed, loader, views_loader if views else None, views, head.in_features, device, amp_dtype, d)
        secs = time.perf_counter() - t0
        if d.main:
            save(path, key, loader.index, got)
        lost = int((~got.present).sum())
        say(f"embeddings: {split} computed in {secs:.1f} s ({got.emb.shape[1]} samples x {got.emb.shape[0]} "
            f"view(s){f', {lost} undecodable' if lost else ''}) -> {path}")
        data[split] = got
        record[split] = {"reused": False, "samples": int(got.emb.shape[1]), "seconds": round(secs, 3),
                         "undecodable": lost}
    return data, record


def loaders(data: dict, real_loaders: dict, sampler, cfg, device, d: Dist) -> tuple[CachedLoader, object]:
    """(the training loader over the train embeddings, split -> evaluation loader over that split's)."""
    train = CachedLoader(data["train"], real_loaders["train"].index, device, cfg.batch_size, d.rank, d.world_size,
                         sampler=sampler, seed=cfg.seed)
    evals = {s: CachedLoader(data[s], real_loaders[s].index, device, cfg.batch_size, d.rank, d.world_size)
             for s in SPLITS}
    return train, evals.__getitem__
