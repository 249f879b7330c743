"""Images: keep original JPEG bytes when they are already fit to train on, otherwise re-encode.

`Encoding` (from `dfp shard --reencode/--jpeg-quality/--chroma/--resize-rule/--image-codec`, or `--debias`)
re-encodes every file instead, with one codec, quality, chroma subsampling and size rule for both classes,
so that how a file was stored stops telling real from fake."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import MediaError

# The pixel limit callers pass (`--max-pixels`) is checked from the header, before anything is decoded;
# PIL's own bomb guard stays as a backstop for callers that pass none.
DEFAULT_MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = 400_000_000
JPEG_QUALITY = 95
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _SIXTEEN_BIT:
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


CHECKS = ("decode", "structure")
RESIZE_RULES = ("fit", "longer", "square", "crop")
CODECS = ("jpeg", "png")
CHROMA = {"420": 2, "444": 0}  # PIL's `subsampling` values


@dataclass(frozen=True)
class Encoding:
    """How prepared images and frames are stored. rule, with the limit S: "fit" shrinks the longer side to S
    (never enlarges); "longer" scales the longer side to exactly S; "square" scales the shorter side to S and
    centre-crops SxS; "crop" centre-crops SxS at the picture's own scale (no resampling, which would leave its
    own trace on one class), enlarging only a picture with a side below S. chroma None: the encoder's default
    (4:2:0)."""
    reencode: bool = False  # False: JPEGs that already fit keep their original bytes
    codec: str = "jpeg"
    quality: int = JPEG_QUALITY
    chroma: str | None = None
    rule: str = "fit"

    @property
    def ext(self) -> str:
        return "png" if self.codec == "png" else "jpg"

    @property
    def keeps_bytes(self) -> bool:
        return not self.reencode and self.codec == "jpeg" and self.rule == "fit"


def resize(im: Image.Image, side: int, rule: str, method=Image.Resampling.BICUBIC) -> Image.Image:
    """One size rule for every picture (see `Encoding`)."""
    w, h = im.size
    if rule == "crop" and min(w, h) >= side:
        left, top = (w - side) // 2, (h - side) // 2
        return im.crop((left, top, left + side, top + side))
    if rule in ("square", "crop"):
        return ImageOps.fit(im, (side, side), method=method, centering=(0.5, 0.5))
    if rule == "longer" and max(w, h) != side:
        k = side / max(w, h)
        return im.resize((max(1, round(w * k)), max(1, round(h * k))), method)
    if rule == "fit" and max(w, h) > side:
        im = im.copy()
        im.thumbnail((side, side), method)
    return im


def encode(im: Image.Image, enc: Encoding) -> bytes:
    buf = io.BytesIO()
    if enc.codec == "png":
        im.save(buf, format="PNG", compress_level=6)
    elif enc.chroma is None:
        im.save(buf, format="JPEG", quality=enc.quality)
    else:
        im.save(buf, format="JPEG", quality=enc.quality, subsampling=CHROMA[enc.chroma])
    return buf.getvalue()


def ends_with_eoi(raw: bytes) -> bool:
    return raw.rstrip(b"\0")[-2:] == b"\xff\xd9"


def too_large(width: int, height: int, max_pixels: int | None) -> MediaError | None:
    """The reject for a picture over the pixel limit (None: within it, or no limit)."""
    if max_pixels and width * height > max_pixels:
        return MediaError(f"too large: {width}x{height} is {width * height / 1e6:.1f} megapixels, over "
                          f"--max-pixels {max_pixels}")
    return None


def _open_bounded(data: io.BytesIO | str | os.PathLike, max_pixels: int | None) -> Image.Image:
    """Image.open reads the header only; the size is checked before any pixel is decoded."""
    try:
        im = Image.open(data)
    except Image.DecompressionBombError as e:
        raise MediaError(f"too large: {e}") from None
    err = too_large(*im.size, max_pixels)
    if err:
        im.close()
        raise err
    return im


def _draft_load(im: Image.Image) -> None:
    """A 1/8-scale DCT decode: it still walks the whole entropy-coded stream, at a fraction of a full
    decode's cost, so it proves the bytes decode."""
    im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
    im.load()


def jpeg_check(raw: bytes) -> str | None:
    """Why a JPEG payload does not decode, or None when it does: the one test of a JPEG's decodability,
    applied at packing (`--check decode`), by both loaders and by `dfp verify`, so they all agree.

    DALI's decoders turn damaged entropy-coded data into a partly grey picture without an error, and
    torchvision's rejects some files that PIL decodes; PIL (libjpeg-turbo, errors but not warnings) is the
    judge, and the loaders apply its verdict on top of their own decoder."""
    try:
        with Image.open(io.BytesIO(raw)) as im:
            if im.format != "JPEG":
                return f"not a JPEG ({im.format})"
            _draft_load(im)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... for damaged data
        return f"{type(e).__name__}: {e}"
    return None


def prepare_image(path: str | os.PathLike, max_side: int, check: str = "decode",
                  max_pixels: int | None = DEFAULT_MAX_PIXELS, enc: Encoding = Encoding()
                  ) -> tuple[dict[str, bytes], dict]:
    """`check` applies to JPEGs whose bytes are kept: "decode" proves they decode (`_draft_load`);
    "structure" trusts headers that parse up to the scan plus an end-of-image marker, which
    catches truncated and non-JPEG files but not damage inside the entropy-coded data.
    Pictures over `max_pixels` are rejected from their header, before decoding."""
    if check not in CHECKS:
        raise ValueError(f"check {check!r}: choose one of {', '.join(CHECKS)}")
    try:
        raw = open(path, "rb").read()
    except OSError as e:
        raise MediaError(f"unreadable: {e.strerror or e}") from None
    if not raw:
        raise MediaError("empty file")
    try:
        im = _open_bounded(io.BytesIO(raw), max_pixels)
        fmt = im.format
        orientation = im.getexif().get(0x0112, 1)
        size = im.size
        keep = (enc.keeps_bytes and fmt == "JPEG" and im.mode in ("RGB", "L") and orientation in (1, None)
                and max(size) <= max_side)
        meta = {"width": size[0], "height": size[1], "orig_format": fmt}
        if keep and check == "structure" and ends_with_eoi(raw):
            return {"jpg": raw}, meta
        if keep:
            _draft_load(im)  # the original bytes are kept: proving they decode is enough
        else:
            if fmt == "JPEG" and max(size) > max_side and enc.rule != "crop":
                # DCT-domain downscale, much faster for huge JPEGs; both sides stay >= max_side, as every rule needs
                im.draft("RGB", (max_side, max_side))
            im.load()
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError("not media: not a readable image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise MediaError(f"corrupt: {e}") from None
    if keep:
        return {"jpg": raw}, meta
    try:
        im = ImageOps.exif_transpose(im)
        im = resize(_to_rgb(im), max_side, enc.rule)
        data = encode(im, enc)
    except (OSError, ValueError) as e:
        raise MediaError(f"corrupt: {e}") from None
    meta.update(width=im.size[0], height=im.size[1])
    return {enc.ext: data}, meta


def load_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The whole picture, upright, as HWC uint8 RGB (for the face step, which crops from full resolution)."""
    try:
        if os.path.getsize(path) == 0:
            raise MediaError("empty file")
        with _open_bounded(path, max_pixels) as im:
            return np.asarray(_to_rgb(ImageOps.exif_transpose(im)))
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError("not media: not a readable image") from None
    except PermissionError as e:
        raise MediaError(f"unreadable: {e.strerror}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise MediaError(f"corrupt: {e}") from None


def decode_jpeg(data: bytes) -> np.ndarray:
    """HWC uint8 RGB."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
