"""`dfp shard --faces` and the same face step in `dfp predict`, on a real face photograph (scikit-image's
astronaut, shipped in its wheel) pasted into synthetic frames at known places."""
import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factory import smooth_image, write_jpeg, write_video
from pipeline.formats import frame_ext, read_manifest
from pipeline.shards import ShardParams, build_shards

skimage_data = pytest.importorskip("skimage.data")

# The head of astronaut(): rows 50-200, columns 150-300; its face (brows to chin, cheek to cheek) spans
# about 29-116 x 33-120 of that patch, with the eyes level.
HEAD = np.ascontiguousarray(skimage_data.astronaut()[50:200, 150:300])
FACE = (29, 33, 116, 120)
MARGIN, SIZE = 1.3, 256
N = 16  # thumbnail side for comparisons: small enough that the detector's few-pixel offsets do not count


def paste(frame: np.ndarray, x: int, y: int, scale: float, tint: bool = False) -> tuple[float, float, float]:
    """Paste the head with its top-left at (x, y); returns the face's centre and side in the frame.
    tint: red and blue swapped, a second person that the crops must not be confused with."""
    side = round(150 * scale)
    head = np.asarray(Image.fromarray(HEAD).resize((side, side), Image.Resampling.BILINEAR))
    frame[y:y + side, x:x + side] = head[..., ::-1] if tint else head
    l, t, r, b = (v * scale for v in FACE)
    return x + (l + r) / 2, y + (t + b) / 2, r - l


def expected_crop(frame: np.ndarray, cx: float, cy: float, side: float, zoom: float = 1.0) -> np.ndarray:
    """What a crop of that face should look like: the square around it, margin included, as a thumbnail
    (the detector's box is up to ~20% larger or smaller than the face, so `zoom` tries a few sizes)."""
    half = MARGIN * side * zoom / 2
    box = tuple(round(v) for v in (cx - half, cy - half, cx + half, cy + half))
    return thumb(np.asarray(Image.fromarray(frame).crop(box)))


def thumb(a: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((N, N), Image.Resampling.BOX), dtype=np.float32)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def samples(shards: Path) -> dict[str, dict]:
    """source -> {member ext: bytes, 'meta': KEY.json} over every shard."""
    out = {}
    for tar in shards.rglob("*.tar"):
        with tarfile.open(tar) as tf:
            members = {}
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for d in members.values():
            meta = json.loads(d["json"])
            out[meta["source"]] = {**d, "meta": meta}
    return out


def jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_holds(crop: np.ndarray, frame: np.ndarray, face: tuple, *elsewhere: tuple) -> None:
    """The crop shows that face (at some zoom near the expected one), is far from the crops `elsewhere`
    (other centres and sides in the same frame) would give, and has the untinted person's skin (red over blue)."""
    assert crop.shape == (SIZE, SIZE, 3)
    small = thumb(crop)
    d = min(diff(small, expected_crop(frame, *face, zoom=z)) for z in (0.8, 0.9, 1.0, 1.1, 1.2))
    rest = [diff(small, expected_crop(frame, *o)) for o in elsewhere]
    assert d < 35 and all(d < 0.7 * r for r in rest), (d, rest)
    middle = crop[SIZE // 3:2 * SIZE // 3, SIZE // 3:2 * SIZE // 3].reshape(-1, 3).mean(0)
    assert middle[0] > middle[2] + 30, middle


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two pictures with a face (and a smaller second face) and one without; their shards."""
    root = tmp_path_factory.mktemp("faces_img")
    rng = np.random.default_rng(0)
    truth = {}
    for cls, (x, y, s) in (("real", (40, 60, 1.5)), ("fake", (300, 200, 1.2))):
        f = smooth_image(rng, 640, 480)
        face = paste(f, x, y, s)
        other = paste(f, 480 if x < 300 else 30, 30, 0.95, tint=True)
        write_jpeg(root / "in" / cls / "a.jpg", f)
        truth[f"{cls}/a.jpg"] = (f, face, other)
    write_jpeg(root / "in" / "real" / "empty.jpg", smooth_image(rng, 640, 480))
    build_shards(root / "in", root / "shards", ShardParams(faces=True, split="1,0,0"), workers=1, progress=False)
    return root, truth


def test_image_crop_holds_the_largest_face(images):
    root, truth = images
    got = samples(root / "shards")
    assert set(got) == set(truth)
    for src, (frame, face, other) in truth.items():
        background = (320 if face[0] < 320 else 120, 420, face[2])
        assert_holds(jpeg(got[src]["jpg"]), frame, face, other, background)


def test_faceless_image_is_rejected_and_the_manifest_records_the_detector(images):
    root, _ = images
    rejects = [json.loads(x) for x in (root / "shards" / "rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"source": "real/empty.jpg", "reason": "no face found"}]
    params = read_manifest(root / "shards")["params"]
    assert params["faces"] is True
    assert params["face_step"]["detector"] == "dlib-hog"
    assert (params["face_step"]["margin"], params["face_step"]["size"]) == (MARGIN, SIZE)


def moving_clip(path: Path, n: int = 20, blank: tuple[int, ...] = (5, 6)) -> list:
    """Person A walks right and shrinks from larger to smaller than person B (tinted, standing still);
    `blank` frames show nobody. Returns A's (centre x, centre y, side) per frame, None when blank."""
    import av
    path.parent.mkdir(parents=True, exist_ok=True)
    base = smooth_image(np.random.default_rng(1), 640, 360)
    faces = []
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=10)
        st.width, st.height, st.pix_fmt = 640, 360, "yuv420p"
        st.options = {"crf": "12"}
        for i in range(n):
            f = base.copy()
            if i in blank:
                faces.append(None)
            else:
                k = i / (n - 1)
                faces.append(paste(f, round(20 + 230 * k), 60, 1.35 - 0.4 * k))
                paste(f, 440, 100, 1.15, tint=True)
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return faces


def decoded_frames(path: Path) -> list[np.ndarray]:
    import av
    with av.open(str(path)) as c:
        return [fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]


def test_every_frame_of_a_moving_face_clip_follows_one_person(tmp_path):
    faces = moving_clip(tmp_path / "in" / "real" / "walk.mp4")
    write_video(tmp_path / "in" / "fake" / "empty.mp4", frames=8, w=640, h=360)  # nobody in it
    build_shards(tmp_path / "in", tmp_path / "shards", ShardParams(faces=True, frames=4, split="1,0,0"), workers=1,
                 progress=False)
    rejects = [json.loads(x) for x in (tmp_path / "shards" / "rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"source": "fake/empty.mp4", "reason": "no face found"}]
    got = samples(tmp_path / "shards")["real/walk.mp4"]
    meta = got["meta"]
    # 8 candidates at frames 0, 3, 5, 8, 11, 14, 16, 19: frame 5 shows nobody
    assert meta["face_candidates"] == 8 and meta["face_frames_dropped"] == 1
    assert len(meta["face_source_frames"]) == 4 and 5 not in meta["face_source_frames"]
    assert meta["face_source_frames"][-1] == 19  # where A is smaller than B: the largest face would be B
    video = decoded_frames(tmp_path / "in" / "real" / "walk.mp4")
    for k, i in enumerate(meta["face_source_frames"]):
        crop = jpeg(got[frame_ext(k)])
        a = faces[i]
        b = (440 + 72.5 * 1.15, 100 + 76.5 * 1.15, 87 * 1.15)
        assert_holds(crop, video[i], a, b, (320, 300, a[2]))



def test_predict_crops_faces_like_the_shards_and_reports_a_faceless_file(images, tmp_path):
    from test_predict import untrained_checkpoint
    from pipeline import checkpoint
    from pipeline.predict import predict_files
    root, _ = images
    ckpt = untrained_checkpoint(root / "shards", tmp_path / "model.pth", "torch")
    assert checkpoint.load(ckpt, map_location="cpu")["preprocess"]["faces"]["detector"] == "dlib-hog"
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("real/a.jpg", "real/empty.jpg"):
        (raw / name.replace("/", "_")).write_bytes((root / "in" / name).read_bytes())
    predict_files(ckpt, [raw], tmp_path / "p.csv", device="cpu", backend="torch", workers=0, log=lambda *a: None)
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(tmp_path / "p.csv"))}
    assert rows["real_empty.jpg"]["error"] == "no face found" and not rows["real_empty.jpg"]["score"]
    assert rows["real_a.jpg"]["score"] and not rows["real_a.jpg"]["error"]


def test_bench_shard_reports_face_crops_beside_plain_packing(images, tmp_path):
    from pipeline.bench import bench_shard, format_table, machine
    root, truth = images
    res = bench_shard(root / "in", workers=1, work=tmp_path, rounds=1, faces=True)
    assert res["faces_crops"] == len(truth) and res["faces_crops_per_s"] > 0 and res["dfp_files_per_s"] > 0
    assert "face crops/s" in format_table({"machine": machine(), "shard": res})


def test_faces_on_audio_input_is_refused(tmp_path):
    from factory import audio_tree
    from pipeline.errors import InputError
    audio_tree(tmp_path / "in")
    with pytest.raises(InputError, match="--faces applies to image and video"):
        build_shards(tmp_path / "in", tmp_path / "out", ShardParams(faces=True), workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_faces_with_a_public_dataset_layout(images, tmp_path):
    """The face step sits in media preparation, so it composes with `--dataset`: here a `table` protocol."""
    root, truth = images
    protocol = tmp_path / "labels.csv"
    protocol.write_text("path,label,split,group,attack\nreal/a.jpg,real,train,p1,\nfake/a.jpg,fake,train,p2,swap\n"
                        "real/empty.jpg,real,train,p3,\n")
    build_shards(root / "in", tmp_path / "shards", ShardParams(faces=True, dataset="table", protocol=str(protocol)),
                 workers=1, progress=False)
    got = samples(tmp_path / "shards")
    assert set(got) == set(truth)
    assert got["fake/a.jpg"]["meta"]["attack"] == "swap" and got["real/a.jpg"]["meta"]["group"] == "p1"
    for src, (frame, face, other) in truth.items():
        assert_holds(jpeg(got[src]["jpg"]), frame, face, other)
    rejects = [json.loads(x) for x in (tmp_path / "shards" / "rejects.jsonl").read_text().splitlines()]
    assert {"source": "real/empty.jpg", "reason": "no face found"} in rejects
