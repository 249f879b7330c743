"""`dfp evaluate` and `dfp tune`: a saved model on a split of shards.

Evaluations live beside the run, one folder per (checkpoint, shard set, split): `RUN/eval/<set>-<split>/`
(`RUN/eval/<ckpt>-<set>-<split>/` for a checkpoint other than best_model.pth). Each folder's metrics.json
records what it evaluated ("evaluation": checkpoint, shards, set, split, time); a folder recording another
evaluation is never written over: the set's name then gets a short hash of its resolved path.
"""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import atomic, checkpoint
from .engine import amp_setup
from .errors import InputError
from .formats import SPLITS
from .loaders import LoaderOptions, make_loader, resolve_backend, resolve_device
from .scoring import Scored, require_finite, score_split, write_outputs

EVAL_DIR = "eval"


def eval_backend(ckpt: dict, backend: str = "auto") -> str:
    """auto: the backend the model was trained and tuned with, so its threshold meets the same eval transforms."""
    if backend == "auto":
        backend = ckpt["config"].get("backend", "auto")
    return resolve_backend(backend)


def eval_options(ckpt: dict, batch_size: int, workers: int = 2) -> LoaderOptions:
    pre = ckpt["preprocess"]
    norm = {k: tuple(pre[k]) if k != "interpolation" else pre[k] for k in ("mean", "std", "interpolation") if pre.get(k)}
    return LoaderOptions(batch_size=batch_size, train=False, image_size=pre["image_size"],
                         audio_seconds=pre["audio_seconds"], workers=workers,
                         audio_input=pre.get("audio_input") or "logmel", **norm)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _split_size(shards, split: str) -> int:
    from .formats import read_manifest
    return sum(read_manifest(shards)["splits"].get(split, {}).values())


def _predict_split(ckpt_path, shards, split, device, backend, batch_size, workers=2) -> tuple[dict, Scored]:
    device = resolve_device(device)
    ckpt = checkpoint.load(ckpt_path, map_location=device, need=checkpoint.MODEL)
    from .formats import read_manifest
    manifest = read_manifest(shards)
    if manifest["modality"] != ckpt["modality"]:
        raise InputError(f"{ckpt_path} is a {ckpt['modality']} model but {shards} holds {manifest['modality']} shards")
    if split not in manifest["splits"] or sum(manifest["splits"][split].values()) == 0:
        raise InputError(f"{shards}: split '{split}' is empty")
    model = checkpoint.model_from_checkpoint(ckpt, device, ckpt_path)
    loader = make_loader(shards, split, eval_backend(ckpt, backend), device, eval_options(ckpt, batch_size, workers),
                         manifest=manifest)
    amp_dtype, _ = amp_setup(device, "auto")
    scored = score_split(model, loader, device, amp_dtype, desc=split)
    require_finite(scored.scores, str(ckpt_path), f" on {shards} split {split}")
    return ckpt, scored


def evaluation_record(ckpt_path, shards, split: str) -> dict:
    """What an evaluation folder holds, by resolved paths: the key that tells one evaluation from another."""
    from .storage import base_name, resolved
    return {"checkpoint": str(Path(ckpt_path).resolve()), "shards": resolved(shards), "set": base_name(shards),
            "split": split, "time": _now()}


def _resolved(shards) -> str:
    from .storage import resolved
    return resolved(shards)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "shards"


def _recorded(folder: Path) -> dict | None:
    """The "evaluation" record of a folder's metrics.json; None when there is none."""
    try:
        rec = json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("evaluation")
    except (OSError, ValueError, AttributeError):
        return None
    return rec if isinstance(rec, dict) else None


def _same_evaluation(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("checkpoint", "shards", "split"))


def _free_for(folder: Path, record: dict) -> bool:
    """Absent, empty, or holding this very evaluation (which a re-run may replace)."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return True
    rec = _recorded(folder)
    return rec is not None and _same_evaluation(rec, record)


def shards_digest(shards: str) -> str:
    """The first 8 hex digits of sha256(resolved shard path): tells apart sets with one folder name."""
    return hashlib.sha256(shards.encode("utf-8")).hexdigest()[:8]


def eval_folder(record: dict, root: Path | None = None, taken: frozenset = frozenset()) -> Path:
    """ROOT/[CKPT-]SET-SPLIT (ROOT defaults to RUN/eval), or with SET-HASH when that folder holds another
    evaluation (another set with the same folder name, say) or is in `taken` (planned for another set of the
    same command); HASH is `shards_digest`, so the same set lands in the same folder again."""
    ckpt = Path(record["checkpoint"])
    prefix = "" if ckpt.name == "best_model.pth" else f"{_safe_name(ckpt.stem)}-"
    name = _safe_name(record["set"])
    digest = shards_digest(record["shards"])
    root = Path(root) if root is not None else ckpt.parent / EVAL_DIR
    candidates = [root / f"{prefix}{name}-{record['split']}", root / f"{prefix}{name}-{digest}-{record['split']}"]
    for folder in candidates:
        if folder not in taken and _free_for(folder, record):
            return folder
    raise InputError(f"{candidates[0]} and {candidates[1]} hold other evaluations; give an output folder with --out")


def _eval_config(ckpt: dict, record: dict, counts: dict) -> dict:
    """config.json of an evaluation: what was evaluated, the evaluated split's counts, and the training config
    under its own key (its `shards` is the training set, not the evaluated one)."""
    return {"evaluation": record,
            "dataset": {"shards": record["shards"], "set": record["set"], "modality": ckpt["modality"],
                        "splits": {record["split"]: counts}},
            "training": ckpt["config"]}


def evaluate(ckpt_path, shards, split="test", out=None, device="auto", backend="auto", batch_size=64, log=print) -> dict:
    """One split of `shards` scored at the checkpoint's threshold into its folder (see the module docstring):
    predictions, metrics.json, config.json and the report; returns the metrics."""
    from .formats import read_manifest
    from .report import render_report
    ckpt, scored = _predict_split(ckpt_path, shards, split, device, backend, batch_size)
    chosen = checkpoint.stored_threshold(ckpt)
    block = _split_block(ckpt, split, scored, chosen["threshold"], log)
    record = evaluation_record(ckpt_path, shards, split)
    out = Path(out) if out else eval_folder(record)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {split: block, "thresholds": {chosen["method"]: chosen["threshold"]}, "chosen": chosen,
               "evaluation": record}
    counts = read_manifest(shards)["splits"][split]
    write_outputs(out, {split: scored}, metrics, _eval_config(ckpt, record, counts))
    render_report(out)
    _log_results(log, f"{record['set']} {split}", scored.labels, block, chosen)
    log(f"written: {out}")
    return metrics


def _split_block(ckpt: dict, split: str, scored: Scored, threshold: float, log) -> dict:
    """The split's metrics at 0.5 and at `threshold`, with the checkpoint's LLR calibration; video-level ones
    where its groups can be videos (a warning where they cannot)."""
    from .calibration import Calibration
    from .metrics import split_report, usable_groups
    warnings: list[str] = []
    groups = usable_groups(split, scored.labels, scored.groups(), warnings)
    block = split_report(scored.labels, scored.scores, 0.5, threshold, scored.attacks(), groups,
                         Calibration.from_dict(ckpt.get("calibration")))
    for w in warnings:
        log(f"warning: {w}")
    return block


def _log_results(log, title: str, labels: np.ndarray, rep: dict, chosen: dict) -> None:
    from .report import console_summary
    log(console_summary(f"{title}: {len(labels)} samples ({int((labels == 0).sum())} real, {int(labels.sum())} fake)",
                        rep, chosen))


def tune(ckpt_path, shards, method="f1", device="auto", backend="auto", batch_size=64, log=print) -> float:
    """Tune on the val split of `shards`, store it in the checkpoint (the one it replaces goes to the
    checkpoint's threshold_history), bring the run's and its evaluations' metrics.json and reports to it, and
    print the test split's metrics at it."""
    from .metrics import metric_dict
    from .thresholds import ThresholdUndefined, all_thresholds, canonical_method, parse_method, tune as tune_threshold
    try:
        parse_method(method)
    except ValueError as e:
        raise InputError(f"--method: {e}") from None
    fresh = {"val": _predict_split(ckpt_path, shards, "val", device, backend, batch_size)[1]}
    labels, scores = fresh["val"].labels, fresh["val"].scores
    try:
        t = tune_threshold(labels, scores, method)
        table = all_thresholds(labels, scores, [method] if ":" in method else [])
    except ThresholdUndefined as e:
        raise InputError(f"cannot tune on the val split of {shards}: {e}") from None
    for name, value in table.items():
        m = metric_dict(labels, scores, value)
        log(f"  {name:>16s}: threshold {value:.4f}  P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}")
    if _split_size(shards, "test"):
        fresh["test"] = _predict_split(ckpt_path, shards, "test", device, backend, batch_size)[1]
    method = canonical_method(method)
    ckpt = checkpoint.set_threshold(ckpt_path, method, t)
    log(f"stored threshold {t:.4f} ({method}) in {ckpt_path}")
    chosen = {"method": method, "threshold": float(t), "tuned_on": _resolved(shards), "tuned_at": _now()}
    for folder in _folders_of(ckpt_path):
        same_set = _shards_of(folder) == chosen["tuned_on"]
        _retarget(folder, chosen, {**table, method: float(t)}, checkpoint.threshold_history(ckpt),
                  fresh if same_set else {}, log)
    from .crosstable import refresh_tables
    refresh_tables(ckpt_path, Path(ckpt_path).resolve().parent / EVAL_DIR, log)
    if "test" in fresh:
        _log_test(_resolved(shards).rsplit("/", 1)[-1], fresh["test"], chosen, log)
    return t


def _log_test(name: str, scored: Scored, chosen: dict, log) -> None:
    from .metrics import split_report
    rep = split_report(scored.labels, scored.scores, 0.5, chosen["threshold"], scored.attacks())
    _log_results(log, f"{name} test at the new threshold", scored.labels, rep, chosen)


def _folders_of(ckpt_path) -> list[Path]:
    """The folders whose metrics follow this checkpoint's threshold: its run (for best_model.pth, which the run's
    metrics.json describes) and every RUN/eval/* folder that evaluated it."""
    ckpt = Path(ckpt_path).resolve()
    run = ckpt.parent
    folders = [run] if ckpt.name == "best_model.pth" and (run / "metrics.json").is_file() else []
    evals = sorted(p for p in (run / EVAL_DIR).glob("*") if p.is_dir()) if (run / EVAL_DIR).is_dir() else []
    return folders + [p for p in evals if (_recorded(p) or {}).get("checkpoint") == str(ckpt)]


def _shards_of(folder: Path) -> str | None:
    """The resolved shard set a folder's predictions came from: an evaluation's record, or the run's config."""
    rec = _recorded(folder)
    if rec is not None:
        return rec.get("shards")
    try:
        return _resolved(json.loads((folder / "config.json").read_text(encoding="utf-8"))["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _retarget(folder: Path, chosen: dict, tuned: dict, history: list, fresh: dict, log) -> None:
    """metrics.json's tuned results (and per-attack recall) at the new threshold, then the report. `fresh` holds
    tune's own predictions of the set this folder was made from: they replace the saved ones, since a score
    recomputed at another batch size may differ in its last bits and fall on the other side of a threshold
    that is one of them. A folder whose metrics or predictions cannot be read is left as it is, with a warning."""
    from .report import render_report
    try:
        metrics = _retargeted_metrics(folder, chosen["threshold"], fresh)
    except (OSError, ValueError, KeyError, AttributeError) as e:
        log(f"warning: {folder / 'metrics.json'} still shows the old threshold: {type(e).__name__}: {e}")
        return
    if "evaluation" in metrics:
        thresholds = {chosen["method"]: chosen["threshold"]}
    else:  # the run's table of val thresholds; tuned again when tune read the run's own val
        thresholds = {**(metrics.get("thresholds") or {}), **(tuned if "val" in fresh else {}),
                      chosen["method"]: chosen["threshold"]}
    metrics.update(thresholds=thresholds, chosen=chosen, threshold_history=history)
    atomic.write_json(folder / "metrics.json", metrics, default=str)
    render_report(folder)
    log(f"updated: {folder / 'metrics.json'} and its report")


def _retargeted_metrics(folder: Path, threshold: float, fresh: dict) -> dict:
    """metrics.json with every split block's tuned metrics and by_attack at `threshold`, from the predictions."""
    from .metrics import split_report
    from .predictions import read_prediction_table, write_predictions
    from .thresholds import DEFAULT_THRESHOLD
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    for split in SPLITS:
        if not isinstance(metrics.get(split), dict):
            continue
        path = folder / f"predictions_{split}.csv"
        if split in fresh:
            f = fresh[split]
            write_predictions(path, f.keys, f.labels, f.scores, f.meta)
        table = read_prediction_table(path)
        metrics[split] = {**metrics[split], **split_report(table.labels, table.scores, DEFAULT_THRESHOLD,
                                                            threshold, table.attacks)}
    return metrics
