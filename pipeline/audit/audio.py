"""Audio nuisance features: the header (sample rate, channels, codec, bit depth, duration) and a few level
measures of the decoded clip, mixed to mono.

Energy rule (one for every measure here): the clip is cut into 10 ms frames; a frame's level is its RMS in dB
relative to the loudest frame's RMS; frames below -40 dB are silence. Leading (trailing) silence is the time
before the first (after the last) frame at or above -40 dB. The noise floor is the 10th percentile of the frame
levels in dBFS; peak and RMS are dBFS of the whole clip; DC offset is the mean sample value.
"""
from __future__ import annotations

import io

import numpy as np

FRAME_SECONDS = 0.010
SILENCE_DB = -40.0
_EPS = 1e-10


def levels(x: np.ndarray, sr: int) -> dict:
    """The level features of a mono float clip."""
    hop = max(1, int(round(sr * FRAME_SECONDS)))
    n = len(x) // hop
    if n == 0:
        frames = np.asarray([np.sqrt(np.mean(x ** 2)) if len(x) else 0.0])
    else:
        frames = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))
    db = 20 * np.log10(frames + _EPS)
    loud = np.flatnonzero(db - db.max() >= SILENCE_DB)
    lead = loud[0] * FRAME_SECONDS if len(loud) else len(frames) * FRAME_SECONDS
    trail = (len(frames) - 1 - loud[-1]) * FRAME_SECONDS if len(loud) else 0.0
    return {"leading_silence": float(lead), "trailing_silence": float(trail),
            "peak_db": float(20 * np.log10(np.max(np.abs(x)) + _EPS)) if len(x) else -200.0,
            "rms_db": float(20 * np.log10(np.sqrt(np.mean(x ** 2)) + _EPS)) if len(x) else -200.0,
            "dc_offset": float(np.mean(x)) if len(x) else 0.0,
            "noise_floor_db": float(np.percentile(db, 10))}


def features(source) -> dict:
    """The features of one clip (a path or bytes)."""
    import soundfile as sf
    src = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with sf.SoundFile(src) as f:
        sr, channels = f.samplerate, f.channels
        head = {"sample_rate": float(sr), "channels": float(channels), "codec": f.format,
                "bit_depth": f.subtype, "duration": f.frames / sr}
        x = f.read(dtype="float32", always_2d=True)
    return head | levels(x.mean(axis=1), sr)


def features_any(path) -> dict:
    """soundfile's formats directly; anything else (e.g. the audio track of a video) through the packer's reader."""
    try:
        return features(path)
    except Exception:
        from ..media.audio import load_mono
        x, meta = load_mono(path, 16000)
        head = {"sample_rate": float(meta["orig_sample_rate"]), "channels": float(meta["channels"]),
                "codec": "other", "bit_depth": "other", "duration": float(meta["duration"])}
        return head | levels(x, 16000)
