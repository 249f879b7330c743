"""Image nuisance features, read from the file's headers (PIL opens lazily: no pixel is decoded).

A JPEG's quality is estimated from its luminance (and chrominance) quantisation tables: the IJG quality 1-100
whose standard tables, as libjpeg scales them, are nearest in L1 distance. Non-IJG tables (some cameras) get
the nearest IJG quality, so read it as "compression strength", not as the encoder's setting.
"""
from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

# bits per channel of PIL's modes
_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}
_SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


@lru_cache(maxsize=1)
def _reference_tables() -> np.ndarray:
    """(100, 2, 64): the tables libjpeg writes at quality 1..100, read back the way `im.quantization` reads them."""
    from PIL import Image
    refs = []
    tiny = Image.new("RGB", (8, 8))
    for q in range(1, 101):
        buf = io.BytesIO()
        tiny.save(buf, "JPEG", quality=q)
        tables = Image.open(buf).quantization
        refs.append([list(tables[0]), list(tables.get(1, tables[0]))])
    return np.asarray(refs, np.float64)


def jpeg_quality(quantization: dict) -> float:
    return _quality(tuple(tuple(quantization[k]) for k in sorted(quantization)[:2]))


@lru_cache(maxsize=256)  # a dataset has few distinct tables: one estimate each
def _quality(tables: tuple) -> float:
    refs = _reference_tables()
    dist = np.abs(refs[:, 0] - np.asarray(tables[0], np.float64)).sum(1)
    if len(tables) > 1:
        dist += np.abs(refs[:, 1] - np.asarray(tables[1], np.float64)).sum(1)
    return float(np.argmin(dist) + 1)


def _has_metadata(im) -> int:
    """EXIF, ICC, XMP or text in the headers PIL has read (PNG text after the pixel data is not seen: reading it
    would decode the image)."""
    info = im.info
    keys = ("exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment", "Comment", "parameters", "Software",
            "Description", "Title", "Author")
    return int(any(info.get(k) for k in keys))


def features(source, nbytes: int) -> dict:
    """The features of one image (a path or bytes); `nbytes` is the file's size."""
    from PIL import Image
    from PIL.JpegImagePlugin import get_sampling
    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
        w, h = im.size
        is_jpeg = im.format == "JPEG"
        return {
            "format": str(im.format),
            "jpeg_quality": jpeg_quality(im.quantization) if is_jpeg and im.quantization else float("nan"),
            "chroma_subsampling": _SUBSAMPLING.get(get_sampling(im), "other") if is_jpeg else "none",
            "width": float(w), "height": float(h), "aspect_ratio": w / max(h, 1),
            "bytes_per_pixel": nbytes / max(w * h, 1),
            "metadata": float(_has_metadata(im)),
            "color_mode": im.mode, "bit_depth": float(_BITS.get(im.mode, 8)),
            "size": f"{w}x{h}",  # becomes size_share (label-free) in add_size_share, then is dropped
        }


def add_size_share(rows: list[dict]) -> None:
    """Replace each row's exact size by its share of all audited samples: a class stored at one or a few fixed
    sizes has large shares, a class of many sizes small ones. Computed without the labels."""
    from collections import Counter
    for r in rows:
        r.pop("size", None)
    counts = Counter((r["width"], r["height"]) for r in rows if "width" in r)
    n = max(len(rows), 1)
    for r in rows:
        if "width" in r:
            r["size_share"] = counts[(r["width"], r["height"])] / n


def fixed_sizes(rows: list[dict], cover: float = 0.9, most: int = 5) -> list[str] | None:
    """The few sizes (at most `most`) that cover >= `cover` of these rows, most common first; None if no few do."""
    from collections import Counter
    sizes = Counter(f"{int(r['width'])}x{int(r['height'])}" for r in rows if "width" in r)
    total, run, out = sum(sizes.values()), 0, []
    for s, k in sizes.most_common(most):
        out.append(s)
        run += k
        if total and run / total >= cover:
            return out
    return None
