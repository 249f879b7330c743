"""Face crops: detect, keep one face, align it and crop it square, for packing and for `dfp predict`.

The detector is dlib's HOG frontal-face detector (compiled into the dlib-bin wheel) and the eye landmarks
come from dlib's 5-point predictor (shipped in the face-recognition-models package): nothing is downloaded.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from ..errors import MediaError

DETECTORS = ("dlib-hog",)
NO_FACE = "no face found"
# HOG finds faces of about 80 px and up at the scale it runs at; frames are shrunk to this longest side
# first so that a 1080p frame costs what a 960x540 one does (faces under ~130 px of 1080p are missed).
DETECT_SIDE = 960


def settings(margin: float = 1.3, size: int = 256, quality: int = 95, detector: str = "dlib-hog") -> dict:
    """Everything that decides the crops: stored in manifest params and in the checkpoint."""
    return {"detector": detector, "input": "gray", "landmarks": "dlib 5-point", "align": "eyes level", "margin": margin,
            "size": size, "quality": quality, "detect_side": DETECT_SIDE, "upsample": 0}


@dataclass
class Face:
    box: tuple[float, float, float, float]  # left, top, right, bottom in frame pixels
    eyes: tuple[tuple[float, float], tuple[float, float]] | None = None  # (left-of-image eye, other eye)

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@lru_cache(maxsize=1)
def _dlib_models():
    """Built once per process (each packing worker builds its own after the fork)."""
    import dlib
    import face_recognition_models
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())


def detect(rgb: np.ndarray, cfg: dict) -> list[Face]:
    """Every face in an HxWx3 uint8 frame, with eye centres where the landmark model places them."""
    detector, predictor = _dlib_models()
    h, w = rgb.shape[:2]
    scale = min(1.0, cfg.get("detect_side", DETECT_SIDE) / max(h, w))
    # HOG on gray finds the same faces as on RGB (90 of 90 on the benchmark frames) for 3/4 of the time
    gray = Image.fromarray(rgb).convert("L")
    if scale < 1.0:
        gray = gray.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
    small = np.asarray(gray)
    faces = []
    for r in detector(small, cfg.get("upsample", 0)):
        pts = predictor(small, r)
        # 5-point model: points 0-1 are the corners of one eye, 2-3 of the other, 4 under the nose
        e = [((pts.part(a).x + pts.part(b).x) / 2 / scale, (pts.part(a).y + pts.part(b).y) / 2 / scale)
             for a, b in ((0, 1), (2, 3))]
        box = (r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale)
        faces.append(Face(box, tuple(sorted(e))))
    return faces


def largest(faces: list[Face]) -> Face | None:
    return max(faces, key=lambda f: f.area, default=None)


def nearest(faces: list[Face], prev: Face) -> Face | None:
    px, py = prev.center
    return min(faces, key=lambda f: (f.center[0] - px) ** 2 + (f.center[1] - py) ** 2, default=None)


def crop(rgb: np.ndarray, face: Face, cfg: dict) -> Image.Image:
    """A size x size crop centred on the box, margin x its longer side, rotated so the eyes are level.

    Parts of the square outside the frame come out black rather than shifting the face off centre."""
    size = cfg["size"]
    l, t, r, b = face.box
    side = cfg["margin"] * max(r - l, b - t)
    cx, cy = face.center
    angle = 0.0
    if face.eyes:
        (x0, y0), (x1, y1) = face.eyes
        angle = math.atan2(y1 - y0, x1 - x0)
    im = Image.fromarray(rgb)
    step = side / size  # input pixels per output pixel
    shrink = int(step)
    if shrink >= 2:  # an affine warp samples without averaging: reduce first so large crops do not alias
        im, cx, cy, step = im.reduce(shrink), cx / shrink, cy / shrink, step / shrink
    c, s = math.cos(angle) * step, math.sin(angle) * step
    # output (u, v) -> input: centre + R(angle) * step * (u - size/2, v - size/2)
    off = size / 2
    coeffs = (c, -s, cx - c * off + s * off, s, c, cy - s * off - c * off)
    return im.transform((size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def encode(im: Image.Image, cfg: dict) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=cfg["quality"])
    return buf.getvalue()


def face_image(rgb: np.ndarray, cfg: dict) -> bytes:
    """The largest face of one picture as JPEG bytes; MediaError when there is none."""
    face = largest(detect(rgb, cfg))
    if face is None:
        raise MediaError(NO_FACE)
    return encode(crop(rgb, face, cfg), cfg)


def track(frames: np.ndarray, cfg: dict) -> list[tuple[int, Face]]:
    """One person through a clip: the largest face in the first frame with any, then in each later frame the
    face nearest the previous one. Returns (frame index, face) for the frames that have a face."""
    found, prev = [], None
    for i, rgb in enumerate(frames):
        faces = detect(rgb, cfg)
        face = largest(faces) if prev is None else nearest(faces, prev)
        if face is not None:
            found.append((i, face))
            prev = face
    return found


def prepare_face_image(path, cfg: dict) -> tuple[dict[str, bytes], dict]:
    from .image import load_rgb
    rgb = load_rgb(path)
    meta = {"width": int(rgb.shape[1]), "height": int(rgb.shape[0]), "face_size": cfg["size"]}
    return {"jpg": face_image(rgb, cfg)}, meta


def prepare_face_video(path, frames: int, cfg: dict) -> tuple[dict[str, bytes], dict]:
    """Candidate frames spread over the clip, twice as many as kept, so a clip whose face is missing from up
    to half of them still yields `frames` distinct face frames; frames without the face are dropped."""
    from ..formats import frame_ext
    from .video import frame_indices, read_frames
    batch, meta = read_frames(path, 2 * frames)
    # a clip shorter than the candidate count comes back with repeated frames: detect on each frame once
    idx = frame_indices(meta["orig_frames"], 2 * frames)
    _, first = np.unique(idx, return_index=True)
    found = track(batch[first], cfg)
    if not found:
        raise MediaError(NO_FACE)
    picks = [found[int(j)] for j in frame_indices(len(found), frames)]
    payload = {frame_ext(k): encode(crop(batch[first[i]], face, cfg), cfg) for k, (i, face) in enumerate(picks)}
    meta.update(frames=frames, face_size=cfg["size"], face_candidates=len(first),
                face_frames_dropped=len(first) - len(found), face_source_frames=[int(idx[first[i]]) for i, _ in picks])
    return payload, meta
