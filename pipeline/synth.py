"""Synthetic labeled datasets (`dfp synth`): OUT/real/... and OUT/fake/... for the demo, tests and benchmarks.

Every file has its own RNG seeded from (seed, class index, file index), so a dataset is byte-identical
for a fixed seed and any file can be regenerated alone. Files of one "identity" share a palette / voice /
face colour (drawn from (seed, group), the same for `real/id_GGG` and `fake/id_GGG`, so an identity is no class
cue) and live in `CLASS/id_GGG/take_T/NAME`, so grouped splits (`--group-depth 1` or `2`) are meaningful.

Format, size, duration, sample-rate and mean-level distributions are the same for both classes; fakes
differ only by a generation artifact whose strength varies per sample:

* image: a region (sometimes the whole image) re-synthesised at 1/2 or 1/3 resolution and upsampled
  (nearest or bilinear: blur + periodic interpolation traces, loss of sensor grain), blended with a
  random weight, plus a faint period-2 checkerboard and a slight colour offset in that region.
* audio: vocoder-like traces: in every fake a faint stationary comb of tones between 1.1 and 3.6 kHz
  (below 4 kHz so it survives every sample rate), in half also a frame-rate amplitude modulation (60-110 Hz).
* video: a region around the moving "face" blob re-rendered at low resolution and upsampled (blocky or
  blurred) in every frame, so a per-frame model sees it; in half of the fakes the face also flickers.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

MODALITIES = ("image", "audio", "video")
CLASSES = ("real", "fake")  # class index: real=0, fake=1
_GROUP_SALT = 1_000_003  # group-level RNG streams: (seed, _GROUP_SALT, group), the same for both classes
_FILES_PER_GROUP = 8
_FILES_PER_TAKE = 4


# ----------------------------------------------------------------------------------------------------------
# layout


def _n_groups(n: int) -> int:
    return 0 if n <= 0 else max(min(2, n), -(-n // _FILES_PER_GROUP))


def _group_of(i: int, n: int) -> int:
    """Contiguous blocks of files per identity."""
    return i * _n_groups(n) // n


def _rel_dir(cls: str, i: int, n: int) -> tuple[str, int]:
    g = _group_of(i, n)
    first = -(-g * n // _n_groups(n))  # smallest j with j * groups // n == g
    take = (i - first) // _FILES_PER_TAKE
    return f"{cls}/id_{g:03d}/take_{take}", g


# ----------------------------------------------------------------------------------------------------------
# shared helpers


def _spectral_noise(rng: np.random.Generator, shape: tuple[int, ...], beta: float | np.ndarray) -> np.ndarray:
    """Zero-mean, unit-std noise over the last two axes with amplitude spectrum ~ 1/f**beta (natural-image-like)."""
    *lead, h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0 / max(h, w)
    beta = np.asarray(beta, dtype=np.float64).reshape(tuple(lead) + (1, 1)) if np.ndim(beta) else beta
    spec = rng.standard_normal((*lead, h, w // 2 + 1)) + 1j * rng.standard_normal((*lead, h, w // 2 + 1))
    spec = spec / f ** beta
    spec[..., 0, 0] = 0.0
    out = np.fft.irfft2(spec, s=(h, w))
    out /= out.std(axis=(-2, -1), keepdims=True) + 1e-12
    return out


def _resize_f(arr: np.ndarray, size: tuple[int, int], method) -> np.ndarray:
    """Resize a float HxW or HxWxC array with PIL ('F' mode, per channel); size is (W, H)."""
    if arr.ndim == 2:
        return np.asarray(Image.fromarray(arr.astype(np.float32), "F").resize(size, method))
    return np.stack([_resize_f(arr[..., c], size, method) for c in range(arr.shape[-1])], axis=-1)


def _soft_ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float, feather: float) -> np.ndarray:
    y = (np.arange(h)[:, None] - cy) / max(ry, 1.0)
    x = (np.arange(w)[None, :] - cx) / max(rx, 1.0)
    d = np.sqrt(x * x + y * y)
    return np.clip((1.0 - d) / max(feather, 1e-3), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------
# image


def _image_group(rng: np.random.Generator) -> dict:
    mix = np.empty((3, 3))
    mix[:, 0] = rng.uniform(0.85, 1.15) + rng.normal(0, 0.08, 3)   # luminance loading
    mix[:, 1:] = rng.normal(0, 0.25, (3, 2))                       # chroma loadings
    return {"mix": mix, "tint": rng.normal(0, 12, 3), "beta": rng.uniform(0.95, 1.35)}


def _natural_image(rng: np.random.Generator, h: int, w: int, grp: dict) -> np.ndarray:
    """Smooth structure (1/f fields, blobs, a gradient) plus fine texture; float HxWx3 around 0..255."""
    beta = grp["beta"] + rng.uniform(-0.1, 0.1)
    fields = _spectral_noise(rng, (3, h, w), np.array([beta, beta + 0.5, beta + 0.5]))
    lum = fields[0] * rng.uniform(0.6, 1.0)
    yy, xx = np.mgrid[0:h, 0:w]
    yy = yy / h
    xx = xx / w
    ang = rng.uniform(0, 2 * np.pi)
    lum = lum + rng.uniform(0, 1.0) * (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)) * 2
    chroma = fields[1:] * 0.6
    for _ in range(int(rng.integers(2, 6))):
        cy, cx = rng.uniform(0, 1, 2)
        s = rng.uniform(0.08, 0.3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        lum = lum + rng.uniform(-1.5, 1.5) * blob
        chroma = chroma + rng.normal(0, 0.6, (2, 1, 1)) * blob
    # occluding objects with sharp (anti-aliased) edges and their own shading
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(0.08, 0.35) * h, rng.uniform(0.08, 0.35) * w
        if rng.random() < 0.5:
            obj = _soft_ellipse(h, w, cy, cx, ry, rx, 1.2 / max(min(ry, rx), 1.0))
        else:  # a rotated rectangle
            rot = rng.uniform(0, np.pi)
            u = np.cos(rot) * (xx * w - cx) + np.sin(rot) * (yy * h - cy)
            v = -np.sin(rot) * (xx * w - cx) + np.cos(rot) * (yy * h - cy)
            obj = np.clip(np.minimum(rx - np.abs(u), ry - np.abs(v)) / 1.2 + 0.5, 0.0, 1.0)
        light = rng.uniform(0, 2 * np.pi)
        shade = rng.uniform(-1.8, 1.8) + 0.5 * (np.cos(light) * (xx - 0.5) + np.sin(light) * (yy - 0.5))
        lum = lum * (1 - obj) + (shade + 0.35 * lum) * obj
        chroma = chroma * (1 - obj) + rng.normal(0, 0.8, (2, 1, 1)) * obj
    stack = np.stack([lum, chroma[0], chroma[1]], axis=-1)       # H, W, 3
    rgb = stack @ grp["mix"].T
    rgb = (rgb - rgb.mean(axis=(0, 1))) / (lum.std() + 1e-6)
    level = rng.uniform(70, 180)
    contrast = rng.uniform(22, 50)
    rgb = level + grp["tint"] + rng.normal(0, 5, 3) + contrast * rgb
    grain = rng.uniform(1.5, 3.0)                                  # sensor grain: the detail fakes lose
    rgb += grain * (0.6 * rng.standard_normal((h, w, 1)) + 0.8 * rng.standard_normal((h, w, 3)))
    return rgb


def _fake_artifact(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Blend in a region re-generated at 1/4 to 1/8 resolution and upsampled (blur, periodic interpolation
    traces, lost grain), with a faint period-2 checkerboard and slightly different colour statistics."""
    h, w, _ = img.shape
    if rng.random() < 0.5:
        mask = np.ones((h, w))
    else:
        mask = _soft_ellipse(h, w, rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w,
                             rng.uniform(0.3, 0.48) * h, rng.uniform(0.3, 0.48) * w, rng.uniform(0.1, 0.4))
    factor = int(rng.choice([4, 6, 8]))  # coarse enough to survive the loaders' resampling augmentations
    nearest = factor == 2 and rng.random() < 0.4
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    small = _resize_f(img, (max(1, w // factor), max(1, h // factor)), Image.Resampling.BOX)
    up = _resize_f(small, (w, h), method)
    strength = rng.uniform(0.5, 1.0)
    yy, xx = np.mgrid[0:h, 0:w]
    checker = np.where((yy + xx) % 2 == 0, 1.0, -1.0)[..., None] * rng.uniform(0.0, 1.2)
    m = mask[..., None]
    out = img + strength * m * (up - img)
    # slightly different colour statistics in the region: less saturated, a small tint
    gray = out.mean(axis=-1, keepdims=True)
    sat = rng.uniform(0.75, 0.95)
    out = out + m * ((sat - 1.0) * (out - gray) + checker + rng.normal(0, 2.0, 3))
    return out


def _make_image(rng: np.random.Generator, grp: dict, fake: bool, image_size) -> tuple[bytes, str]:
    if image_size is not None:
        w, h = int(image_size[0]), int(image_size[1])
        fmt = "jpg"
    else:
        w, h = (int(v) for v in rng.integers(96, 257, 2))
        fmt = "png" if rng.random() < 0.25 else "jpg"
    img = _natural_image(rng, h, w, grp)
    if fake:
        img = _fake_artifact(rng, img)
    img = img + rng.uniform(0.0, 1.0) * rng.standard_normal(img.shape)   # camera/compression noise, both classes
    im = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    if fmt == "jpg":
        im.save(buf, format="JPEG", quality=90)
    else:
        im.save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), fmt


# ----------------------------------------------------------------------------------------------------------
# audio

_SAMPLE_RATES = (8000, 16000, 22050, 44100)


def _audio_group(rng: np.random.Generator) -> dict:
    return {"f0": rng.uniform(95, 250), "formants": np.sort(rng.uniform([300, 900, 2200], [850, 2100, 3300])),
            "tilt": rng.uniform(0.8, 1.6)}


def _speech_like(rng: np.random.Generator, sr: int, n: int, grp: dict) -> np.ndarray:
    t = np.arange(n) / sr
    # wandering pitch: slow random components around the speaker's f0
    f0 = grp["f0"] * rng.uniform(0.9, 1.1)
    wander = sum(rng.uniform(0.02, 0.07) * np.sin(2 * np.pi * rng.uniform(0.3, 3.0) * t + rng.uniform(0, 6.3))
                 for _ in range(3))
    f0_t = f0 * (1.0 + wander)
    phase = 2 * np.pi * np.cumsum(f0_t) / sr
    nyq = 0.45 * sr
    k_max = int(min(nyq, 7000) // (f0 * 1.25))
    formants = grp["formants"] * rng.uniform(0.92, 1.08, 3)
    x = np.zeros(n)
    for k in range(1, k_max + 1):
        fk = k * f0
        gain = k ** -grp["tilt"] * (1.0 + sum(3.0 * np.exp(-((fk - F) / (0.12 * F)) ** 2) for F in formants))
        x += gain * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    # syllables: 3-6 Hz on/off envelope with soft edges
    syl_rate = rng.uniform(3.0, 6.0)
    n_syl = int(np.ceil(t[-1] * syl_rate)) + 2 if n else 1
    on = rng.random(n_syl) < 0.8
    amp = rng.uniform(0.4, 1.0, n_syl) * on
    pos = t * syl_rate + rng.uniform(0, 1)
    idx = np.minimum(pos.astype(int), n_syl - 1)
    frac = pos - np.floor(pos)
    env = amp[idx] * np.sin(np.pi * frac) ** 0.7
    x = x * env
    x /= np.abs(x).max() + 1e-9
    noise = rng.standard_normal(n)
    noise = np.convolve(noise, np.ones(3) / 3, mode="same")
    x = x + rng.uniform(0.005, 0.03) * noise
    return x


def _vocoder_traces(rng: np.random.Generator, x: np.ndarray, sr: int) -> np.ndarray:
    """A stationary comb of faint tones (a vocoder's periodic spectral peaks) in every fake, and in some also a
    frame-rate amplitude modulation. The comb lies between 1.1 and 3.6 kHz, below every sample rate's Nyquist,
    where the log-mel's bands are narrower than its spacing; it is steady, so it shows as horizontal lines through
    the pauses of speech that a random crop, gain, noise and one frequency mask leave in place. A few tones at
    -25 to -13 dB below the speech's RMS move loudness and spectral centroid far less than voices differ."""
    n = len(x)
    t = np.arange(n) / sr
    rms = np.sqrt(np.mean(x * x)) + 1e-9
    base, spacing = rng.uniform(1100, 1700), rng.uniform(300, 450)
    tones = [base + m * spacing for m in range(6) if base + m * spacing < min(3600, 0.45 * sr)]
    level = rms * 10 ** (rng.uniform(-25, -13) / 20)
    x = x + level * sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in tones)
    if rng.random() < 0.5:  # overlap-add hop of a frame-based vocoder
        hop, depth = rng.uniform(60, 110), rng.uniform(0.1, 0.35)
        x = x * (1.0 + depth * np.sign(np.sin(2 * np.pi * hop * t)) * 0.5)
    return x


def _make_audio(rng: np.random.Generator, grp: dict, fake: bool) -> tuple[bytes, str]:
    import soundfile as sf
    sr = int(rng.choice(_SAMPLE_RATES))
    channels = 2 if rng.random() < 0.3 else 1
    dur = rng.uniform(0.3, 0.95) if rng.random() < 0.1 else rng.uniform(1.0, 3.0)
    fmt = "flac" if rng.random() < 1 / 3 else "wav"
    n = max(1, int(dur * sr))
    x = _speech_like(rng, sr, n, grp)
    if fake:
        x = _vocoder_traces(rng, x, sr)
    gain = rng.uniform(0.3, 0.8)
    x = x / (np.abs(x).max() + 1e-9) * gain
    if channels == 2:
        delay = int(rng.integers(0, max(2, sr // 2000)))
        right = np.roll(x, delay) * rng.uniform(0.7, 1.0) + 0.003 * rng.standard_normal(n)
        data = np.stack([x, right], axis=1)
    else:
        data = x
    buf = io.BytesIO()
    sf.write(buf, np.clip(data, -1, 1), sr, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue(), fmt


# ----------------------------------------------------------------------------------------------------------
# video


# decord 0.6.0 returns frames with 4 (or 6) channels for H.264 clips of width 16, 24, 48 or 72: avoid 72 here.
_VIDEO_WIDTHS = tuple(w for w in range(64, 129, 2) if w != 72)


def _video_group(rng: np.random.Generator) -> dict:
    return {"mix": _image_group(rng)["mix"], "face": rng.uniform(90, 200, 3)}


def _yuv420p_frame(rgb: np.ndarray):
    """An `av.VideoFrame` (yuv420p, BT.601 limited range) whose every byte is set, padding included.

    PyAV leaves the row padding of a frame's planes (line_size > width) uninitialised and libx264 reads it,
    so frames from `from_ndarray` made the encoded bytes vary from run to run. Converting here and filling
    the padding by edge replication makes the MP4 byte-identical for a fixed seed.
    """
    import av
    h, w, _ = rgb.shape
    x = rgb.astype(np.float32)
    y = 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0
    sub = x.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    u = 128.0 + (-37.797 * sub[..., 0] - 74.203 * sub[..., 1] + 112.0 * sub[..., 2]) / 255.0
    v = 128.0 + (112.0 * sub[..., 0] - 93.786 * sub[..., 1] - 18.214 * sub[..., 2]) / 255.0
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, arr in zip(frame.planes, (y, u, v)):
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        rows = plane.buffer_size // plane.line_size
        full = np.pad(arr, ((0, rows - arr.shape[0]), (0, plane.line_size - arr.shape[1])), mode="edge")
        plane.update(full.tobytes())
    return frame


def _swap_traces(rng: np.random.Generator) -> dict:
    """How a fake's face swap shows: a region around the face (1.5 to 2 times its radii) re-rendered at 1/4 to
    1/8 resolution and upsampled (blocky or blurred), blended in with a random weight, in every frame, so a
    per-frame model sees it; half of the fakes also flicker in brightness from frame to frame."""
    return {"factor": int(rng.choice([4, 6, 8])), "nearest": bool(rng.random() < 0.5), "weight": rng.uniform(0.7, 1.0),
            "grow": rng.uniform(1.5, 2.0), "flicker": rng.uniform(3, 10) if rng.random() < 0.5 else 0.0}


def _swap_region(img: np.ndarray, region: np.ndarray, p: dict) -> np.ndarray:
    """Box-filtering keeps the region's mean colour; what changes is its fine detail and, if nearest, block edges."""
    h, w, _ = img.shape
    small = _resize_f(img, (max(1, w // p["factor"]), max(1, h // p["factor"])), Image.Resampling.BOX)
    up = _resize_f(small, (w, h), Image.Resampling.NEAREST if p["nearest"] else Image.Resampling.BILINEAR)
    return img + p["weight"] * region * (up - img)


def _make_video(rng: np.random.Generator, grp: dict, fake: bool) -> tuple[bytes, str]:
    import av
    w = int(rng.choice(_VIDEO_WIDTHS))
    h = 2 * int(rng.integers(32, 65))
    n_frames = int(rng.integers(8, 21))
    fps = int(rng.integers(10, 26))
    pad = 24
    bh, bw = h + 2 * pad, w + 2 * pad
    tex = _spectral_noise(rng, (3, bh, bw), np.array([1.1, 1.6, 1.6]))
    bg = np.moveaxis(tex, 0, -1) @ grp["mix"].T
    bg = rng.uniform(80, 170) + rng.uniform(25, 45) * bg / (bg.std() + 1e-6)
    face_tex = _spectral_noise(rng, (h, w), 1.2)[..., None] * rng.uniform(8, 18)
    vy, vx = rng.uniform(-1.2, 1.2, 2)                       # background pan, px/frame
    cy0, cx0 = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    by, bx = rng.uniform(-1.5, 1.5, 2)                       # blob ("face") motion
    ry, rx = rng.uniform(0.18, 0.3) * h, rng.uniform(0.18, 0.3) * w
    face_rgb = grp["face"] + rng.normal(0, 12, 3)
    drift = rng.uniform(-6, 6)                               # slow, smooth lighting change (both classes)
    swap = _swap_traces(rng) if fake else None
    frames = []
    for f in range(n_frames):
        oy = min(max(int(round(pad + vy * f)), 0), 2 * pad)
        ox = min(max(int(round(pad + vx * f)), 0), 2 * pad)
        img = bg[oy:oy + h, ox:ox + w].copy()
        m = _soft_ellipse(h, w, cy0 + by * f, cx0 + bx * f, ry, rx, 0.3)[..., None]
        face = face_rgb + face_tex + (rng.normal(0, swap["flicker"]) if swap else 0.0)
        img = img * (1 - m) + face * m + drift * f / max(1, n_frames - 1)
        if swap:
            g = swap["grow"]
            img = _swap_region(img, _soft_ellipse(h, w, cy0 + by * f, cx0 + bx * f, g * ry, g * rx, 0.3)[..., None], swap)
        img += rng.standard_normal(img.shape) * 1.5
        frames.append(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as out:
        # threads=1 and mbtree=0: x264's MB-tree lookahead made the bytes vary between runs on some clips
        stream = out.add_stream("libx264", rate=fps, options={"crf": "20", "preset": "veryfast", "threads": "1",
                                                              "x264-params": "mbtree=0"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for arr in frames:
            for pkt in stream.encode(_yuv420p_frame(arr)):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return buf.getvalue(), "mp4"


# ----------------------------------------------------------------------------------------------------------
# entry point


def synth_dataset(out: str | Path, modality: str, n_real: int, n_fake: int, seed: int = 0,
                  image_size: tuple[int, int] | None = None, progress: bool = False) -> dict:
    """Writes OUT/real/... and OUT/fake/...; returns {"real": n_real, "fake": n_fake, "files": [relative paths]}.

    Files go to `OUT/CLASS/id_GGG/take_T/NAME.EXT` (plain ASCII). Existing files with the same names are
    overwritten; other files under OUT are left alone. `image_size=(W, H)` (images only) makes every image
    exactly that size and JPEG.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, not {modality!r}")
    if n_real < 0 or n_fake < 0:
        raise ValueError("--n-real and --n-fake must be >= 0")
    if image_size is not None:
        if modality != "image":
            raise ValueError("image_size applies to --modality image only")
        if len(image_size) != 2 or min(int(v) for v in image_size) < 8:
            raise ValueError(f"image_size must be (W, H) with sides >= 8, not {image_size!r}")
    out = Path(out)
    jobs = [(c, cls, i, n) for c, (cls, n) in enumerate(zip(CLASSES, (n_real, n_fake))) for i in range(n)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc=f"synth {modality}", unit="file")
    files: list[str] = []
    groups: dict[int, dict] = {}
    make_group = {"image": _image_group, "audio": _audio_group, "video": _video_group}[modality]
    prefix = {"image": "img", "audio": "utt", "video": "clip"}[modality]
    try:
        for c, cls, i, n in jobs:
            rel_dir, g = _rel_dir(cls, i, n)
            if g not in groups:
                # identities are shared across classes (fakes "of the same people"): an identity is no class cue
                groups[g] = make_group(np.random.default_rng([seed, _GROUP_SALT, g]))
            rng = np.random.default_rng([seed, c, i])
            fake = c == 1
            if modality == "image":
                data, ext = _make_image(rng, groups[g], fake, image_size)
            elif modality == "audio":
                data, ext = _make_audio(rng, groups[g], fake)
            else:
                data, ext = _make_video(rng, groups[g], fake)
            rel = f"{rel_dir}/{prefix}_{i:05d}.{ext}"
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            files.append(rel)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {"real": n_real, "fake": n_fake, "files": files}
