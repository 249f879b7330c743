"""Video: a fixed number of frames sampled uniformly with decord, resized, stored as JPEG.

DALI's CPU video decoder does not take H.264, so frames are extracted once, at shard time.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from . import MediaError
from ..formats import frame_ext

JPEG_QUALITY = 90
DEFAULT_MAX_SECONDS = 3600.0  # audio and video: longer files are rejected from their headers (`--max-seconds`)


def too_long(seconds: float | None, max_seconds: float | None) -> MediaError | None:
    """The reject for a recording over the duration limit (None: within it, unknown, or no limit)."""
    if max_seconds and seconds is not None and seconds > max_seconds:
        return MediaError(f"too long: {seconds:.1f} s, over --max-seconds {max_seconds:g}")
    return None


def container_seconds(c) -> float | None:
    """A PyAV container's duration from its headers (None where they do not say)."""
    if c.duration:
        return c.duration / 1_000_000  # av.time_base
    for st in c.streams:
        if st.duration and st.time_base:
            return float(st.duration * st.time_base)
    return None


def check_video_bounds(path, max_seconds: float | None, max_pixels: int | None) -> None:
    """Duration and frame size from the headers, before any frame is decoded."""
    import av
    from .image import too_large
    try:
        with av.open(str(path)) as c:
            seconds = container_seconds(c)
            st = c.streams.video[0] if c.streams.video else None
            if st is not None and not seconds and st.frames and st.average_rate:
                seconds = float(st.frames / st.average_rate)
            w, h = (st.codec_context.width, st.codec_context.height) if st is not None else (0, 0)
    except (av.FFmpegError, OSError):
        return  # unreadable headers: the decoder gives the reject its reason
    err = too_long(seconds, max_seconds) or too_large(w, h, max_pixels)
    if err:
        raise err


def frame_indices(n_available: int, n_wanted: int) -> np.ndarray:
    """Uniform positions; short clips repeat frames so every sample has exactly n_wanted."""
    return np.linspace(0, n_available - 1, n_wanted).round().astype(np.int64)


def _probe_size(path) -> tuple[int, int]:
    import av
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        return st.codec_context.width, st.codec_context.height


def _decode(path, frames: int, size: tuple[int, int] | None):
    import decord
    kw = {"width": size[0], "height": size[1]} if size else {}
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, **kw)
    n = len(vr)
    if n == 0:
        raise MediaError("corrupt: no frames")
    batch = vr.get_batch(list(frame_indices(n, frames))).asnumpy()
    if batch.ndim != 4 or batch.shape[-1] != 3:  # the same decord row-alignment bug, without an exception
        raise RuntimeError(f"DECORDArrayCopyFromTo: frames came back with shape {batch.shape}")
    return batch, n, float(vr.get_avg_fps())


def read_frames(path: str | os.PathLike, frames: int, max_seconds: float | None = DEFAULT_MAX_SECONDS,
                max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    from .image import DEFAULT_MAX_PIXELS
    try:
        if os.path.getsize(path) == 0:
            raise MediaError("empty file")
        check_video_bounds(path, max_seconds, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
        try:
            batch, n, fps = _decode(path, frames, None)
        except MediaError:
            raise
        except Exception as e:
            # decord 0.6 fails to copy frames of some widths (e.g. 48 px: a row-alignment bug,
            # "DECORDArrayCopyFromTo: The size must exactly match"); decoding at a slightly wider
            # size and scaling back works around it.
            if "CopyFromTo" not in str(e):
                raise
            w, h = _probe_size(path)
            batch, n, fps = _decode(path, frames, (w + 2, h))
            batch = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR)) for f in batch])
    except MediaError:
        raise
    except PermissionError as e:
        raise MediaError(f"unreadable: {e.strerror}") from None
    except Exception as e:  # decord raises its own DECORDError and RuntimeError subclasses
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise MediaError(f"corrupt: {msg}") from None
    return batch, {"orig_frames": int(n), "fps": round(fps, 3), "width": int(batch.shape[2]), "height": int(batch.shape[1])}


def prepare_video(path: str | os.PathLike, frames: int, max_side: int, max_seconds: float | None = DEFAULT_MAX_SECONDS,
                  max_pixels: int | None = None) -> tuple[dict[str, bytes], dict]:
    batch, meta = read_frames(path, frames, max_seconds, max_pixels)
    payload = {}
    for i, arr in enumerate(batch):
        im = Image.fromarray(arr)
        if max(im.size) > max_side:
            im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=JPEG_QUALITY)
        payload[frame_ext(i)] = buf.getvalue()
    meta["frames"] = frames
    return payload, meta
