"""One imbalance ratio and one minority rule: `dfp stats`, the run report and the loader's minority augmentation
read the same counts the same way, ties and empty classes included."""
import math

import numpy as np
import pytest

from pipeline.augment import STRONG_SHARE
from pipeline.loaders import LoaderOptions, make_loader
from pipeline.loaders.memory import MemoryIndex
from pipeline.report.counts import format_ratio, short_ratio
from pipeline.stats import format_stats, imbalance_ratio, majority_class, minority_class, stats_from_splits

# (real, fake) -> ratio, minority, `dfp stats` words, report words
CASES = [
    ((8, 2), 4.0, "fake", "4.00:1 (real:fake)", "4.00:1 (real majority)"),
    ((2, 8), 4.0, "real", "4.00:1 (fake:real)", "4.00:1 (fake majority)"),
    ((5, 5), 1.0, None, "1.00:1 (balanced)", "1.00:1 (balanced)"),
    ((3, 0), math.inf, "fake", "inf (real:fake)", "single class (real only)"),
    ((0, 3), math.inf, "real", "inf (fake:real)", "single class (fake only)"),
    ((0, 0), math.nan, None, "n/a (no samples)", "empty"),
]


def _stats(real, fake):
    return stats_from_splits({"train": {"real": real, "fake": fake}}, "image", "test")


@pytest.mark.parametrize("counts, ratio, minority, stats_words, report_words", CASES)
def test_ratio_and_minority_rules(counts, ratio, minority, stats_words, report_words):
    c = dict(zip(("real", "fake"), counts))
    r = imbalance_ratio(c)
    assert r == ratio or (math.isnan(r) and math.isnan(ratio))
    assert minority_class(c) == minority
    assert majority_class(c) == (None if minority is None else ({"real", "fake"} - {minority}).pop())
    st = _stats(*counts)
    assert (st["minority"], st["majority"]) == (minority_class(c), majority_class(c))
    assert f"Imbalance ratio: {stats_words}, severity" in format_stats(st)
    assert format_ratio(*counts) == report_words
    assert short_ratio(*counts) == (f"{ratio:.2f}:1" if math.isfinite(ratio) else report_words)


def _loader(real, fake, **kw):
    index = MemoryIndex([([b""], {}) for _ in range(real + fake)], "image", ["jpg"])
    index.labels = np.array([0] * real + [1] * fake, np.int8)
    opts = LoaderOptions(batch_size=2, workers=0, image_size=32, **kw)
    return make_loader(None, "train", "torch", "cpu", opts, index=index)


@pytest.mark.parametrize("counts", [(8, 2), (2, 8), (5, 5), (3, 0), (0, 3)])
def test_the_loader_augments_for_the_minority_stats_names(counts):
    """A balanced split has no minority in either place; an empty class is the minority in both."""
    has_minority = _stats(*counts)["minority"] is not None
    assert _loader(*counts).cfg.strong_share == (STRONG_SHARE if has_minority else 0.0)
    assert _loader(*counts, minority=("fake",)).cfg.strong_share == STRONG_SHARE  # a given minority always applies
