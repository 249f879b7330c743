"""Decode and normalise one raw media file, the same way for packing shards and for `dfp predict`.

Each `prepare_*` returns the payload dict of a shard sample ({ext: bytes}) plus metadata, or raises
`errors.MediaError` with a short reason ("corrupt", "empty", ...) that ends up in rejects.jsonl.
"""


def encoding(params: dict, modality: str):
    """The `image.Encoding` the shard parameters ask for; parameters that lack a control keep the old storage."""
    from . import image, video
    default = image.JPEG_QUALITY if modality == "image" else video.JPEG_QUALITY
    return image.Encoding(reencode=bool(params.get("reencode")), codec=params.get("image_codec") or "jpeg",
                          quality=params.get("jpeg_quality") or default, chroma=params.get("chroma"),
                          rule=params.get("resize_rule") or "fit")


def prepare(path, modality: str, params: dict):
    """Dispatch to the modality's `prepare` with the shard parameters; params["faces"] (settings from
    `faces.settings`) swaps whole images and frames for face crops. params["max_pixels"] and
    params["max_seconds"] bound what is decoded (absent: the defaults; 0: no bound)."""
    from .image import DEFAULT_MAX_PIXELS
    from .video import DEFAULT_MAX_SECONDS
    max_pixels, max_seconds = params.get("max_pixels", DEFAULT_MAX_PIXELS), params.get("max_seconds", DEFAULT_MAX_SECONDS)
    if params.get("faces") and modality in ("image", "video"):
        from .faces import prepare_face_image, prepare_face_video
        _check_bounds(path, modality, max_pixels, max_seconds)
        if modality == "image":
            return prepare_face_image(path, params["faces"])
        return prepare_face_video(path, params["frames"], params["faces"])
    if modality == "image":
        from .image import prepare_image
        return prepare_image(path, params["max_side"], params.get("check", "decode"), max_pixels,
                             encoding(params, modality))
    if modality == "audio":
        from .audio import prepare_audio
        return prepare_audio(path, params["sample_rate"], max_seconds, bool(params.get("trim_silence")))
    if modality == "video":
        from .video import prepare_video
        return prepare_video(path, params["frames"], params["max_side"], max_seconds, max_pixels,
                             encoding(params, modality), params.get("fps"))
    raise ValueError(f"unknown modality {modality!r}")


def _check_bounds(path, modality: str, max_pixels, max_seconds) -> None:
    """The face step decodes through its own readers (with the default bounds): the caller's bounds are
    checked from the headers first."""
    if modality == "video":
        from .video import check_video_bounds
        check_video_bounds(path, max_seconds, max_pixels)
        return
    from PIL import Image, UnidentifiedImageError
    from .image import too_large
    try:
        with Image.open(path) as im:
            err = too_large(*im.size, max_pixels)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError):
        return  # the face step's reader gives the reject its reason
    if err:
        raise err
