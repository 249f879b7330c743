"""Audio: any rate, any channel count -> mono FLAC (16-bit) at the shard sample rate."""
from __future__ import annotations

import io
import os
from math import gcd

import numpy as np
import soundfile as sf

from . import MediaError
from .video import DEFAULT_MAX_SECONDS


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x
    from scipy.signal import resample_poly
    g = gcd(sr_in, sr_out)
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def _is_video(path) -> bool:
    from ..sources import EXTENSIONS
    return os.path.splitext(str(path))[1].lower() in EXTENSIONS["video"]


def _read_video_audio(path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """The audio track of a video file as (frames, channels) float32, decoded with PyAV."""
    import av
    from .video import container_seconds, too_long
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise MediaError("no audio track in the video")
            err = too_long(container_seconds(c), max_seconds)
            if err:
                raise err
            stream = c.streams.audio[0]
            planar = av.AudioResampler(format="fltp")  # (channels, samples) whatever the codec's sample format
            chunks = [g.to_ndarray() for f in c.decode(stream) for g in planar.resample(f)]
            chunks += [g.to_ndarray() for g in planar.resample(None)]
            sr = stream.rate
    except av.FFmpegError as e:
        raise MediaError(f"corrupt: {e}") from None
    if not chunks:
        raise MediaError("empty: no audio frames")
    return np.concatenate(chunks, axis=1).T.astype(np.float32), int(sr)


def _read_sound_file(path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """The duration comes from the header (soundfile's info) before the samples are read."""
    from .video import too_long
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:  # soundfile encodes a str path as UTF-8: open a name that is not UTF-8 ourselves
        with open(path, "rb") as f:
            return _read_checked(f, max_seconds, too_long)
    return _read_checked(path, max_seconds, too_long)


def _read_checked(src, max_seconds: float | None, too_long) -> tuple[np.ndarray, int]:
    info = sf.info(src)
    err = too_long(info.frames / info.samplerate if info.samplerate else None, max_seconds)
    if err:
        raise err
    if hasattr(src, "seek"):
        src.seek(0)
    return sf.read(src, dtype="float32", always_2d=True)


def load_mono(path: str | os.PathLike, sample_rate: int, max_seconds: float | None = DEFAULT_MAX_SECONDS
              ) -> tuple[np.ndarray, dict]:
    try:
        if os.path.getsize(path) == 0:
            raise MediaError("empty file")
        data, sr = _read_video_audio(path, max_seconds) if _is_video(path) else _read_sound_file(path, max_seconds)
    except MediaError:
        raise
    except PermissionError as e:
        raise MediaError(f"unreadable: {e.strerror}") from None
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as e:
        raise MediaError(f"corrupt: {e}") from None
    if data.shape[0] == 0:
        raise MediaError("empty: no audio frames")
    _check_finite(data)
    mono = data.mean(axis=1)
    meta = {"orig_sample_rate": int(sr), "channels": int(data.shape[1]), "duration": round(data.shape[0] / sr, 4)}
    return resample(mono, sr, sample_rate), meta


def _check_finite(data: np.ndarray) -> None:
    """Float WAVs can hold NaN or infinity; neither has a 16-bit FLAC value (soundfile fails on them)."""
    if np.isnan(data).any():
        raise MediaError("corrupt: contains NaN samples")
    if np.isinf(data).any():
        raise MediaError("corrupt: contains infinite samples")


def encode_flac(x: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def prepare_audio(path: str | os.PathLike, sample_rate: int, max_seconds: float | None = DEFAULT_MAX_SECONDS
                  ) -> tuple[dict[str, bytes], dict]:
    mono, meta = load_mono(path, sample_rate, max_seconds)
    meta["sample_rate"] = sample_rate
    return {"flac": encode_flac(mono, sample_rate)}, meta


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    x, sr = sf.read(io.BytesIO(data), dtype="float32")
    return x, sr
