"""Losses for one-logit binary detectors: focal loss (torchvision), weighted BCE, plain BCE.

fake = 1 is the positive class. Every loss module takes ``logits`` of shape (B,) or (B, 1) and ``targets``
(any numeric dtype, 0/1) and returns a scalar mean over the batch. Losses are computed in float32 even when the
logits come out of autocast in float16/bfloat16.

Focal loss ``alpha`` follows torchvision's ``sigmoid_focal_loss``: a fake sample's loss is multiplied by ``alpha``,
a real sample's by ``1 - alpha``; ``alpha < 0`` disables this weighting. The seed's default, alpha=0.25 and
gamma=2 (RetinaNet's), down-weights the fake class. ``alpha="auto"`` (``--focal-alpha auto``) sets
``alpha = n_real / (n_real + n_fake)``, the share of the OTHER class, so each class's total weight is balanced:
with 90% real / 10% fake, alpha = 0.9 and fakes weigh 9x more than reals; with fakes the majority, alpha < 0.5.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from .formats import CLASSES
from .names import LOSSES


def _counts(counts: Sequence[int] | Mapping[str, int]) -> tuple[int, int]:
    if isinstance(counts, Mapping):
        counts = [counts.get(c, 0) for c in CLASSES]
    counts = list(counts)
    if len(counts) != 2 or any(int(c) < 0 for c in counts):
        raise ValueError(f"class counts must be two numbers >= 0 (real, fake), got {counts}")
    return int(counts[0]), int(counts[1])


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
               reduction: str = "mean") -> torch.Tensor:
    """``torchvision.ops.sigmoid_focal_loss`` with a default mean reduction; any alpha < 0 means 'no weighting'."""
    alpha = float(alpha)
    if alpha < 0:
        alpha = -1.0
    elif alpha > 1 or math.isnan(alpha):
        raise ValueError(f"focal alpha must be in [0, 1] (or < 0 to disable), got {alpha}")
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    return sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma, reduction=reduction)


def auto_alpha(counts: Sequence[int] | Mapping[str, int]) -> float:
    """``n_real / (n_real + n_fake)``: focal alpha (the fake class's weight) that favours the minority class."""
    n_real, n_fake = _counts(counts)
    if n_real + n_fake == 0:
        raise ValueError("--focal-alpha auto: the training split has no samples")
    return n_real / (n_real + n_fake)


def bce_pos_weight(counts: Sequence[int] | Mapping[str, int]) -> float:
    """``n_real / n_fake``: BCE weight of fake samples, so both classes weigh the same in total."""
    n_real, n_fake = _counts(counts)
    if n_real == 0 or n_fake == 0:
        raise ValueError(f"weighted_bce needs both classes in the training split, got real={n_real} fake={n_fake}")
    return n_real / n_fake


def _prepare(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() == 2 and logits.shape[1] == 1:
        logits = logits.squeeze(1)
    if logits.dim() != 1:
        raise ValueError(f"expected logits of shape (B,) or (B, 1), got {tuple(logits.shape)}")
    logits = logits.float()
    return logits, targets.reshape(logits.shape).to(logits.dtype)


class FocalLoss(nn.Module):
    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        alpha, gamma = float(alpha), float(gamma)
        if alpha > 1 or math.isnan(alpha):
            raise ValueError(f"focal alpha must be in [0, 1] (or < 0 to disable), got {alpha}")
        if gamma < 0 or not math.isfinite(gamma):
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.alpha, self.gamma = (alpha if alpha >= 0 else -1.0), gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _prepare(logits, targets)
        return focal_loss(logits, targets, self.alpha, self.gamma, "mean")

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, gamma={self.gamma:g}"


class BCELoss(nn.Module):
    """BCE with logits; ``pos_weight`` (a buffer, so it follows ``.to(device)``) multiplies the fake samples' loss."""

    def __init__(self, pos_weight: float | None = None):
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor(float(pos_weight)))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = _prepare(logits, targets)
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)

    def extra_repr(self) -> str:
        return "" if self.pos_weight is None else f"pos_weight={float(self.pos_weight):.4g}"


def resolve_alpha(alpha: float | str, counts: Sequence[int] | Mapping[str, int]) -> float:
    """``--focal-alpha`` value: a number, its text, or ``"auto"`` (``auto_alpha(counts)``)."""
    if isinstance(alpha, str):
        if alpha.strip().lower() == "auto":
            return auto_alpha(counts)
        try:
            alpha = float(alpha)
        except ValueError:
            raise ValueError(f"--focal-alpha must be a number in [0, 1], a negative number (off) or 'auto', got {alpha!r}") from None
    alpha = float(alpha)
    if alpha > 1 or math.isnan(alpha):
        raise ValueError(f"--focal-alpha must be in [0, 1] (or < 0 to disable), got {alpha}")
    return alpha


def make_loss(name: str, counts: Sequence[int] | Mapping[str, int], alpha: float | str = 0.25,
              gamma: float = 2.0) -> nn.Module:
    """``focal`` (``FocalLoss(alpha, gamma)``, alpha may be ``"auto"``), ``weighted_bce`` (pos_weight =
    n_real / n_fake) or ``bce``. counts: (n_real, n_fake) of the training split, or ``{"real": N, "fake": K}``."""
    if name == "focal":
        return FocalLoss(resolve_alpha(alpha, counts), gamma)
    if name == "weighted_bce":
        return BCELoss(bce_pos_weight(counts))
    if name == "bce":
        return BCELoss(None)
    raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
