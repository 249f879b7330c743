"""Benchmarks at toy scale: the report's structure and accounting, never a speed."""
import json

import numpy as np
import pytest

from factory import dfp_in_process, image_tree
from pipeline.bench import bench_all, format_table
from pipeline.shards import ShardParams, build_shards


@pytest.mark.slow
def test_bench_all_toy_scale(tmp_path):
    out = tmp_path / "bench.json"
    # 64x64 training: CPUs without bf16 instructions emulate it, tens of times slower than fp32 at 224
    res = bench_all(24, out, tmp_path / "work", batches=2, train_batches=2, train_image_size=64, memory_sizes=(300, 600),
                    sampler_sizes=(10_000,), log=lambda *a: None, rounds=2)
    saved = json.loads(out.read_text())
    assert saved["samples"] == 24 and saved["machine"]["cpu_cores"] >= 1
    s = saved["shard"]
    assert s["files"] == 24 and s["packed"] == 24 and s["structure_packed"] == 24 and s["rounds"] == 2
    for prefix in ("", "structure_"):  # per-round ratios; with two rounds the median is their mean
        ratios = sorted(t / d for t, d in zip(s["tar_round_seconds"], s[f"{prefix}dfp_round_seconds"]))
        assert len(ratios) == 2 and s[f"{prefix}speed_vs_tar_range"] == pytest.approx(ratios)
        assert s[f"{prefix}speed_vs_tar"] == pytest.approx(sum(ratios) / 2)
        assert s[f"{prefix}dfp_seconds"] == pytest.approx(sum(s[f"{prefix}dfp_round_seconds"]) / 2)
    backends = [r["backend"] for r in saved["loaders"]]
    assert backends[0].startswith("seed") and "torch" in backends and "dali" in backends
    seed_rounds = saved["loaders"][0]["rounds"]
    for r in saved["loaders"]:
        # two interleaved rounds of 2 batches of 64; the seed's way (which forks DataLoader workers) ran
        # after DALI in round 2
        assert r["samples"] == 2 * 2 * 64 and len(r["rounds"]) == 2
        assert sum(r["class_counts"].values()) == r["samples"]
        assert r["samples_per_s"] == pytest.approx(sum(r["rounds"]) / 2)  # the median of two
        ratios = sorted(a / b for a, b in zip(r["rounds"], seed_rounds))
        assert r["vs_seed"] == pytest.approx(sum(ratios) / 2) and r["vs_seed_range"] == pytest.approx(ratios)
    assert [r["precision"] for r in saved["train"]] == ["fp32", "torch.bfloat16"]
    assert all(0 <= r["data_wait_share"] <= 1 and r["image_size"] == 64 for r in saved["train"])
    assert [(r["backend"], r["samples"]) for r in saved["memory"]] == [("torch", 300), ("torch", 600), ("dali", 300), ("dali", 600)]
    assert all(100 < r["peak_rss_mb"] < 4000 for r in saved["memory"])
    assert saved["sampler"][0]["plan_len"] == 10_000
    table = format_table(res)
    assert "dfp / tar speed" in table and "vs plain PyTorch" in table


def test_bench_loader_cli_json(tmp_path, monkeypatch, capsys):
    image_tree(tmp_path / "in", 12, 4)
    build_shards(tmp_path / "in", tmp_path / "s", ShardParams(), workers=1, progress=False)
    out = tmp_path / "loader.json"
    code, _, err = dfp_in_process(["bench", "loader", tmp_path / "s", "--backend", "dali", "--device", "cpu",
                                   "--batch-size", "8", "--batches", "3", "--warmup", "1", "--json", out],
                                  monkeypatch, capsys)
    assert code == 0, err
    row = json.loads(out.read_text())
    assert {"backend", "device", "samples", "seconds", "samples_per_s", "class_counts"} <= set(row)
    assert row["backend"] == "dali" and row["device"] == "cpu" and row["samples"] == 24
    assert sum(row["class_counts"].values()) == 24


@pytest.mark.slow
def test_demo_learns(tmp_path):
    """`dfp demo` on the embedded synthetic default: the detector must actually learn (test AUC >= 0.9)."""
    from pipeline.demo import run_demo
    run = run_demo(tmp_path / "demo", "image", device="cpu", log=lambda *a: None)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["auc"] >= 0.9, metrics["test"]
    assert metrics["test"]["auc"] < 1.0  # learnable, not trivial
    assert (run / "report.html").stat().st_size > 50_000


def test_seed_baseline_reads_the_seeds_split_class_folders(tmp_path):
    """The seed's own layout (train_real, test_fake, ...) is read as dfp shard reads it, one split at a time."""
    from pipeline.bench import _seed_files, bench_seed_baseline
    from pipeline.errors import InputError
    from factory import smooth_image, write_jpeg
    rng = np.random.default_rng(0)
    made = {}
    for split, n_real, n_fake in (("train", 3, 2), ("test", 1, 1)):
        for cls, n in (("real", n_real), ("fake", n_fake)):
            for i in range(n):
                made[write_jpeg(tmp_path / f"{split}_{cls}" / f"{i}.jpg", smooth_image(rng, 40, 40))] = (split, cls)
    files, labels = _seed_files(tmp_path, "train")
    assert sorted(zip(files, labels)) == sorted((p, int(c == "fake")) for p, (s, c) in made.items() if s == "train")
    with pytest.raises(InputError, match="has no val split"):
        _seed_files(tmp_path, "val")
    row = bench_seed_baseline(tmp_path, "cpu", batch_size=2, batches=2, warmup=0, workers=0, image_size=32)
    assert row["samples"] == 4 and sum(row["class_counts"].values()) == 4
