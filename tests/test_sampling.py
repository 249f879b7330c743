import math
import time

import numpy as np
import pytest

from pipeline.sampling import (EpochSampler, batches_per_rank, class_index, class_probabilities, epoch_plan,
                               eval_indices, natural_plan, parse_class_weights, rank_slice)

N_DRAWS = 200_000


def labels_90_10(n: int = 10_000) -> np.ndarray:
    lab = np.zeros(n, dtype=np.int8)
    lab[np.random.default_rng(7).choice(n, n // 10, replace=False)] = 1
    return lab


def assert_fraction(plan, labels, p_fake):
    frac = float((labels[plan] == 1).mean())
    sigma = math.sqrt(p_fake * (1 - p_fake) / len(plan))
    assert abs(frac - p_fake) <= 4 * sigma + 1e-12, (frac, p_fake, sigma)


# ------------------------------------------------------------------------------------------- class weights
def test_parse_class_weights():
    assert parse_class_weights("real=1,fake=3") == {"real": 1.0, "fake": 3.0}
    assert parse_class_weights(" real = 0.5 , fake=2 ") == {"real": 0.5, "fake": 2.0}
    for bad, msg in [("", "empty"), ("real", "no '='"), ("real=x,fake=1", "not a number"), ("=1", "no class name"),
                     ("real=-1,fake=1", ">= 0"), ("real=1,real=2", "twice"), ("real=1,,fake=2", "empty item"),
                     ("real=nan,fake=1", ">= 0")]:
        with pytest.raises(ValueError, match=msg):
            parse_class_weights(bad)


def test_class_probabilities_modes():
    counts = [900, 100]
    np.testing.assert_allclose(class_probabilities(counts, "inverse"), [0.5, 0.5])
    np.testing.assert_allclose(class_probabilities(counts, "natural"), [0.9, 0.1])
    np.testing.assert_allclose(class_probabilities(counts, "sqrt"), [30 / 40, 10 / 40])
    np.testing.assert_allclose(class_probabilities(counts, {"real": 1, "fake": 3}), [900 / 1200, 300 / 1200])
    np.testing.assert_allclose(class_probabilities(counts, "real=1,fake=9"), [0.5, 0.5])
    np.testing.assert_allclose(class_probabilities({"real": 900, "fake": 100}, "natural"), [0.9, 0.1])
    # empty classes get 0
    for mode in ("inverse", "natural", "sqrt", "real=1,fake=5"):
        np.testing.assert_allclose(class_probabilities([50, 0], mode), [1.0, 0.0])
    with pytest.raises(ValueError, match="unknown sampling mode"):
        class_probabilities(counts, "balanced")
    with pytest.raises(ValueError, match="unknown class 'fak'"):
        class_probabilities(counts, {"real": 1, "fak": 2})
    with pytest.raises(ValueError, match="no weight for class 'fake'"):
        class_probabilities(counts, {"real": 1})
    with pytest.raises(ValueError, match="no class can be drawn"):
        class_probabilities([0, 0], "inverse")
    with pytest.raises(ValueError, match="no class can be drawn"):
        class_probabilities([10, 0], {"real": 0, "fake": 1})


# ----------------------------------------------------------------------------------------------- plans
@pytest.mark.parametrize("mode,p_fake", [("inverse", 0.5), ("natural", 0.1), ("sqrt", 1 / (1 + 3)),
                                         ({"real": 1, "fake": 3}, 0.3 / 1.2)])
def test_plan_class_fractions(mode, p_fake):
    labels = labels_90_10()
    probs = class_probabilities(np.bincount(labels, minlength=2), mode)
    assert probs[1] == pytest.approx(p_fake)
    plan = epoch_plan(labels, probs, N_DRAWS, seed=0, epoch=3)
    assert plan.dtype == np.int32 and len(plan) == N_DRAWS
    assert plan.min() >= 0 and plan.max() < len(labels)
    assert_fraction(plan, labels, p_fake)


def test_plan_uniform_within_class():
    labels = labels_90_10(2_000)
    plan = epoch_plan(labels, [0.5, 0.5], N_DRAWS, seed=1, epoch=0)
    fakes = np.flatnonzero(labels == 1)
    hits = np.bincount(plan, minlength=len(labels))
    # every fake drawn ~ N/2/200 = 500 times; chi-square over the 200 fakes and over the 1800 reals
    for members, share in ((fakes, 0.5), (np.flatnonzero(labels == 0), 0.5)):
        expected = N_DRAWS * share / len(members)
        chi2 = float((((hits[members] - expected) ** 2) / expected).sum())
        dof = len(members) - 1
        assert abs(chi2 - dof) < 5 * math.sqrt(2 * dof), (chi2, dof)


def test_plan_seeding():
    labels = labels_90_10()
    probs = class_probabilities([9000, 1000], "inverse")
    a = epoch_plan(labels, probs, 5000, seed=0, epoch=1)
    np.testing.assert_array_equal(a, epoch_plan(labels, probs, 5000, seed=0, epoch=1))
    assert not np.array_equal(a, epoch_plan(labels, probs, 5000, seed=0, epoch=2))
    assert not np.array_equal(a, epoch_plan(labels, probs, 5000, seed=1, epoch=1))
    # a precomputed index gives the same plan
    np.testing.assert_array_equal(a, epoch_plan(labels, probs, 5000, 0, 1, index=class_index(labels)))


def test_plan_edge_cases():
    labels = np.array([0, 0, 0], dtype=np.int8)
    assert len(epoch_plan(labels, [1.0, 0.0], 0, 0, 0)) == 0
    plan = epoch_plan(labels, [1.0, 0.0], 10, 0, 0)
    assert set(plan.tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError, match="no samples"):
        epoch_plan(labels, [0.5, 0.5], 10, 0, 0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        class_index(np.array([0, 2, 1], dtype=np.int8))
    order, counts = class_index(np.array([1, 0, 1, 0, 0], dtype=np.int8))
    assert order.tolist() == [1, 3, 4, 0, 2] and counts.tolist() == [3, 2]


def test_natural_plan_is_permutation():
    p = natural_plan(1000, seed=3, epoch=0)
    assert sorted(p.tolist()) == list(range(1000))
    np.testing.assert_array_equal(p, natural_plan(1000, 3, 0))
    assert not np.array_equal(p, natural_plan(1000, 3, 1))
    np.testing.assert_array_equal(natural_plan(1000, 3, 0, epoch_len=100), p[:100])


# ------------------------------------------------------------------------------------------ rank slices
@pytest.mark.parametrize("plan_len", [1, 37, 96, 1000])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_slices_disjoint_equal_full_batches(plan_len, world):
    bs = 8
    plan = np.arange(plan_len, dtype=np.int32) * 10 + 5   # value -> position is (v - 5) / 10
    nb = batches_per_rank(plan_len, world, bs)
    total = nb * world * bs
    padded_positions = []
    for r in range(world):
        s = rank_slice(plan, r, world, bs)
        assert len(s) == nb * bs and len(s) % bs == 0
        # the padded positions this rank owns: r, r+W, ...
        pos = np.arange(r, total, world)
        np.testing.assert_array_equal(s, plan[pos % plan_len])
        padded_positions.append(set(pos.tolist()))
    for a in range(world):                   # disjoint as positions
        for b in range(a + 1, world):
            assert not padded_positions[a] & padded_positions[b]
    union = set().union(*padded_positions)
    assert union == set(range(total))        # together exactly the padded plan ...
    assert set(range(plan_len)) <= {p % plan_len for p in union}   # ... which covers the whole plan
    assert total - plan_len < world * bs     # padding is less than one global step


def test_rank_slice_resume():
    plan = np.random.default_rng(0).integers(0, 100, 1000).astype(np.int32)
    for world in (1, 2, 3):
        for r in range(world):
            full = rank_slice(plan, r, world, 16)
            for start in (0, 1, 5, len(full) // 16, len(full) // 16 + 3):
                rest = rank_slice(plan, r, world, 16, start_batch=start)
                done = full[:start * 16]
                np.testing.assert_array_equal(np.concatenate([done, rest]), full)


def test_rank_slice_empty_and_bad_args():
    assert len(rank_slice(np.array([], dtype=np.int32), 0, 2, 4)) == 0
    with pytest.raises(ValueError):
        rank_slice(np.arange(10), 2, 2, 4)
    with pytest.raises(ValueError):
        rank_slice(np.arange(10), 0, 1, 0)


@pytest.mark.parametrize("n", [0, 1, 7, 10])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_eval_indices_cover_once(n, world):
    parts = [eval_indices(n, r, world) for r in range(world)]
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(n))
    lens = [len(p) for p in parts]
    assert max(lens) - min(lens) <= 1


# ---------------------------------------------------------------------------------------------- sampler
def test_epoch_sampler_batches():
    labels = labels_90_10(1000)
    world, bs = 3, 16
    samplers = [EpochSampler(labels, "inverse", epoch_len=500, seed=5, rank=r, world_size=world, batch_size=bs)
                for r in range(world)]
    assert len(samplers[0]) == batches_per_rank(500, world, bs) == 11
    per_rank = [list(s.batches(epoch=2)) for s in samplers]
    assert all(len(b) == 11 and all(len(x) == bs for x in b) for b in per_rank)
    plan = epoch_plan(labels, samplers[0].probs, 500, 5, 2)
    for r in range(world):
        np.testing.assert_array_equal(np.concatenate(per_rank[r]), rank_slice(plan, r, world, bs))

    # starting mid-epoch gives the rest of the same epoch
    full = list(samplers[1].batches(7))
    np.testing.assert_array_equal(np.concatenate(list(samplers[1].batches(7, start_batch=4))), np.concatenate(full[4:]))


def test_epoch_sampler_natural_is_permutation():
    labels = labels_90_10(96)
    s = EpochSampler(labels, "natural", seed=1, batch_size=8)
    assert s.without_replacement
    got = np.concatenate(list(s.batches(0)))
    assert sorted(got.tolist()) == list(range(96))
    assert "natural" in s.describe() and "real" in s.describe()


@pytest.mark.slow
def test_plan_1e8_is_fast():
    n = 10 ** 8
    labels = np.zeros(n, dtype=np.int8)
    labels[::10] = 1
    t0 = time.perf_counter()
    index = class_index(labels)
    probs = class_probabilities(index[1], "inverse")
    plan = epoch_plan(labels, probs, n, seed=0, epoch=0, index=index)
    elapsed = time.perf_counter() - t0
    assert plan.dtype == np.int32 and len(plan) == n
    head = plan[:200_000]
    assert_fraction(head, labels, 0.5)
    assert elapsed < 10, f"planning 1e8 samples took {elapsed:.1f} s"
