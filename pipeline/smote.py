"""SMOTE on embeddings: balance the train split's embeddings with imbalanced-learn, refit the head.

The backbone stays as trained; the one-logit head is refitted as a logistic regression on the
SMOTE-balanced embeddings. The new head is kept only when the tuned val F1 does not drop.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def embeddings(embed, loader, device, amp_dtype, d):
    """(rows, D) embeddings and labels of everything `loader` yields, all ranks' rows on every rank."""
    from .embcache import extract
    _, f, lab = extract(embed, loader, device, amp_dtype, d)
    return f, lab


def _val_scores(f: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(f @ w + b)))


def _summary(labels, scores) -> dict:
    """F1 at the F1-tuned threshold (at 0.5 where tuning is undefined) and AUC."""
    from .metrics import val_summary
    v = val_summary(labels, scores)
    return {"f1_tuned": v["f1"] if v["f1_tuned"] is None else v["f1_tuned"], "auc": v["auc"]}


def smote_refit_head(model, cfg, device, amp_dtype, d, eval_loader, val_loader, log=print, cached: bool = False) -> dict:
    """`cached`: the loaders yield cached embeddings (--cache-embeddings), which SMOTE then balances as they are."""
    from imblearn.over_sampling import SMOTE
    from sklearn.linear_model import LogisticRegression
    from .models import embed_and_head
    embed, head = embed_and_head(model)
    if cached:
        embed = nn.Identity()
    model.eval()
    log("SMOTE: extracting train and val embeddings")
    xtr, ytr = embeddings(embed, eval_loader("train"), device, amp_dtype, d)
    xva, yva = embeddings(embed, val_loader, device, amp_dtype, d)
    counts = np.bincount(ytr, minlength=2)
    if counts.min() < 2:
        log("SMOTE: skipped, the minority class has fewer than 2 train samples")
        return {"applied": False, "reason": "minority class has fewer than 2 samples"}
    w0 = head.weight.detach().cpu().double().numpy().ravel()
    b0 = float(head.bias.detach().cpu().double())
    before = _summary(yva, _val_scores(xva.astype(np.float64), w0, b0))
    sm = SMOTE(k_neighbors=int(min(5, counts.min() - 1)), random_state=cfg.seed)
    xs, ys = sm.fit_resample(xtr, ytr)
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(xs, ys)
    w1, b1 = clf.coef_.ravel().astype(np.float64), float(clf.intercept_[0])
    after = _summary(yva, _val_scores(xva.astype(np.float64), w1, b1))
    kept = (after["f1_tuned"] or 0) >= (before["f1_tuned"] or 0)
    if kept:
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(w1, dtype=head.weight.dtype).view_as(head.weight))
            head.bias.fill_(b1)
    fmt = lambda m: f"F1 {m['f1_tuned']:.4f}, AUC {m['auc'] if m['auc'] is None else round(m['auc'], 4)}"
    log(f"SMOTE: train {counts[0]} real / {counts[1]} fake -> {int((ys == 0).sum())} / {int((ys == 1).sum())}; "
        f"val before {fmt(before)}, after {fmt(after)}; {'kept the refitted head' if kept else 'kept the original head'}")
    return {"applied": True, "kept": kept, "val_before": before, "val_after": after,
            "train_before": {"real": int(counts[0]), "fake": int(counts[1])},
            "train_after": {"real": int((ys == 0).sum()), "fake": int((ys == 1).sum())}}
