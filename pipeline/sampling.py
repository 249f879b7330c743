"""Per-class resampling for imbalanced training: one weighted draw per epoch, split across ranks.

PyTorch's ``WeightedRandomSampler`` has no distributed version and DALI's readers take no user sampling, so
the plan is made here, in plain numpy, and every loader backend just reads the indices it is handed.

How an epoch is planned
-----------------------
* ``labels`` is an integer array (``int8`` is enough) with one class id per sample of the split (real=0, fake=1).
* ``class_probabilities(counts, mode)`` gives the probability that a drawn sample belongs to each class.
* ``epoch_plan(labels, probs, epoch_len, seed, epoch)`` draws ``epoch_len`` sample indices WITH replacement:
  the class of every position, then a uniform sample within that class. The generator is
  ``np.random.default_rng([seed, epoch])``, so every rank computes the very same global plan without talking to
  the others, and a resumed run replays the same epoch.
* ``natural_plan(n, seed, epoch)`` is the no-resampling case: a seeded permutation, every sample once.
  ``EpochSampler`` uses it for ``mode="natural"`` whenever ``epoch_len <= n`` (a prefix of a permutation is a draw
  WITHOUT replacement at the natural class proportions).
* ``rank_slice(plan, rank, world_size, batch_size)`` pads the plan by wrap-around to a multiple of
  ``world_size * batch_size`` and gives rank ``r`` the positions ``r, r + W, r + 2W, ...``: positions are disjoint
  across ranks, every rank gets the same number of FULL batches, global step ``s`` covers plan positions
  ``[s*W*B, (s+1)*W*B)``, and a tiny plan still yields one batch per rank. Padding repeats at most ``W*B - 1``
  planned samples (from the start of the plan).
* ``eval_indices(n, rank, world_size)``: evaluation reads every sample exactly once across ranks, as contiguous
  slices whose lengths differ by at most one (no padding, so no sample is counted twice in the metrics).

Memory stays flat: one index array over the split (int32 below 2**31 samples), one plan array, and fixed-size
chunks of random numbers; no per-sample Python objects. Planning 10**8 samples takes a few seconds.
"""
from __future__ import annotations

import math
from typing import Iterator, Mapping, Sequence

import numpy as np

from .formats import CLASSES

# Random numbers are drawn in chunks of this many positions (bounded temporary memory). The result does not depend
# on it: numpy's Generator.random() consumes the stream identically whether drawn at once or in pieces.
_CHUNK = 1 << 20


def index_dtype(n: int) -> np.dtype:
    """int32 when every index of a split of n samples fits, else int64."""
    return np.dtype(np.int32) if n < 2 ** 31 else np.dtype(np.int64)


# ----------------------------------------------------------------------------------------------- class weights
def parse_class_weights(text: str) -> dict[str, float]:
    """``"real=1,fake=3"`` -> ``{"real": 1.0, "fake": 3.0}`` (per-sample weights; spaces allowed).

    Raises ValueError with a one-line message for an empty spec, an item without ``=``, a missing name, a value
    that is not a finite number >= 0, or a repeated name. Class names are checked by ``class_probabilities``.
    """
    if text is None or not str(text).strip():
        raise ValueError("class weights: empty; expected e.g. 'real=1,fake=3'")
    out: dict[str, float] = {}
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"class weights {text!r}: empty item; expected e.g. 'real=1,fake=3'")
        if "=" not in item:
            raise ValueError(f"class weights {text!r}: item {item!r} has no '='; expected NAME=WEIGHT, e.g. 'real=1,fake=3'")
        name, _, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not name:
            raise ValueError(f"class weights {text!r}: item {item!r} has no class name")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"class weights {text!r}: weight {value!r} of {name!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"class weights {text!r}: weight of {name!r} must be a finite number >= 0, got {value!r}")
        if name in out:
            raise ValueError(f"class weights {text!r}: {name!r} given twice")
        out[name] = w
    return out


def class_probabilities(counts: Sequence[int] | Mapping[str, int], mode: str | Mapping[str, float] = "inverse",
                        classes: Sequence[str] = CLASSES) -> np.ndarray:
    """Probability that a drawn sample belongs to each class (float64 array summing to 1).

    mode:
      * ``"inverse"`` (default): every non-empty class equally likely (per-sample weight 1/n_c);
      * ``"natural"``: proportional to the counts (no resampling);
      * ``"sqrt"``: proportional to sqrt(n_c) (per-sample weight 1/sqrt(n_c)), a milder rebalancing;
      * a dict ``{"real": w0, "fake": w1}`` of per-sample weights, or the same as text ``"real=1,fake=3"``:
        probability of class c proportional to ``w_c * n_c``. Every class must be named.
    ``counts``: per class in ``classes`` order, or a dict like the manifest's ``{"real": N, "fake": K}``.
    Classes with 0 samples get probability 0. ValueError when no class can be drawn.
    """
    if isinstance(counts, Mapping):
        counts = [counts.get(c, 0) for c in classes]
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or len(n) != len(classes):
        raise ValueError(f"counts must have one entry per class {tuple(classes)}, got {list(counts)}")
    if np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ValueError(f"counts must be >= 0, got {list(counts)}")
    if isinstance(mode, str) and "=" in mode:
        mode = parse_class_weights(mode)
    if isinstance(mode, Mapping):
        unknown = sorted(set(mode) - set(classes))
        missing = [c for c in classes if c not in mode]
        if unknown:
            raise ValueError(f"class weights: unknown class {unknown[0]!r}; classes are {', '.join(classes)}")
        if missing:
            raise ValueError(f"class weights: no weight for class {missing[0]!r}; give one for each of {', '.join(classes)}")
        w = np.array([float(mode[c]) for c in classes], dtype=np.float64)
        if np.any(w < 0) or not np.all(np.isfinite(w)):
            raise ValueError(f"class weights must be finite and >= 0, got {dict(mode)}")
        mass = w * n
    elif mode == "inverse":
        mass = (n > 0).astype(np.float64)
    elif mode == "natural":
        mass = n.copy()
    elif mode == "sqrt":
        mass = np.sqrt(n)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; choose inverse, natural, sqrt or weights like 'real=1,fake=3'")
    total = mass.sum()
    if not total > 0:
        raise ValueError(f"no class can be drawn (counts {list(counts)}, mode {mode!r})")
    return mass / total


def limit_per_class(labels: np.ndarray, limit: int, seed: int, stream: int) -> np.ndarray:
    """Sorted positions of at most `limit` samples of each class, drawn with `default_rng([seed, stream, class])`.

    `stream` keeps the draws of different callers apart (the shard builder and the loader each have their own)."""
    keep = []
    for ci in range(len(CLASSES)):
        members = np.flatnonzero(labels == ci)
        keep.append(np.random.default_rng([seed, stream, ci]).permutation(members)[:limit])
    return np.sort(np.concatenate(keep))


# ------------------------------------------------------------------------------------------------ plans
def class_index(labels: np.ndarray, n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices grouped by class, and the per-class counts.

    Returns ``(order, counts)``: ``order`` holds the indices of class 0 (ascending), then class 1, ...;
    dtype ``index_dtype(len(labels))``. Built in chunks, so no temporary as large as the split's int64 indices.
    ValueError when a label is outside ``[0, n_classes)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    n = len(labels)
    order = np.empty(n, dtype=index_dtype(n))
    counts = np.zeros(n_classes, dtype=np.int64)
    pos = 0
    for c in range(n_classes):
        for s in range(0, n, _CHUNK):
            nz = np.flatnonzero(labels[s:s + _CHUNK] == c)
            order[pos:pos + len(nz)] = nz
            order[pos:pos + len(nz)] += s
            pos += len(nz)
            counts[c] += len(nz)
    if pos != n:
        bad = labels[(labels < 0) | (labels >= n_classes)][:1]
        raise ValueError(f"labels must be in [0, {n_classes}), found {int(bad[0]) if bad.size else '?'}")
    return order, counts


def epoch_plan(labels: np.ndarray, probs: Sequence[float], epoch_len: int, seed: int, epoch: int,
               index: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """One global weighted draw WITH replacement: ``epoch_len`` sample indices, identical on every rank.

    Position i gets class c with probability ``probs[c]`` and then a uniform sample of that class. Both come from
    one uniform number u ~ U[0,1) per position (``np.random.default_rng([seed, epoch])``): the class is the
    interval of the cumulative probabilities that u falls in, the sample is u's relative position inside it.
    ``index``: the result of ``class_index(labels, len(probs))``, to skip rebuilding it every epoch.
    Returns int32 indices when ``len(labels) < 2**31``, else int64.
    """
    p = np.asarray(probs, dtype=np.float64)
    k = len(p)
    order, counts = index if index is not None else class_index(labels, k)
    n = len(order)
    if labels is not None and len(labels) != n:
        raise ValueError("index does not match labels")
    if epoch_len < 0:
        raise ValueError(f"epoch_len must be >= 0, got {epoch_len}")
    if np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"probs must be >= 0 and sum to 1, got {p.tolist()}")
    empty = [c for c in range(k) if p[c] > 0 and counts[c] == 0]
    if empty:
        raise ValueError(f"class {empty[0]} has probability {p[empty[0]]:.3g} but no samples")
    plan = np.empty(int(epoch_len), dtype=index_dtype(n))
    if epoch_len == 0:
        return plan
    rng = np.random.default_rng([int(seed), int(epoch)])
    p = p / p.sum()
    lo = np.concatenate([[0.0], np.cumsum(p)[:-1]])                 # class c covers u in [lo[c], lo[c] + p[c])
    offset = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.float64)   # class c's first slot in `order`
    live = [c for c in range(k) if p[c] > 0]
    u = np.empty(_CHUNK)
    f = np.empty(_CHUNK)
    t = np.empty(_CHUNK)
    mask = np.empty(_CHUNK, dtype=bool)
    j = np.empty(_CHUNK, dtype=np.int64)
    for s in range(0, int(epoch_len), _CHUNK):
        m = min(_CHUNK, int(epoch_len) - s)
        if m < _CHUNK:
            u, f, t, mask, j = u[:m], f[:m], t[:m], mask[:m], j[:m]
        rng.random(out=u)
        for i, c in enumerate(live):
            # slot = offset_c + min(floor((u - lo_c) / p_c * n_c), n_c - 1), in float64 (exact below 2**53)
            dst = f if i == 0 else t
            np.subtract(u, lo[c], out=dst)
            np.multiply(dst, counts[c] / p[c], out=dst)
            np.minimum(dst, counts[c] - 1, out=dst)
            np.add(dst, offset[c], out=dst)
            if i > 0:   # later classes own the higher intervals
                np.greater_equal(u, lo[c], out=mask)
                np.copyto(f, t, where=mask)
        j[...] = f      # truncation == floor (f >= 0)
        np.take(order, j, out=plan[s:s + m], mode="clip")
    return plan


def natural_plan(n: int, seed: int, epoch: int, epoch_len: int | None = None) -> np.ndarray:
    """No resampling: a seeded permutation of ``range(n)`` (every sample once), or its first ``epoch_len`` entries.

    Seeded by ``np.random.default_rng([seed, epoch])`` like ``epoch_plan``; same dtype rule.
    """
    if epoch_len is None:
        epoch_len = n
    if not 0 <= epoch_len <= n:
        raise ValueError(f"natural_plan: epoch_len must be in [0, {n}], got {epoch_len}")
    perm = np.arange(n, dtype=index_dtype(n))
    np.random.default_rng([int(seed), int(epoch)]).shuffle(perm)
    return perm[:epoch_len] if epoch_len < n else perm


def batches_per_rank(plan_len: int, world_size: int, batch_size: int) -> int:
    """Full batches each rank gets from a plan of plan_len positions (wrap-around padding: ceil)."""
    if world_size < 1 or batch_size < 1:
        raise ValueError(f"world_size and batch_size must be >= 1, got {world_size}, {batch_size}")
    return -(-int(plan_len) // (world_size * batch_size))


def rank_slice(plan: np.ndarray, rank: int, world_size: int, batch_size: int, start_batch: int = 0) -> np.ndarray:
    """This rank's sample indices, ``batches_per_rank(...) - start_batch`` full batches laid end to end.

    The plan is padded by wrap-around (its first entries repeated) to a multiple of ``world_size * batch_size``;
    rank r takes padded positions ``r::world_size``. Batch b of rank r is padded positions
    ``(b*batch_size + i) * world_size + r`` for i < batch_size, so global step b covers
    ``[b*W*B, (b+1)*W*B)``. ``start_batch`` drops the first start_batch batches (resume mid-epoch).
    An empty plan gives an empty slice.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    nb = batches_per_rank(len(plan), world_size, batch_size)
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    total = nb * world_size * batch_size
    start = min(start_batch, nb) * batch_size * world_size + rank
    if total <= len(plan):
        return np.ascontiguousarray(plan[start:total:world_size])
    # padded position q maps to plan position q % len(plan)
    pos = np.arange(start, total, world_size, dtype=np.int64)
    np.remainder(pos, len(plan), out=pos)
    return plan[pos]


def eval_indices(n: int, rank: int, world_size: int) -> np.ndarray:
    """Evaluation indices of this rank: contiguous ``[rank*n//W, (rank+1)*n//W)``.

    Every sample exactly once across ranks; lengths differ by at most one (ranks may run different numbers of
    batches, so gather results with sizes rather than assuming equal shapes).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return np.arange(rank * n // world_size, (rank + 1) * n // world_size, dtype=np.int64)


# ------------------------------------------------------------------------------------------------ sampler
class EpochSampler:
    """This rank's index batches for each epoch.

    ``EpochSampler(labels, mode="inverse", epoch_len=None, seed=0, rank=0, world_size=1, batch_size=32)``;
    ``epoch_len`` defaults to the number of samples. ``mode`` is anything ``class_probabilities`` takes.
    ``batches(epoch, start_batch=0)`` yields ``batch_size`` index arrays; ``len(sampler)`` is batches per epoch per
    rank. Where a resumed run goes on is `pipeline.resume.Position`'s business.
    """

    def __init__(self, labels: np.ndarray, mode: str | Mapping[str, float] = "inverse", epoch_len: int | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1, batch_size: int = 32,
                 classes: Sequence[str] = CLASSES):
        self.classes = tuple(classes)
        self.index = class_index(labels, len(self.classes))
        self.counts = self.index[1]
        self.n = len(self.index[0])
        self.mode = mode
        self.probs = class_probabilities(self.counts, mode, self.classes)
        self.epoch_len = self.n if epoch_len is None else int(epoch_len)
        if self.epoch_len < 0:
            raise ValueError(f"epoch_len must be >= 0, got {epoch_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.seed, self.rank, self.world_size, self.batch_size = int(seed), int(rank), int(world_size), int(batch_size)

    @property
    def without_replacement(self) -> bool:
        return self.mode == "natural" and self.epoch_len <= self.n

    def plan(self, epoch: int) -> np.ndarray:
        """The global plan of an epoch (the same on every rank)."""
        if self.without_replacement:
            return natural_plan(self.n, self.seed, epoch, self.epoch_len)
        return epoch_plan(None, self.probs, self.epoch_len, self.seed, epoch, index=self.index)

    def __len__(self) -> int:
        return batches_per_rank(self.epoch_len, self.world_size, self.batch_size)

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[np.ndarray]:
        idx = rank_slice(self.plan(epoch), self.rank, self.world_size, self.batch_size, start_batch)
        yield from idx.reshape(-1, self.batch_size)

    def describe(self) -> str:
        """One line for the console: e.g. ``sampling inverse: real 50.0% fake 50.0% (natural 90.0% / 10.0%)``."""
        tot = max(int(self.counts.sum()), 1)
        drawn = " ".join(f"{c} {100 * p:.1f}%" for c, p in zip(self.classes, self.probs))
        nat = " / ".join(f"{100 * n / tot:.1f}%" for n in self.counts)
        mode = self.mode if isinstance(self.mode, str) else ",".join(f"{k}={v:g}" for k, v in self.mode.items())
        return f"sampling {mode}: {drawn} (natural {nat}), {len(self)} batches/epoch/rank"
