#!/usr/bin/env python
"""Write N 640x480 JPEG frames under OUT/real and OUT/fake for `dfp bench shard --faces`: scikit-image's
astronaut head (a real face photograph shipped in its wheel; `pip install -e '.[test]'`) pasted at a random
place, size (face about 70-140 px) and tilt (+-15 degrees) on a smooth background; every tenth frame has no face.

    python scripts/face_frames.py /tmp/faces640 300 && dfp bench shard /tmp/faces640 --faces
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data


def background(rng: np.random.Generator, w: int = 640, h: int = 480) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    a, b = rng.uniform(1, 6, 2)
    base = np.stack([np.sin(a * xx + b * yy + k) for k in range(3)], -1)
    return np.clip((base * 0.4 + 0.5 + rng.normal(0, 0.05, (h, w, 3))) * 255, 0, 255).astype(np.uint8)


def main(out: Path, n: int, seed: int = 0) -> None:
    head = data.astronaut()[20:260, 110:340]
    rng = np.random.default_rng(seed)
    for i in range(n):
        frame = background(rng)
        if i % 10 != 9:
            s = rng.uniform(0.8, 1.6)
            w, h = int(230 * s), int(240 * s)
            patch = Image.fromarray(head).resize((w, h), Image.Resampling.BILINEAR).rotate(rng.uniform(-15, 15))
            x, y = int(rng.integers(0, 640 - w)), int(rng.integers(0, 480 - h))
            frame[y:y + h, x:x + w] = np.asarray(patch)
        cls = "real" if i % 3 else "fake"
        (out / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(out / cls / f"{i:04d}.jpg", quality=92)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
