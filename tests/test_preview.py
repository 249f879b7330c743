"""`dfp stats INPUT` previews what `dfp shard` with the same options packs, on every dataset layout; and
`--faces` splits the files that have a face."""
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from factory import smooth_image, write_jpeg
from pipeline.formats import read_manifest
from pipeline.shards import ShardParams, build_shards
from pipeline.stats import dataset_stats, format_stats
from test_datasets import FAVC, favc, ffpp_tree, flac, jpg, mp4, text  # noqa: F401 (favc is a fixture)

FAST = {"frames": 2, "max_side": 32}  # video: the fewest frames and pixels that still pack


# ---------------------------------------------------------------- one mock per layout: (INPUT, dfp shard options)
def folders_images(root: Path):
    for cls, people in (("real", 7), ("fake", 4)):
        for p in range(people):
            for i in range(3):
                jpg(root / cls / f"person{p}" / f"{i}.jpg")
    text(root / "real" / "notes.txt", "not a sample")
    return root, {"group_depth": 1, "seed": 5, "max_samples_per_class": 15, "split": "0.6,0.2,0.2"}


def folders_audio(root: Path):
    """The reported case: an audio set, grouped by speaker folder, beside images that --modality audio leaves out."""
    for cls, speakers in (("real", 8), ("fake", 5)):
        for s in range(speakers):
            for i in range(2 + s % 3):
                flac(root / cls / f"speaker{s}" / f"{i}.flac")
    jpg(root / "real" / "cover.jpg")
    return root, {"modality": "audio", "group_depth": 1, "seed": 2}


def table(root: Path):
    rows = ["path,label,split,group,attack"]
    for i in range(14):
        cls = "fake" if i % 3 == 0 else "real"
        jpg(root / "imgs" / f"{i}.jpg")
        rows.append(f"imgs/{i}.jpg,{cls},{'test' if i >= 11 else ''},p{i // 2},{'gan' if cls == 'fake' else ''}")
    rows.append("imgs/gone.jpg,fake,train,,")
    text(root / "labels.csv", "\n".join(rows) + "\n")
    return root, {"dataset": "table", "protocol": str(root / "labels.csv"), "seed": 3, "max_samples_per_class": 8,
                  "val_fraction": 0.3}


def ffpp(root: Path):
    ffpp_tree(root, [(f"{2 * i:03d}", f"{2 * i + 1:03d}") for i in range(5)], methods=("Deepfakes",))
    mp4(root / "manipulated_sequences/Deepfakes/masks/videos/000_001.mp4")
    return root, {"dataset": "ff++", "seed": 4, "split": "0.4,0.2,0.4", **FAST}


def celebdf(root: Path):
    for i in range(4):
        for k in range(2):
            mp4(root / "Celeb-real" / f"id{i}_{k:04d}.mp4")
        mp4(root / "Celeb-synthesis" / f"id{i}_id{(i + 1) % 4}_0000.mp4")
    mp4(root / "YouTube-real" / "00000.mp4")
    text(root / "List_of_testing_videos.txt", "1 Celeb-real/id3_0000.mp4\n0 Celeb-synthesis/id3_id0_0000.mp4")
    return root, {"dataset": "celeb-df", "seed": 1, "val_fraction": 0.3, "max_samples_per_class": 6, **FAST}


def dfdc(root: Path):
    meta = {}
    for i in range(4):
        meta[f"r{i}.mp4"] = {"label": "REAL", "split": "train", "original": None}
        meta[f"f{i}.mp4"] = {"label": "FAKE", "split": "train", "original": f"r{i}.mp4"}
    for n in meta:
        mp4(root / "dfdc_train_part_0" / n)
    text(root / "dfdc_train_part_0" / "metadata.json", json.dumps(meta))
    for n in ("t0.mp4", "t1.mp4"):
        mp4(root / "test" / n)
    text(root / "test" / "labels.csv", "filename,label\nt0.mp4,1\nt1.mp4,0\n")
    return root, {"dataset": "dfdc", "seed": 6, "val_fraction": 0.25, "max_samples_per_class": 4, **FAST}


def asvspoof2019(root: Path):
    la = root / "LA"
    for part, prefix, n in (("train", "T", 8), ("dev", "D", 3), ("eval", "E", 3)):
        lines = [f"LA_{k % 3:04d} LA_{prefix}_{k:07d} - " + ("- bonafide" if k % 2 else f"A0{k % 4 + 1} spoof")
                 for k in range(n)]
        suffix = "trn" if part == "train" else "trl"
        text(la / "ASVspoof2019_LA_cm_protocols" / f"ASVspoof2019.LA.cm.{part}.{suffix}.txt", "\n".join(lines) + "\n")
        for line in lines:
            flac(la / f"ASVspoof2019_LA_{part}" / "flac" / f"{line.split()[1]}.flac")
    return root, {"dataset": "asvspoof2019", "seed": 2, "max_samples_per_class": 6}


def asvspoof5(root: Path):
    for part, folder in (("train", "flac_T"), ("dev.track_1", "flac_D"), ("eval.track_1", "flac_E_eval")):
        p = folder.split("_")[1]
        lines = [f"{p}_{k % 2:04d} {p}_{k:010d} F - - - " + ("- bonafide bonafide -" if k % 2 else "AC1 A05 spoof -")
                 for k in range(4)]
        text(root / f"ASVspoof5.{part}.tsv", "\n".join(lines) + "\n")
        for line in lines:
            flac(root / folder / f"{line.split()[1]}.flac")
    return root, {"dataset": "asvspoof5", "seed": 7, "max_samples_per_class": 5}


def in_the_wild(root: Path):
    rows = ["file,speaker,label"]
    for i in range(18):
        rows.append(f"{i}.wav,Speaker {i % 6},{'spoof' if i % 3 == 0 else 'bona-fide'}")
        flac(root / "release_in_the_wild" / f"{i}.wav")
    text(root / "release_in_the_wild" / "meta.csv", "\n".join(rows) + "\n")
    return root, {"dataset": "in-the-wild", "seed": 9, "split": "0.5,0.25,0.25"}


def fakeavceleb(root: Path, modality: str):
    return root, {"dataset": "fakeavceleb", "modality": modality, "seed": 4, "split": "0.34,0.33,0.33", **FAST}


def deepfakebench(root: Path):
    tree = {}
    for label, top in (("FF-real", "real"), ("FF-DF", "fake")):
        videos = {}
        for v in range(3):
            frames = [f"{top}/{v}/{f}.png" for f in range(3)]
            for f in frames:
                jpg(root / f)
            videos[f"{top}{v}"] = {"label": label, "frames": frames}
        tree[label] = {"train": {"c23": videos}}
    tree["FF-DF"]["test"] = {"c23": {"gone": {"label": "FF-DF", "frames": ["fake/gone/0.png"]}}}
    proto = text(root.parent / "dfb.json", json.dumps({"FaceForensics++": tree}))
    return root, {"dataset": "deepfakebench", "protocol": str(proto), "seed": 3, "max_samples_per_class": 7,
                  "val_fraction": 0.34}


LAYOUTS = {"folders": folders_images, "folders-audio": folders_audio, "table": table, "ff++": ffpp,
           "celeb-df": celebdf, "dfdc": dfdc, "asvspoof2019": asvspoof2019, "asvspoof5": asvspoof5,
           "in-the-wild": in_the_wild, "deepfakebench": deepfakebench}


def attacks_packed(out: Path) -> dict:
    per: dict[str, Counter] = {}
    for r in read_manifest(out)["shards"]:
        for s in all_samples_of(out, r):
            attack = json.loads(s["json"]).get("attack")
            if attack is not None:
                per.setdefault(r["split"], Counter())[attack] += 1
    return {s: dict(sorted(c.items())) for s, c in per.items()}


def all_samples_of(out: Path, row: dict):
    import webdataset as wds
    return wds.WebDataset(str(out / row["path"]), shardshuffle=False)


def assert_preview_is_packed(inp: Path, out: Path, options: dict) -> dict:
    preview = dataset_stats(inp, params=ShardParams(**options))
    summary = build_shards(inp, out, ShardParams(**options), workers=1, progress=False)
    m = read_manifest(out)
    assert preview["splits"] == m["splits"]
    assert preview["modality"] == m["modality"]
    assert preview["not_packable"] == m["rejected"]  # the mocks hold no file that fails to decode
    assert preview["attacks"] == attacks_packed(out)
    assert preview["warnings"] == summary["warnings"]
    return preview


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_stats_previews_what_shard_packs(tmp_path, layout):
    inp, options = LAYOUTS[layout](tmp_path / "in")
    preview = assert_preview_is_packed(inp, tmp_path / "out", options)
    # the options matter here: the defaults would preview (and pack) another set
    defaults = dataset_stats(inp, params=ShardParams(dataset=options.get("dataset", "folders"),
                                                     protocol=options.get("protocol")))
    assert defaults["splits"] != preview["splits"] or defaults["not_packable"] != preview["not_packable"] \
        or defaults["modality"] != preview["modality"]


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_stats_previews_what_shard_packs_fakeavceleb(favc, tmp_path, modality):
    inp, options = fakeavceleb(favc, modality)
    assert_preview_is_packed(inp, tmp_path / "out", options)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True)


def test_stats_cli_takes_the_shard_options_that_change_the_split(tmp_path):
    inp, _ = folders_audio(tmp_path / "in")
    opts = ["--modality", "audio", "--group-depth", "1", "--seed", "3", "--max-samples-per-class", "12",
            "--split", "0.6,0.2,0.2"]
    r = run_cli("stats", inp, "--json", *opts)
    assert r.returncode == 0, r.stderr
    preview = json.loads(r.stdout)
    r = run_cli("shard", inp, tmp_path / "out", "--quiet", *opts)
    assert r.returncode == 0, r.stderr
    m = read_manifest(tmp_path / "out")
    assert preview["splits"] == m["splits"] and preview["not_packable"] == m["rejected"]


def test_stats_text_says_what_a_preview_cannot_know(tmp_path):
    inp, options = folders_images(tmp_path / "in")
    out = format_stats(dataset_stats(inp, params=ShardParams(**options)))
    assert "files that fail to decode" in out and "without a face" in out
    assert "rejected before decoding: 7 files" in out and "over --max-samples-per-class: 6" in out  # and notes.txt


# ---------------------------------------------------------------- --faces: detect, then split
def face_picture(path: Path, rng, face: bool) -> None:
    """A picture with scikit-image's astronaut's head (as in test_faces.py), or without."""
    frame = smooth_image(rng, 200, 170)
    if face:
        frame[10:160, 25:175] = pytest.importorskip("skimage.data").astronaut()[50:200, 150:300]
    write_jpeg(path, frame)


def faces_input(root: Path, faceless_real: int = 6) -> tuple[Path, set]:
    """3 reals and 3 fakes with a face, and faceless reals that sort among them: split before detection,
    the faced reals would not spread over the splits."""
    rng = np.random.default_rng(0)
    faced = set()
    for cls, n_face, n_none in (("real", 3, faceless_real), ("fake", 3, 0)):
        names = [f"{cls}/{i:02d}.jpg" for i in range(n_face + n_none)]
        for k, name in enumerate(names):
            has = k % 3 == 0 if cls == "real" else True
            face_picture(root / name, rng, has)
            if has:
                faced.add(name)
    return root, faced


def where(out: Path) -> dict:
    return {json.loads(s["json"])["source"]: r["split"] for r in read_manifest(out)["shards"]
            for s in all_samples_of(out, r)}


def test_faces_splits_the_files_that_have_a_face(tmp_path):
    inp, faced = faces_input(tmp_path / "in")
    params = dict(faces=True, split="0.34,0.33,0.33", seed=3)  # split before detection: no real in train
    summary = build_shards(inp, tmp_path / "out", ShardParams(**params), workers=1, progress=False)
    assert set(where(tmp_path / "out")) == faced
    assert all(summary["splits"][s][c] == 1 for s in ("train", "val", "test") for c in ("real", "fake")), \
        summary["splits"]
    assert summary["warnings"] == []
    # the same split as an input that holds only the faced files
    only = tmp_path / "only"
    for name in faced:
        (only / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(inp / name, only / name)
    build_shards(only, tmp_path / "ref", ShardParams(**params), workers=1, progress=False)
    assert where(tmp_path / "out") == where(tmp_path / "ref")
    assert not (tmp_path / "out" / ".building").exists()


def test_faces_first_is_byte_identical_across_workers_and_survives_an_interruption(tmp_path, monkeypatch):
    import pipeline.shards as shards
    inp, _ = faces_input(tmp_path / "in", faceless_real=3)
    params = ShardParams(faces=True, max_count=2)
    build_shards(inp, tmp_path / "a", params, workers=1, progress=False)
    build_shards(inp, tmp_path / "b", params, workers=2, progress=False)
    ma, mb = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert [(r["path"], r["sha256"]) for r in ma["shards"]] == [(r["path"], r["sha256"]) for r in mb["shards"]]
    real_prepare, calls = shards.prepare, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_prepare(*a, **k)

    monkeypatch.setattr(shards, "prepare", flaky)
    with pytest.raises(KeyboardInterrupt):  # in the face step, before any shard is written
        build_shards(inp, tmp_path / "c", params, workers=1, progress=False)
    assert not (tmp_path / "c" / "manifest.json").exists() and not list((tmp_path / "c").glob("*/*.tar"))
    monkeypatch.setattr(shards, "prepare", real_prepare)
    build_shards(inp, tmp_path / "c", params, workers=1, progress=False)
    assert [r["sha256"] for r in read_manifest(tmp_path / "c")["shards"]] == [r["sha256"] for r in ma["shards"]]
    assert not (tmp_path / "c" / ".building").exists()
