"""`training_results.txt`: the run's setup, dataset statistics, thresholds and per-split results as plain text.

The small formatters here (setup items, warnings, per-attack rows) are shared with the HTML page so that both
say the same thing.
"""
from __future__ import annotations

from pathlib import Path

from ..formats import SPLITS
from ..thresholds import DEFAULT_THRESHOLD, threshold_record
from .counts import format_ratio, split_counts, totals

SUMMARY_FILE = "training_results.txt"
METRIC_ROWS = (("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced Accuracy"), ("precision", "Precision"),
               ("recall", "Recall"), ("f1", "F1"), ("specificity", "Specificity"), ("mcc", "MCC"))
RULE = "=" * 80
THIN = "-" * 80


def _describe(value) -> str:
    """Free-form config values (str, dict, list) as one readable line."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_describe(v) if not isinstance(v, dict) else '(' + _describe(v) + ')'}"
                         for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    return str(value)


def evaluation(config: dict) -> dict:
    """config.json's "evaluation" record (`dfp evaluate`'s folders: checkpoint, shards, set, split); {} for a run."""
    rec = config.get("evaluation") if isinstance(config, dict) else None
    return rec if isinstance(rec, dict) else {}


def report_title(run_name: str, config: dict) -> str:
    """"training report: RUN", or for an evaluation "evaluation of RUN/best_model.pth on SET (split test)"."""
    rec = evaluation(config)
    if not rec:
        return f"training report: {run_name}"
    ckpt = Path(str(rec.get("checkpoint", "?")))
    return f"evaluation of {ckpt.parent.name}/{ckpt.name} on {rec.get('set', '?')} (split {rec.get('split', '?')})"


def _evaluation_items(rec: dict, trained: dict) -> list[tuple[str, str]]:
    items = [("Checkpoint", str(rec.get("checkpoint"))), ("Shard set", f"{rec.get('set')} ({rec.get('shards')})"),
             ("Split", str(rec.get("split")))]
    if trained.get("shards"):
        items.append(("Trained on", str(trained["shards"])))
    return items + ([("Evaluated at", str(rec["time"]))] if rec.get("time") else [])


def setup_items(config: dict) -> list[tuple[str, str]]:
    """(label, value) pairs describing how the run was trained (and, for an evaluation, what was evaluated),
    from config.json."""
    if not isinstance(config, dict):
        return []
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    rec = evaluation(config)
    trained = config.get("training") if rec and isinstance(config.get("training"), dict) else config
    items = _evaluation_items(rec, trained) if rec else []
    modality = dataset.get("modality", trained.get("modality"))
    if modality:
        items.append(("Modality", str(modality)))
    for key, label in (("model", "Model"), ("loss", "Loss"), ("strategy", "Strategy"), ("sampler", "Sampler"),
                       ("epochs", "Epochs"), ("batch_size", "Batch size"), ("lr", "Learning rate"),
                       ("device", "Device"), ("threshold_method", "Threshold method (training)")):
        if trained.get(key) not in (None, "", {}):
            items.append((label, _describe(trained[key])))
    return items + _choice_items(trained.get("choices"))


def _choice_items(choices) -> list[tuple[str, str]]:
    """Who chose the automatic settings (config.json "choices"): the user's, the strategy's, the CPU recipe's."""
    if not isinstance(choices, dict):
        return []
    groups: dict[str, list[str]] = {}
    for name, c in choices.items():
        if isinstance(c, dict) and "by" in c:
            groups.setdefault(str(c["by"]), []).append(f"{name} {_describe(c.get('value'))}")
    labels = (("user", "Set by you"), ("strategy", "Chosen by --strategy auto"), ("cpu_recipe", "CPU recipe"))
    return [(label, ", ".join(groups[by])) for by, label in labels if by in groups]


def fmt(x, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def improvement(default_f1: float, tuned_f1: float) -> str:
    delta = tuned_f1 - default_f1
    if default_f1 > 0:
        return f"{delta / default_f1 * 100:+.2f}% ({default_f1:.4f} -> {tuned_f1:.4f}, {delta:+.4f} F1)"
    return f"{delta:+.4f} F1 ({default_f1:.4f} -> {tuned_f1:.4f}; relative change undefined)"


# Fewer samples of a class in val than this and the tuned threshold rests on a handful of scores: one sample moves
# that class's recall (or specificity) by more than 3 points, and the binomial standard error of a rate near 0.5
# exceeds 0.09 (a 95% interval wider than +-0.18), so the threshold often does not carry over to test.
MIN_VAL_PER_CLASS = 30
# the metrics besides F1 whose change at the tuned threshold is shown (F1 counts the fake class only)
CHANGE_ROWS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("mcc", "MCC"))


def small_val_note(counts: dict[str, int]) -> str | None:
    """A warning when val holds fewer than MIN_VAL_PER_CLASS samples of a class; None otherwise."""
    few = [c for c, n in counts.items() if n < MIN_VAL_PER_CLASS]
    if not few:
        return None
    held = " and ".join(f"{n} {c}" for c, n in counts.items())
    which = "of each class" if len(few) == len(counts) else " and ".join(few)
    return (f"val holds {held} samples, fewer than {MIN_VAL_PER_CLASS} {which}: the threshold tuned on "
            "it rests on a few scores and may not carry over to test; give val more samples (a larger val share in "
            "dfp shard --split, or more data)")


def val_counts(rep) -> dict[str, int] | None:
    """A split's class counts from its confusion matrix at 0.5 ([[TN, FP], [FN, TP]]); None where it has none."""
    try:
        (tn, fp), (fn, tp) = rep["default"]["confusion_matrix"]
        return {"real": int(tn) + int(fp), "fake": int(fn) + int(tp)}
    except (KeyError, TypeError, ValueError):
        return None


def threshold_changes(default: dict, tuned: dict) -> tuple[str, str | None]:
    """The change from 0.5 to the tuned threshold of accuracy, balanced accuracy and MCC (shown beside F1's), and a
    warning naming those that fall (None when none does)."""
    parts, fell = [], []
    for key, label in CHANGE_ROWS:
        if isinstance(default.get(key), (int, float)) and isinstance(tuned.get(key), (int, float)):
            a, b = default[key], tuned[key]
            parts.append(f"{label} {b - a:+.4f} ({a:.4f} -> {b:.4f})")
            if b < a - 1e-12:
                fell.append(label)
    warning = None
    if fell:
        warning = (f"at the tuned threshold {', '.join(fell)} fall{'s' if len(fell) == 1 else ''}"
                   + (" while F1 rises (F1 counts the fake class only)" if tuned["f1"] > default["f1"] else "")
                   + ": check that the trade suits the use, or tune with another --threshold-method")
    return ", ".join(parts), warning


def report_notes(metrics: dict) -> list[str]:
    """Warnings recoverable from metrics.json alone (single-class splits, untuned threshold)."""
    from ..metrics import fallback_warning  # scikit-learn: importing pipeline.report stays cheap

    notes = []
    if not isinstance(metrics, dict) or not metrics:
        return ["metrics.json is missing: no results to report"]
    chosen = metrics.get("chosen") or {}
    method = chosen.get("method")
    thresholds = metrics.get("thresholds") or {}
    val = metrics.get("val") or {}
    fallback = fallback_warning(chosen)
    if fallback:
        notes.append(fallback)
    if val and val.get("auc") is None:
        # an evaluation applies the checkpoint's threshold: nothing was tuned on its val
        tuned_here = not fallback and "evaluation" not in metrics
        notes.append("val split has a single class: AUC/AP/EER are null" + (
            f"; threshold tuning is undefined and the default threshold {DEFAULT_THRESHOLD} is used" if tuned_here
            else ""))
    elif not fallback and method and method != "default" and method not in thresholds:
        # a metrics.json without fallback keys names the requested method even where 0.5 was applied
        notes.append(f"threshold method {method} is undefined on val; the default threshold "
                     f"{DEFAULT_THRESHOLD} is used")
    for name in ("train", "test"):
        rep = metrics.get(name)
        if isinstance(rep, dict) and rep.get("auc") is None:
            notes.append(f"{name} split has a single class: AUC/AP/EER are null")
    small = None if "evaluation" in metrics else small_val_note(val_counts(val) or {})  # nothing tuned there
    if small:
        notes.append(small)
    return notes


def attack_rows(by_attack) -> list[tuple[str, dict]]:
    """The well-formed entries of a split's "by_attack", in their saved order (metrics.json may be hand-edited)."""
    if not isinstance(by_attack, dict):
        return []
    return [(str(name), r) for name, r in by_attack.items() if isinstance(r, dict) and "n" in r]


def attack_table_lines(by_attack, threshold: float) -> list[str]:
    """The per-attack table as text (training_results.txt and `dfp evaluate`'s console); [] without one."""
    rows = attack_rows(by_attack)
    if not rows:
        return []
    w = max(len("Attack"), *(len(name) for name, _ in rows))
    lines = [f"Per attack (all reals against each attack's fakes; recall at threshold {threshold:.4f}):",
             f"   {'Attack':<{w}}  {'n':>7}  {'AUC':>7}  {'EER':>7}  {'Recall':>7}"]
    lines += [f"   {name:<{w}}  {r['n']:>7}  {fmt(r.get('auc')):>7}  {fmt(r.get('eer')):>7}  {fmt(r.get('recall')):>7}"
              for name, r in rows]
    return lines


def field_lines(rep) -> list[str]:
    """ASVspoof 5's costs, Cllr and ECE of a split block, and its video level where it has one; [] for a block
    written before they existed."""
    if not isinstance(rep, dict) or "min_dcf" not in rep:
        return []
    dcf = rep.get("dcf") if isinstance(rep.get("dcf"), dict) else {}
    llr = rep.get("llr") if isinstance(rep.get("llr"), dict) else {}
    costs = ", ".join(f"{k} {dcf[k]:g}" for k in ("p_spoof", "c_miss", "c_fa") if isinstance(dcf.get(k), (int, float)))
    source = f"calibrated on {llr['fitted_on']}" if llr.get("fitted_on") else "logit(score)"
    lines = [f"minDCF {fmt(rep.get('min_dcf'))}  actDCF {fmt(rep.get('act_dcf'))}  Cllr {fmt(rep.get('cllr'))} bits  "
             f"ECE {fmt(rep.get('ece'))} ({rep.get('ece_bins')} bins)   [ASVspoof 5 costs {costs}; LLR {source}]"]
    video = rep.get("video")
    if isinstance(video, dict):
        lines.append(f"Video level ({video.get('n')} videos, mean frame score): AUC {fmt(video.get('auc'))}  "
                     f"AP {fmt(video.get('ap'))}  EER {fmt(video.get('eer'))}  minDCF {fmt(video.get('min_dcf'))}")
    return lines


def _dataset_lines(counts: dict[str, dict[str, int]]) -> list[str]:
    lines = ["DATASET STATISTICS", THIN]
    if not counts:
        return lines + ["   (no dataset statistics recorded)", ""]
    lines.append(f"{'Split':<8}{'Real':>10}{'Fake':>10}{'Total':>10}   Imbalance Ratio")
    for name, c in counts.items():
        lines.append(f"{name:<8}{c['real']:>10}{c['fake']:>10}{c['real'] + c['fake']:>10}   "
                     f"{format_ratio(c['real'], c['fake'])}")
    real, fake = totals(counts)
    return lines + ["", f"   Total: {real + fake}", f"   Real: {real}", f"   Fake: {fake}",
                    f"   Imbalance Ratio: {format_ratio(real, fake)}", ""]


def audit_rows(config: dict, most: int = 8) -> tuple[dict, list[tuple[str, float, str]]]:
    """The train-split shortcut audit dfp train recorded (config.json `shortcut_audit`) and its `most` highest
    (feature, AUC, remedy if flagged) rows; ({}, []) when none was recorded."""
    a = config.get("shortcut_audit") if isinstance(config, dict) else None
    if not isinstance(a, dict) or not isinstance(a.get("features"), dict):
        return {}, []
    feats = sorted(a["features"].items(), key=lambda kv: (-kv[1], kv[0]))[:most]
    flagged, remedies = set(a.get("flagged") or []), a.get("remedies") or {}
    return a, [(n, auc, remedies.get(n, "") if n in flagged else "") for n, auc in feats]


def shortcut_audit_lines(config: dict) -> list[str]:
    a, rows = audit_rows(config)
    if not rows:
        return []
    n = a.get("n") or {}
    lines = ["SHORTCUT AUDIT (train split, metadata; dfp audit SHARDS for the full table)", THIN,
             f"   {n.get('real', '?')} real, {n.get('fake', '?')} fake audited; combined AUC {a.get('combined_auc')}; "
             f"flagged: {', '.join(a.get('flagged') or []) or 'none'}"]
    lines += [f"   {name:<24}{auc:>6.2f}" + (f"   FLAG: {fix}" if fix else "") for name, auc, fix in rows]
    if a.get("source_flagged"):
        lines.append(f"   source files before packing flagged: {', '.join(a['source_flagged'])}")
    return lines + [""]


def threshold_heading(metrics: dict) -> tuple[str, str]:
    """(title, where the threshold comes from) for the threshold section; an evaluation applies the checkpoint's."""
    if isinstance(metrics.get("evaluation"), dict):
        return "Threshold", "stored in the checkpoint"
    return "Thresholds", "tuned on val"


def threshold_provenance(chosen: dict, history) -> list[str]:
    """Where the applied threshold was tuned when `dfp tune` set it, and the thresholds it replaced."""
    lines = []
    if chosen.get("tuned_on"):
        lines.append(f"Tuned by dfp tune on the val split of {chosen['tuned_on']} at {chosen.get('tuned_at', '?')}")
    for old in history if isinstance(history, list) else []:
        value = threshold_record(old).get("threshold") if isinstance(old, dict) else None
        if isinstance(value, (int, float)):
            lines.append(f"Previous: method {old.get('method')}, threshold {value:.6f} "
                         f"(replaced {old.get('replaced_at', '?')})")
    return lines


def _threshold_lines(metrics: dict) -> list[str]:
    chosen = metrics.get("chosen") or {}
    if not chosen:
        return []
    title, source = threshold_heading(metrics)
    lines = [f"{title.upper()} ({source}; a sample is fake when score >= threshold)", THIN]
    for k, v in (metrics.get("thresholds") or {}).items():
        lines.append(f"   {k}: {v:.6f}" + ("   <- chosen" if k == chosen.get("method") else ""))
    lines.append(f"   Chosen: method {chosen.get('method')}, threshold {chosen.get('threshold', 0.5):.6f}")
    if chosen.get("fallback_reason"):
        lines.append(f"   Requested: method {chosen.get('requested')}, not applied: {chosen['fallback_reason']}")
    lines += [f"   {x}" for x in threshold_provenance(chosen, metrics.get("threshold_history"))]
    return lines + [""]


def _split_lines(name: str, rep: dict, chosen: dict, source: str) -> list[str]:
    d, t = rep["default"], rep["tuned"]
    method = chosen.get("method", "?")
    lines = [f"{name.upper()} RESULTS", THIN]
    for title, m in ((f"Results (threshold={d['threshold']:.4g}):", d),
                     (f"Results (threshold={t['threshold']:.4f}, {source}, method {method}):", t)):
        lines.append(title)
        lines += [f"   {label}: {m[key]:.4f}" for key, label in METRIC_ROWS]
        lines.append(f"   Confusion matrix [[TN, FP], [FN, TP]]: {m['confusion_matrix']}")
        lines.append("")
    lines.append(f"Improvement (F1, tuned vs 0.5): {improvement(d['f1'], t['f1'])}")
    others, fell = threshold_changes(d, t)
    lines += [f"Change beside it (tuned vs 0.5): {others}"] + ([f"Warning: {fell}"] if fell else [])
    lines.append(f"AUC: {fmt(rep.get('auc'))}   AP: {fmt(rep.get('ap'))}   EER: {fmt(rep.get('eer'))}")
    lines += field_lines(rep)
    lines.append("")
    table = attack_table_lines(rep.get("by_attack"), t["threshold"])
    return lines + (table + [""] if table else [])


def _chosen_label(chosen: dict) -> str:
    if chosen.get("requested"):
        return f"default; {chosen['requested']} is undefined on val"
    if chosen.get("method") in ("default", "fixed"):  # not tuned: 0.5, or given by the user
        return str(chosen["method"])
    return f"{chosen.get('method', '?')}, tuned on val"


def console_summary(title: str, rep: dict, chosen: dict) -> str:
    """The short block `dfp train` and `dfp evaluate` print for one split: metrics at 0.5 and at the chosen
    threshold, the F1 change, AUC/AP/EER and the per-attack table."""
    row = lambda m: (f"Accuracy {m['accuracy']:.4f}  Bal.Acc {m['balanced_accuracy']:.4f}  Precision "
                     f"{m['precision']:.4f}  Recall {m['recall']:.4f}  F1 {m['f1']:.4f}  MCC {m['mcc']:.4f}")
    d, t = rep["default"], rep["tuned"]
    curves = (f"AUC {rep['auc']:.4f}  AP {rep['ap']:.4f}  EER {rep['eer']:.4f}" if rep.get("auc") is not None
              else "AUC/AP/EER undefined (single class)")
    others, fell = threshold_changes(d, t)
    lines = [title, f"  threshold 0.5:    {row(d)}",
             f"  threshold {t['threshold']:.4f} ({_chosen_label(chosen)}): {row(t)}",
             f"  change in F1: {improvement(d['f1'], t['f1'])}; {others}",
             *([f"  warning: {fell}"] if fell else []), f"  {curves}"]
    lines += [f"  {x}" for x in field_lines(rep)]
    return "\n".join(lines + [f"  {x}" for x in attack_table_lines(rep.get("by_attack"), t["threshold"])])


def summary_text(metrics: dict, config: dict) -> str:
    """The text of `training_results.txt`, also printed on the console at the end of training."""
    metrics = metrics if isinstance(metrics, dict) else {}
    config = config if isinstance(config, dict) else {}
    kind = "EVALUATION" if evaluation(config) else "TRAINING"
    lines = [RULE, f"DEEPFAKE DETECTION - {kind} RESULTS", RULE]
    if evaluation(config):
        title = report_title("", config)
        lines += [title[0].upper() + title[1:], ""]
    lines += [f"{label}: {value}" for label, value in setup_items(config)]
    lines.append("")
    lines += _dataset_lines(split_counts(config, metrics))
    lines += shortcut_audit_lines(config)
    chosen = metrics.get("chosen") or {}
    lines += _threshold_lines(metrics)
    for name in SPLITS:
        rep = metrics.get(name)
        if isinstance(rep, dict) and "default" in rep and "tuned" in rep:
            lines += _split_lines(name, rep, chosen, threshold_heading(metrics)[1])
    notes = report_notes(metrics)
    if notes:
        lines += ["WARNINGS", THIN] + [f"   - {n}" for n in notes] + [""]
    lines.append(RULE)
    return "\n".join(lines) + "\n"
