"""`dfp train`: one run from shards to a tuned, reported detector.

    dfp train shards/mydata --out runs/exp1                      # one CPU or GPU
    torchrun --nproc_per_node=8 scripts/train.py shards/mydata --out runs/exp1
    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=HOST --master_port=29500 \
        scripts/train.py shards/mydata --out runs/exp1             # and node_rank=1 on the second node

Every rank runs this code; only rank 0 writes files. The weighted plan is the same on every
rank and split rank-wise, evaluation is sharded without duplicates and gathered.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .engine import (Dist, TrainingError, amp_setup, gather_predictions, init_distributed, predict, reduce_sum,
                     train_one_epoch, weights_checksum, all_gather_objects)
from .formats import CLASSES, read_manifest
from .loaders import LoaderOptions, make_loader, resolve_device
from .predictions import write_predictions
from .sources import InputError
from .stats import RECOMMENDED, imbalance_ratio, severity

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_f1", "val_auc", "lr", "samples_per_s",
                  "val_f1_tuned", "data_wait", "nonfinite_steps"]


@dataclass
class TrainConfig:
    shards: str
    out: str = "runs/exp"
    backend: str = "auto"  # auto: dali when it imports, else torch
    device: str = "auto"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    clip: float = 1.0
    seed: int = 0
    max_samples_per_class: int | None = None
    epoch_len: int | None = None
    patience: int = 5
    model: str | None = None  # default per modality
    frame_backbone: str = "efficientnet_b0"
    pretrained: bool = False
    weights: str | None = None
    strategy: str = "auto"  # auto | manual
    loss: str = "focal"
    focal_alpha: str = "0.25"
    focal_gamma: float = 2.0
    sampling: str = "inverse"
    class_weights: str | None = None
    minority_augment: bool = True
    smote: bool = False
    amp: str = "auto"
    compile: bool = False
    workers: int = 2
    image_size: int = 224
    audio_seconds: float = 4.0
    threshold_method: str = "f1"
    resume: str | None = None
    save_every: int = 0  # also write last.pth every N training steps (0: at epoch ends only)
    tensorboard: bool = False
    progress: bool = True
    report: bool = True


# ---------------------------------------------------------------- strategy
def decide_strategy(cfg: TrainConfig, train_counts: dict[str, int]) -> tuple[TrainConfig, dict]:
    """--strategy auto: the seed's table, from the train split's imbalance ratio."""
    ratio = imbalance_ratio(train_counts)
    sev = severity(ratio)
    if cfg.strategy == "auto":
        cfg = replace(cfg, loss="focal", sampling="natural" if sev == "mild" else "inverse",
                      minority_augment=sev != "mild", smote=sev == "severe", class_weights=None)
    elif cfg.strategy != "manual":
        raise InputError(f"--strategy {cfg.strategy!r}: choose auto or manual")
    sampling = cfg.class_weights or cfg.sampling
    decision = {"mode": cfg.strategy, "imbalance_ratio": None if math.isinf(ratio) else round(ratio, 4),
                "severity": sev, "recommended": RECOMMENDED[sev], "loss": cfg.loss, "sampling": sampling,
                "minority_augment": cfg.minority_augment, "smote": cfg.smote, "threshold_tuning": cfg.threshold_method}
    return cfg, decision


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return f


def _write_history(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _val_summary(labels, scores) -> dict:
    from .metrics import curve_metrics, metric_dict
    from .thresholds import ThresholdUndefined, tune
    out = {"f1": metric_dict(labels, scores, 0.5)["f1"] if len(labels) else 0.0, "auc": None, "f1_tuned": None}
    if len(labels) and len(np.unique(labels)) == 2:
        out["auc"] = curve_metrics(labels, scores)["auc"]
        try:
            out["f1_tuned"] = metric_dict(labels, scores, tune(labels, scores, "f1"))["f1"]
        except ThresholdUndefined:
            pass
    return out


def _preprocess(cfg: TrainConfig, manifest: dict) -> dict:
    from .augment import MEAN, STD
    return {"image_size": cfg.image_size, "audio_seconds": cfg.audio_seconds,
            "sample_rate": manifest.get("sample_rate"), "frames": manifest.get("frames"),
            "max_side": manifest["params"].get("max_side"), "mean": list(MEAN), "std": list(STD)}


def _check_splits(manifest: dict, shards: str, limit: int | None) -> dict[str, int]:
    splits = manifest["splits"]
    train = {c: min(splits.get("train", {}).get(c, 0), limit or 10**18) for c in CLASSES}
    if sum(train.values()) == 0:
        raise InputError(f"{shards}: the train split is empty; rebuild the shards with a train fraction > 0")
    missing = [c for c in CLASSES if train[c] == 0]
    if missing:
        raise InputError(f"{shards}: the train split has no '{missing[0]}' samples; a detector needs both classes")
    if sum(splits.get("val", {}).values()) == 0:
        raise InputError(f"{shards}: the val split is empty; it is needed to pick the best epoch and the threshold "
                         "(rebuild with --split 0.8,0.1,0.1)")
    return train


def _resolve_backend(name: str) -> str:
    if name != "auto":
        return name
    try:
        import nvidia.dali  # noqa: F401
        return "dali"
    except ImportError:
        return "torch"


def run_training(cfg: TrainConfig, log=print) -> Path:
    device = resolve_device(cfg.device)
    d = init_distributed(device.type)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    say = log if d.main else (lambda *a, **k: None)
    out = Path(cfg.out)
    resume_ckpt = None
    if cfg.resume:
        resume_ckpt = checkpoint.load(Path(cfg.resume) / "last.pth")
        saved = resume_ckpt["config"]
        cfg = replace(TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__}),
                      epochs=cfg.epochs, resume=cfg.resume, out=cfg.resume, device=cfg.device, progress=cfg.progress,
                      report=cfg.report, save_every=cfg.save_every)
        out = Path(cfg.resume)
    manifest = read_manifest(cfg.shards)
    modality = manifest["modality"]
    train_counts = _check_splits(manifest, cfg.shards, cfg.max_samples_per_class)
    cfg, decision = decide_strategy(cfg, train_counts)
    backend = _resolve_backend(cfg.backend)
    from .models import DEFAULT_MODEL, build_model, MODELS, ModelError
    model_name = cfg.model or DEFAULT_MODEL[modality]
    if model_name not in MODELS[modality]:
        raise ModelError(f"--model {model_name} does not take {modality} input; choose one of {', '.join(MODELS[modality])}")
    cfg = replace(cfg, model=model_name, backend=backend)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    say(f"device: {device}{f' x{d.world_size} ranks' if d.enabled else ''}, backend: {backend}, model: {model_name}, modality: {modality}")
    say(f"train: real {train_counts['real']}, fake {train_counts['fake']}; imbalance {decision['imbalance_ratio']}:1 "
        f"({decision['severity']}); strategy {decision['mode']}: loss {cfg.loss}, sampling {decision['sampling']}, "
        f"minority augmentation {'on' if cfg.minority_augment else 'off'}, SMOTE {'on' if cfg.smote else 'off'}")

    sampling = decision["sampling"]
    if isinstance(sampling, str) and "=" in sampling:
        from .sampling import parse_class_weights
        sampling = parse_class_weights(sampling)
    common = dict(batch_size=cfg.batch_size, seed=cfg.seed, image_size=cfg.image_size, audio_seconds=cfg.audio_seconds,
                  workers=cfg.workers, max_samples_per_class=cfg.max_samples_per_class)
    train_loader = make_loader(cfg.shards, "train", backend, device, LoaderOptions(
        train=True, sampling=sampling, epoch_len=cfg.epoch_len, minority_augment=cfg.minority_augment, **common),
        d.rank, d.world_size, manifest)
    eval_loader = lambda split: make_loader(cfg.shards, split, backend, device, LoaderOptions(train=False, **common),
                                            d.rank, d.world_size, manifest)
    val_loader = eval_loader("val")

    model = build_model(model_name, modality, cfg.pretrained, cfg.weights, cfg.frame_backbone).to(device)
    if device.type == "cuda" and modality != "audio":
        model = model.to(memory_format=torch.channels_last)
    from .losses import make_loss
    loss_fn = make_loss(cfg.loss, train_counts, cfg.focal_alpha, cfg.focal_gamma).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(
        cfg.epochs * steps_per_epoch, max(1, int(cfg.warmup_epochs * steps_per_epoch))))
    amp_dtype, scaler = amp_setup(device, cfg.amp)
    say(f"precision: {amp_dtype or 'fp32'}{' + GradScaler' if scaler else ''}; {steps_per_epoch} steps/epoch/rank")

    start_epoch, start_batch, best_f1, history, bad_epochs, best_state = 0, 0, -1.0, [], 0, None
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        if scaler is not None and resume_ckpt.get("scaler"):
            scaler.load_state_dict(resume_ckpt["scaler"])
        position = resume_ckpt.get("sampler") or {"epoch": int(resume_ckpt["epoch"]) + 1, "batch": 0}
        start_epoch, start_batch = int(position["epoch"]), int(position["batch"])
        if start_batch >= steps_per_epoch:
            start_epoch, start_batch = start_epoch + 1, 0
        best_f1 = float(resume_ckpt.get("best_f1", -1.0))
        bad_epochs = int(resume_ckpt.get("bad_epochs", 0))
        history = list(resume_ckpt.get("history", []))
        say(f"resuming {out} at epoch {start_epoch + 1}/{cfg.epochs}, batch {start_batch} "
            f"(best val F1 so far {best_f1:.4f})")

    net = model
    if d.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    base_state = {"config": None, "modality": modality, "classes": list(CLASSES), "preprocess": _preprocess(cfg, manifest)}
    config_record = {**asdict(cfg), "strategy_decision": decision,
                     "dataset": {"shards": str(Path(cfg.shards).resolve()), "modality": modality, "splits": manifest["splits"]},
                     "world_size": d.world_size, "precision": str(amp_dtype or "fp32"),
                     "device": str(device), "device_requested": cfg.device}
    base_state["config"] = asdict(cfg)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", config_record)
    tb = _tensorboard(out) if (cfg.tensorboard and d.main) else None
    record_keys = os.environ.get("DFP_RECORD_KEYS") == "1"

    def save_last(epoch: int, next_batch: int, epochs_done: int) -> None:
        checkpoint.save(out / "last.pth", {**base_state, "model": model.state_dict(), "epoch": epochs_done - 1,
                                           "best_f1": best_f1, "bad_epochs": bad_epochs, "history": list(history),
                                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                           "scaler": scaler.state_dict() if scaler else None,
                                           "sampler": {"epoch": epoch, "batch": next_batch}})

    for epoch in range(start_epoch, cfg.epochs):
        first = start_batch if epoch == start_epoch else 0
        train_loader.set_epoch(epoch, first)
        keys_seen = [] if record_keys else None
        on_step = None
        if cfg.save_every and d.main:
            # mid-epoch checkpoint: the sampler position makes the resumed epoch draw the remaining batches
            on_step = lambda done, e=epoch, f=first: (f + done) % cfg.save_every == 0 and save_last(e, f + done, e)
        st = train_one_epoch(net, loss_fn, optimizer, scheduler, train_loader, device, amp_dtype, scaler, clip=cfg.clip,
                             desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=cfg.progress and d.main, keys_out=keys_seen,
                             on_step=on_step)
        if keys_seen is not None:
            Path(out / f"keys_rank{d.rank}_epoch{epoch}.txt").write_text("\n".join(keys_seen))
        loss_sum, samples, seconds, wait, nonfinite = reduce_sum(
            [st["loss_sum"], st["samples"], st["seconds"], st["data_wait"], st["nonfinite_steps"]], d, device)
        keys, labels, scores, vloss = predict(net, val_loader, device, amp_dtype, loss_fn)
        vloss = reduce_sum([vloss], d, device)[0]
        keys, labels, scores = gather_predictions(keys, labels, scores, d)
        v = _val_summary(labels, scores)
        row = {"epoch": epoch + 1, "train_loss": round(loss_sum / max(samples, 1), 6),
               "val_loss": round(vloss / max(len(labels), 1), 6), "val_f1": round(v["f1"], 6),
               "val_auc": "" if v["auc"] is None else round(v["auc"], 6), "lr": f"{scheduler.get_last_lr()[0]:.3e}",
               "samples_per_s": round(samples / max(seconds / d.world_size, 1e-9), 2),
               "val_f1_tuned": "" if v["f1_tuned"] is None else round(v["f1_tuned"], 6),
               "data_wait": round(wait / max(seconds, 1e-9), 4), "nonfinite_steps": int(nonfinite)}
        history.append(row)
        score = v["f1_tuned"] if v["f1_tuned"] is not None else v["f1"]
        improved = score > best_f1
        if improved:
            best_f1, bad_epochs = score, 0
        else:
            bad_epochs += 1
        auc = "n/a" if v["auc"] is None else f"{v['auc']:.4f}"
        say(f"Epoch {epoch + 1}/{cfg.epochs}: Train Loss={row['train_loss']:.4f}, Val Loss={row['val_loss']:.4f}, "
            f"Val F1={v['f1']:.4f} (tuned {score:.4f}), Val AUC={auc}, {row['samples_per_s']:.0f} samples/s, "
            f"data wait {100 * row['data_wait']:.0f}%")
        state = {**base_state, "model": model.state_dict(), "epoch": epoch, "best_f1": best_f1,
                 "bad_epochs": bad_epochs, "history": list(history)}
        if improved:  # every rank decides alike (gathered predictions), so every rank keeps the same copy
            best_state = {**state, "model": {k: v.detach().cpu().clone() for k, v in state["model"].items()}}
        if d.main:
            if improved:
                checkpoint.save(out / "best_model.pth", state)
                say(f"Saved best model (val F1={best_f1:.4f})")
            save_last(epoch + 1, 0, epoch + 1)
            _write_history(out / "history.csv", history)
            if tb:
                for k in ("train_loss", "val_loss", "val_f1", "samples_per_s"):
                    tb.add_scalar(k, float(row[k]), epoch + 1)
        if cfg.patience and bad_epochs >= cfg.patience:
            say(f"early stopping: val F1 did not improve for {cfg.patience} epochs")
            break

    if d.enabled:
        sums = all_gather_objects(weights_checksum(model), d)
        config_record["distributed"] = {"world_size": d.world_size, "weights_identical": len(set(sums)) == 1}
        say(f"ranks: {d.world_size}, final weights identical on all ranks: {len(set(sums)) == 1}")
    if tb:
        tb.close()
    if best_state is None:  # resumed after the last improvement: the best weights are on disk
        best_state = checkpoint.load(out / "best_model.pth", map_location="cpu")
    finish_run(cfg, out, model, device, amp_dtype, d, eval_loader, val_loader, best_state, config_record, log=say)
    if d.enabled:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return out


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise InputError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(out / "tb"))


def finish_run(cfg, out, model, device, amp_dtype, d: Dist, eval_loader, val_loader, best_state, config_record, log=print):
    """Best weights -> optional SMOTE head -> val/test predictions -> tuned threshold -> metrics and report."""
    best = {**best_state, "model": best_state["model"]}
    model.load_state_dict(best["model"])
    smote_info = None
    if cfg.smote:
        from .smote import smote_refit_head
        smote_info = smote_refit_head(model, cfg, device, amp_dtype, d, eval_loader, val_loader, log=log)
        best["model"] = model.state_dict()
    preds = {}
    for split in ("val", "test"):
        loader = val_loader if split == "val" else eval_loader(split)
        if len(loader.index) == 0:
            continue
        keys, labels, scores, _ = predict(model, loader, device, amp_dtype, progress=cfg.progress and d.main, desc=split)
        keys, labels, scores = gather_predictions(keys, labels, scores, d)
        srcs = all_gather_objects(loader.sources(keys[d.rank::d.world_size]), d)
        preds[split] = (keys, labels, scores, {k: v for part in srcs for k, v in part.items()})
    if not d.main:
        return
    if np.isnan(preds["val"][2]).any():
        raise TrainingError(f"run {out}: the model produced NaN scores; lower --lr or use --amp off")
    from .metrics import build_metrics
    for split, (keys, labels, scores, srcs) in preds.items():
        write_predictions(out / f"predictions_{split}.csv", keys, labels, scores, srcs)
    test = preds.get("test")
    metrics, warnings = build_metrics((preds["val"][1], preds["val"][2]),
                                      (test[1], test[2]) if test else None, cfg.threshold_method)
    for w in warnings:
        log(f"warning: {w}")
    _write_json(out / "metrics.json", metrics)
    chosen = metrics["chosen"]
    best.pop("format", None)
    # the checkpoint names the threshold "value"; the other keys (requested, fallback_reason too) as in metrics.json
    best["threshold"] = {("value" if k == "threshold" else k): v for k, v in chosen.items()}
    checkpoint.save(out / "best_model.pth", best)
    if smote_info:
        config_record["smote"] = smote_info
    _write_json(out / "config.json", config_record)
    if cfg.report:
        from .report import render_report
        render_report(out)
    log("")
    log(final_summary(metrics))
    log(f"summary: {out / 'training_results.txt'}")
    log(f"report:  {out / 'report.html'}")
    log(f"model:  {out / 'best_model.pth'} (threshold {chosen['threshold']:.4f}, {chosen['method']})")


def final_summary(metrics: dict) -> str:
    """The seed's closing block, short: the split that decides (test, else val) at 0.5 and tuned."""
    split = "test" if metrics.get("test") else "val"
    rep, chosen = metrics[split], metrics["chosen"]
    row = lambda m: (f"Accuracy {m['accuracy']:.4f}  Precision {m['precision']:.4f}  Recall {m['recall']:.4f}  "
                     f"F1 {m['f1']:.4f}  MCC {m['mcc']:.4f}")
    d, t = rep["default"]["f1"], rep["tuned"]["f1"]
    gain = f"{100 * (t - d) / d:+.2f}%" if d > 0 else f"{t - d:+.4f} F1"
    curves = ("AUC {:.4f}  AP {:.4f}  EER {:.4f}".format(rep["auc"], rep["ap"], rep["eer"])
              if rep.get("auc") is not None else "AUC undefined (single class)")
    return "\n".join([f"FINAL EVALUATION ({split} split)",
                      f"  threshold 0.5:    {row(rep['default'])}",
                      f"  threshold {chosen['threshold']:.4f} ({chosen['method']}, tuned on val): {row(rep['tuned'])}",
                      f"  improvement in F1: {gain}   {curves}"])
