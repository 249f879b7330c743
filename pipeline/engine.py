"""train_one_epoch / predict, mixed precision and the DDP helpers.

AMP follows torchvision's reference: `scaler is None` means no gradient scaling. bf16 needs
no scaler; fp16 (GPUs without bf16) uses a GradScaler whose state goes into the checkpoint.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import TrainingError, warn


# ---------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Under torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local)


def all_gather_objects(obj, d: Dist) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def reduce_sum(values: list[float], d: Dist, device) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- precision
def amp_setup(device: torch.device, amp: str) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """amp: 'auto' (bf16 on GPUs that have it, else fp16 + scaler; fp32 on CPU), 'bf16', 'fp16' or 'off'."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None, None
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "bf16":
        return torch.bfloat16, None
    if amp == "fp16":
        if device.type != "cuda":
            return torch.bfloat16, None  # fp16 autocast on CPU is slow and unscaled; bf16 is the CPU path
        return torch.float16, torch.amp.GradScaler("cuda")
    raise ValueError(f"--amp {amp!r}: choose auto, bf16, fp16 or off")


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


# ---------------------------------------------------------------- loops
def train_one_epoch(model, loss_fn, optimizer, scheduler, loader, device, amp_dtype, scaler, *, clip: float = 1.0,
                    max_nonfinite: int = 20, desc: str = "train", progress: bool = True, keys_out: list | None = None,
                    on_step=None) -> dict:
    """One pass over `loader`. `on_step(batches_done, sums)` runs after every step with the sums so far (mid-epoch
    checkpoints carry them, so a resumed epoch still reports the whole epoch)."""
    model.train()
    total_loss, steps, samples, skipped, in_a_row = 0.0, 0, 0, 0, 0
    wait = 0.0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(loader), desc=desc, unit="batch", dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    t_wait = time.perf_counter()
    for x, y, keys in loader:
        wait += time.perf_counter() - t_wait
        if keys_out is not None:
            keys_out.extend(keys)
        with autocast(device, amp_dtype):
            loss = loss_fn(model(x), y)
        # GPU sync point: reading the loss decides whether to step, and feeds the progress bar.
        value = float(loss.detach())
        if not math.isfinite(value):
            skipped += 1
            in_a_row += 1
            optimizer.zero_grad(set_to_none=True)
            if in_a_row >= max_nonfinite:
                raise TrainingError(f"the loss was not finite for {in_a_row} steps in a row: lower --lr, use --amp off "
                                    "(fp16 overflow), or check the inputs with `dfp verify`")
            t_wait = time.perf_counter()
            continue
        in_a_row = 0
        _step(model, loss, optimizer, scheduler, scaler, clip)
        total_loss += value * len(y)
        samples += len(y)
        steps += 1
        if on_step is not None:
            on_step(steps + skipped, {"loss_sum": total_loss, "samples": samples, "seconds": time.perf_counter() - t0,
                                      "data_wait": wait, "nonfinite_steps": skipped})
        if bar:
            el = time.perf_counter() - t0
            post = dict(loss=f"{value:.4f}", sps=f"{samples / el:.0f}", wait=f"{100 * wait / el:.0f}%")
            if getattr(loader, "skipped", 0):
                post["skipped"] = loader.skipped
            bar.set_postfix(**post)
            bar.update(1)
        t_wait = time.perf_counter()
    if bar:
        bar.close()
    seconds = time.perf_counter() - t0
    if skipped:
        warn(f"skipped {skipped} step(s) with a non-finite loss")
    return {"loss_sum": total_loss, "samples": samples, "steps": steps, "seconds": seconds, "data_wait": wait,
            "nonfinite_steps": skipped}


def _step(model, loss, optimizer, scheduler, scaler, clip: float) -> None:
    """Backward, clip, optimizer and schedule step; `scaler is None` means no gradient scaling (bf16, fp32)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    if scheduler is not None:
        scheduler.step()


@torch.no_grad()
def predict(model, loader, device, amp_dtype, loss_fn=None, progress: bool = False, desc: str = "eval"):
    """Scores for every sample of this rank's share: (keys, labels, scores, loss_sum)."""
    model.eval()
    keys, labels, scores, loss_sum = [], [], [], 0.0
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, total=len(loader), desc=desc, unit="batch", dynamic_ncols=True, leave=False)
    for x, y, k in it:
        with autocast(device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        if loss_fn is not None:
            loss_sum += float(loss_fn(logits, y)) * len(y)
        keys += k
        labels.append(y.cpu().numpy())
        scores.append(torch.sigmoid(logits).cpu().numpy())
    cat = lambda a: np.concatenate(a) if a else np.zeros(0, np.float32)
    return keys, cat(labels).astype(np.int64), cat(scores).astype(np.float64), loss_sum


def gather_predictions(keys, labels, scores, d: Dist):
    """Every rank gets the whole split's predictions (eval shards are disjoint: no duplicates)."""
    parts = all_gather_objects((keys, labels, scores), d)
    k = [x for p in parts for x in p[0]]
    return k, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def weights_checksum(model) -> float:
    with torch.no_grad():
        return float(sum(p.double().sum().item() * (i + 1) for i, p in enumerate(model.parameters())))
