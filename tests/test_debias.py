"""`dfp shard --debias`: both classes stored alike (one JPEG quality, subsampling and size; no leading or trailing
silence; one frame rate), recorded in the manifest and applied the same way by `dfp predict`."""
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, JpegImagePlugin
from sklearn.metrics import roc_auc_score

from factory import tone, write_video
from pipeline import checkpoint, cli
from pipeline.audit.image import jpeg_quality
from pipeline.formats import read_manifest
from pipeline.loaders import make_loader
from pipeline.loaders.index import ShardIndex
from pipeline.media.audio import decode_flac
from pipeline.media.video import rate_indices
from pipeline.shards import ShardParams, build_shards
from pipeline.verify import verify_shards

SIDE = 48


def texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """factory.smooth_image at one scale per pixel whatever the size (as a photo's detail is), so that a crop of
    a large picture looks like a small whole one."""
    yy, xx = np.mgrid[0:h, 0:w] / SIDE
    a, b = rng.uniform(1, 6, 2)
    base = np.stack([np.sin(a * xx + b * yy + k) for k in range(3)], -1)
    return np.clip((base * 0.4 + 0.5 + rng.normal(0, 0.05, (h, w, 3))) * 255, 0, 255).astype(np.uint8)


def nuisance_images(root: Path, n: int = 10, real_format: str = "JPEG") -> Path:
    """Fakes: PNG, all SIDE x SIDE (as GenImage's 512x512 PNGs meet the default --max-side 512). Reals: JPEG of many
    sizes (a few within SIDE, whose bytes the default packing keeps) and qualities. Content is drawn alike for
    both, so only storage tells them apart."""
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / "fake").mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(rng, SIDE, SIDE)).save(root / "fake" / f"f{i:02d}.png")
        w, h = rng.integers(SIDE, 3 * SIDE, 2) if i % 4 else rng.integers(SIDE * 3 // 4, SIDE + 1, 2)
        (root / "real").mkdir(parents=True, exist_ok=True)
        q = int(rng.integers(60, 91))
        im = Image.fromarray(texture(rng, int(w), int(h)))
        if real_format == "JPEG":
            im.save(root / "real" / f"r{i:02d}.jpg", quality=q)
        else:
            im.save(root / "real" / f"r{i:02d}.png")
    return root


def stored(shards: Path) -> list[tuple[int, bytes]]:
    """(label, payload bytes) of every stored sample, all splits."""
    out = []
    for split in ("train", "val", "test"):
        index = ShardIndex(shards, split)
        out += [(int(index.labels[i]), index.read(i)[0]) for i in range(len(index))]
    return out


def auc(values, labels) -> float:
    """Direction-free: how well one feature alone separates the classes (0.5: not at all)."""
    if len(set(values)) == 1:
        return 0.5
    a = roc_auc_score(labels, values)
    return max(a, 1 - a)


def image_features(data: bytes) -> dict[str, float]:
    im = Image.open(io.BytesIO(data))
    q = im.quantization if im.format == "JPEG" else {0: [0]}
    return {"width": im.size[0], "height": im.size[1], "format": float(im.format == "JPEG"),
            "quality": float(sum(q[0])), "bytes_per_pixel": len(data) / (im.size[0] * im.size[1])}


def signature(data: bytes) -> tuple:
    im = Image.open(io.BytesIO(data))
    q = tuple(map(tuple, im.quantization.values())) if im.format == "JPEG" else ()
    return im.format, q, im.size


def feature_aucs(samples) -> dict[str, float]:
    """Per feature; "storage" is whether a sample is stored as the most common (format, tables, size) is."""
    labels = [y for y, _ in samples]
    feats = [image_features(d) for _, d in samples]
    sigs = [signature(d) for _, d in samples]
    common = max(set(sigs), key=sigs.count)
    return {"storage": auc([float(s == common) for s in sigs], labels)} | {
        k: auc([f[k] for f in feats], labels) for k in feats[0]}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return nuisance_images(tmp_path_factory.mktemp("nuisance") / "in")


def _pack(inp: Path, out: Path, workers: int = 1, **kw) -> Path:
    build_shards(inp, out, ShardParams(**{"max_side": SIDE, "split": "0.5,0.25,0.25", "frames": 3, **kw}),
                 workers=workers, progress=False)
    return out


def test_without_debias_storage_separates_the_classes(images, tmp_path):
    """The reproduction: the default packing keeps small real JPEGs' bytes and re-encodes the PNG fakes."""
    aucs = feature_aucs(stored(_pack(images, tmp_path / "plain")))
    print("default packing:", aucs)
    assert aucs["storage"] >= 0.9


def test_debias_stores_every_image_with_one_quality_subsampling_and_size(images, tmp_path):
    shards = _pack(images, tmp_path / "debiased", debias=True)
    samples = stored(shards)
    ims = [Image.open(io.BytesIO(d)) for _, d in samples]
    assert {im.format for im in ims} == {"JPEG"}
    assert len({tuple(map(tuple, im.quantization.values())) for im in ims}) == 1
    assert {JpegImagePlugin.get_sampling(im) for im in ims} == {2}  # 4:2:0
    assert {im.size for im in ims} == {(SIDE, SIDE)}
    aucs = feature_aucs(samples)
    print("--debias:", aucs)
    # bytes per pixel too: stored no finer than the reals' coarsest compression, no real keeps more detail's worth
    # of bytes than a fake does
    assert max(aucs.values()) <= 0.7
    p = read_manifest(shards)["params"]
    lowest = min(jpeg_quality(Image.open(f).quantization) for f in (images / "real").iterdir())
    assert (p["debias"], p["reencode"], p["chroma"], p["resize_rule"]) == (True, True, "420", "crop")
    assert p["jpeg_quality"] == lowest == jpeg_quality(ims[0].quantization)  # 5th percentile of 10: the lowest
    assert p["jpeg_quality_choice"]["jpeg_inputs"] == 10 and p["jpeg_quality_choice"]["quality"] == lowest


def test_debias_quality_is_the_inputs_low_percentile_within_bounds_unless_given(tmp_path):
    """Both classes' JPEGs count; one outlier in 22 is below the 5th percentile; a quality below 50 is raised to
    50; --jpeg-quality wins over the choice."""
    rng = np.random.default_rng(3)

    def save(cls, q):
        (tmp_path / "in" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture(rng, SIDE, SIDE)).save(tmp_path / "in" / cls / f"{q}.jpg", quality=q)
    for q in range(70, 90):
        save("real", q)
    for q in (30, 80):
        save("fake", q)
    p = read_manifest(_pack(tmp_path / "in", tmp_path / "a", debias=True))["params"]
    assert p["jpeg_quality"] == 70 and p["jpeg_quality_choice"]["estimates"] == {"min": 30.0, "max": 89.0}
    save("fake", 35)
    assert read_manifest(_pack(tmp_path / "in", tmp_path / "b", debias=True))["params"]["jpeg_quality"] == 50
    p = read_manifest(_pack(tmp_path / "in", tmp_path / "c", debias=True, jpeg_quality=88))["params"]
    assert p["jpeg_quality"] == 88 and "jpeg_quality_choice" not in p


def test_dfp_audit_of_debiased_shards_is_clean_where_the_default_packing_is_flagged(tmp_path):
    """The real command on the stored samples: fake PNGs of one size vs real JPEGs of many sizes and qualities."""
    from typer.testing import CliRunner
    inp = nuisance_images(tmp_path / "in", 20)
    got = {}
    for name, kw in (("plain", {}), ("debiased", {"debias": True})):
        res = CliRunner().invoke(cli.app, ["audit", str(_pack(inp, tmp_path / name, **kw)), "--json",
                                           str(tmp_path / f"{name}.json"), "--quiet"])
        assert res.exit_code == 0, res.output
        got[name] = json.loads((tmp_path / f"{name}.json").read_text())
    print({k: (a["combined_auc"], {f["name"]: f["auc"] for f in a["features"]}) for k, a in got.items()})
    assert got["plain"]["combined_auc"] >= 0.9 and "size_share" in got["plain"]["flagged"]
    assert got["debiased"]["combined_auc"] <= 0.7 and got["debiased"]["flagged"] == []
    assert max(f["auc"] for f in got["debiased"]["features"]) <= 0.7


def test_debias_leaves_no_trace_of_its_own_where_only_the_size_differs(tmp_path):
    """Lossless sources in both classes, fakes one size, reals many: after --debias not even bytes per pixel
    separates them (the crop rule resamples no picture at or above the size, so none carries a resampling trace)."""
    inp = nuisance_images(tmp_path / "in", real_format="PNG")
    before = feature_aucs(stored(_pack(inp, tmp_path / "plain")))
    after = feature_aucs(stored(_pack(inp, tmp_path / "debiased", debias=True)))
    print("lossless sources: default", before, "--debias", after)
    assert before["storage"] >= 0.9
    assert max(after.values()) <= 0.7
    choice = read_manifest(tmp_path / "debiased")["params"]["jpeg_quality_choice"]
    assert (choice["quality"], choice["jpeg_inputs"], choice["estimates"]) == (95, 0, None)  # no JPEG input


def test_each_control_is_its_own_option_and_an_explicit_one_wins_over_debias(images, tmp_path):
    shards = _pack(images, tmp_path / "one", reencode=True, jpeg_quality=80, chroma="444", resize_rule="longer")
    ims = [Image.open(io.BytesIO(d)) for _, d in stored(shards)]
    assert len({tuple(map(tuple, im.quantization.values())) for im in ims}) == 1
    assert {JpegImagePlugin.get_sampling(im) for im in ims} == {0}  # 4:4:4
    assert {max(im.size) for im in ims} == {SIDE} and len({im.size for im in ims}) > 1  # aspect kept
    p = read_manifest(_pack(images, tmp_path / "two", debias=True, resize_rule="fit", trim_silence=False))["params"]
    assert (p["resize_rule"], p["trim_silence"], p["reencode"]) == ("fit", False, True)


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_debias_packing_is_deterministic(modality, images, tmp_path):
    inp = images
    if modality == "audio":
        inp = silent_audio(tmp_path / "in", 2)
    elif modality == "video":
        for i, fps in enumerate((12, 25)):
            write_video(tmp_path / "in" / "real" / f"r{i}.mp4", frames=fps, fps=fps, seed=i)
            write_video(tmp_path / "in" / "fake" / f"f{i}.mp4", frames=fps, fps=fps, seed=5 + i)
    a = read_manifest(_pack(inp, tmp_path / "a", workers=1, debias=True, split="0.5,0.5,0"))["shards"]
    b = read_manifest(_pack(inp, tmp_path / "b", workers=2, debias=True, split="0.5,0.5,0"))["shards"]
    assert a and [(r["path"], r["sha256"]) for r in a] == [(r["path"], r["sha256"]) for r in b]


def test_png_codec_stores_images_losslessly_and_every_reader_takes_them(images, tmp_path):
    shards = _pack(images, tmp_path / "png", image_codec="png", resize_rule="crop")
    assert read_manifest(shards)["payload"] == ["png"]
    samples = stored(shards)
    assert {Image.open(io.BytesIO(d)).format for _, d in samples} == {"PNG"}
    # lossless: every stored fake (SIDE x SIDE already) is exactly one source, and a real is its source's centre
    got = {np.asarray(Image.open(io.BytesIO(d))).tobytes() for y, d in samples if y == 1}
    assert got == {np.asarray(Image.open(f).convert("RGB")).tobytes() for f in (images / "fake").iterdir()}
    big = next(f for f in sorted((images / "real").iterdir()) if min(Image.open(f).size) > SIDE)
    w, h = Image.open(big).size
    centre = np.asarray(Image.open(big).convert("RGB"))[(h - SIDE) // 2:][:SIDE, (w - SIDE) // 2:][:, :SIDE]
    assert centre.tobytes() in {np.asarray(Image.open(io.BytesIO(d))).tobytes() for y, d in samples if y == 0}
    assert verify_shards(shards, progress=False)[0] == []
    assert loaded(shards, "torch") == sum(read_manifest(shards)["splits"]["train"].values())


@pytest.mark.slow
def test_the_dali_loader_reads_png_payloads(images, tmp_path):
    shards = _pack(images, tmp_path / "png", image_codec="png")
    assert loaded(shards, "dali") == sum(read_manifest(shards)["splits"]["train"].values())


def loaded(shards: Path, backend: str) -> int:
    """How many train samples the backend's evaluation loader yields (on the CPU)."""
    from pipeline.evaluate import eval_options
    opts = eval_options({"preprocess": {"image_size": 32, "audio_seconds": 0.5}}, 4, workers=0)
    return sum(len(y) for _, y, _ in make_loader(shards, "train", backend, "cpu", opts))


def test_png_codec_stores_video_frames_as_png_at_one_rate(tmp_path):
    for i, fps in enumerate((10, 25, 30)):
        for cls in ("real", "fake"):
            write_video(tmp_path / "in" / cls / f"{cls}{i}.mp4", frames=fps, fps=fps, seed=i)  # 1 s clips
    shards = _pack(tmp_path / "in", tmp_path / "png", image_codec="png", fps=5.0, frames=4)
    m = read_manifest(shards)
    assert m["payload"] == ["f000.png", "f001.png", "f002.png", "f003.png"] and m["params"]["fps"] == 5.0
    assert verify_shards(shards, progress=False)[0] == []
    for backend in ("torch", "dali"):  # in a process that has loaded decord (packing) before the loaders
        assert loaded(shards, backend) == sum(m["splits"]["train"].values()), backend


def silence_lead(x: np.ndarray, sr: int) -> float:
    """Seconds before the first sample above 1% of the peak (a rule independent of the packer's)."""
    return float(np.argmax(np.abs(x) > 0.01 * np.abs(x).max()) / sr)


def silent_audio(root: Path, n: int = 4) -> Path:
    """Reals open with 0.6-1.0 s of near-silence (noise 70 dB down) and end with 0.3 s of it; fakes have none."""
    rng = np.random.default_rng(1)
    for i in range(n):
        for cls, lead, tail in (("real", 0.6 + 0.1 * i, 0.3), ("fake", 0.0, 0.0)):
            sr = 16000 if i % 2 else 22050
            quiet = lambda s: (1e-4 * rng.standard_normal(int(s * sr))).astype(np.float32)  # noqa: E731
            x = np.concatenate([quiet(lead), tone(sr, 0.4 + 0.05 * i, freq=180 + 40 * i), quiet(tail)])
            (root / cls).mkdir(parents=True, exist_ok=True)
            sf.write(root / cls / f"{cls}{i}.wav", x, sr)
    return root


def test_debias_trims_leading_and_trailing_silence_alike(tmp_path):
    inp = silent_audio(tmp_path / "in")

    def leads(shards):
        by = {0: [], 1: []}
        for y, d in stored(shards):
            x, sr = decode_flac(d)
            assert sr == 16000
            by[y].append((silence_lead(x, sr), silence_lead(x[::-1], sr)))
        return {y: np.mean(v, axis=0) for y, v in by.items()}

    before = leads(_pack(inp, tmp_path / "plain"))
    after = leads(_pack(inp, tmp_path / "debiased", debias=True))
    print("lead/tail silence (s) real, fake: before", before, "after", after)
    assert before[0][0] - before[1][0] > 0.5  # the reproduction: reals open with silence
    assert np.all(np.abs(after[0] - after[1]) < 0.03)
    assert np.all(after[0] <= 0.03)


def test_fps_samples_the_same_instants_whatever_the_clip_rate():
    for src in (10.0, 25.0, 30.0, 60.0):
        idx = rate_indices(int(4 * src), src, 8, 4.0)  # 4 s clips, 8 frames at 4 fps: 1 s to 3 s
        assert np.allclose(idx / src, 1.0 + np.arange(8) / 4, atol=1 / src + 1e-9), src
    assert list(rate_indices(5, 10.0, 4, 5.0)) == [0, 2, 4, 4]  # a short clip holds its last frame


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_predict_prepares_raw_files_as_debias_packed_them(modality, tmp_path):
    """`dfp predict` on the raw files scores each as `dfp evaluate` scores it packed with --debias."""
    from test_predict import TOL, evaluated, predicted, untrained_checkpoint
    root = tmp_path
    if modality == "image":
        nuisance_images(root / "in", 6)
    elif modality == "audio":
        silent_audio(root / "in", 3)
    else:
        for i in range(4):  # reals at 10-40 fps, fakes at 30
            write_video(root / "in" / "real" / f"r{i}.mp4", frames=12 + 6 * i, fps=10 + 10 * i, seed=i, w=64 + 8 * i)
            write_video(root / "in" / "fake" / f"f{i}.mp4", frames=12, fps=30, seed=10 + i)
    build_shards(root / "in", root / "shards", ShardParams(debias=True, max_side=SIDE, frames=3, fps=10.0,
                                                           split="0.4,0.2,0.4"), workers=1, progress=False)
    ckpt = untrained_checkpoint(root / "shards", tmp_path / "model.pth", "torch")
    ev = evaluated(root, ckpt, tmp_path / "ev")
    rows, _ = predicted(root, ckpt, tmp_path / "preds.csv", chunk=4)
    assert len(ev) >= 2 and np.ptp(list(ev.values())) > 100 * TOL
    assert max(abs(float(rows[src]["score"]) - s) for src, s in ev.items()) <= TOL
    pre = checkpoint.load(ckpt)["preprocess"]
    assert (pre["resize_rule"], pre["trim_silence"], pre["fps"]) == ("square" if modality == "video" else "crop", True, 10.0)
    if modality == "image":  # the quality --debias chose from these inputs' tables, applied to the raw files too
        assert pre["jpeg_quality"] == read_manifest(root / "shards")["params"]["jpeg_quality"] < 95


BAD = [("--chroma 411", "--chroma '411': choose 420 or 444"),
       ("--resize-rule scale", "--resize-rule 'scale': choose fit, longer, square or crop"),
       ("--image-codec webp", "--image-codec 'webp': choose jpeg or png"),
       ("--jpeg-quality 101", "--jpeg-quality must be at most 100"),
       ("--fps 0", "--fps must be a positive number"),
       ("--image-codec png --jpeg-quality 90", "--jpeg-quality and --chroma apply to --image-codec jpeg"),
       ("--faces --image-codec png", "--faces stores JPEG crops")]


@pytest.mark.parametrize("opts,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_storage_options_exit_2_in_one_line(opts, needle, tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    monkeypatch.setattr(sys, "argv", ["dfp", "shard", str(tmp_path / "in"), str(tmp_path / "o"), *opts.split()])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "o").exists()
