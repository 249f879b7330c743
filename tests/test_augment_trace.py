"""Minority augmentation leaves no label trace in training batches (issue 20, item 4).

The datasets here are controls, 4:1 real:fake: every sample is one template (one pattern, one chord,
one clip) with its own small noise and size, so whatever a probe finds in the training batches the
loader put there, and the estimate rests on the many augmented draws rather than on a few dozen
distinct fakes. The sampler repeats the fakes and minority augmentation is on (the loader's default
for an imbalanced split)."""
import numpy as np
import pytest
import soundfile as sf

from factory import smooth_image, write_jpeg, write_video
from pipeline.audit.augmentation import augmentation_trace
from pipeline.shards import ShardParams, build_shards

N_REAL, N_FAKE = 120, 30
OPTIONS = {"image_size": 32, "audio_seconds": 1.0}


def _image(rng, path, gray=False):
    arr = smooth_image(np.random.default_rng(7), int(rng.integers(40, 80)), int(rng.integers(32, 64)))
    arr = np.clip(arr + rng.normal(0, 3, arr.shape), 0, 255).astype(np.uint8)
    if gray:
        arr = np.repeat(arr.mean(2, keepdims=True), 3, 2).astype(np.uint8)
    write_jpeg(path, arr)


def _clip(rng, path, silence=0.0):
    sr, seconds = 16000, rng.uniform(1.1, 1.6)
    t = np.arange(int(sr * seconds)) / sr
    chord = np.random.default_rng(7)
    x = sum(chord.uniform(0.05, 0.2) * np.sin(2 * np.pi * chord.uniform(150, 3000) * t + chord.uniform(0, 6.3))
            for _ in range(3)) + 0.005 * rng.standard_normal(len(t))
    if silence:  # a digital-silence gap in the middle
        mid = len(x) // 2
        x[mid - int(silence * sr) // 2: mid + int(silence * sr) // 2] = 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), sr)


def _video(rng, path):
    write_video(path, frames=4, w=int(rng.integers(24, 40)) * 2, h=int(rng.integers(16, 28)) * 2, seed=7)


def control_shards(root, modality, nuisance=False, n_real=N_REAL, n_fake=N_FAKE):
    """Real and fake from one generator; with `nuisance` the fakes differ (grey images, a silent gap)."""
    rng = np.random.default_rng({"image": 1, "audio": 2, "video": 3}[modality])
    for cls, n in (("real", n_real), ("fake", n_fake)):
        odd = nuisance and cls == "fake"
        for i in range(n):
            base = root / "in" / cls / f"{cls}{i:03d}"
            if modality == "image":
                _image(rng, base.with_suffix(".jpg"), gray=odd)
            elif modality == "audio":
                _clip(rng, base.with_suffix(".wav"), silence=0.4 if odd else 0.0)
            else:
                _video(rng, base.with_suffix(".mp4"))
    build_shards(root / "in", root / "out", ShardParams(frames=4, split="0.9,0.05,0.05"), workers=1, progress=False)
    return root / "out"


@pytest.fixture(scope="module")
def controls(tmp_path_factory):
    built = {}

    def get(modality):
        if modality not in built:
            built[modality] = control_shards(tmp_path_factory.mktemp(f"control_{modality}"), modality)
        return built[modality]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "dali"])
@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_default_minority_augmentation_leaves_no_trace_in_training_batches(controls, modality, backend):
    got = augmentation_trace(controls(modality), backend=backend, device="cpu", batches=12, batch_size=32, seed=0,
                             options=OPTIONS)
    assert got["n"] == 384 and min(got["n_real"], got["n_fake"]) > 120  # the sampler balances the batches
    worst = got["features"][0]
    assert got["trace_auc"] <= 0.6, (modality, backend, got["trace_auc"], worst)


@pytest.mark.slow
@pytest.mark.parametrize("modality,feature", [("image", "saturation"), ("audio", "noise_floor")])
def test_the_trace_audit_finds_a_nuisance_that_tells_the_classes(tmp_path, modality, feature):
    shards = control_shards(tmp_path, modality, nuisance=True, n_real=40, n_fake=10)
    got = augmentation_trace(shards, backend="torch", device="cpu", batches=6, batch_size=32, seed=0,
                             options=OPTIONS, baseline=True)
    assert got["trace_auc"] >= 0.9 and got["baseline_auc"] >= 0.9
    # audio: the loader's added noise fills the silent gap, so it shows as a raised floor
    assert got["features"][0]["name"].startswith(feature), got["features"][:4]


@pytest.mark.slow
def test_dfp_audit_augmentation_reports_the_trace_of_the_default_recipe(controls, tmp_path):
    """The command-line door: the trace AUC of training batches beside that of evaluation batches, in the JSON
    and the console; not flagged for the default recipe; raw input (no loader) is refused with one line."""
    import json

    from typer.testing import CliRunner

    from pipeline import cli
    shards = controls("image")
    out = tmp_path / "audit.json"
    res = CliRunner().invoke(cli.app, ["audit", str(shards), "--augmentation", "--backend", "torch", "--device", "cpu",
                                       "--batches", "6", "--image-size", "32", "--json", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    trace = json.loads(out.read_text())["augmentation"]
    assert trace["n"] == 6 * 32 and trace["trace_auc"] <= 0.6 and not trace["flagged"]
    assert 0.5 <= trace["baseline_auc"] <= 1 and "Augmentation traces" in res.output
    raw = CliRunner().invoke(cli.app, ["audit", str(shards.parent / "in"), "--augmentation", "--quiet"])
    assert raw.exit_code == 1 and "looks like raw input" in str(raw.exception), raw  # UsageError: main() exits 2
