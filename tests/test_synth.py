"""`pipeline.synth`: layout, readability, determinism, and that fakes are learnable but not on a global cue."""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.synth import synth_dataset


def _digests(root: Path, files: list[str]) -> dict[str, str]:
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in files}


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _cv_accuracy(X: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression())
    return float(cross_val_score(clf, X, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean())


def _by_class(root: Path, files: list[str]):
    for f in files:
        yield f, int(f.split("/")[0] == "fake")


# ------------------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize("modality,exts", [("image", {"jpg", "png"}), ("audio", {"wav", "flac"}), ("video", {"mp4"})])
def test_counts_folders_and_names(tmp_path, modality, exts):
    res = synth_dataset(tmp_path, modality, n_real=6, n_fake=4, seed=0)
    assert (res["real"], res["fake"]) == (6, 4)
    assert sorted(res["files"]) == _all_files(tmp_path)          # exactly the files it says, nothing else
    per_class = Counter(f.split("/")[0] for f in res["files"])
    assert per_class == {"real": 6, "fake": 4}
    for f in res["files"]:
        parts = f.split("/")
        assert len(parts) == 4 and parts[1].startswith("id_") and parts[2].startswith("take_"), f
        assert f.isascii() and " " not in f
        assert parts[-1].rsplit(".", 1)[1] in exts
    # several identities per class, so grouping by folder (--group-depth 1) does something
    assert len({f.rsplit("/", 2)[0] for f in res["files"] if f.startswith("real/")}) >= 2


def test_zero_files_and_bad_arguments(tmp_path):
    res = synth_dataset(tmp_path / "a", "image", n_real=3, n_fake=0)
    assert res["fake"] == 0 and all(f.startswith("real/") for f in res["files"]) and len(res["files"]) == 3
    with pytest.raises(ValueError):
        synth_dataset(tmp_path / "b", "text", 1, 1)
    with pytest.raises(ValueError):
        synth_dataset(tmp_path / "c", "image", -1, 1)
    with pytest.raises(ValueError):
        synth_dataset(tmp_path / "d", "audio", 1, 1, image_size=(64, 64))


def test_images_readable_mixed_formats_and_sizes(tmp_path):
    res = synth_dataset(tmp_path, "image", n_real=12, n_fake=12, seed=1)
    formats, sizes = Counter(), set()
    for f in res["files"]:
        with Image.open(tmp_path / f) as im:
            im.load()
            formats[im.format] += 1
            sizes.add(im.size)
            assert im.mode == "RGB"
            assert all(96 <= s <= 256 for s in im.size)
    assert formats["JPEG"] > formats["PNG"] > 0
    assert len(sizes) > 10


def test_image_size_is_exact_and_jpeg(tmp_path):
    res = synth_dataset(tmp_path, "image", n_real=3, n_fake=3, seed=0, image_size=(512, 384))
    for f in res["files"]:
        assert f.endswith(".jpg")
        with Image.open(tmp_path / f) as im:
            assert im.size == (512, 384) and im.format == "JPEG"


def test_audio_readable_with_varied_rates_channels_durations(tmp_path):
    import soundfile as sf
    res = synth_dataset(tmp_path, "audio", n_real=20, n_fake=20, seed=0)
    rates, channels, kinds, durations = Counter(), Counter(), Counter(), []
    for f in res["files"]:
        data, sr = sf.read(tmp_path / f, always_2d=True)
        info = sf.info(tmp_path / f)
        rates[sr] += 1
        channels[data.shape[1]] += 1
        kinds[info.format] += 1
        durations.append(data.shape[0] / sr)
        assert np.abs(data).max() > 0.05                              # not silent
    assert set(rates) <= {8000, 16000, 22050, 44100} and len(rates) >= 3
    assert set(channels) == {1, 2}
    assert kinds["WAV"] > kinds["FLAC"] > 0
    assert min(durations) >= 0.25 and max(durations) <= 3.01 and any(d < 1.0 for d in durations)


def test_video_readable_by_decord(tmp_path):
    decord = pytest.importorskip("decord")
    res = synth_dataset(tmp_path, "video", n_real=6, n_fake=4, seed=0)
    for f in res["files"]:
        vr = decord.VideoReader(str(tmp_path / f), ctx=decord.cpu(0), num_threads=1)
        n = len(vr)
        assert 8 <= n <= 20
        assert 10 <= round(vr.get_avg_fps()) <= 25
        batch = vr.get_batch(list(range(n))).asnumpy()      # decoding every frame, as sharding does
        assert batch.ndim == 4 and batch.shape[-1] == 3
        assert batch.shape[1] % 2 == 0 and batch.shape[2] % 2 == 0 and 64 <= min(batch.shape[1:3])
        assert batch[0].std() > 5                           # actual content
        assert np.abs(batch[-1].astype(int) - batch[0]).mean() > 1   # it moves


def test_progress_bar(tmp_path, capsys):
    synth_dataset(tmp_path, "image", n_real=2, n_fake=1, progress=True)
    assert "3/3" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, modality):
    a = synth_dataset(tmp_path / "a", modality, 4, 3, seed=7)
    b = synth_dataset(tmp_path / "b", modality, 4, 3, seed=7)
    c = synth_dataset(tmp_path / "c", modality, 4, 3, seed=8)
    assert a["files"] == b["files"]
    assert _digests(tmp_path / "a", a["files"]) == _digests(tmp_path / "b", b["files"])
    da, dc = _digests(tmp_path / "a", a["files"]), _digests(tmp_path / "c", c["files"])
    common = set(da) & set(dc)
    assert not any(da[f] == dc[f] for f in common)
    assert len(set(da.values()) | set(dc.values())) == len(da) + len(dc)   # no two files alike at all


def test_file_bytes_do_not_depend_on_counts(tmp_path):
    """Each file's RNG comes from (seed, class, index), so growing a class keeps its earlier files."""
    a = synth_dataset(tmp_path / "a", "image", 8, 2, seed=3)
    b = synth_dataset(tmp_path / "b", "image", 8, 5, seed=3)
    fa, fb = _digests(tmp_path / "a", a["files"]), _digests(tmp_path / "b", b["files"])
    reals = [f for f in a["files"] if f.startswith("real/")]
    assert reals and all(fa[f] == fb[f] for f in reals)


# ------------------------------------------------------------------------------------------------ learnability


def _lap(g: np.ndarray) -> np.ndarray:
    return 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]


def _image_features(path: Path) -> tuple[list[float], float]:
    """Fixed hand-made features of upsampling traces; and the mean intensity (a global cue)."""
    with Image.open(path) as im:
        g = np.asarray(im.convert("L"), dtype=np.float64)
    h, w = g.shape
    half = g[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    l1 = _lap(g) ** 2
    hf_ratio = np.log(l1.mean()) - np.log((_lap(half) ** 2).mean())           # fine vs. coarse detail
    b = 16
    blocks = l1[: l1.shape[0] // b * b, : l1.shape[1] // b * b]
    blocks = np.log(blocks.reshape(blocks.shape[0] // b, b, blocks.shape[1] // b, b).mean(axis=(1, 3)) + 1e-3)
    local = np.percentile(blocks, [10, 50, 90])                              # detail lost in a region
    dx, dy = np.diff(g, axis=1) ** 2, np.diff(g, axis=0) ** 2
    period2 = (abs(np.log(dx[:, 0::2].mean()) - np.log(dx[:, 1::2].mean()))
               + abs(np.log(dy[0::2].mean()) - np.log(dy[1::2].mean())))       # even/odd column+row asymmetry
    lap = _lap(g)
    yy, xx = np.mgrid[0: lap.shape[0], 0: lap.shape[1]]
    checker = abs(np.mean(lap * np.where((yy + xx) % 2 == 0, 1.0, -1.0))) / np.sqrt(np.mean(lap ** 2))
    return [hf_ratio, *local, period2, np.log(checker + 1e-4)], float(g.mean())


def test_image_fakes_learnable_but_not_by_mean_intensity(tmp_path):
    res = synth_dataset(tmp_path, "image", n_real=30, n_fake=30, seed=0)
    X, M, y = [], [], []
    for f, label in _by_class(tmp_path, res["files"]):
        feats, mean = _image_features(tmp_path / f)
        X.append(feats)
        M.append([mean])
        y.append(label)
    X, M, y = np.array(X), np.array(M), np.array(y)
    assert _cv_accuracy(X, y) > 0.65
    assert _cv_accuracy(M, y) < 0.75


def test_image_size_and_format_carry_no_class_signal(tmp_path):
    res = synth_dataset(tmp_path, "image", n_real=40, n_fake=40, seed=2)
    X, y = [], []
    for f, label in _by_class(tmp_path, res["files"]):
        with Image.open(tmp_path / f) as im:
            X.append([im.size[0], im.size[1], im.size[0] * im.size[1], float(im.format == "PNG")])
        y.append(label)
    assert _cv_accuracy(np.array(X), np.array(y)) < 0.75


def test_audio_fakes_learnable_but_not_by_global_cues(tmp_path):
    import soundfile as sf
    from scipy.signal import resample_poly, stft
    res = synth_dataset(tmp_path, "audio", n_real=30, n_fake=30, seed=0)
    X, G, y = [], [], []
    for f, label in _by_class(tmp_path, res["files"]):
        data, sr = sf.read(tmp_path / f, always_2d=True)
        x = data.mean(axis=1)
        G.append([sr, data.shape[1], len(x) / sr, np.sqrt(np.mean(x ** 2))])
        x = resample_poly(x, 16000 // np.gcd(sr, 16000), sr // np.gcd(sr, 16000))
        freqs, _, Z = stft(x, 16000, nperseg=512, noverlap=384)
        logp = np.log(np.abs(Z[(freqs > 1850) & (freqs < 3700)]) ** 2 + 1e-12)
        steady = np.percentile(logp, 10, axis=1) - np.median(logp, axis=1)   # tones that never stop
        env = np.abs(x)
        spec = np.abs(np.fft.rfft(env - env.mean()))
        fe = np.fft.rfftfreq(len(env), 1 / 16000)
        mod = np.log(spec[(fe > 55) & (fe < 115)].max() / np.median(spec[(fe > 20) & (fe < 200)]))
        X.append([steady.max(), np.median(steady), mod])
        y.append(label)
    y = np.array(y)
    assert _cv_accuracy(np.array(X), y) > 0.65
    assert _cv_accuracy(np.array(G), y) < 0.75


def test_video_fakes_learnable_from_one_frame_but_not_by_global_cues(tmp_path):
    """`frame_pool` scores frames one at a time and averages: the artifact must show in a single frame. The
    image features of one middle frame must separate the classes (a temporal-only artifact leaves them at chance)."""
    decord = pytest.importorskip("decord")
    res = synth_dataset(tmp_path, "video", n_real=30, n_fake=30, seed=0)
    X, G, y = [], [], []
    for f, label in _by_class(tmp_path, res["files"]):
        vr = decord.VideoReader(str(tmp_path / f), ctx=decord.cpu(0), num_threads=1)
        v = vr.get_batch(list(range(len(vr)))).asnumpy()
        Image.fromarray(v[len(v) // 2]).save(tmp_path / "frame.png")
        X.append(_image_features(tmp_path / "frame.png")[0])
        G.append([v.mean(), *v.shape[:3]])
        y.append(label)
    y = np.array(y)
    assert _cv_accuracy(np.array(X), y) > 0.8
    assert _cv_accuracy(np.array(G), y) < 0.75


# ------------------------------------------------------------------------------------------------ no global cue


def _separation(values: list[float], y: list[int]) -> float:
    """AUC of one statistic used as a score, in whichever direction separates better (0.5: no separation)."""
    from sklearn.metrics import roc_auc_score
    auc = roc_auc_score(y, values)
    return max(auc, 1.0 - auc)


def _audio_globals(path: Path) -> dict[str, float]:
    import soundfile as sf
    data, sr = sf.read(path, always_2d=True)
    x = data.mean(axis=1)
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    return {"rms": float(np.sqrt(np.mean(x ** 2))), "peak": float(np.abs(x).max()),
            "centroid": float((power * freqs).sum() / power.sum()), "duration": len(x) / sr, "rate": float(sr)}


def _video_globals(path: Path) -> dict[str, float]:
    import decord
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    v = vr.get_batch(list(range(len(vr)))).asnumpy().astype(np.float64)
    stats = {f"mean_{c}": float(v[..., i].mean()) for i, c in enumerate("rgb")}
    return {**stats, "std": float(v.std()), "motion": float(np.abs(np.diff(v, axis=0)).mean()),
            "frames": float(len(v))}


def _image_globals(path: Path) -> dict[str, float]:
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.float64)
    return {**{f"mean_{c}": float(a[..., i].mean()) for i, c in enumerate("rgb")}, "std": float(a.std())}


@pytest.mark.parametrize("modality,stats", [("audio", _audio_globals), ("video", _video_globals),
                                            ("image", _image_globals)])
def test_no_single_global_statistic_separates_the_classes(tmp_path, modality, stats):
    if modality == "video":
        pytest.importorskip("decord")
    res = synth_dataset(tmp_path, modality, n_real=40, n_fake=40, seed=4)
    rows, y = [], []
    for f, label in _by_class(tmp_path, res["files"]):
        rows.append(stats(tmp_path / f))
        y.append(label)
    aucs = {name: _separation([r[name] for r in rows], y) for name in rows[0]}
    assert max(aucs.values()) < 0.75, aucs
