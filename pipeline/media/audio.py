"""Audio: any rate, any channel count -> mono FLAC (16-bit) at the shard sample rate."""
from __future__ import annotations

import io
import os
from math import gcd

import numpy as np
import soundfile as sf

from ..errors import MediaError
from .video import DEFAULT_MAX_SECONDS


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x
    from scipy.signal import resample_poly
    g = gcd(sr_in, sr_out)
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def _is_video(path) -> bool:
    from ..datasets.sources import EXTENSIONS
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


# The silence rule of `dfp shard --trim-silence`: 10 ms frames whose RMS is more than 40 dB below the loudest
# frame's are silent; leading and trailing silent frames go, but for a 20 ms margin kept on each side.
SILENCE_FRAME_S = 0.010
SILENCE_DB = -40.0
SILENCE_MARGIN_S = 0.020


def silence_bounds(x: np.ndarray, sample_rate: int) -> tuple[int, int]:
    """[start, end) of the clip once its leading and trailing silence is cut by the rule above; a clip that is
    all digital silence is kept whole."""
    hop = max(1, round(SILENCE_FRAME_S * sample_rate))
    n = len(x) // hop
    if n == 0:
        return 0, len(x)
    rms = np.sqrt(np.mean(np.square(x[:n * hop].reshape(n, hop), dtype=np.float64), axis=1))
    if rms.max() <= 0:
        return 0, len(x)
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (SILENCE_DB / 20))
    margin = round(SILENCE_MARGIN_S * sample_rate)
    end = len(x) if loud[-1] == n - 1 else (loud[-1] + 1) * hop
    return max(0, loud[0] * hop - margin), min(len(x), end + margin)


def trim_silence(x: np.ndarray, sample_rate: int, meta: dict) -> np.ndarray:
    start, end = silence_bounds(x, sample_rate)
    meta["trimmed_s"] = [round(start / sample_rate, 4), round((len(x) - end) / sample_rate, 4)]
    return x[start:end]


def prepare_audio(path: str | os.PathLike, sample_rate: int, max_seconds: float | None = DEFAULT_MAX_SECONDS,
                  trim: bool = False) -> tuple[dict[str, bytes], dict]:
    """`trim`: cut leading and trailing silence (`silence_bounds`) after resampling, so one rule meets every clip."""
    mono, meta = load_mono(path, sample_rate, max_seconds)
    if trim:
        mono = trim_silence(mono, sample_rate, meta)
    meta["sample_rate"] = sample_rate
    return {"flac": encode_flac(mono, sample_rate)}, meta


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    x, sr = sf.read(io.BytesIO(data), dtype="float32")
    return x, sr
