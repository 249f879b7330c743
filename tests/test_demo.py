"""The audio and video demos: the fakes' artifact reaches the model's input, and a detector learns it.

A detector learns only what reaches its input: the audio fakes' comb of tones must stand out in the log-mel the
loaders compute (evaluation and the standard training recipe alike), and the video artifact must show in single
frames, since `frame_pool` scores frames one at a time (tests/test_synth.py checks that part on the files).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.loaders import LoaderOptions, make_loader
from pipeline.shards import ShardParams, build_shards
from pipeline.synth import synth_dataset

# Slaney mel bands 22..48 of 64 at 16 kHz span about 1.1 to 3.7 kHz, where the fakes' comb of tones lies.
_COMB_BANDS = (22, 49)


def _comb_score(spec: np.ndarray) -> np.ndarray:
    """(N, mels, frames) log-mel -> how far the steady floor (25th percentile over time) of the comb's bands
    rises above the bands two away on either side: steady tones stand out there, speech and noise do not."""
    lo, hi = _COMB_BANDS
    floor = np.percentile(spec, 25, axis=2)
    rise = floor[:, lo:hi] - 0.5 * (floor[:, lo - 2:hi - 2] + floor[:, lo + 2:hi + 2])
    return np.sort(rise, axis=1)[:, -3:].mean(axis=1)


def _log_mels(shards, backend: str, train: bool):
    opts = LoaderOptions(batch_size=16, train=train, audio_seconds=1.0, workers=0, minority_augment=False)
    specs, labels = [], []
    for x, y, _ in make_loader(shards, "train", backend, "cpu", opts):
        specs.append(x[:, 0].numpy())
        labels.append(y.numpy())
    return np.concatenate(specs), np.concatenate(labels)


@pytest.fixture(scope="module")
def audio_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("comb")
    synth_dataset(root / "in", "audio", n_real=48, n_fake=48, seed=5)
    build_shards(root / "in", root / "shards", ShardParams(split="1,0,0"), workers=1, progress=False)
    return root / "shards"


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_audio_fakes_comb_reaches_the_log_mel(audio_shards, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    spec, y = _log_mels(audio_shards, backend, train=False)
    assert spec.shape[1] == 64 and roc_auc_score(y, _comb_score(spec)) >= 0.8
    spec, y = _log_mels(audio_shards, backend, train=True)   # the standard recipe: crop, gain, noise, masks
    assert roc_auc_score(y, _comb_score(spec)) >= 0.75


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["audio", "video"])
def test_demo_learns(tmp_path, modality):
    """`dfp demo --modality M` as shipped, on a seed other than the default: the detector must learn."""
    from pipeline.demo import run_demo
    run = run_demo(tmp_path / "demo", modality, device="cpu", log=lambda *a: None, seed=1)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["auc"] >= 0.9, metrics["test"]
