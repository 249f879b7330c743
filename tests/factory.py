"""Tiny media files made inside the tests: ordinary, unusual and corrupt; writable copies of shared runs; `dfp`
called in the test's own process."""
from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image


def smooth_image(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    a, b, c = rng.uniform(1, 6, 3)
    base = np.stack([np.sin(a * xx + b * yy + k) for k in range(3)], -1)
    img = (base * 0.4 + 0.5 + rng.normal(0, 0.05, (h, w, 3))) * 255
    return np.clip(img, 0, 255).astype(np.uint8)


def write_jpeg(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=90, **kw)
    return path


def image_tree(root: Path, n_real: int = 6, n_fake: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for cls, n in (("real", n_real), ("fake", n_fake)):
        for i in range(n):
            write_jpeg(root / cls / f"g{i % 2}" / f"{cls}_{i:03d}.jpg", smooth_image(rng, 64 + 8 * i, 48))
    return root


def unusual_images(root: Path, rng: np.random.Generator) -> dict[str, str]:
    """Valid but unusual images under root/real; returns {relative path: kind}."""
    d = root / "real" / "odd ones"
    d.mkdir(parents=True, exist_ok=True)
    made = {}
    arr = smooth_image(rng, 40, 30)
    Image.fromarray(arr).convert("L").save(d / "gray.png"); made["gray.png"] = "L"
    Image.fromarray(arr).convert("CMYK").save(d / "cmyk.jpg", "JPEG"); made["cmyk.jpg"] = "CMYK"
    rgba = np.dstack([arr, np.full(arr.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png"); made["rgba.png"] = "RGBA"
    Image.fromarray(arr).convert("P").save(d / "palette.png"); made["palette.png"] = "P"
    Image.fromarray((arr[..., 0].astype(np.uint16) * 257)).save(d / "sixteen.png"); made["sixteen.png"] = "I;16"
    exif = Image.Exif(); exif[0x0112] = 6  # rotate 90 degrees on display
    Image.fromarray(smooth_image(rng, 60, 20)).save(d / "rotated.jpg", "JPEG", exif=exif.tobytes()); made["rotated.jpg"] = "exif6"
    write_jpeg(d / "big.JPEG", smooth_image(rng, 1500, 900)); made["big.JPEG"] = "big"
    write_jpeg(d / "tiny.jpeg", smooth_image(rng, 3, 2)); made["tiny.jpeg"] = "tiny"
    write_jpeg(d / "ñame with space.jpg", arr); made["ñame with space.jpg"] = "unicode"
    return {f"real/odd ones/{k}": v for k, v in made.items()}


def corrupt_images(root: Path, rng: np.random.Generator) -> dict[str, str]:
    """Files that must be rejected; returns {relative path: expected reason prefix}."""
    d = root / "fake"
    d.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO(); Image.fromarray(smooth_image(rng, 64, 64)).save(good, "JPEG")
    (d / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.png").write_bytes(b"this is not an image at all\n" * 10)
    (d / "notes.txt").write_text("hello")
    (root / "README.md").write_text("top-level file")
    return {"fake/truncated.jpg": "corrupt", "fake/empty.jpg": "empty", "fake/text.png": "not media",
            "fake/notes.txt": "unsupported extension", "README.md": "not under a real/fake class folder"}


def tone(sr: int, seconds: float, channels: int = 1, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x] * channels, 1) if channels > 1 else x


def audio_tree(root: Path) -> Path:
    for cls, n in (("real", 4), ("fake", 2)):
        for i in range(n):
            p = root / cls / f"{cls}{i}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            sf.write(p, tone(16000, 0.5 + 0.25 * i, freq=200 + 50 * i), 16000)
    sf.write(root / "real" / "stereo24.flac", tone(44100, 1.2, channels=2), 44100, subtype="PCM_24")
    sf.write(root / "real" / "short8k.WAV", tone(8000, 0.3), 8000)
    (root / "fake" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    return root


def write_video(path: Path, frames: int = 6, w: int = 48, h: int = 32, fps: int = 10, seed: int = 0,
                codec: str = "libx264") -> Path:
    import av
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        base = smooth_image(rng, w, h)
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.roll(base, 2 * i, axis=1), format="rgb24")
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def video_tree(root: Path) -> Path:
    for cls, n in (("real", 3), ("fake", 2)):
        for i in range(n):
            write_video(root / cls / f"{cls}{i}.mp4", frames=5 + 2 * i, seed=i)
    write_video(root / "real" / "odd.mp4", frames=3, w=34, h=22)  # odd-ish size, fewer frames than asked
    write_video(root / "fake" / "other.AVI", frames=5, w=64, h=48, codec="mpeg4")  # another container and codec
    (root / "fake" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    return root


def write_av(path: Path, frames: int = 3, w: int = 32, h: int = 32, seconds: float = 0.3, sr: int = 16000,
             freq: float = 440.0, seed: int = 0) -> Path:
    """A tiny mp4 with an H.264 video stream and an AAC audio track (a tone)."""
    import av
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        aus = c.add_stream("aac", rate=sr)
        aus.layout = "mono"
        base = smooth_image(rng, w, h)
        for i in range(frames):
            c.mux(vs.encode(av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")))
        x = tone(sr, seconds, freq=freq)
        for start in range(0, len(x), 1024):
            f = av.AudioFrame.from_ndarray(x[None, start:start + 1024], format="fltp", layout="mono")
            f.sample_rate = sr
            c.mux(aus.encode(f))
        c.mux(vs.encode())
        c.mux(aus.encode())
    return path


def copy_run(run: Path, dest: Path, keep_last: bool = False) -> Path:
    """A writable copy of a shared finished run (conftest's tiny_image_run), without eval/, and without last.pth
    unless keep_last (tune and evaluate need only best_model.pth and the saved results)."""
    ignore = ("eval",) if keep_last else ("last.pth", "eval")
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(*ignore))
    return dest


def dfp_in_process(args, monkeypatch, capsys) -> tuple[int, str, str]:
    """`dfp ARGS` through cli.main, as the entry point runs it, without a process start: (exit code, stdout,
    stderr). The real process is for what only a process shows (a SIGKILL, torchrun, what gets imported)."""
    from pipeline import cli
    monkeypatch.setattr(sys, "argv", ["dfp", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def same_threads_env() -> dict:
    """The environment for a `dfp` process whose numbers are compared with a run in this process: torch's intra-op
    thread count changes the order of float sums, and a module of this suite sets this process to one thread."""
    import os

    import torch
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
