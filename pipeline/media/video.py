"""Video: a fixed number of frames sampled uniformly with decord, resized, stored as JPEG.

With `fps` (`dfp shard --fps`) the frames are instead taken at that rate from the middle of the clip, so the time
between stored frames is the same for every clip whatever its own frame rate and length.

DALI's CPU video decoder does not take H.264, so frames are extracted once, at shard time.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..errors import MediaError
from .image import Encoding, encode, resize
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


def rate_indices(n_available: int, src_fps: float, n_wanted: int, fps: float) -> np.ndarray:
    """Source frames at times t_k = start + k / fps, centred in the clip: the frame shown at t_k (the nearest
    source frame at or before it). A clip shorter than n_wanted / fps holds its last frame."""
    if not src_fps > 0:
        return frame_indices(n_available, n_wanted)
    duration = n_available / src_fps
    start = max(0.0, (duration - n_wanted / fps) / 2)
    t = start + np.arange(n_wanted) / fps
    return np.clip(np.floor(t * src_fps + 1e-6), 0, n_available - 1).astype(np.int64)


def _probe_size(path) -> tuple[int, int]:
    import av
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        return st.codec_context.width, st.codec_context.height


def _decode(path, frames: int, size: tuple[int, int] | None, fps: float | None = None):
    import decord
    kw = {"width": size[0], "height": size[1]} if size else {}
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, **kw)
    n = len(vr)
    if n == 0:
        raise MediaError("corrupt: no frames")
    src_fps = float(vr.get_avg_fps())
    idx = rate_indices(n, src_fps, frames, fps) if fps else frame_indices(n, frames)
    batch = vr.get_batch(list(idx)).asnumpy()
    if batch.ndim != 4 or batch.shape[-1] != 3:  # the same decord row-alignment bug, without an exception
        raise RuntimeError(f"DECORDArrayCopyFromTo: frames came back with shape {batch.shape}")
    return batch, n, src_fps


def read_frames(path: str | os.PathLike, frames: int, max_seconds: float | None = DEFAULT_MAX_SECONDS,
                max_pixels: int | None = None, fps: float | None = None) -> tuple[np.ndarray, dict]:
    from .image import DEFAULT_MAX_PIXELS
    try:
        if os.path.getsize(path) == 0:
            raise MediaError("empty file")
        check_video_bounds(path, max_seconds, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
        try:
            batch, n, src_fps = _decode(path, frames, None, fps)
        except MediaError:
            raise
        except Exception as e:
            # decord 0.6 fails to copy frames of some widths (e.g. 48 px: a row-alignment bug,
            # "DECORDArrayCopyFromTo: The size must exactly match"); decoding at a slightly wider
            # size and scaling back works around it.
            if "CopyFromTo" not in str(e):
                raise
            w, h = _probe_size(path)
            batch, n, src_fps = _decode(path, frames, (w + 2, h), fps)
            batch = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR)) for f in batch])
    except MediaError:
        raise
    except PermissionError as e:
        raise MediaError(f"unreadable: {e.strerror}") from None
    except Exception as e:  # decord raises its own DECORDError and RuntimeError subclasses
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise MediaError(f"corrupt: {msg}") from None
    return batch, {"orig_frames": int(n), "fps": round(src_fps, 3), "width": int(batch.shape[2]), "height": int(batch.shape[1])}


def prepare_video(path: str | os.PathLike, frames: int, max_side: int, max_seconds: float | None = DEFAULT_MAX_SECONDS,
                  max_pixels: int | None = None, enc: Encoding | None = None, fps: float | None = None
                  ) -> tuple[dict[str, bytes], dict]:
    """`enc`: how frames are stored (every frame is encoded; the default is JPEG_QUALITY, "fit")."""
    enc = enc or Encoding(quality=JPEG_QUALITY)
    batch, meta = read_frames(path, frames, max_seconds, max_pixels, fps)
    payload = {}
    for i, arr in enumerate(batch):
        im = resize(Image.fromarray(arr), max_side, enc.rule, Image.Resampling.BILINEAR)
        payload[frame_ext(i, enc.ext)] = encode(im, enc)
    meta["frames"] = frames
    if fps:
        meta["sampled_fps"] = fps
    return payload, meta
