"""Damaged and oversized input: one verdict on what decodes, packing what was checked, bounded decoding."""
import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from factory import dfp_in_process, smooth_image, tone, write_jpeg, write_video
from pipeline.formats import read_manifest
from pipeline.loaders import LoaderOptions, make_loader
from pipeline.errors import MediaError
from pipeline.media import prepare
from pipeline.media.image import jpeg_check
from pipeline.shards import ShardParams, build_shards
from pipeline.verify import verify_shards

REPO = Path(__file__).resolve().parents[1]


def samples(root: Path, split: str | None = None) -> dict[str, bytes]:
    """source -> packed JPEG bytes, over every shard of a build (or of one split)."""
    from pipeline.formats import read_shard
    out = {}
    for row in read_manifest(root)["shards"]:
        if split and row["split"] != split:
            continue
        path = root / row["path"]
        with open(path, "rb") as f:
            for _, members in read_shard(path)[1]:
                data = {}
                for m in members:
                    f.seek(m.offset)
                    data[m.ext] = f.read(m.size)
                out[json.loads(data["json"])["source"]] = data["jpg"]
    return out


def rejects(root: Path) -> dict[str, str]:
    return {r["source"]: r["reason"] for r in map(json.loads, open(root / "rejects.jsonl"))}


# ---------------------------------------------------------------- one decoder truth
@pytest.fixture(scope="module")
def damaged_shards(tmp_path_factory):
    """32 JPEGs, every other one with its middle quarter overwritten (header and end marker kept), packed with
    `--check structure`, which lets them all in."""
    root = tmp_path_factory.mktemp("damaged")
    rng = np.random.default_rng(0)
    for i in range(32):
        p = write_jpeg(root / "in" / ("real", "fake")[i % 4 // 2] / f"{i:02d}.jpg", smooth_image(rng, 96, 80))
        if i % 2 == 0:
            raw = bytearray(p.read_bytes())
            a, b = 3 * len(raw) // 8, 5 * len(raw) // 8
            raw[a:b] = rng.integers(0, 256, b - a, dtype=np.uint8).tobytes()
            p.write_bytes(bytes(raw))
    build_shards(root / "in", root / "shards", ShardParams(check="structure", split="0.5,0.25,0.25"), workers=1,
                 progress=False)
    assert sum(sum(c.values()) for c in read_manifest(root / "shards")["splits"].values()) == 32
    return root / "shards"


def _undecodable(shards: Path, split: str) -> set[str]:
    return {s for s, b in samples(shards, split).items() if jpeg_check(b) is not None}


def test_dali_decodes_damaged_jpegs_without_an_error(damaged_shards):
    """Why the loaders apply the shared check: DALI's CPU decoder makes pictures of what the check refuses."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types
    bad = [b for b in samples(damaged_shards).values() if jpeg_check(b) is not None]

    @pipeline_def(batch_size=len(bad), num_threads=1, device_id=None)
    def pipe():
        jpegs = fn.external_source(source=lambda: [np.frombuffer(b, np.uint8) for b in bad], batch=True,
                                   dtype=types.UINT8)
        return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)

    p = pipe()
    p.build()
    (out,) = p.run()
    assert [tuple(out.at(i).shape) for i in range(len(bad))] == [(80, 96, 3)] * len(bad)


def test_backends_and_verify_agree_on_damaged_jpegs_in_evaluation(damaged_shards):
    pytest.importorskip("nvidia.dali")
    bad = _undecodable(damaged_shards, "train")
    assert 0 < len(bad) <= 8
    problems, _ = verify_shards(damaged_shards, progress=False, max_problems=100)
    assert len([p for p in problems if p.startswith("train/")]) == len(bad)
    seen = {}
    for backend in ("torch", "dali"):
        ld = make_loader(damaged_shards, "train", backend, "cpu", LoaderOptions(train=False, batch_size=8, image_size=32,
                                                                                workers=0))
        keys = {k for _, _, ks in ld for k in ks}
        seen[backend] = (ld.skipped, keys)
    assert seen["torch"] == seen["dali"]
    assert seen["torch"][0] == len(bad) and len(seen["torch"][1]) == 16 - len(bad)


def test_backends_skip_equally_in_training(damaged_shards):
    pytest.importorskip("nvidia.dali")
    opts = LoaderOptions(batch_size=8, image_size=32, workers=0, epoch_len=32, sampling="natural")
    counts = {}
    for backend in ("torch", "dali"):
        ld = make_loader(damaged_shards, "train", backend, "cpu", opts)
        keys = [k for _, _, ks in ld for k in ks]
        counts[backend] = (ld.skipped, sorted(set(keys)))
    assert counts["torch"][0] > 0
    assert counts["torch"] == counts["dali"]


def test_torch_backend_decodes_what_the_shared_check_accepts(damaged_shards):
    """torchvision refuses JPEGs on libjpeg warnings; the torch backend then asks the shared check."""
    from pipeline.loaders.decode import _decode_jpeg
    for b in samples(damaged_shards).values():
        assert (_decode_jpeg(b) is not None) == (jpeg_check(b) is None)


def test_data_after_the_end_marker_is_decoded_by_both_backends(tmp_path):
    """A JPEG with bytes after its end marker (camera trailers) decodes everywhere: DALI must not skip it."""
    pytest.importorskip("nvidia.dali")
    rng = np.random.default_rng(4)
    for i in range(8):
        p = write_jpeg(tmp_path / "in" / ("real", "fake")[i % 2] / f"{i}.jpg", smooth_image(rng, 40, 30))
        if i < 2:
            p.write_bytes(p.read_bytes() + b"trailer after the end")
    build_shards(tmp_path / "in", tmp_path / "shards", ShardParams(split="0.5,0.25,0.25"), workers=1, progress=False)
    for backend in ("torch", "dali"):
        got, skipped = set(), 0
        for split in ("train", "val", "test"):
            ld = make_loader(tmp_path / "shards", split, backend, "cpu",
                             LoaderOptions(train=False, batch_size=4, image_size=32, workers=0))
            got |= {k for _, _, ks in ld for k in ks}
            skipped += ld.skipped
        assert (len(got), skipped) == (8, 0), backend


# ---------------------------------------------------------------- packing what was checked
@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_rewritten_between_check_and_write_is_packed_as_checked(tmp_path, monkeypatch, workers):
    """Each input is rewritten, same size, right after its check (a deterministic race): what is packed must be
    the bytes that were checked, never the undecodable new content."""
    from pipeline import shards
    rng = np.random.default_rng(1)
    originals = {}
    for i in range(6):
        p = write_jpeg(tmp_path / "in" / ("real", "fake")[i % 2] / f"{i}.jpg", smooth_image(rng, 64, 48))
        originals[p.relative_to(tmp_path / "in").as_posix()] = p.read_bytes()
    real_prepare = shards.prepare

    def prepare_then_rewrite(path, modality, params):
        out = real_prepare(path, modality, params)
        n = Path(path).stat().st_size
        Path(path).write_bytes(b"\xff\xd8" + b"\x00" * (n - 4) + b"\xff\xd9")  # same size, does not decode
        return out

    monkeypatch.setattr(shards, "prepare", prepare_then_rewrite)
    build_shards(tmp_path / "in", tmp_path / "out", ShardParams(), workers=workers, progress=False)
    packed, rej = samples(tmp_path / "out"), rejects(tmp_path / "out")
    assert set(packed) | set(rej) == set(originals)
    for src, b in packed.items():
        assert b == originals[src] and jpeg_check(b) is None
    assert set(packed) == set(originals)  # the checked bytes travel with the result: nothing needs rejecting


# ---------------------------------------------------------------- bounded decoding
def bomb_png(path: Path, side: int = 20000) -> Path:
    """A bilevel PNG of side x side pixels (400 megapixels at the default side) in a few kB, written row by row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_pixel_limit_rejects_from_the_header(tmp_path):
    rng = np.random.default_rng(2)
    inp = tmp_path / "in"
    write_jpeg(inp / "real" / "small.jpg", smooth_image(rng, 40, 30))
    write_jpeg(inp / "fake" / "small.jpg", smooth_image(rng, 40, 30))
    bomb_png(inp / "real" / "bomb.png", side=300)
    Image.fromarray(smooth_image(rng, 120, 100)).save(inp / "fake" / "big.png")
    build_shards(inp, tmp_path / "out", ShardParams(max_pixels=10_000), workers=1, progress=False)
    rej = rejects(tmp_path / "out")
    assert set(rej) == {"real/bomb.png", "fake/big.png"}
    assert rej["real/bomb.png"].startswith("too large: 300x300") and "--max-pixels 10000" in rej["real/bomb.png"]
    assert set(samples(tmp_path / "out")) == {"real/small.jpg", "fake/small.jpg"}
    assert read_manifest(tmp_path / "out")["params"]["max_pixels"] == 10_000


def test_default_limit_rejects_a_20000_square_png_fast_and_small(tmp_path):
    """Decoding it took 20 s and 3.2 GB; from its header it is a fraction of a second in a small process."""
    bomb = bomb_png(tmp_path / "bomb.png")
    # VmHWM, not ru_maxrss: the latter keeps the forking test process's peak across exec
    code = ("import re, time, sys; from pipeline.media import prepare; from pipeline.errors import MediaError; t = time.time()\n"
            "try:\n    prepare(sys.argv[1], 'image', {'max_side': 512})\nexcept MediaError as e:\n    print(e)\n"
            "print(time.time() - t, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])")
    r = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, cwd=REPO, timeout=60)
    reason, stats = r.stdout.splitlines()
    seconds, peak_kb = map(float, stats.split())
    assert reason.startswith("too large: 20000x20000 is 400.0 megapixels")
    assert seconds < 2 and peak_kb < 200_000


def test_duration_limit_rejects_long_audio_and_video(tmp_path):
    wav = tmp_path / "long.wav"
    sf.write(wav, tone(8000, 2.0), 8000)
    with pytest.raises(MediaError, match=r"too long: 2\.0 s, over --max-seconds 1"):
        prepare(wav, "audio", {"sample_rate": 8000, "max_seconds": 1})
    assert prepare(wav, "audio", {"sample_rate": 8000})[0]["flac"]  # the default allows it
    clip = write_video(tmp_path / "clip.mp4", frames=10, fps=10)
    params = {"frames": 2, "max_side": 64}
    with pytest.raises(MediaError, match="too long: 1.0 s, over --max-seconds 0.5"):
        prepare(clip, "video", {**params, "max_seconds": 0.5})
    with pytest.raises(MediaError, match="too large: 48x32"):
        prepare(clip, "video", {**params, "max_pixels": 1000})
    assert prepare(clip, "video", params)[0]


def test_shard_and_predict_take_the_limits_and_reject_bad_values(tmp_path):
    (tmp_path / "m.pth").write_bytes(b"")
    for cmd in (["shard", str(tmp_path), str(tmp_path / "o")], ["predict", str(tmp_path / "m.pth"), str(tmp_path)]):
        for opt in ("--max-pixels", "--max-seconds"):
            r = subprocess.run([sys.executable, "-m", "pipeline.cli", *cmd, opt, "-1"], capture_output=True,
                               text=True, cwd=REPO)
            assert r.returncode == 2 and f"{opt} must be at least 0" in r.stderr, (cmd, opt, r.stderr)


@pytest.mark.slow
def test_predict_gives_an_oversized_picture_an_error_row(tmp_path, monkeypatch, capsys):
    from factory import image_tree
    from test_predict import untrained_checkpoint
    image_tree(tmp_path / "in", 6, 4)
    build_shards(tmp_path / "in", tmp_path / "shards", ShardParams(), workers=1, progress=False)
    ckpt = untrained_checkpoint(tmp_path / "shards", tmp_path / "model.pth", "torch")
    rng = np.random.default_rng(3)
    write_jpeg(tmp_path / "raw" / "ok.jpg", smooth_image(rng, 40, 30))
    bomb_png(tmp_path / "raw" / "bomb.png", side=200)
    code, _, err = dfp_in_process(["predict", ckpt, tmp_path / "raw", "--out", tmp_path / "p.csv", "--device", "cpu",
                                   "--workers", "0", "--backend", "torch", "--max-pixels", "10000"], monkeypatch, capsys)
    assert code == 0, err
    import csv
    rows = {Path(x["path"]).name: x for x in csv.DictReader(open(tmp_path / "p.csv"))}
    assert rows["bomb.png"]["error"].startswith("too large: 200x200") and not rows["bomb.png"]["score"]
    assert rows["ok.jpg"]["score"] and not rows["ok.jpg"]["error"]
