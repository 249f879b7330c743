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
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import atomic, checkpoint
from .config import TrainConfig
from .engine import (Dist, all_gather_objects, amp_setup, gather_predictions, init_distributed, predict,
                     reduce_sum, train_one_epoch, weights_checksum)
from .errors import InputError
from .formats import CLASSES, read_manifest
from .loaders import LoaderOptions, make_loader, resolve_backend, resolve_device
from .resume import Position, check_same_shards, resume_log, shards_digest
from .scoring import Scored, require_finite, score_split, write_outputs
from .stats import RECOMMENDED, imbalance_ratio, severity

HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_f1", "val_auc", "lr", "samples_per_s",
                  "val_f1_tuned", "data_wait", "nonfinite_steps", "skipped_samples", "rescued_batches"]


# ---------------------------------------------------------------- strategy
# The techniques --strategy auto decides. A flag the user set is applied as given; auto fills in only the rest.
STRATEGY_FIELDS = ("loss", "sampling", "minority_augment", "smote")
# On a CPU the GPU defaults (efficientnet_b0 at 224 px) train at a few samples/s: without --model and --image-size,
# image and video runs take the settings `dfp demo` learns with in minutes (README: Commands, CPU recipe).
CPU_RECIPE = {"image": {"model": "resnet18", "image_size": 64, "lr": 1e-3},
              "video": {"frame_backbone": "resnet18", "image_size": 64, "lr": 1e-3}}
# what decides a setting, as config.json's "choices" records it
BY_USER, BY_STRATEGY, BY_DEFAULT, BY_CPU_RECIPE = "user", "strategy", "default", "cpu_recipe"


def given_fields(cfg: TrainConfig, given: set[str] | None) -> set[str]:
    """The fields the user set; from Python (`given=None`), every field that differs from the dataclass default."""
    if given is not None:
        return set(given)
    return {k for k, f in TrainConfig.__dataclass_fields__.items() if getattr(cfg, k) != f.default}


def decide_strategy(cfg: TrainConfig, train_counts: dict[str, int],
                    given: set[str] = frozenset()) -> tuple[TrainConfig, dict]:
    """--strategy auto: the seed's table, from the train split's imbalance ratio, for each technique not in `given`
    (--class-weights counts as setting the sampling); --strategy manual: the flags and their defaults."""
    if cfg.strategy not in ("auto", "manual"):
        raise InputError(f"--strategy {cfg.strategy!r}: choose auto or manual")
    ratio = imbalance_ratio(train_counts)
    sev = severity(ratio)
    user = {k for k in STRATEGY_FIELDS if k in given} | ({"sampling"} if "class_weights" in given else set())
    if cfg.strategy == "auto":
        table = {"loss": "focal", "sampling": "natural" if sev == "mild" else "inverse",
                 "minority_augment": sev != "mild", "smote": sev == "severe"}
        cfg = replace(cfg, **{k: v for k, v in table.items() if k not in user})
    sampling = cfg.class_weights or cfg.sampling
    unset = BY_STRATEGY if cfg.strategy == "auto" else BY_DEFAULT
    choices = {k: {"value": sampling if k == "sampling" else getattr(cfg, k), "by": BY_USER if k in user else unset}
               for k in STRATEGY_FIELDS}
    decision = {"mode": cfg.strategy, "imbalance_ratio": None if math.isinf(ratio) else round(ratio, 4),
                "severity": sev, "recommended": RECOMMENDED[sev], "loss": cfg.loss, "sampling": sampling,
                "minority_augment": cfg.minority_augment, "smote": cfg.smote, "threshold_tuning": cfg.threshold_method,
                "choices": choices}
    return cfg, decision


def decide_recipe(cfg: TrainConfig, modality: str, device_type: str, given: set[str]) -> tuple[TrainConfig, dict]:
    """Model, input size and learning rate: the user's; else, on a CPU when neither --model nor --image-size was set
    (nor --weights, whose file fixes the architecture, nor for video --frame-backbone), the CPU recipe; else the
    defaults. Returns the config and who chose each."""
    recipe = CPU_RECIPE.get(modality, {})
    apply = device_type == "cpu" and bool(recipe) and not ({"model", "image_size", "weights", "frame_backbone"} & given)
    fields = ("model", "image_size", "lr") + (("frame_backbone",) if modality == "video" else ())
    by = {k: BY_USER if k in given else (BY_CPU_RECIPE if apply and k in recipe else BY_DEFAULT) for k in fields}
    return replace(cfg, **{k: v for k, v in recipe.items() if by[k] == BY_CPU_RECIPE}), by


def recipe_record(choices: dict) -> dict | None:
    """config.json's "recipe": the settings the CPU recipe chose, or None where it did not apply."""
    settings = {k: c["value"] for k, c in choices.items() if c["by"] == BY_CPU_RECIPE}
    return {"name": "cpu", "settings": settings, "why": "a CPU run without --model and --image-size"} if settings \
        else None


def describe_choices(decision: dict) -> str:
    """The console's strategy line: each technique with who chose it."""
    c = decision["choices"]
    tag = lambda k: {BY_USER: "you", BY_STRATEGY: "auto"}.get(c[k]["by"], c[k]["by"])
    onoff = lambda k: "on" if c[k]["value"] else "off"
    return (f"strategy {decision['mode']}: loss {c['loss']['value']} ({tag('loss')}), sampling "
            f"{c['sampling']['value']} ({tag('sampling')}), minority augmentation {onoff('minority_augment')} "
            f"({tag('minority_augment')}), SMOTE {onoff('smote')} ({tag('smote')})")


def _lr_lambda(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return f


def _write_history(path: Path, rows: list[dict]) -> None:
    with atomic.replacing(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _normalisation(cfg: TrainConfig) -> dict:
    """mean, std and resize interpolation of the model's backbone (timm: its pretrained configuration)."""
    from .backbones import audio_input, input_arch, input_config
    pre = input_config(input_arch(cfg.model, cfg.frame_backbone))
    return {"mean": tuple(pre["mean"]), "std": tuple(pre["std"]), "interpolation": pre["interpolation"],
            "audio_input": audio_input(cfg.model)}


def _preprocess(cfg: TrainConfig, manifest: dict) -> dict:
    from .shards import storage_controls
    norm = _normalisation(cfg)
    return {"image_size": cfg.image_size, "audio_seconds": cfg.audio_seconds,
            "sample_rate": manifest.get("sample_rate"), "frames": manifest.get("frames"),
            "max_side": manifest["params"].get("max_side"), "mean": list(norm["mean"]), "std": list(norm["std"]),
            "interpolation": norm["interpolation"], "audio_input": norm["audio_input"],
            "faces": manifest["params"].get("face_step"), **storage_controls(manifest["params"])}


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


def run_training(cfg: TrainConfig, log=print, given: set[str] | None = None, overwrite: bool = False) -> Path:
    """`given`: the options set on the command line; on --resume they are applied or refused (see resume.py).
    `overwrite`: a run already in `cfg.out` is moved aside (to RUN.old-TIME) instead of refused."""
    from .validate import probe
    probe(cfg.freeze_backbone, cfg.unfreeze_last, cfg.cache_embeddings, cfg.cache_views)
    device, d = _setup_device(cfg.device)
    with _run_dir(cfg, d, overwrite, log):
        return _run(cfg, device, d, log, given)


@contextmanager
def _run_dir(cfg: TrainConfig, d: Dist, overwrite: bool, log):
    """The run directory, locked for the whole run by rank 0 (the rank that writes); every rank learns whether
    it got it, so a refused run ends on all ranks alike instead of leaving the others at a collective."""
    from . import rundir
    held, err = None, None
    if d.main:
        try:
            held = rundir.claim(Path(cfg.resume or cfg.out), bool(cfg.resume), overwrite, log, _local(cfg.shards))
        except Exception as e:
            err = e
    refused = all_gather_objects(None if err is None else str(err), d)[0] if d.enabled else err
    if refused is not None:
        if d.enabled:
            import torch.distributed as dist
            dist.destroy_process_group()
        raise err if err is not None else InputError(refused)
    try:
        yield
    except BaseException:
        if held is not None:
            if not cfg.resume:
                rundir.discard_unstarted(Path(cfg.out))
            held.release(failed=True)  # a run that failed before writing anything leaves no empty folder
        raise
    if held is not None:
        held.release()


def _run(cfg: TrainConfig, device, d: Dist, log, given: set[str] | None) -> Path:
    say = log if d.main else (lambda *a, **k: None)
    given = given_fields(cfg, given)
    writer = _tensorboard_writer() if (cfg.tensorboard and d.main) else None  # fails before the run folder exists
    run, pos, config_record = _start(cfg, device, d, given, say)
    tb = writer(str(run.out / "tb")) if writer else None
    best_state = _train_epochs(run, pos, tb, say)
    if d.enabled:
        sums = all_gather_objects(weights_checksum(run.model), d)
        config_record["distributed"] = {"world_size": d.world_size, "weights_identical": len(set(sums)) == 1}
        say(f"ranks: {d.world_size}, final weights identical on all ranks: {len(set(sums)) == 1}")
    if tb:
        tb.close()
    if best_state is None:  # resumed after the last improvement: the best weights are on disk
        best_state = checkpoint.load(run.out / "best_model.pth", map_location="cpu")
    finish_run(run, best_state, config_record, say)
    _say_storage(run.cfg.shards, say)
    _teardown(run, d)
    return run.out


def _start(cfg: TrainConfig, device, d: Dist, given: set[str], say) -> tuple[_Run, Position, dict]:
    """Everything before the first step: the resumed checkpoint merged in, the decisions made and said, the run
    built (and restored), config.json written; returns the run, where it starts and config.json's record."""
    ckpt, changed = None, {}
    if cfg.resume:
        from .resume import merge_config
        ckpt = checkpoint.load(Path(cfg.resume) / "last.pth")
        cfg, changed = merge_config(ckpt["config"], cfg, given, TrainConfig)
    manifest = read_manifest(cfg.shards)
    digest = shards_digest(manifest)
    if ckpt is not None:
        check_same_shards(ckpt, digest, cfg.shards)
    cfg, decision, train_counts = _decide(cfg, manifest, set(changed) if ckpt else given, device.type, ckpt)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    say(f"device: {device}{f' x{d.world_size} ranks' if d.enabled else ''}, backend: {cfg.backend}, model: {cfg.model}, "
        f"modality: {manifest['modality']}")
    _say_decisions(cfg, decision, train_counts, manifest, say)
    run = _build(cfg, manifest, decision, train_counts, device, d, ckpt, say)
    say(f"precision: {run.amp_dtype or 'fp32'}{' + GradScaler' if run.scaler else ''}; "
        f"{run.steps_per_epoch} steps/epoch/rank")
    pos = _restore(run, ckpt, changed, say) if ckpt else Position(world_size=d.world_size, batch_size=cfg.batch_size)
    run.base_state["shards_digest"] = digest  # what a resume compares its shards with
    return run, pos, _write_config(run, decision, manifest, digest, ckpt, changed, say)


def _write_config(run: _Run, decision: dict, manifest: dict, digest: str, ckpt: dict | None, changed: dict,
                  say) -> dict:
    """config.json at the start of the run (rank 0 writes it); returns its record, which the run's end completes."""
    record = _config_record(run.cfg, decision, manifest, run)
    record["dataset"]["shards_digest"] = digest
    if run.d.main:  # the metadata shortcut audit of the train split, bounded in time (pipeline/audit)
        from .audit import train_audit
        record["shortcut_audit"] = train_audit(run.cfg.shards, say, seed=run.cfg.seed)
    if ckpt is not None:  # carried in every later checkpoint, so the next resume extends it
        record["resumed"] = run.base_state["resumed"] = resume_log(ckpt, changed)
    if run.d.main:
        run.out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(run.out / "config.json", record, default=str)
    return record


def _train_epochs(run: _Run, pos: Position, tb, say) -> dict | None:
    """Epochs from `pos` to the last or to early stopping; returns the best epoch's state when this process saw
    one (None when a resumed run did not improve: its best weights are on disk)."""
    cfg, best_state = run.cfg, None
    while pos.epoch < cfg.epochs:
        row = _fit_epoch(run, pos)
        row = _validate(run, pos, row, say)
        improved = pos.bad_epochs == 0
        if improved:  # every rank decides alike (gathered predictions), so every rank keeps the same copy
            best_state = _best_state(run, pos)
        pos.epoch, pos.batch, pos.totals = pos.epoch + 1, 0, {}
        if run.d.main:
            _save_epoch(run, pos, row, best_state if improved else None, tb, say)
        if cfg.patience and pos.bad_epochs >= cfg.patience:
            say(f"early stopping: val F1 did not improve for {cfg.patience} epochs")
            break
    return best_state


# ---------------------------------------------------------------- steps of a run
@dataclass
class _Run:
    """What the steps of a run share: set up once by `_build`."""
    cfg: TrainConfig
    device: torch.device
    d: Dist
    out: Path
    modality: str
    model: torch.nn.Module
    net: torch.nn.Module  # the model, wrapped for DDP / compiled
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    train_loader: object
    val_loader: object
    eval_loader: object
    base_state: dict
    scorer: torch.nn.Module  # what scores the loaders' batches: the model, or its head over cached embeddings
    notes: dict  # config.json's "freeze" and "embedding_cache"

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader.sampler)


def _say_decisions(cfg: TrainConfig, decision: dict, train_counts: dict, manifest: dict, say) -> None:
    """The console lines on what the run was set to: strategy (and who chose each part), CPU recipe, small val."""
    say(f"train: real {train_counts['real']}, fake {train_counts['fake']}; imbalance {decision['imbalance_ratio']}:1 "
        f"({decision['severity']}); {describe_choices(decision)}")
    recipe = recipe_record(decision["choices"])
    if recipe:
        say("CPU recipe (a CPU run without --model and --image-size): "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in recipe["settings"].items())
            + "; the GPU default, efficientnet_b0 at 224 px, trains many times slower on a CPU; set --model or "
              "--image-size to choose")
    from .report.text import small_val_note
    limit = cfg.max_samples_per_class or 10**18
    note = small_val_note({c: min(manifest["splits"]["val"].get(c, 0), limit) for c in CLASSES})
    if note:
        say(f"warning: {note}")


def _setup_device(name: str) -> tuple[torch.device, Dist]:
    device = resolve_device(name)
    d = init_distributed(device.type)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    return device, d


def _decide(cfg: TrainConfig, manifest: dict, given: set[str], device_type: str, saved: dict | None = None):
    """Strategy and recipe (decide_strategy, decide_recipe); backend and model resolved to names.
    `saved`: a resumed run's last.pth, whose config is already decided: it is kept, with its record of who chose
    what (a checkpoint without one was decided by the table alone, as the table decides again here)."""
    modality = manifest["modality"]
    train_counts = _check_splits(manifest, cfg.shards, cfg.max_samples_per_class)
    if saved is None:
        cfg, decision = decide_strategy(cfg, train_counts, given)
        cfg, by = decide_recipe(cfg, modality, device_type, given)
    else:
        recorded = saved.get("choices") or {}
        keep = {*STRATEGY_FIELDS, "class_weights"} if recorded else set()
        cfg, decision = decide_strategy(cfg, train_counts, keep)
        by = {k: BY_USER if k in given else c["by"] for k, c in recorded.items() if k not in STRATEGY_FIELDS}
        decision["choices"].update({k: c for k, c in recorded.items() if k in STRATEGY_FIELDS})
    from .errors import ModelError
    from .backbones import DEFAULT_MODEL, MODELS, SSL_SAMPLE_RATE, input_arch, input_config, is_ssl, takes
    model_name = cfg.model or DEFAULT_MODEL[modality]
    if not takes(model_name, modality):
        raise ModelError(f"--model {model_name} does not take {modality} input; choose one of {', '.join(MODELS[modality])}"
                         + (" or timm:NAME" if modality == "image" else ""))
    if is_ssl(model_name) and (manifest.get("sample_rate") or SSL_SAMPLE_RATE) != SSL_SAMPLE_RATE:
        raise ModelError(f"--model {model_name} takes {SSL_SAMPLE_RATE} Hz audio but {cfg.shards} holds "
                         f"{manifest['sample_rate']} Hz; rebuild the shards with dfp shard --sample-rate {SSL_SAMPLE_RATE}")
    cfg = replace(cfg, model=model_name, backend=resolve_backend(cfg.backend))
    size = input_config(input_arch(cfg.model, cfg.frame_backbone))["image_size"]
    if size and saved is None and "image_size" not in given:  # a timm model's own size, unless --image-size says so
        cfg = replace(cfg, image_size=size)
    decision["choices"].update({k: {"value": getattr(cfg, k), "by": b} for k, b in by.items()})
    return cfg, decision, train_counts


def _cache_options(cfg: TrainConfig) -> dict:
    from .shardcache import parse_size
    try:
        limit = parse_size(cfg.cache_limit)
    except (ValueError, IndexError):
        raise InputError(f"--cache-limit {cfg.cache_limit!r}: give a size such as 20G, 500M or 4096") from None
    return {"cache_dir": cfg.cache_dir, "cache_limit": limit}


def _build(cfg: TrainConfig, manifest: dict, decision: dict, train_counts: dict, device, d: Dist,
           ckpt: dict | None = None, say=print) -> _Run:
    modality = manifest["modality"]
    sampling = decision["sampling"]
    if isinstance(sampling, str) and "=" in sampling:
        from .sampling import parse_class_weights
        sampling = parse_class_weights(sampling)
    common = dict(batch_size=cfg.batch_size, seed=cfg.seed, image_size=cfg.image_size, audio_seconds=cfg.audio_seconds,
                  workers=cfg.workers, max_samples_per_class=cfg.max_samples_per_class, **_normalisation(cfg),
                  **_cache_options(cfg))
    train_options = LoaderOptions(train=True, sampling=sampling, epoch_len=cfg.epoch_len,
                                  minority_augment=cfg.minority_augment, **common)
    eval_loader = lambda split: make_loader(cfg.shards, split, cfg.backend, device, LoaderOptions(train=False, **common),
                                            d.rank, d.world_size, manifest)
    from . import freeze
    from .losses import make_loss
    from .models import build_model, model_config
    model = build_model(cfg.model, modality, cfg.pretrained, cfg.weights, cfg.frame_backbone,
                        image_size=cfg.image_size).to(device)
    if ckpt is not None:  # the run's own weights before anything is computed from them (the embedding cache)
        model.load_state_dict(ckpt["model"])
    notes = {"freeze": freeze.apply(model, cfg.freeze_backbone, cfg.unfreeze_last)}
    if notes["freeze"]:
        f = notes["freeze"]
        say(f"backbone: {f['backbone']}; {f['trainable_parameters']:,} trainable parameters, "
            f"{f['frozen_parameters']:,} frozen")
    if device.type == "cuda" and modality != "audio":
        model = model.to(memory_format=torch.channels_last)
    amp_dtype, scaler = amp_setup(device, cfg.amp)
    scorer = model
    if cfg.cache_embeddings:
        train_loader, eval_loader, notes["embedding_cache"] = _cached_loaders(
            cfg, model, manifest, train_options, eval_loader, device, amp_dtype, d, say)
        from .embcache import HeadNet
        scorer = HeadNet(model.head)
    else:
        train_loader = make_loader(cfg.shards, "train", cfg.backend, device, train_options, d.rank, d.world_size,
                                   manifest)
    optimizer = torch.optim.AdamW(freeze.trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(
        cfg.epochs * steps, max(1, int(cfg.warmup_epochs * steps))))
    net = scorer
    if d.enabled:
        net = torch.nn.parallel.DistributedDataParallel(scorer, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    # "choices" travels in every checkpoint: a resumed run keeps the record of who chose what
    base_state = {"config": asdict(cfg), "modality": modality, "classes": list(CLASSES), "preprocess": _preprocess(cfg, manifest),
                  "choices": decision["choices"], "model_config": model_config(model)}
    return _Run(cfg, device, d, Path(cfg.out), modality, model, net,
                make_loss(cfg.loss, train_counts, cfg.focal_alpha, cfg.focal_gamma).to(device), optimizer, scheduler,
                amp_dtype, scaler, train_loader, eval_loader("val"), eval_loader, base_state, scorer, notes)


def _cached_loaders(cfg, model, manifest, train_options, eval_loader, device, amp_dtype, d: Dist, say):
    """--cache-embeddings: (train loader, split -> eval loader) over RUN/embeddings, and its config.json record.
    The head trains on the plan the image loader would draw (same sampler, same per-class weights)."""
    from . import embcache
    from .sampling import EpochSampler
    real = {s: eval_loader(s) for s in embcache.SPLITS}
    views = make_loader(cfg.shards, "train", cfg.backend, device, replace(train_options, sampling="natural",
                        epoch_len=None), d.rank, d.world_size, manifest) if cfg.cache_views else None
    norm = _normalisation(cfg)
    preprocess = {"image_size": cfg.image_size, "audio_seconds": cfg.audio_seconds, **norm}
    data, record = embcache.prepare(cfg, model, real, views, shards_digest(manifest), preprocess,
                                    str(amp_dtype or "fp32"), device, amp_dtype, d, Path(cfg.out), say)
    labels = real["train"].index.labels
    sampler = EpochSampler(labels, train_options.sampling, train_options.epoch_len or len(labels), cfg.seed, d.rank,
                           d.world_size, cfg.batch_size)
    train, evals = embcache.loaders(data, real, sampler, cfg, device, d)
    return train, evals, record


def _restore(run: _Run, ckpt: dict, changed: dict, say) -> Position:
    """Weights, optimizer, precision and RNG state from last.pth; the schedule follows the (maybe changed) config."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    pos = Position.from_checkpoint(ckpt)
    saved_batch, old_w, old_b = pos.batch, pos.world_size, pos.batch_size
    again = pos.remap(run.d.world_size, run.cfg.batch_size)  # the same position when neither changed
    if saved_batch and (old_w, old_b) != (pos.world_size, pos.batch_size):
        say(f"resuming mid-epoch with {pos.world_size} rank(s) x batch {pos.batch_size} instead of "
            f"{old_w} x {old_b}: {again} sample(s) of epoch {pos.epoch + 1}'s plan are trained on again")
    _restore_schedule(run, ckpt, old_w * old_b / (pos.world_size * pos.batch_size))
    if ckpt.get("rng") is not None:  # dropout and stochastic depth draw from it
        torch.set_rng_state(ckpt["rng"])
    if ckpt.get("cuda_rng") is not None and run.device.type == "cuda":
        torch.cuda.set_rng_state(ckpt["cuda_rng"], run.device)
    for name, (old, new) in changed.items():
        say(f"resume: --{name.replace('_', '-')} {old} -> {new}")
    say(f"resuming {run.out} at epoch {pos.epoch + 1}/{run.cfg.epochs}, batch {pos.batch} "
        f"(best val F1 so far {pos.best_f1:.4f})")
    return pos


def _restore_schedule(run: _Run, ckpt: dict, step_scale: float) -> None:
    """The learning rate is a function of the step count; recomputing it with the current config applies a changed
    --lr, --epochs, --warmup-epochs or batch size and gives the saved rate back when nothing changed."""
    sched = run.scheduler
    sched.load_state_dict({**ckpt["scheduler"], "base_lrs": [run.cfg.lr] * len(run.optimizer.param_groups)})
    sched.last_epoch = int(round(sched.last_epoch * step_scale))
    for group, f in zip(run.optimizer.param_groups, sched.lr_lambdas):
        group["initial_lr"] = run.cfg.lr
        group["lr"] = run.cfg.lr * f(sched.last_epoch)
        group["weight_decay"] = run.cfg.weight_decay
    sched._last_lr = [g["lr"] for g in run.optimizer.param_groups]  # what get_last_lr() (history's lr) reads


def _fit_epoch(run: _Run, pos: Position) -> dict:
    """Train the rest of epoch `pos.epoch` from batch `pos.batch`; returns the epoch's summed statistics."""
    cfg, d = run.cfg, run.d
    ld = run.train_loader
    first = min(pos.batch, run.steps_per_epoch)
    ld.set_epoch(pos.epoch, first)
    skipped0, rescued0 = ld.skipped, ld.rescued_batches
    # the saved sums are those of all ranks: rank 0 carries them, so one reduction gives the epoch's totals
    carried = dict(pos.totals) if (pos.totals and d.main) else _zero_totals()
    keys_seen = [] if os.environ.get("DFP_RECORD_KEYS") == "1" else None
    loader_sums = lambda: {"skipped": ld.skipped - skipped0, "rescued": ld.rescued_batches - rescued0}

    def on_step(done: int, sums: dict) -> None:
        if cfg.save_every and (first + done) % cfg.save_every == 0 and first + done < run.steps_per_epoch:
            # every rank reaches this step (collective below); only rank 0 writes
            pos.batch, pos.totals = first + done, _reduced(_add(carried, {**sums, **loader_sums()}), d, run.device)
            if d.main:
                checkpoint.save(run.out / "last.pth", _state(run, pos))

    st = train_one_epoch(run.net, run.loss_fn, run.optimizer, run.scheduler, run.train_loader, run.device,
                         run.amp_dtype, run.scaler, clip=cfg.clip, desc=f"epoch {pos.epoch + 1}/{cfg.epochs}",
                         progress=cfg.progress and d.main, keys_out=keys_seen, on_step=on_step)
    if keys_seen is not None:
        Path(run.out / f"keys_rank{d.rank}_epoch{pos.epoch}.txt").write_text("\n".join(keys_seen))
    return _reduced(_add(carried, {**st, **loader_sums()}), d, run.device)


def _zero_totals() -> dict:
    return {"loss_sum": 0.0, "samples": 0, "seconds": 0.0, "data_wait": 0.0, "nonfinite_steps": 0, "skipped": 0,
            "rescued": 0}


def _add(a: dict, b: dict) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in _zero_totals()}


def _reduced(sums: dict, d: Dist, device) -> dict:
    keys = list(_zero_totals())
    return dict(zip(keys, reduce_sum([float(sums.get(k, 0)) for k in keys], d, device)))


def _validate(run: _Run, pos: Position, totals: dict, say) -> dict:
    """Score val, append the epoch's history row (returned), track the best tuned F1 in `pos`."""
    d = run.d
    skipped0 = run.val_loader.skipped
    keys, labels, scores, vloss = predict(run.net, run.val_loader, run.device, run.amp_dtype, run.loss_fn)
    vloss, vskipped = reduce_sum([vloss, run.val_loader.skipped - skipped0], d, run.device)
    keys, labels, scores = gather_predictions(keys, labels, scores, d)
    from .metrics import val_summary
    v = val_summary(labels, scores)
    n, secs = totals["samples"], totals["seconds"]
    row = {"epoch": pos.epoch + 1, "train_loss": round(totals["loss_sum"] / max(n, 1), 6),
           "val_loss": round(vloss / max(len(labels), 1), 6), "val_f1": round(v["f1"], 6),
           "val_auc": "" if v["auc"] is None else round(v["auc"], 6), "lr": f"{run.scheduler.get_last_lr()[0]:.3e}",
           "samples_per_s": round(n / max(secs / d.world_size, 1e-9), 2),
           "val_f1_tuned": "" if v["f1_tuned"] is None else round(v["f1_tuned"], 6),
           "data_wait": round(totals["data_wait"] / max(secs, 1e-9), 4), "nonfinite_steps": int(totals["nonfinite_steps"]),
           "skipped_samples": int(totals["skipped"] + vskipped), "rescued_batches": int(totals["rescued"])}
    pos.history.append(row)
    score = v["f1_tuned"] if v["f1_tuned"] is not None else v["f1"]
    improved = score > pos.best_f1
    pos.best_f1, pos.bad_epochs = (score, 0) if improved else (pos.best_f1, pos.bad_epochs + 1)
    auc = "n/a" if v["auc"] is None else f"{v['auc']:.4f}"
    skipped = f", skipped {row['skipped_samples']} unreadable sample(s)" if row["skipped_samples"] else ""
    say(f"Epoch {pos.epoch + 1}/{run.cfg.epochs}: Train Loss={row['train_loss']:.4f}, Val Loss={row['val_loss']:.4f}, "
        f"Val F1={v['f1']:.4f} (tuned {score:.4f}), Val AUC={auc}, {row['samples_per_s']:.0f} samples/s, "
        f"data wait {100 * row['data_wait']:.0f}%{skipped}")
    return row


def _state(run: _Run, pos: Position) -> dict:
    """last.pth: the one record of progress (position, history, partial sums) beside everything resume restores."""
    return {**run.base_state, "model": run.model.state_dict(), "epoch": pos.epoch - 1, "position": pos.record(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler else None, "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None}


def _best_state(run: _Run, pos: Position) -> dict:
    """best_model.pth (before the threshold is added): a CPU copy, since training goes on changing the weights."""
    return {**run.base_state, "model": {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()},
            "epoch": pos.epoch, "best_f1": pos.best_f1}


def _save_epoch(run: _Run, pos: Position, row: dict, best: dict | None, tb, say) -> None:
    """Epoch end on rank 0: best model, then last.pth (the record resume trusts), then history.csv from it."""
    if best is not None:
        checkpoint.save(run.out / "best_model.pth", best)
        say(f"Saved best model (val F1={pos.best_f1:.4f})")
    checkpoint.save(run.out / "last.pth", _state(run, pos))
    _write_history(run.out / "history.csv", pos.history)
    if tb:
        for k in ("train_loss", "val_loss", "val_f1", "samples_per_s"):
            tb.add_scalar(k, float(row[k]), row["epoch"])


def _config_record(cfg, decision, manifest, run: _Run) -> dict:
    """config.json: the resolved settings; "choices" says of each automatic setting whether the user, the strategy,
    the CPU recipe or the default chose it."""
    return {**asdict(cfg), "choices": decision["choices"], "recipe": recipe_record(decision["choices"]),
            "strategy_decision": {k: v for k, v in decision.items() if k != "choices"},
            "dataset": {"shards": _where(cfg.shards), "modality": manifest["modality"],
                        "splits": manifest["splits"]},
            "world_size": run.d.world_size, "precision": str(run.amp_dtype or "fp32"), "device": str(run.device),
            "device_requested": cfg.device, **{k: v for k, v in run.notes.items() if v}}


def _say_storage(shards: str, say) -> None:
    """Shards at a URL: how many transient storage failures the retries absorbed (rank 0's count, its loader workers included)."""
    from . import storage
    if storage.is_url(shards):
        say(f"storage: {storage.retried()} transient failure(s) absorbed by retries reading {shards}")


def _local(shards: str) -> Path | None:
    from . import storage
    return None if storage.is_url(shards) else Path(shards)


def _where(shards: str) -> str:
    from . import storage
    return str(shards) if storage.is_url(shards) else str(Path(shards).resolve())


def _teardown(run: _Run, d: Dist) -> None:
    """Free the DDP wrapper while its process group still exists, then destroy the group after a barrier.
    Letting the wrapper go at function exit destroyed gloo's group from the reducer's destructor, with the
    GIL held, while gloo's worker thread waited for the GIL to free a finished allgather: a hang at exit."""
    if not d.enabled:
        return
    import gc
    import torch.distributed as dist
    run.net = None
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def _tensorboard_writer():
    """torch's SummaryWriter class, tried once in a scratch folder: a missing or broken tensorboard fails the run
    before its folder exists, not after set-up."""
    import tempfile
    try:
        from torch.utils.tensorboard import SummaryWriter
        with tempfile.TemporaryDirectory() as tmp:
            w = SummaryWriter(tmp)
            w.add_scalar("check", 0.0, 0)
            w.close()
    except Exception as e:  # an old protobuf breaks the import with a TypeError, not an ImportError
        raise InputError(f"--tensorboard: tensorboard does not work here ({type(e).__name__}: {e}); it is a "
                         "dependency of dfp: reinstall with `make venv`, or leave --tensorboard out") from None
    return SummaryWriter


def finish_run(run: _Run, best_state: dict, config_record: dict, say=print) -> None:
    """Best weights -> optional SMOTE head -> val/test scores -> tuned threshold -> the run's files and report."""
    best = _best_weights(run, best_state, config_record, say)
    scored = _score_splits(run)
    if not run.d.main:
        return
    metrics = _run_metrics(run.cfg, scored, say)
    write_outputs(run.out, scored, metrics, config_record)
    _save_best(run.out, best, metrics)
    _report(run.cfg, run.out, metrics, say)


def _best_weights(run: _Run, best_state: dict, config_record: dict, say) -> dict:
    """The best epoch's weights into the model, its head refitted on SMOTE samples with --smote (recorded in
    `config_record`); returns the state best_model.pth is saved from."""
    best = dict(best_state)
    run.model.load_state_dict(best["model"])
    if run.cfg.smote:
        from .smote import smote_refit_head
        info = smote_refit_head(run.model, run.cfg, run.device, run.amp_dtype, run.d, run.eval_loader,
                                run.val_loader, log=say, cached=run.scorer is not run.model)
        best["model"] = run.model.state_dict()
        if info:
            config_record["smote"] = info
    return best


def _score_splits(run: _Run) -> dict[str, Scored]:
    """val and, when it holds samples, test, scored by the best weights and gathered on every rank (so NaN scores
    stop every rank alike)."""
    scored = {}
    for split in ("val", "test"):
        loader = run.val_loader if split == "val" else run.eval_loader(split)
        if len(loader.index) == 0:
            continue
        scored[split] = score_split(run.scorer, loader, run.device, run.amp_dtype, run.d,
                                    progress=run.cfg.progress and run.d.main, desc=split)
        require_finite(scored[split].scores, f"run {run.out}", f" on split {split}; lower --lr or use --amp off")
    return scored


def _run_metrics(cfg: TrainConfig, scored: dict[str, Scored], say) -> dict:
    """metrics.json of a run: each split at 0.5 and at the threshold tuned on val, and the samples lost per split
    (those that could not be decoded are not in the predictions); its warnings go to the console."""
    from .metrics import build_metrics
    from .report.text import small_val_note, val_counts
    val, test = scored["val"], scored.get("test")
    metrics, warnings = build_metrics((val.labels, val.scores), (test.labels, test.scores) if test else None,
                                      cfg.threshold_method, attacks={s: p.attacks() for s, p in scored.items()},
                                      groups={s: p.groups() for s, p in scored.items()})
    for w in [*warnings, small_val_note(val_counts(metrics["val"]) or {})]:
        if w:
            say(f"warning: {w}")
    metrics["skipped_samples"] = {s: p.skipped for s, p in scored.items()}
    metrics["rescued_batches"] = {s: p.rescued for s, p in scored.items()}
    return metrics


def _save_best(out: Path, best: dict, metrics: dict) -> None:
    """best_model.pth with the threshold chosen on val, the record metrics.json calls "chosen", and the LLR
    calibration fitted on val: `dfp evaluate` on other shards applies both."""
    best.pop("format", None)
    best["threshold"] = dict(metrics["chosen"])
    best["calibration"] = metrics["val"].get("llr")
    checkpoint.save(out / "best_model.pth", best)


def _report(cfg: TrainConfig, out: Path, metrics: dict, say) -> None:
    """training_results.txt and report.html (unless --no-report), then the console's closing block."""
    if cfg.report:
        from .report import render_report
        render_report(out)
    say("")
    say(final_summary(metrics))
    if cfg.report:
        say(f"summary: {out / 'training_results.txt'}")
        say(f"report:  {out / 'report.html'}")
    else:
        say(f"report:  not written (--no-report); `dfp report {out}` renders it from the saved files")
    chosen = metrics["chosen"]
    say(f"model:  {out / 'best_model.pth'} (threshold {chosen['threshold']:.4f}, {chosen['method']})")


def final_summary(metrics: dict) -> str:
    """The seed's closing block, short: the split that decides (test, else val) at 0.5 and tuned."""
    from .report import console_summary
    split = "test" if metrics.get("test") else "val"
    return console_summary(f"FINAL EVALUATION ({split} split)", metrics[split], metrics["chosen"])
