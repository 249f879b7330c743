"""PyTorch backend: a DataLoader whose items are whole planned batches, decoded in worker processes.

With `gpu_decode`, workers only read bytes and JPEGs are decoded in the main process with
`torchvision.io.decode_jpeg(device=...)` (nvJPEG on CUDA), then augmented on that device.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .decode import Decodability, decode_batch, visual_sample


class _Batches(Dataset):
    def __init__(self, index, batches, cfg, seed: tuple[int, ...], raw: bool, offset: int = 0, strong=None):
        self.index, self.batches, self.cfg, self.seed, self.raw = index, batches, cfg, seed, raw
        self.offset = offset  # batches already done this epoch: a resumed epoch draws the same randomness
        self.strong = strong  # (batches, batch size) recipe choices in training, keyed by plan position

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, b):
        idx = self.batches[b]
        strong = self.strong[b] if self.strong is not None else np.zeros(len(idx), bool)
        many = getattr(self.index, "read_many", None)
        if many is not None:  # shards at a URL: the batch's ranged reads at once
            got = dict(zip((int(i) for i in idx), many(idx)))
            read = got.__getitem__
        else:
            read = self.index.read
        if self.raw:
            return [read(int(i)) for i in idx], idx, strong
        data, ok = decode_batch(read, idx, strong, self.cfg, (*self.seed, self.offset + b))
        return data, ok, idx


def _identity(x):
    return x


class Producer:
    def __init__(self, loader):
        self.loader = loader
        # nvJPEG takes JPEGs only: PNG payloads (--image-codec png) decode in the workers
        self.raw = loader.opts.gpu_decode and loader.modality != "audio" and loader.index.exts[0].endswith("jpg")
        # nvJPEG, like DALI, decodes some damaged JPEGs without an error; the CPU path's decoder settles it itself
        self.decodable = Decodability(loader.index) if self.raw else None

    def run(self, batches: list[np.ndarray]):
        ld = self.loader
        strong = None
        if ld.cfg.augment:
            pos = ld.plan_positions(0, len(batches))
            strong = ld.strong_views(pos.ravel()).reshape(pos.shape)
        ds = _Batches(ld.index, batches, ld.cfg, (ld.opts.seed, ld.epoch, ld.rank), self.raw, ld.start_batch, strong)
        workers = ld.opts.workers
        dl = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
                        pin_memory=ld.device.type == "cuda" and not self.raw,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
        it = iter(dl)
        try:
            for item in it:
                yield self._decode_on_device(*item) if self.raw else item
        finally:
            _stop_workers(it)

    def _decode_on_device(self, comps: list, idx: np.ndarray, strong: np.ndarray):
        """JPEG bytes -> decoded and augmented on the loader's device, one sample at a time after a batched decode."""
        from torchvision.io import ImageReadMode, decode_jpeg
        ld = self.loader
        comps = [c if c is not None and self.decodable(int(i), c) else None for c, i in zip(comps, idx)]
        ok = np.array([c is not None for c in comps])
        flat = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for c in comps if c is not None for b in c]
        try:
            decoded = decode_jpeg(flat, mode=ImageReadMode.RGB, device=ld.device) if flat else []
        except RuntimeError:
            decoded = None  # a corrupt JPEG fails the batched call: fall back to one by one
        out, k = [], 0
        for j, c in enumerate(comps):
            if c is None:
                continue
            if decoded is None:
                x = visual_sample(c, ld.cfg, bool(strong[j]))
                if x is not None:
                    x = x.to(ld.device)
            else:
                frames = decoded[k:k + len(c)]
                k += len(c)
                x = _augment(frames, ld.cfg, bool(strong[j]))
            if x is None:
                ok[j] = False
            else:
                out.append(x)
        return (torch.stack(out) if out else None), ok, idx


def _augment(frames, cfg, strong):
    from ..augment import IMAGE, torch_image_eval, torch_image_train
    x = frames[0] if cfg.modality == "image" else torch.stack(frames)
    if cfg.augment:
        return torch_image_train(x, IMAGE["strong" if strong else "standard"], cfg.image_size)
    return torch_image_eval(x, cfg.image_size, cfg.interpolation)


def _stop_workers(it) -> None:
    """End a DataLoader iterator's worker processes now. A failed or abandoned epoch otherwise leaves them, and
    their queues' feeder threads, to whenever the garbage collector frees the iterator: the exception that ended
    the epoch holds it through its traceback, and the threads' late teardown prints tracebacks of its own."""
    stop = getattr(it, "_shutdown_workers", None)  # torch's own teardown, as the iterator's __del__ runs it
    if stop is not None:
        stop()
