"""ASVspoof 5's detection costs and Cllr (pure numpy), with dfp's labels and scores.

ASVspoof's target class is bona fide (dfp's real, label 0): its "miss" is a real called fake and its "false
alarm" a fake called real. The cost of a decision rule, normalised so that the better of the two trivial rules
(accept all, reject all) costs 1:

    DCF = (C_miss * (1 - P_spoof) * P_miss + C_fa * P_spoof * P_fa) / min(C_miss * (1 - P_spoof), C_fa * P_spoof)

minDCF is the lowest DCF over the achievable thresholds on the scores (threshold-free, like EER; a randomised
threshold between two of them never does better, the cost being linear). actDCF is the DCF of the Bayes decision
on a log-likelihood ratio: bona fide when LLR >= -ln(beta), beta = C_miss (1 - P_spoof) / (C_fa P_spoof).
Cllr = (mean log2(1 + e^-LLR) over bona fide + mean log2(1 + e^LLR) over spoofs) / 2, in bits.

The LLR here is ASVspoof's, in favour of bona fide; `calibration` maps dfp's scores (the probability of fake)
onto it. Each function wants both classes; `pipeline.metrics` gives None for a single-class split.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .thresholds import candidates, check_inputs, operating_points


class CostModel(NamedTuple):
    """The ASVspoof 5 evaluation plan's defaults."""
    p_spoof: float = 0.05
    c_miss: float = 1.0
    c_fa: float = 10.0

    def as_dict(self) -> dict:
        return {k: float(v) for k, v in self._asdict().items()}

    @property
    def beta(self) -> float:
        return self.c_miss * (1 - self.p_spoof) / (self.c_fa * self.p_spoof)

    @property
    def bayes_threshold(self) -> float:
        """On the bona fide LLR: bona fide at or above it."""
        return -math.log(self.beta)

    @property
    def spoof_prior(self) -> float:
        """The effective prior of a spoof: the one prior that gives the same Bayes decisions at equal costs."""
        return 1.0 / (1.0 + self.beta)

    def normalised(self, p_miss, p_fa):
        bona = self.c_miss * (1 - self.p_spoof)
        spoof = self.c_fa * self.p_spoof
        return (bona * p_miss + spoof * p_fa) / min(bona, spoof)


DEFAULT_COSTS = CostModel()


def parse_costs(text: str) -> CostModel:
    """'0.05,1,10' -> CostModel(0.05, 1.0, 10.0); ValueError naming what is wrong."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3:
        raise ValueError(f"{text!r}: expected P_SPOOF,C_MISS,C_FA, e.g. 0.05,1,10")
    try:
        p, miss, fa = (float(x) for x in parts)
    except ValueError:
        raise ValueError(f"{text!r}: expected three numbers P_SPOOF,C_MISS,C_FA, e.g. 0.05,1,10") from None
    if not 0.0 < p < 1.0:
        raise ValueError(f"{text!r}: P_SPOOF must be strictly between 0 and 1")
    if not (math.isfinite(miss) and math.isfinite(fa) and miss > 0 and fa > 0):
        raise ValueError(f"{text!r}: C_MISS and C_FA must be positive finite numbers")
    return CostModel(p, miss, fa)


def min_dcf(labels, scores, costs: CostModel = DEFAULT_COSTS) -> float:
    """The lowest normalised DCF over every achievable threshold on the scores (the probability of fake)."""
    fpr, fnr = operating_points(candidates(labels, scores))
    # a real called fake is ASVspoof's miss, a fake called real its false alarm
    return float(np.min(costs.normalised(fpr, fnr)))


def act_dcf(labels, llr, costs: CostModel = DEFAULT_COSTS) -> float:
    """The normalised DCF of the Bayes decision on the bona fide LLR (one per sample)."""
    y, x = check_inputs(labels, llr)
    bona, spoof = x[y == 0], x[y == 1]
    t = costs.bayes_threshold
    return float(costs.normalised(np.mean(bona < t), np.mean(spoof >= t)))


def cllr(labels, llr) -> float:
    """Cllr in bits of the bona fide LLR (one per sample)."""
    y, x = check_inputs(labels, llr)
    bona, spoof = x[y == 0], x[y == 1]
    # logaddexp(0, v) = log(1 + e^v) without overflow
    return float((np.mean(np.logaddexp(0.0, -bona)) + np.mean(np.logaddexp(0.0, spoof))) / (2 * math.log(2)))
