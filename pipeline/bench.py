"""Throughput benchmarks. Every figure is measured in the run that reports it; ratios sit next to
the absolute numbers. Timed tests are not benchmarks: nothing here asserts a speed.

The loader reference is the seed's way: one file per sample, PIL + torchvision transforms,
WeightedRandomSampler, DataLoader with workers, same images, same 224x224 output.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .formats import CLASSES


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__}


def _files(root: Path) -> list[Path]:
    from .datasets.sources import walk_files
    return [root / f.rel for f in walk_files(root)[0]]


# ---------------------------------------------------------------- packing
def bench_shard(input_dir: Path, workers: int | None = None, work: Path | None = None, rounds: int = 3,
                faces: bool = False) -> dict:
    """`tar cf` against `dfp shard` (default check and --check structure, and --faces if asked), in interleaved rounds.

    `tar`'s speed on a shared machine swings by 2x or more between minutes, so each ratio is taken within
    a round and the median over rounds reported, with its range; seconds and files/s are medians too."""
    from .shards import ShardParams, build_shards
    work = Path(work or tempfile.mkdtemp(prefix="dfp-bench-"))
    files = _files(input_dir)
    nbytes = sum(p.stat().st_size for p in files)
    _ = [p.read_bytes() for p in files]  # warm the page cache for both contenders alike
    times: dict[str, list[float]] = {"tar": [], "structure": [], "decode": [], **({"faces": []} if faces else {})}
    packed, crops = {}, 0
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run(["tar", "cf", str(work / "plain.tar"), "-C", str(input_dir), "."], check=True)
        times["tar"].append(time.perf_counter() - t)
        # the default (every kept JPEG decoded once) and --check structure (headers and end marker only)
        for check in ("structure", "decode"):
            out = work / f"shards_{check}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            packed[check] = build_shards(input_dir, out, ShardParams(check=check), workers=workers,
                                         progress=False)["packed"]
            times[check].append(time.perf_counter() - t)
        if faces:
            crops, t = _pack_faces(input_dir, work / "shards_faces", workers)
            times["faces"].append(t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    res = {"files": len(files), "mb": nbytes / 1e6, "rounds": rounds, "tar_seconds": med["tar"],
           "tar_round_seconds": times["tar"], "tar_files_per_s": len(files) / med["tar"],
           "tar_mb_per_s": nbytes / 1e6 / med["tar"]}
    for check, prefix in (("structure", "structure_"), ("decode", "")):
        ratios = [t / d for t, d in zip(times["tar"], times[check])]
        res.update({f"{prefix}dfp_seconds": med[check], f"{prefix}dfp_round_seconds": times[check],
                    f"{prefix}dfp_files_per_s": len(files) / med[check], f"{prefix}dfp_mb_per_s": nbytes / 1e6 / med[check],
                    f"{prefix}speed_vs_tar": float(np.median(ratios)), f"{prefix}speed_vs_tar_range": [min(ratios), max(ratios)],
                    f"{prefix}packed": packed[check]})
    if faces:
        res.update(faces_seconds=med["faces"], faces_round_seconds=times["faces"], faces_crops=crops,
                   faces_crops_per_s=crops / med["faces"], faces_files_per_s=len(files) / med["faces"])
    res["shards"] = str(work / "shards_decode")
    return res


def _pack_faces(input_dir: Path, out: Path, workers: int | None) -> tuple[int, float]:
    """`dfp shard --faces`: (face crops written, seconds); a video sample holds `frames` crops."""
    from .shards import ShardParams, build_shards
    shutil.rmtree(out, ignore_errors=True)
    params = ShardParams(faces=True)
    t = time.perf_counter()
    s = build_shards(input_dir, out, params, workers=workers, progress=False)
    return s["packed"] * (params.frames if s["modality"] == "video" else 1), time.perf_counter() - t


# ---------------------------------------------------------------- loaders
def _time_iter(it, batches: int, warmup: int, on_batch=None) -> tuple[int, float]:
    it = iter(it)
    for _ in range(warmup):
        next(it)
    n, t = 0, time.perf_counter()
    for _ in range(batches):
        try:
            x, y, *_ = next(it)
        except StopIteration:
            break
        if on_batch:
            on_batch(x, y)
        n += len(y)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n, time.perf_counter() - t


def bench_loader(shards: Path, backend: str, device: str, split: str = "train", sampling: str = "inverse",
                 batch_size: int = 64, batches: int = 30, warmup: int = 3, workers: int = 2,
                 gpu_decode: bool = False, image_size: int = 224, dali_threads: int | None = None,
                 hw_decoder_load: float | None = None) -> dict:
    from .loaders import LoaderOptions, make_loader, resolve_device
    dev = resolve_device(device)
    need = (batches + warmup + 1) * batch_size
    ld = make_loader(shards, split, backend, dev, LoaderOptions(
        batch_size=batch_size, sampling=sampling, epoch_len=need, workers=workers, gpu_decode=gpu_decode,
        image_size=image_size, dali_threads=dali_threads, hw_decoder_load=hw_decoder_load))
    counts = np.zeros(len(CLASSES), np.int64)

    def tally(x, y):
        counts[:] += np.bincount(y.long().cpu().numpy(), minlength=len(CLASSES))

    n, s = _time_iter(ld, batches, warmup, tally)
    return {"backend": backend + ("+gpu_decode" if gpu_decode else ""), "device": str(dev), "split": split,
            "sampling": sampling, "batch_size": batch_size, "samples": n, "seconds": s, "samples_per_s": n / s,
            "class_counts": {c: int(counts[i]) for i, c in enumerate(CLASSES)}, "skipped": ld.skipped,
            "dali_threads": dali_threads, "hw_decoder_load": hw_decoder_load}


class _SeedDataset(torch.utils.data.Dataset):
    """The seed's dataset: a list of files, PIL open, torchvision transforms per sample."""

    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def _seed_files(input_dir: Path, split: str) -> tuple[list[Path], list[int]]:
    """The images of one raw INPUT and their classes, read as `dfp shard` reads it (real/fake, train/real or the
    seed's train_real/test_fake); where INPUT names splits, only `split`'s files."""
    from .errors import InputError
    from .datasets import discover
    found = discover("folders", input_dir, "image").candidates
    if any(c.split for c in found):
        found = [c for c in found if c.split == split]
        if not found:
            raise InputError(f"SHARDS {input_dir}: has no {split} split (folders such as {split}/real or "
                             f"{split}_real); pick another with --split")
    if {c.cls for c in found} != set(CLASSES):
        raise InputError(f"SHARDS {input_dir}: the {split} images must include both real and fake")
    return [c.path for c in found], [CLASSES.index(c.cls) for c in found]


def bench_seed_baseline(input_dir: Path, device: str = "cpu", batch_size: int = 64, batches: int = 30,
                        warmup: int = 3, workers: int = 2, image_size: int = 224, split: str = "train") -> dict:
    from torch.utils.data import DataLoader, WeightedRandomSampler
    from torchvision import transforms as T
    files, labels = _seed_files(input_dir, split)
    labels_np = np.array(labels)
    weights = (1.0 / np.bincount(labels_np))[labels_np]
    tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.RandomRotation(15),
                    T.ColorJitter(0.2, 0.2, 0.2), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    sampler = WeightedRandomSampler(torch.as_tensor(weights), (batches + warmup + 1) * batch_size, replacement=True)
    dl = DataLoader(_SeedDataset(files, labels, tf), batch_size=batch_size, sampler=sampler, num_workers=workers,
                    pin_memory=device == "cuda")
    dev = torch.device(device)
    counts = np.zeros(2, np.int64)

    def move(x, y):
        x.to(dev, non_blocking=True)
        counts[:] += np.bincount(y.numpy(), minlength=2)

    n, s = _time_iter(dl, batches, warmup, move)
    return {"backend": "seed (files + PIL + torchvision + DataLoader)", "device": device, "samples": n, "seconds": s,
            "samples_per_s": n / s, "class_counts": {c: int(counts[i]) for i, c in enumerate(CLASSES)}}


# ---------------------------------------------------------------- training
def bench_loaders(data: Path, shards: Path, device: str, batches: int, rounds: int = 3) -> list[dict]:
    """The seed's way and each loader, once per round, rounds interleaved.

    A shared machine's speed drifts by tens of percent over seconds, so a ratio is taken between
    contenders of the same round and the median over rounds is reported (with the range). A row's
    samples_per_s is the median of its rounds; samples, seconds and class_counts add them up."""
    contenders = [lambda: bench_seed_baseline(data, device, batches=batches),
                  lambda: bench_loader(shards, "torch", device, batches=batches)]
    if device == "cuda":
        contenders.append(lambda: bench_loader(shards, "torch", device, batches=batches, gpu_decode=True))
    contenders.append(lambda: bench_loader(shards, "dali", device, batches=batches))
    runs: list[list[dict]] = [[] for _ in contenders]
    for _ in range(rounds):
        for run, contender in zip(runs, contenders):
            run.append(contender())
    rows = []
    for run in runs:
        ratios = [r["samples_per_s"] / s["samples_per_s"] for r, s in zip(run, runs[0])]
        row = dict(run[0])
        row.update(samples=sum(r["samples"] for r in run), seconds=sum(r["seconds"] for r in run),
                   samples_per_s=float(np.median([r["samples_per_s"] for r in run])),
                   rounds=[r["samples_per_s"] for r in run], vs_seed=float(np.median(ratios)),
                   vs_seed_range=[min(ratios), max(ratios)],
                   class_counts={c: sum(r["class_counts"][c] for r in run) for c in run[0]["class_counts"]})
        if "skipped" in row:
            row["skipped"] = sum(r["skipped"] for r in run)
        rows.append(row)
    return rows


def bench_train(shards: Path, device: str = "auto", backend: str = "dali", model: str | None = None,
                batch_size: int = 32, batches: int = 10, image_size: int = 224, precisions=("off", "auto")) -> list[dict]:
    from .backbones import audio_input
    from .engine import amp_setup, train_one_epoch
    from .formats import read_manifest
    from .loaders import LoaderOptions, make_loader, resolve_device
    from .losses import make_loss
    from .models import DEFAULT_MODEL, build_model
    dev = resolve_device(device)
    modality = read_manifest(shards)["modality"]
    rows = []
    for amp in precisions:
        if amp == "auto" and dev.type == "cpu":
            amp = "bf16"  # the CPU's AMP path (emulated, and slower than fp32, on CPUs without bf16 instructions)
        dtype, scaler = amp_setup(dev, amp)
        torch.manual_seed(0)
        name = model or DEFAULT_MODEL[modality]
        net = build_model(name, modality).to(dev)
        if dev.type == "cuda" and modality != "audio":
            net = net.to(memory_format=torch.channels_last)
        ld = make_loader(shards, "train", backend, dev, LoaderOptions(batch_size=batch_size, epoch_len=batches * batch_size,
                                                                     image_size=image_size, audio_input=audio_input(name)))
        loss = make_loss("focal", [1, 1]).to(dev)
        opt = torch.optim.AdamW(net.parameters(), 1e-4)
        # warm-up: the last two batches of epoch 0 pay the one-off costs (pipeline build, allocations)
        ld.set_epoch(0, start_batch=max(0, len(ld) - 2))
        train_one_epoch(net, loss, opt, None, ld, dev, dtype, scaler, progress=False)
        ld.set_epoch(1)
        st = train_one_epoch(net, loss, opt, None, ld, dev, dtype, scaler, progress=False)
        rows.append({"model": model or DEFAULT_MODEL[modality], "precision": str(dtype or "fp32"), "device": str(dev),
                     "backend": backend, "batch_size": batch_size, "samples": st["samples"], "seconds": st["seconds"],
                     "samples_per_s": st["samples"] / st["seconds"], "data_wait_share": st["data_wait"] / st["seconds"],
                     "image_size": image_size, "native_bf16": _native_bf16(dev)})
    return rows


def _native_bf16(dev: torch.device) -> bool:
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# ---------------------------------------------------------------- sampler and memory
def bench_sampler(sizes=(1_000_000, 100_000_000)) -> list[dict]:
    from .sampling import class_index, epoch_plan
    rows = []
    for n in sizes:
        labels = np.zeros(n, np.int8)
        labels[: n // 10] = 1
        t = time.perf_counter()
        idx = class_index(labels)
        plan = epoch_plan(None, [0.5, 0.5], n, 0, 0, index=idx)
        s = time.perf_counter() - t
        rows.append({"samples": n, "seconds": s, "plan_len": int(len(plan))})
        del labels, idx, plan
    return rows


def make_scaled_shards(out: Path, n: int, jpeg: bytes, per_shard: int = 50_000) -> Path:
    """A shard folder of n samples that all share one small JPEG: cheap to build, real to read."""
    import webdataset as wds
    from .formats import FORMAT, encode_sample, index_text, tar_samples, write_manifest
    rows = []
    counts = {"train": {"real": 0, "fake": 0}, "val": {"real": 0, "fake": 0}, "test": {"real": 0, "fake": 0}}
    (out / "train").mkdir(parents=True, exist_ok=True)
    for cls, m in (("real", n - n // 4), ("fake", n // 4)):
        for s0 in range(0, m, per_shard):
            path = out / "train" / f"{cls}-{s0 // per_shard:06d}.tar"
            with wds.TarWriter(str(path), mtime=0) as w:
                for i in range(s0, min(m, s0 + per_shard)):
                    w.write(encode_sample(f"{cls[0]}{i:09d}", f"{cls}/{i}.jpg", cls, {"jpg": jpeg}))
            samples = tar_samples(path)
            path.with_suffix(".idx").write_text(index_text(samples))
            rows.append({"path": f"train/{path.name}", "split": "train", "class": cls, "samples": len(samples),
                         "bytes": path.stat().st_size, "sha256": ""})
            counts["train"][cls] += len(samples)
    write_manifest(out, {"format": FORMAT, "modality": "image", "classes": list(CLASSES), "payload": ["jpg"],
                         "splits": counts, "shards": rows, "rejected": 0, "params": {}})
    return out


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would report the
# benchmark process's own peak; VmHWM belongs to the child's fresh address space.
_RSS_PROBE = """
import sys
from pipeline.loaders import LoaderOptions, make_loader
ld = make_loader(sys.argv[1], "train", sys.argv[2], "cpu", LoaderOptions(batch_size=32, workers=0, epoch_len=640))
for i, _ in zip(range(20), ld):
    pass
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def bench_memory(work: Path, sizes=(20_000, 200_000), backend: str = "torch") -> list[dict]:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    rows = []
    for n in sizes:
        d = make_scaled_shards(work / f"scaled_{n}", n, buf.getvalue())
        r = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(d), backend], capture_output=True, text=True,
                           check=True, cwd=Path(__file__).resolve().parents[1])
        rows.append({"samples": n, "peak_rss_mb": int(r.stdout.strip().splitlines()[-1]) / 1024, "backend": backend})
        shutil.rmtree(d, ignore_errors=True)
    return rows


# ---------------------------------------------------------------- all
def bench_all(samples: int, out_json: Path | None, work: Path | None = None, batches: int = 20,
              train_model: str = "resnet18", train_batches: int = 6, train_image_size: int = 224, memory_sizes=(20_000, 200_000),
              sampler_sizes=(1_000_000, 100_000_000), log=print, rounds: int = 3) -> dict:
    from .synth import synth_dataset
    work = Path(work or tempfile.mkdtemp(prefix="dfp-bench-"))
    data = work / "data"
    if not data.exists():
        log(f"synthesising {samples} 512x384 JPEG images (3:1 real:fake) in {data}")
        synth_dataset(data, "image", samples - samples // 4, samples // 4, seed=0, image_size=(512, 384), progress=True)
    res: dict = {"machine": machine(), "samples": samples}
    log(f"packing: dfp shard vs tar cf; {rounds} interleaved round(s)")
    res["shard"] = bench_shard(data, work=work, rounds=rounds)
    shards = Path(res["shard"]["shards"])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    res["loaders"] = []
    for dev in devices:
        log(f"loaders on {dev}: seed baseline, torch, dali; {rounds} interleaved round(s)")
        res["loaders"] += bench_loaders(data, shards, dev, batches, rounds)
    log("training: fp32 vs AMP")
    log("training: fp32 vs AMP")
    res["train"] = bench_train(shards, "auto", "dali", train_model, batches=train_batches, image_size=train_image_size)
    log("sampler planning")
    res["sampler"] = bench_sampler(sampler_sizes)
    log("loader peak memory at two dataset sizes")
    res["memory"] = bench_memory(work, memory_sizes, "torch") + bench_memory(work, memory_sizes, "dali")
    if out_json:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(res, indent=2))
    log(format_table(res))
    return res


# The JSON keeps the backend names and "vs_seed" keys that saved results and scripts already use; only the
# console names the baseline by what it is.
_LOADER_LABELS = {"seed (files + PIL + torchvision + DataLoader)": "plain PyTorch (files + PIL + DataLoader)"}


def format_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"machine: {m['cpu_cores']} CPU cores ({m['cpu']}), GPU: {m['gpu'] or 'none'}, torch {m['torch']}"]
    s = res.get("shard")
    if s:
        lo, hi = s["speed_vs_tar_range"]
        slo, shi = s["structure_speed_vs_tar_range"]
        lines += ["", f"packing {s['files']} files ({s['mb']:.1f} MB), median of {s['rounds']} interleaved round(s)",
                  f"  dfp shard : {s['dfp_files_per_s']:8.0f} files/s {s['dfp_mb_per_s']:7.1f} MB/s",
                  f"  dfp shard --check structure : {s['structure_dfp_files_per_s']:8.0f} files/s "
                  f"{s['structure_dfp_mb_per_s']:7.1f} MB/s",
                  f"  tar cf    : {s['tar_files_per_s']:8.0f} files/s {s['tar_mb_per_s']:7.1f} MB/s",
                  *([f"  dfp shard --faces : {s['faces_files_per_s']:8.0f} files/s {s['faces_crops_per_s']:7.1f} "
                     f"face crops/s ({s['faces_crops']} crops)"] if "faces_crops" in s else []),
                  f"  dfp / tar speed: {s['speed_vs_tar']:.2f}x, rounds {lo:.2f}-{hi:.2f}x "
                  f"(--check structure: {s['structure_speed_vs_tar']:.2f}x, rounds {slo:.2f}-{shi:.2f}x)"]
    if res.get("loaders"):
        n = len(res["loaders"][0]["rounds"])
        lines += ["", f"loader (train aug, 224x224), median of {n} interleaved round(s)",
                  f"{'':48s} {'device':6s} {'samples/s':>10s} {'vs plain PyTorch':>16s} {'range':>13s}  delivered real/fake"]
        for r in res["loaders"]:
            c, (lo, hi) = r["class_counts"], r["vs_seed_range"]
            label = _LOADER_LABELS.get(r["backend"], r["backend"])
            lines.append(f"  {label:46s} {r['device']:6s} {r['samples_per_s']:10.1f} {r['vs_seed']:15.2f}x "
                         f"{lo:5.2f}-{hi:4.2f}x  {c['real']}/{c['fake']}")
    if res.get("train"):
        lines += ["", f"{'training':30s} {'precision':16s} {'samples/s':>10s} {'data wait':>10s}"]
        base = res["train"][0]["samples_per_s"]
        for r in res["train"]:
            lines.append(f"  {r['model'] + ' ' + r['device'] + ' ' + str(r['image_size']):28s} {r['precision']:16s} "
                         f"{r['samples_per_s']:10.1f} {100 * r['data_wait_share']:9.1f}%  ({r['samples_per_s'] / base:.2f}x fp32)"
                         + ("" if r["native_bf16"] or r["precision"] == "fp32" else "  (no native bf16 on this device)"))
    if res.get("sampler"):
        lines += [""] + [f"sampler plan of {r['samples']:,} samples: {r['seconds']:.2f} s" for r in res["sampler"]]
    if res.get("memory"):
        lines += [""] + [f"loader peak RSS ({r['backend']}) with {r['samples']:,} samples: {r['peak_rss_mb']:.0f} MB"
                         for r in res["memory"]]
    return "\n".join(lines)
