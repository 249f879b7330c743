"""From dfp's scores to log-likelihood ratios and calibrated probabilities (pure numpy), and the ECE.

A score is the probability of fake. Its logit, x = logit(score) with the score clipped to
[LOGIT_CLIP, 1 - LOGIT_CLIP] so that scores of exactly 0.0 and 1.0 stay finite, is mapped affinely onto the
log-likelihood ratio of fake over real, `scale * x + offset`; ASVspoof's LLR, in favour of bona fide, is its
negative. `Calibration.identity()` (scale 1, offset 0) reads the score itself as the posterior at equal priors.

`fit` finds scale and offset on val by prior-weighted logistic regression (Brummer's Cllr calibration): each
class weighted to the effective prior of the cost model, so the fitted LLR serves the DCF's operating point,
whatever val's class balance. A weak ridge towards the identity keeps the fit finite on separable or constant
scores. The calibrated probability of fake is sigmoid(LLR + logit(prior)), `prior` being val's share of fakes
(0.5 for the identity, which gives the score back).

ECE: equal-width bins of the calibrated probability over [0, 1]; the sum over bins of (bin share of samples)
* |share of fakes in the bin - mean probability in the bin|.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .dcf import DEFAULT_COSTS, CostModel
from .thresholds import check_inputs

LOGIT_CLIP = 1e-12  # logit(1 - 1e-12) = 27.6: a saturated score is a very confident one, not an infinite one
ECE_BINS = 15
RIDGE = 1e-6  # weak enough to leave a fit on overlapping classes unchanged (to ~1e-4 in scale)
NEWTON_STEPS = 100


def logit(scores) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


class Calibration(NamedTuple):
    scale: float = 1.0
    offset: float = 0.0
    prior: float = 0.5
    fitted_on: str | None = None  # "val", or None for logit(score) itself

    @classmethod
    def identity(cls) -> "Calibration":
        return cls()

    @classmethod
    def from_dict(cls, d) -> "Calibration":
        """The `llr` entry of a metrics.json split block back; the identity for a missing or foreign one."""
        if not isinstance(d, dict):
            return cls()
        try:
            cal = cls(float(d["scale"]), float(d["offset"]), float(d["prior"]), d.get("fitted_on"))
        except (KeyError, TypeError, ValueError):
            return cls()
        return cal if math.isfinite(cal.scale + cal.offset) and 0.0 < cal.prior < 1.0 else cls()

    def as_dict(self) -> dict:
        return {"fitted_on": self.fitted_on, "scale": float(self.scale), "offset": float(self.offset),
                "prior": float(self.prior)}

    def fake_llr(self, scores) -> np.ndarray:
        return self.scale * logit(scores) + self.offset

    def bonafide_llr(self, scores) -> np.ndarray:
        """ASVspoof's LLR: higher = more bona fide."""
        return -self.fake_llr(scores)

    def probability(self, scores) -> np.ndarray:
        """The calibrated probability of fake."""
        return sigmoid(self.fake_llr(scores) + math.log(self.prior / (1.0 - self.prior)))


def _loss_terms(theta, x, t, w, shift):
    z = t * (theta[0] * x + theta[1] + shift)  # t = +1 fake, -1 real
    loss = np.sum(w * np.logaddexp(0.0, -z)) + RIDGE / 2 * ((theta[0] - 1.0) ** 2 + theta[1] ** 2)
    return z, loss


def fit(labels, scores, costs: CostModel = DEFAULT_COSTS, fitted_on: str = "val") -> Calibration:
    """Scale and offset by prior-weighted logistic regression (Newton steps with backtracking; convex)."""
    y, s = check_inputs(labels, scores)
    n_fake = int(y.sum())
    if n_fake in (0, y.size):
        raise ValueError("calibration needs both classes")
    x = logit(s)
    t = np.where(y == 1, 1.0, -1.0)
    pi = costs.spoof_prior
    w = np.where(y == 1, pi / n_fake, (1.0 - pi) / (y.size - n_fake))
    shift = math.log(pi / (1.0 - pi))
    theta = np.array([1.0, 0.0])
    z, loss = _loss_terms(theta, x, t, w, shift)
    for _ in range(NEWTON_STEPS):
        g_z = -t * w * sigmoid(-z)  # d loss / d (a x + b)
        grad = np.array([np.sum(g_z * x), np.sum(g_z)]) + RIDGE * np.array([theta[0] - 1.0, theta[1]])
        h = w * sigmoid(z) * sigmoid(-z)
        hess = np.array([[np.sum(h * x * x), np.sum(h * x)], [np.sum(h * x), np.sum(h)]]) + RIDGE * np.eye(2)
        step = np.linalg.solve(hess, grad)
        for _ in range(30):  # backtracking: never accept a step that raises the loss
            cand = theta - step
            z_new, loss_new = _loss_terms(cand, x, t, w, shift)
            if loss_new <= loss:
                break
            step = step / 2
        else:
            break
        done = loss - loss_new <= 1e-15 * max(1.0, abs(loss))
        theta, z, loss = cand, z_new, loss_new
        if done:
            break
    return Calibration(float(theta[0]), float(theta[1]), n_fake / y.size, fitted_on)


def reliability(labels, probability, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width bin of [0, 1]: "count", "confidence" (mean probability), "frequency" (share of fakes);
    confidence and frequency are NaN in empty bins."""
    y, p = check_inputs(labels, probability)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(idx, weights=p, minlength=bins) / count
        frequency = np.bincount(idx, weights=y.astype(np.float64), minlength=bins) / count
    return {"count": count, "confidence": confidence, "frequency": frequency}


def ece(labels, probability, bins: int = ECE_BINS) -> float:
    r = reliability(labels, probability, bins)
    used = r["count"] > 0
    return float(np.sum(r["count"][used] * np.abs(r["frequency"][used] - r["confidence"][used])) / r["count"].sum())
