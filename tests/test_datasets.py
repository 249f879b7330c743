"""Public datasets as distributed: a tiny mock of each layout, with its real file names, folder
trees and label-file formats, read into class, split, group and attack, with every file accounted for."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from factory import dfp_in_process, smooth_image, tone, write_av, write_jpeg, write_video
from pipeline.datasets import DatasetOptions, discover
from pipeline.errors import InputError
from pipeline.splits import resolve_splits
from test_shards import accounting, all_samples, build

RNG = np.random.default_rng(0)


def jpg(path: Path) -> Path:
    return write_jpeg(path, smooth_image(RNG, 16, 16))


def flac(path: Path, seconds: float = 0.05) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(16000, seconds), 16000)
    return path


def mp4(path: Path) -> Path:
    return write_video(path, frames=2, w=32, h=32)


def text(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def read(name: str, root: Path, modality: str = "auto", **opts):
    """{source: candidate}, {source: reject reason}; asserts every file under root is one or the other."""
    d = discover(name, root, modality, DatasetOptions(**opts))
    cands = {c.source: c for c in d.candidates}
    rejects = {r["source"]: r["reason"] for r in d.rejects}
    assert len(cands) == len(d.candidates) and len(rejects) == len(d.rejects)
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert not set(cands) & set(rejects)
    assert files <= set(cands) | set(rejects), files - set(cands) - set(rejects)
    return cands, rejects


def labels(cands: dict) -> dict:
    return {s: (c.cls, c.split, c.group, c.attack) for s, c in cands.items()}




# ---------------------------------------------------------------- folders
@pytest.mark.parametrize("layout", ["seed", "cifake", "genimage", "140k"])
def test_folder_layouts_of_the_field(tmp_path, layout):
    folders = {"seed": ["train_real", "train_fake", "test_real", "Test_Fake"],
               "cifake": ["train/REAL", "train/FAKE", "test/REAL", "test/FAKE"],
               "genimage": ["train/nature", "train/ai", "val/nature", "val/ai"],
               "140k": ["train/real", "train/fake", "valid/real", "valid/fake", "test/real", "test/fake"]}[layout]
    for f in folders:
        for i in range(10 if f.lower().startswith("train") else 2):
            jpg(tmp_path / f / f"{i}.jpg")
    (tmp_path / "train" / "ai").mkdir(parents=True, exist_ok=True)
    (tmp_path / "train" / "ai" / "empty.png").write_bytes(b"")  # GenImage ships zero-byte PNGs
    cands, rejects = read("folders", tmp_path)
    assert rejects == {}
    for src, c in cands.items():
        assert c.cls == ("fake" if any(k in src.lower() for k in ("fake", "/ai/")) else "real")
        assert c.split == ({"test": "test", "valid": "val", "val": "val"}.get(src.split("/")[0].lower().split("_")[0])
                           or ("train" if src.lower().startswith("train") else c.split))
    resolve_splits(list(cands.values()), (0.8, 0.1, 0.1), 0.1, 0)
    splits = {(c.split, c.cls) for c in cands.values()}
    assert {("val", "real"), ("val", "fake"), ("train", "real"), ("train", "fake")} <= splits


def test_val_is_carved_from_train_when_missing_and_the_empty_png_is_rejected(tmp_path):
    for split, n in (("train", 20), ("test", 3)):
        for cls in ("REAL", "FAKE"):
            for i in range(n):
                jpg(tmp_path / "in" / split / cls / f"{i}.jpg")
    (tmp_path / "in" / "train" / "FAKE" / "zero.png").write_bytes(b"")
    s = build(tmp_path / "in", tmp_path / "out", val_fraction=0.2)["splits"]
    assert s == {"train": {"real": 16, "fake": 16}, "val": {"real": 4, "fake": 4}, "test": {"real": 3, "fake": 3}}
    packed, rejects = accounting(tmp_path / "in", tmp_path / "out")
    assert rejects == {"train/FAKE/zero.png": "empty file"}


# ---------------------------------------------------------------- table
def test_table_protocol(tmp_path):
    inp = tmp_path / "in"
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "stray.jpg"):
        jpg(inp / "imgs" / name)
    text(inp / "labels.csv", "path,label,split,group,attack\nimgs/a.jpg,real,train,p1,\n"
                             "imgs/b.jpg,fake,train,p1,sd15\nimgs/c.jpg,bonafide,test,p2,\n"
                             "./imgs/d.jpg,spoof,eval,p2,gan\nimgs/gone.jpg,fake,test,,\n")
    cands, rejects = read("table", inp, protocol=inp / "labels.csv")
    assert labels(cands) == {"imgs/a.jpg": ("real", "train", "p1", None), "imgs/b.jpg": ("fake", "train", "p1", "sd15"),
                             "imgs/c.jpg": ("real", "test", "p2", None), "imgs/d.jpg": ("fake", "test", "p2", "gan")}
    assert rejects == {"imgs/stray.jpg": "not listed in labels.csv", "labels.csv": "protocol file, not a sample",
                       "imgs/gone.jpg": "missing: listed in labels.csv line 6, but no such file"}


# ---------------------------------------------------------------- FF++
def ffpp_tree(root: Path, pairs: list[tuple[str, str]], methods=("Deepfakes", "FaceSwap")) -> Path:
    for a, b in pairs:
        for i in (a, b):
            mp4(root / "original_sequences/youtube/c23/videos" / f"{i}.mp4")
        for m in methods:
            for x, y in ((a, b), (b, a)):
                mp4(root / "manipulated_sequences" / m / "c23/videos" / f"{x}_{y}.mp4")
    return root


def test_ffpp_official_splits_pairs_masks_and_models(tmp_path):
    inp = ffpp_tree(tmp_path / "in", [("000", "001"), ("002", "003"), ("004", "005")])
    mp4(inp / "manipulated_sequences/Deepfakes/masks/videos/000_001.mp4")
    text(inp / "manipulated_sequences/Deepfakes/models/000_001/model.pth", "weights")
    mp4(inp / "original_sequences/youtube/c40/videos/000.mp4")
    mp4(inp / "manipulated_sequences/Deepfakes/c40/videos/000_001.mp4")
    for split, (a, b) in (("train", ("001", "000")), ("val", ("002", "003")), ("test", ("004", "005"))):
        text(inp / "splits" / f"{split}.json", json.dumps([[a, b]]))
    cands, rejects = read("ff++", inp)
    assert len(cands) == 3 * (2 + 4)
    for src, c in cands.items():
        stem = src.rsplit("/", 1)[1][:3]
        assert c.split == {"000": "train", "001": "train", "002": "val", "003": "val"}.get(stem, "test")
        assert c.cls == ("fake" if src.startswith("manipulated") else "real")
        assert c.attack == (src.split("/")[1] if c.cls == "fake" else None)
    assert labels(cands)["manipulated_sequences/FaceSwap/c23/videos/003_002.mp4"] == \
        ("fake", "val", "002_003", "FaceSwap")
    assert rejects == {"manipulated_sequences/Deepfakes/masks/videos/000_001.mp4": "not a sample: mask video",
                       "manipulated_sequences/Deepfakes/models/000_001/model.pth": "not a sample: model weights",
                       **{f"{top}/c40/videos/{n}.mp4": "not a sample: compression c40, packing --ff-compression c23"
                          for top, n in (("original_sequences/youtube", "000"),
                                         ("manipulated_sequences/Deepfakes", "000_001"))},
                       **{f"splits/{s}.json": "protocol file, not a sample" for s in ("train", "val", "test")}}
    cands40, _ = read("ff++", inp, compression="c40")
    assert sorted(cands40) == ["manipulated_sequences/Deepfakes/c40/videos/000_001.mp4",
                               "original_sequences/youtube/c40/videos/000.mp4"]


def test_a_fake_never_lands_in_another_split_than_its_sources(tmp_path):
    """FF++ without split files, DFDC fakes with their originals: --split cuts whole groups across classes."""
    pairs = [(f"{2 * i:03d}", f"{2 * i + 1:03d}") for i in range(12)]
    inp = ffpp_tree(tmp_path / "ff", pairs, methods=("Deepfakes",))
    cands, _ = read("ff++", inp)
    resolve_splits(list(cands.values()), (0.6, 0.2, 0.2), 0.1, 3)
    where = {src.rsplit("/", 1)[1][:-4]: c.split for src, c in cands.items() if c.cls == "real"}
    for src, c in cands.items():
        if c.cls == "fake":
            a, b = src.rsplit("/", 1)[1][:-4].split("_")
            assert c.split == where[a] == where[b], src
    assert {c.split for c in cands.values()} == {"train", "val", "test"}


# ---------------------------------------------------------------- Celeb-DF
def test_celebdf_test_list_polarity_identity_groups(tmp_path):
    inp = tmp_path / "in"
    for name in ("id0_0000", "id0_0001", "id1_0000", "id2_0000", "id3_0000"):
        mp4(inp / "Celeb-real" / f"{name}.mp4")
    for name in ("id0_id1_0000", "id1_id0_0000", "id2_id3_0000", "id3_id2_0000"):
        mp4(inp / "Celeb-synthesis" / f"{name}.mp4")
    mp4(inp / "YouTube-real" / "00000.mp4")
    mp4(inp / "YouTube-real" / "00001.mp4")
    (inp / "List_of_testing_videos.txt").write_text(  # the real file has no trailing newline
        "1 YouTube-real/00001.mp4\n0 Celeb-synthesis/id3_id2_0000.mp4\n1 Celeb-real/id3_0000.mp4\n"
        "0 Celeb-real/id2_0000.mp4\n1 Celeb-real/id9_0009.mp4")
    cands, rejects = read("celeb-df", inp)
    got = labels(cands)
    assert got["YouTube-real/00001.mp4"] == ("real", "test", "YouTube-real/00001.mp4", None)
    assert got["Celeb-synthesis/id3_id2_0000.mp4"] == ("fake", "test", "id3", None)
    assert got["Celeb-real/id3_0000.mp4"] == ("real", "test", "id3", None)
    assert got["Celeb-real/id0_0001.mp4"] == ("real", None, "id0", None)
    assert got["Celeb-synthesis/id0_id1_0000.mp4"][:3] == ("fake", None, "id0")
    assert rejects == {"Celeb-real/id2_0000.mp4": "label fake in List_of_testing_videos.txt line 4 contradicts "
                                                  "its folder Celeb-real",
                       "Celeb-real/id9_0009.mp4": "missing: listed in List_of_testing_videos.txt line 5, "
                                                  "but no such file",
                       "List_of_testing_videos.txt": "protocol file, not a sample"}
    resolve_splits(list(cands.values()), (0.8, 0.1, 0.1), 0.5, 0)
    by_identity = {}
    for c in cands.values():
        if c.split != "test":
            by_identity.setdefault(c.group, set()).add(c.split)
    assert all(len(s) == 1 for s in by_identity.values()) and {"train", "val"} <= set().union(*by_identity.values())


# ---------------------------------------------------------------- DFDC
def test_dfdc_metadata_and_test_labels(tmp_path):
    inp = tmp_path / "in"
    meta = {}
    for part in (0, 1):
        for i in range(3):
            real = f"r{part}{i}.mp4"
            meta[real] = {"label": "REAL", "split": "train", "original": None}
            for j in range(2):
                meta[f"f{part}{i}{j}.mp4"] = {"label": "FAKE", "split": "train", "original": real}
        names = [n for n in meta if n[1] == str(part)]
        for n in names:
            mp4(inp / f"dfdc_train_part_{part}" / n)
        text(inp / f"dfdc_train_part_{part}" / "metadata.json", json.dumps({n: meta[n] for n in names}))
    mp4(inp / "dfdc_train_part_0" / "unlisted.mp4")
    for n in ("t0.mp4", "t1.mp4"):
        mp4(inp / "test" / n)
    text(inp / "test" / "labels.csv", "filename,label\nt0.mp4,1\nt1.mp4,0\nt2.mp4,1\n")
    cands, rejects = read("dfdc", inp)
    got = labels(cands)
    assert got["test/t0.mp4"][:2] == ("fake", "test") and got["test/t1.mp4"][:2] == ("real", "test")
    assert got["dfdc_train_part_1/f120.mp4"] == ("fake", None, "r12.mp4", None)
    assert got["dfdc_train_part_1/r12.mp4"] == ("real", None, "r12.mp4", None)
    assert rejects == {"dfdc_train_part_0/unlisted.mp4": "not listed in metadata.json or labels.csv",
                       "test/t2.mp4": "missing: listed in labels.csv line 4, but no such file",
                       "test/labels.csv": "protocol file, not a sample",
                       **{f"dfdc_train_part_{p}/metadata.json": "protocol file, not a sample" for p in (0, 1)}}
    resolve_splits(list(cands.values()), (0.8, 0.1, 0.1), 0.34, 1)
    for c in cands.values():
        if c.cls == "fake" and c.split != "test":
            assert c.split == got_split(cands, c.group), c.source
    assert {c.split for c in cands.values()} == {"train", "val", "test"}


def got_split(cands: dict, original: str) -> str:
    return next(c.split for s, c in cands.items() if s.endswith("/" + original))


# ---------------------------------------------------------------- ASVspoof 2019 LA and 5
def test_asvspoof2019_la(tmp_path, monkeypatch, capsys):
    la = tmp_path / "in" / "LA"
    rows = {"train": ["LA_0079 LA_T_1138215 - - bonafide", "LA_0079 LA_T_1271820 - A01 spoof",
                      "LA_0080 LA_T_0000001 - A02 spoof"],
            "dev": ["LA_0069 LA_D_1047731 - - bonafide", "LA_0069 LA_D_1105538 - A03 spoof"],
            "eval": ["LA_0039 LA_E_2834763 - A11 spoof", "LA_0014 LA_E_8877452 - - bonafide"]}
    for part, lines in rows.items():
        suffix = "trn" if part == "train" else "trl"
        text(la / "ASVspoof2019_LA_cm_protocols" / f"ASVspoof2019.LA.cm.{part}.{suffix}.txt", "\n".join(lines) + "\n")
        for line in lines:
            if "0000001" not in line:
                flac(la / f"ASVspoof2019_LA_{part}" / "flac" / f"{line.split()[1]}.flac")
    flac(la / "ASVspoof2019_LA_train" / "flac" / "LA_T_9999999.flac")
    text(la / "ASVspoof2019_LA_asv_protocols" / "ASVspoof2019.LA.asv.dev.gi.trl.txt", "LA_0069 LA_D_1047731 bonafide\n")
    cands, rejects = read("asvspoof2019", tmp_path / "in")
    got = labels(cands)
    assert got["LA/ASVspoof2019_LA_train/flac/LA_T_1271820.flac"] == ("fake", "train", "LA_0079", "A01")
    assert got["LA/ASVspoof2019_LA_train/flac/LA_T_1138215.flac"] == ("real", "train", "LA_0079", None)
    assert got["LA/ASVspoof2019_LA_dev/flac/LA_D_1105538.flac"] == ("fake", "val", "LA_0069", "A03")
    assert got["LA/ASVspoof2019_LA_eval/flac/LA_E_8877452.flac"] == ("real", "test", "LA_0014", None)
    assert rejects["LA/ASVspoof2019_LA_train/flac/LA_T_0000001.flac"] == \
        "missing: listed in ASVspoof2019.LA.cm.train.trn.txt line 3, but no such file"
    assert rejects["LA/ASVspoof2019_LA_train/flac/LA_T_9999999.flac"] == "not listed in ASVspoof2019_LA_cm_protocols"
    assert rejects["LA/ASVspoof2019_LA_asv_protocols/ASVspoof2019.LA.asv.dev.gi.trl.txt"] == \
        "not a sample: not a media file"
    assert rejects["LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.dev.trl.txt"] == "protocol file, not a sample"
    code, printed, err = dfp_in_process(["stats", tmp_path / "in", "--dataset", "asvspoof2019", "--json"], monkeypatch,
                                        capsys)
    assert code == 0, err
    st = json.loads(printed)
    assert st["attacks"] == {"train": {"A01": 1}, "val": {"A03": 1}, "test": {"A11": 1}}
    assert st["splits"]["train"] == {"real": 1, "fake": 1}


def test_asvspoof5_tsv_packs_with_attack_and_speaker_in_key_json(tmp_path):
    inp = tmp_path / "in"
    rows = {"train": ("T", "flac_T", ["T_4850 T_0000000000 F - - - AC3 A05 spoof -",
                                      "T_4850 T_0000000001 F - - - - bonafide bonafide -"]),
            "dev.track_1": ("D", "flac_D", ["D_0062 D_0000000000 M - - - AC1 A11 spoof -",
                                            "D_0062 D_0000000001 M - - - - bonafide bonafide -"]),
            "eval.track_1": ("E", "flac_E_eval", ["E_0001 E_0000000000 F C05 2 1 AC2 A17 spoof -",
                                                  "E_0002 E_0000000001 F - - - - bonafide bonafide -"])}
    for part, (_, folder, lines) in rows.items():
        text(inp / f"ASVspoof5.{part}.tsv", "\n".join(lines) + "\n")
        for line in lines:
            flac(inp / folder / f"{line.split()[1]}.flac")
    out = tmp_path / "out"
    summary = build(inp, out, dataset="asvspoof5")
    assert summary["splits"] == {s: {"real": 1, "fake": 1} for s in ("train", "val", "test")}
    packed, rejects = accounting(inp, out)
    assert set(rejects.values()) == {"protocol file, not a sample"} and len(rejects) == 3
    meta = {json.loads(s["json"])["source"]: json.loads(s["json"]) for s in all_samples(out)}
    assert meta["flac_E_eval/E_0000000000.flac"]["attack"] == "A17"
    assert meta["flac_E_eval/E_0000000000.flac"]["group"] == "E_0001"
    assert "attack" not in meta["flac_D/D_0000000001.flac"] and meta["flac_D/D_0000000001.flac"]["class"] == "real"


# ---------------------------------------------------------------- In-the-Wild
def test_in_the_wild_speakers_never_straddle_splits(tmp_path):
    inp = tmp_path / "in" / "release_in_the_wild"
    rows = ["file,speaker,label"]
    for i in range(24):
        speaker = f"Speaker {i % 6}"
        rows.append(f"{i}.wav,{speaker},{'spoof' if i % 3 == 0 else 'bona-fide'}")
        if i != 23:
            flac(inp / f"{i}.wav")
    text(inp / "meta.csv", "\n".join(rows) + "\n")
    cands, rejects = read("in-the-wild", tmp_path / "in")
    assert rejects == {"release_in_the_wild/23.wav": "missing: listed in meta.csv line 25, but no such file",
                       "release_in_the_wild/meta.csv": "protocol file, not a sample"}
    assert labels(cands)["release_in_the_wild/3.wav"] == ("fake", None, "Speaker 3", None)
    resolve_splits(list(cands.values()), (0.5, 0.25, 0.25), 0.1, 0)
    where = {}
    for c in cands.values():
        where.setdefault(c.group, set()).add(c.split)
    assert all(len(s) == 1 for s in where.values()) and set().union(*where.values()) == {"train", "val", "test"}


# ---------------------------------------------------------------- FakeAVCeleb
FAVC = [("id00076", "real", "RealVideo-RealAudio", "African", "men", "00109.mp4"),
        ("id00076", "rtvc", "RealVideo-FakeAudio", "African", "men", "00109_fake.mp4"),
        ("id00166", "faceswap", "FakeVideo-RealAudio", "Caucasian (European)", "women", "00010_1_id00476.mp4"),
        ("id00166", "fsgan-wav2lip", "FakeVideo-FakeAudio", "Caucasian (European)", "women", "00010_id0_wavtolip.mp4"),
        ("id00200", "real", "RealVideo-RealAudio", "Asian (East)", "men", "00001.mp4")]


@pytest.fixture(scope="module")
def favc(tmp_path_factory):
    inp = tmp_path_factory.mktemp("favc") / "FakeAVCeleb_v1.2"
    rows = ["source,target1,target2,method,category,type,race,gender,path,"]
    for k, (src, method, kind, race, gender, name) in enumerate(FAVC):
        rows.append(f"{src},-,-,{method},A,{kind},{race},{gender},{name},FakeAVCeleb/{kind}/{race}/{gender}/{src}")
        write_av(inp / kind / race / gender / src / name, seconds=0.2 + 0.1 * k, seed=k)
    text(inp / "meta_data.csv", "\n".join(rows) + "\n")
    return inp


def test_fakeavceleb_labels_per_modality(favc):
    video, rejects = read("fakeavceleb", favc, "video")
    audio, _ = read("fakeavceleb", favc, "audio")
    assert rejects == {"meta_data.csv": "protocol file, not a sample"}
    for src, method, kind, race, gender, name in FAVC:
        rel = f"{kind}/{race}/{gender}/{src}/{name}"
        assert (video[rel].cls, audio[rel].cls) == ("fake" if kind.startswith("Fake") else "real",
                                                   "fake" if kind.endswith("FakeAudio") else "real")
        assert video[rel].group == audio[rel].group == src
        assert video[rel].attack == (method if video[rel].cls == "fake" else None)


def test_fakeavceleb_audio_is_packed_from_the_mp4_audio_track(favc, tmp_path):
    out = tmp_path / "out"
    build(favc, out, dataset="fakeavceleb", modality="audio", split="0.34,0.33,0.33")
    packed, rejects = accounting(favc, out)
    assert len(packed) == len(FAVC)
    durations = {}
    for s in all_samples(out):
        meta = json.loads(s["json"])
        x, sr = sf.read(__import__("io").BytesIO(s["flac"]))
        assert sr == 16000 and np.abs(x).max() > 0.1  # the tone, not silence
        durations[FAVC[[r[5] for r in FAVC].index(meta["source"].rsplit("/", 1)[1])][5]] = len(x) / sr
        assert s["cls"] == (b"1" if "FakeAudio" in meta["source"] else b"0")
    assert durations["00001.mp4"] > durations["00109.mp4"] + 0.3  # each clip's own track (0.6 s vs 0.2 s)


def test_fakeavceleb_without_metadata_reads_the_type_folders(favc, tmp_path):
    import shutil
    inp = tmp_path / "in"
    shutil.copytree(favc, inp, ignore=shutil.ignore_patterns("*.csv"))
    cands, rejects = read("fakeavceleb", inp, "video")
    assert rejects == {} and len(cands) == len(FAVC)
    assert labels(cands)["FakeVideo-RealAudio/Caucasian (European)/women/id00166/00010_1_id00476.mp4"] == \
        ("fake", None, "id00166", None)


# ---------------------------------------------------------------- DeepfakeBench
def test_deepfakebench_json_frames_with_gaps_and_foreign_absolute_paths(tmp_path):
    inp = tmp_path / "in"
    base = "FaceForensics++/original_sequences/youtube/c23/frames"
    fake = "FaceForensics++/manipulated_sequences/Deepfakes/c23/frames"
    for f in ("000.png", "009.png", "017.png"):
        jpg(inp / base / "000" / f)
    for f in ("000.png", "011.png"):
        jpg(inp / fake / "000_003" / f)
    jpg(inp / base / "000" / "unused.png")
    text(inp / "FaceForensics++/original_sequences/youtube/c23/landmarks/000/000.npy", "x")
    tree = {"FaceForensics++": {
        "FF-real": {"train": {"c23": {"000": {"label": "FF-real", "frames": [
            f"/home/someone/datasets/rgb/{base}/000/{f}" for f in ("000.png", "009.png", "017.png")]}},
            "c40": {"000": {"label": "FF-real", "frames": ["elsewhere/000.png"]}}}},
        "FF-DF": {"test": {"c23": {"000_003": {"label": "FF-DF", "frames": [
            f"{fake}/000_003/000.png", f"{fake}/000_003/011.png", f"{fake}/000_003/020.png"]}}}}}}
    proto = text(tmp_path / "FaceForensics++.json", json.dumps(tree))
    cands, rejects = read("deepfakebench", inp, protocol=proto)
    assert labels(cands)[f"{base}/000/009.png"] == ("real", "train", "000", None)
    assert labels(cands)[f"{fake}/000_003/011.png"] == ("fake", "test", "000_003", "FF-DF")
    assert len(cands) == 5
    assert rejects == {f"{fake}/000_003/020.png": "missing: listed in FaceForensics++.json (FF-DF/000_003), "
                                                  "but no such file",
                       f"{base}/000/unused.png": "not listed in FaceForensics++.json",
                       "FaceForensics++/original_sequences/youtube/c23/landmarks/000/000.npy":
                           "not a sample: not a media file"}


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("case", ["unknown", "malformed", "missing_protocol", "bad_json"])
def test_bad_dataset_input_exits_2_naming_the_file_and_line(tmp_path, case, monkeypatch, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    flac(inp / "flac_T" / "T_1.flac")
    args = ["--dataset", "asvspoof5"]
    if case == "unknown":
        args = ["--dataset", "faceforensics"]
    elif case == "malformed":
        text(inp / "ASVspoof5.train.tsv", "T_1 T_1 F - - - - bonafide bonafide -\nT_1 T_2 F A05 spoof\n")
    elif case == "missing_protocol":
        args = ["--dataset", "table", "--protocol", tmp_path / "nope.csv"]
    else:
        args = ["--dataset", "deepfakebench", "--protocol", text(tmp_path / "x.json", '{"a": {\n"b": [}')]
    code, _, err = dfp_in_process(["shard", inp, out, "--quiet", *args], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err, err
    line = err.strip()
    assert len(line.splitlines()) == 1
    assert {"unknown": "folders, table, ff++, celeb-df, dfdc, asvspoof2019, asvspoof5, in-the-wild, fakeavceleb",
            "malformed": "ASVspoof5.train.tsv line 2: expected ten",
            "missing_protocol": "nope.csv: file or folder not found",
            "bad_json": "x.json line 2: not valid JSON"}[case] in line
    assert not out.exists()


def test_a_label_outside_the_class_map_names_its_line(tmp_path):
    inp = tmp_path / "in"
    jpg(inp / "a.jpg")
    proto = text(tmp_path / "t.csv", "path,label\na.jpg,real\na.jpg,maybe\n")
    with pytest.raises(InputError, match=r"t.csv line 3: label 'maybe'"):
        discover("table", inp, "auto", DatasetOptions(protocol=proto))
