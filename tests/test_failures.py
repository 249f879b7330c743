"""Failures a careless user can cause: each is one `error:` line with DESIGN's exit code (2 bad input, 1 a failed
run), nothing half-written is left, and what can still be done is done (a predict batch's good files get rows)."""
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import checkpoint, cli
from pipeline.errors import CheckpointError


def _run_main(argv: list, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["dfp", *map(str, argv)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    """The error line; tqdm's progress bars (redrawn with carriage returns) are not counted."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- checkpoints
def _ckpt(path: Path) -> Path:
    checkpoint.save(path, {"model": {"w": torch.arange(300_000, dtype=torch.float32)}, "modality": "image",
                           "config": {"model": "resnet18"}})
    return path


def _flip_inside_tensor(path: Path, n: int = 4096) -> None:
    """XOR n bytes in the middle of the largest record (the tensor's): the zip stays well-formed."""
    with zipfile.ZipFile(path) as z:
        rec = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    start = rec.header_offset + 30 + len(rec.filename.encode()) + len(rec.extra) + rec.file_size // 2
    raw[start:start + n] = bytes(b ^ 0x5A for b in raw[start:start + n])
    path.write_bytes(bytes(raw))


def test_bit_flipped_checkpoint_is_refused(tmp_path):
    path = _ckpt(tmp_path / "best_model.pth")
    _flip_inside_tensor(path)
    assert torch.load(path, weights_only=True)["model"]["w"].shape == (300_000,)  # torch alone takes it
    with pytest.raises(CheckpointError, match=r"best_model\.pth is damaged \(record .* fails its CRC check\)"):
        checkpoint.load(path)


def test_intact_truncated_and_malicious_checkpoints(tmp_path):
    path = _ckpt(tmp_path / "ok.pth")
    assert checkpoint.load(path)["model"]["w"][-1] == 299_999
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pth is unreadable"):
        checkpoint.load(cut)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    evil = tmp_path / "evil.pth"
    torch.save({"format": checkpoint.FORMAT, "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="evil.pth is unreadable"):
        checkpoint.load(evil)


@pytest.mark.parametrize("damage", ["empty", "flipped"])
@pytest.mark.parametrize("command", ["evaluate", "tune", "predict", "resume"])
def test_damaged_checkpoint_is_one_line_in_every_command(command, damage, tmp_path, monkeypatch, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"format": "dfp-shards/1", "modality": "image"}))
    run = tmp_path / "run"
    run.mkdir()
    ckpt = run / ("last.pth" if command == "resume" else "best_model.pth")
    if damage == "empty":
        ckpt.write_bytes(b"")
    else:
        _flip_inside_tensor(_ckpt(ckpt))
    before = ckpt.read_bytes()
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8")
    argv = {"evaluate": ["evaluate", ckpt, shards, "--device", "cpu"],
            "tune": ["tune", ckpt, shards, "--device", "cpu"],
            "predict": ["predict", ckpt, tmp_path / "x.jpg", "--out", tmp_path / "p.csv", "--device", "cpu"],
            "resume": ["train", shards, "--resume", run, "--device", "cpu"]}[command]
    code, err = _run_main(argv, monkeypatch, capsys)
    line = _one_error_line(err)
    assert code == 2 and str(ckpt) in line, err
    assert ("empty (0 bytes)" if damage == "empty" else "damaged") in line
    assert ckpt.read_bytes() == before and not (tmp_path / "p.csv").exists()


# ---------------------------------------------------------------- packing
def _accounting(inp: Path, out: Path) -> tuple[set, dict]:
    """Lossless accounting, with names that are not UTF-8 in rejects.jsonl's escaped form. rejects.jsonl may also
    name listed paths that are not files under INPUT (missing, outside)."""
    from pipeline.formats import read_manifest, source_text, tar_samples
    packed = []
    for row in read_manifest(out)["shards"]:
        tar = out / row["path"]
        with open(tar, "rb") as f:
            for _, members in tar_samples(tar):
                m = next(m for m in members if m.ext == "json")
                f.seek(m.offset)
                packed.append(json.loads(f.read(m.size))["source"])
    text = (out / "rejects.jsonl").read_bytes().decode("utf-8")  # strict: the file is valid UTF-8
    rejects = {r["source"]: r["reason"] for r in map(json.loads, text.splitlines())}
    files = {source_text(p.relative_to(inp).as_posix()) for p in inp.rglob("*") if p.is_file()}
    assert len(packed) == len(set(packed)) and not set(packed) & set(rejects)
    assert set(packed) <= files and files <= set(packed) | set(rejects)
    return set(packed), rejects


def test_name_that_is_not_utf8_is_rejected_and_the_build_goes_on(tmp_path):
    from factory import image_tree
    from pipeline.shards import ShardParams, build_shards
    inp = image_tree(tmp_path / "in", n_real=4, n_fake=3)
    raw = (inp / "real" / "g0" / "real_000.jpg").read_bytes()
    with open(os.fsencode(inp / "real" / "g0") + b"/caf\xe9.jpg", "wb") as f:
        f.write(raw)
    summary = build_shards(inp, tmp_path / "out", ShardParams(), workers=1, progress=False)
    packed, rejects = _accounting(inp, tmp_path / "out")
    assert rejects == {"real/g0/caf\\xe9.jpg": "unsupported name: not valid UTF-8; rename the file"}
    assert summary["packed"] == len(packed) == 7


def _nan_wav(path: Path) -> Path:
    import soundfile as sf
    from factory import tone
    x = tone(16000, 0.5)
    x[100:110] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, 16000, subtype="FLOAT")
    return path


def test_nan_audio_is_rejected_with_a_readable_reason(tmp_path):
    from factory import audio_tree
    from pipeline.shards import ShardParams, build_shards
    inp = audio_tree(tmp_path / "in")
    _nan_wav(inp / "fake" / "nan.wav")
    build_shards(inp, tmp_path / "out", ShardParams(), workers=1, progress=False)
    _, rejects = _accounting(inp, tmp_path / "out")
    assert rejects["fake/nan.wav"] == "corrupt: contains NaN samples"


def _untrained_checkpoint(path: Path, modality: str = "audio") -> Path:
    """A checkpoint as `dfp train` writes one, with seeded random weights (the scores do not matter here)."""
    from dataclasses import asdict
    from pipeline.formats import CLASSES
    from pipeline.models import build_model
    from pipeline.train import TrainConfig
    model = {"audio": "audio_resnet18", "image": "resnet18"}[modality]
    cfg = TrainConfig(shards="unused", model=model, backend="torch", audio_seconds=0.5, image_size=32)
    torch.manual_seed(0)
    net = build_model(cfg.model, modality)
    pre = {"image_size": 32, "audio_seconds": 0.5, "sample_rate": 16000, "frames": None, "max_side": 0,
           "mean": [0.5] * 3, "std": [0.5] * 3, "faces": None}
    checkpoint.save(path, {"config": asdict(cfg), "modality": modality, "classes": list(CLASSES), "preprocess": pre,
                           "threshold": {"method": "f1", "value": 0.5}, "model": net.state_dict()})
    return path


def test_predict_gives_every_file_its_row_despite_a_nan_wav_and_an_odd_name(tmp_path):
    import csv
    import soundfile as sf
    from factory import tone
    from pipeline.predict import predict_files
    files = tmp_path / "files"
    files.mkdir()
    sf.write(files / "good.wav", tone(16000, 0.5), 16000)
    _nan_wav(files / "nan.wav")
    sf.write(os.fsencode(files) + b"/caf\xe9.wav", tone(16000, 0.5, freq=300), 16000)
    out = tmp_path / "preds.csv"
    predict_files(_untrained_checkpoint(tmp_path / "m.pth"), [files], out, device="cpu", backend="torch", workers=0,
                  log=lambda *a: None)
    rows = {r["path"]: r for r in csv.DictReader(out.read_bytes().decode("utf-8").splitlines())}
    assert set(rows) == {f"{files}/good.wav", f"{files}/nan.wav", f"{files}/caf\\xe9.wav"}
    assert rows[f"{files}/nan.wav"]["error"] == "corrupt: contains NaN samples" and not rows[f"{files}/nan.wav"]["score"]
    for name in ("good.wav", "caf\\xe9.wav"):
        assert not rows[f"{files}/{name}"]["error"] and 0 <= float(rows[f"{files}/{name}"]["score"]) <= 1


# ---------------------------------------------------------------- shards that vanish
@pytest.fixture(scope="module")
def image_shards(tmp_path_factory):
    from factory import image_tree
    from pipeline.shards import ShardParams, build_shards
    root = tmp_path_factory.mktemp("shards")
    build_shards(image_tree(root / "in", 8, 8), root / "shards", ShardParams(split="0.5,0.25,0.25"), workers=1,
                 progress=False)
    return root / "shards"


def _delete_after_start(module, monkeypatch, split: str) -> list:
    """Wrap `module.make_loader` so the split's shards are deleted once its loader is built."""
    from pipeline.formats import read_manifest
    made, gone = module.make_loader, []

    def make_then_delete(shards, s, *a, **kw):
        loader = made(shards, s, *a, **kw)
        if s == split and not gone:
            for row in read_manifest(shards)["shards"]:
                if row["split"] == split:
                    (Path(shards) / row["path"]).unlink()
                    gone.append(str(Path(shards) / row["path"]))
        return loader
    monkeypatch.setattr(module, "make_loader", make_then_delete)
    return gone


@pytest.mark.parametrize("backend,workers", [("torch", 0), ("torch", 2), ("dali", 2)])
def test_shard_deleted_during_evaluate_is_one_line(backend, workers, image_shards, tmp_path, monkeypatch, capsys):
    import shutil
    from pipeline import evaluate
    shards = shutil.copytree(image_shards, tmp_path / "shards")
    ckpt = _untrained_checkpoint(tmp_path / "best_model.pth", "image")
    gone = _delete_after_start(evaluate, monkeypatch, "test")
    monkeypatch.setattr(evaluate, "eval_options", lambda c, b, w=2: evaluate.LoaderOptions(
        batch_size=4, train=False, image_size=32, workers=workers))
    code, err = _run_main(["evaluate", ckpt, shards, "--split", "test", "--device", "cpu", "--backend", backend,
                           "--out", tmp_path / "ev"], monkeypatch, capsys)
    line = _one_error_line(err)
    assert code == 2 and gone[0] in line and "cannot be opened" in line, err
    import multiprocessing
    # the failed epoch's loader workers are gone now, not when the garbage collector gets to the exception
    assert not multiprocessing.active_children()


def test_shard_deleted_during_train_is_one_line(image_shards, tmp_path, monkeypatch, capsys):
    import shutil
    from pipeline import train
    shards = shutil.copytree(image_shards, tmp_path / "shards")
    gone = _delete_after_start(train, monkeypatch, "train")
    code, err = _run_main(["train", shards, "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "4",
                           "--image-size", "32", "--model", "resnet18", "--backend", "torch", "--workers", "0",
                           "--device", "cpu", "--quiet", "--no-report"], monkeypatch, capsys)
    assert code == 2 and gone[0] in _one_error_line(err), err


def test_disk_full_while_packing_is_one_line_and_frees_the_space(tmp_path, monkeypatch, capsys):
    import errno
    from factory import image_tree
    from pipeline import tarwriter
    from pipeline.verify import verify_shards
    inp = image_tree(tmp_path / "in", n_real=6, n_fake=4)
    out = tmp_path / "out"
    assert _run_main(["shard", inp, out, "--workers", "1"], monkeypatch, capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    put, room = tarwriter.ShardWriter._put, [3 * 4096]

    def filling_put(self, b):  # the disk fills up in the middle of the second sample
        if len(b) > room[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        room[0] -= len(b)
        put(self, b)
    monkeypatch.setattr(tarwriter.ShardWriter, "_put", filling_put)
    code, err = _run_main(["shard", inp, out, "--workers", "1", "--seed", "1"], monkeypatch, capsys)
    line = _one_error_line(err)
    assert code == 2 and "No space left on device" in line and str(out) in line, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the old build, whole
    assert not (out / ".building").exists()
    assert verify_shards(out, progress=False)[0] == []


# ---------------------------------------------------------------- --dataset table
def _table(tmp_path: Path, rows: str) -> tuple[Path, Path]:
    from factory import smooth_image, write_jpeg
    rng = np.random.default_rng(0)
    inp = tmp_path / "in"
    for name in ("a", "b", "c", "d", "e", "f"):
        write_jpeg(inp / "imgs" / f"{name}.jpg", smooth_image(rng, 24, 24))
    write_jpeg(tmp_path / "elsewhere.jpg", smooth_image(rng, 24, 24))
    (inp / "labels.csv").write_text("path,label,split\n" + rows.format(T=tmp_path, I=inp))
    return inp, inp / "labels.csv"


def test_table_rows_that_conflict_or_leave_input_are_named(tmp_path):
    from pipeline.shards import ShardParams, build_shards
    inp, proto = _table(tmp_path, "imgs/a.jpg,real,\nimgs/b.jpg,fake,\nimgs/c.jpg,real,\nimgs/a.jpg,fake,\n"
                                  "imgs/d.jpg,fake,\nimgs/d.jpg,fake,\n./imgs/e.jpg,real,train\nimgs/e.jpg,real,test\n"
                                  "{I}/imgs/f.jpg,fake,\n../elsewhere.jpg,real,\n{T}/elsewhere.jpg,fake,\n")
    build_shards(inp, tmp_path / "out", ShardParams(dataset="table", protocol=str(proto)), workers=1, progress=False)
    packed, rejects = _accounting(inp, tmp_path / "out")
    assert packed == {"imgs/b.jpg", "imgs/c.jpg", "imgs/d.jpg", "imgs/f.jpg"}  # an identical repeat is no conflict
    assert rejects.pop("imgs/a.jpg") == ("conflicting rows: labels.csv line 2 (label real) and labels.csv line 5 "
                                         "(label fake); keep one of them")
    assert rejects.pop("imgs/e.jpg") == ("conflicting rows: labels.csv line 8 (split train) and labels.csv line 9 "
                                         "(split test); keep one of them")
    for listed, line in (("../elsewhere.jpg", 11), (f"{tmp_path}/elsewhere.jpg", 12)):
        assert rejects.pop(listed) == (f"outside INPUT: listed in labels.csv line {line}, but only files under "
                                       f"INPUT {inp} are packed (move or link it there)")
    assert rejects == {"labels.csv": "protocol file, not a sample"}


def test_packing_rate_counts_only_the_files_read(tmp_path):
    from pipeline.shards import ShardParams, build_shards, format_summary
    missing = "".join(f"imgs/gone{i}.jpg,fake,\n" for i in range(200))
    inp, proto = _table(tmp_path, "imgs/a.jpg,real,\nimgs/b.jpg,fake,\nimgs/c.jpg,real,\n" + missing)
    (inp / "imgs" / "c.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # read, then rejected
    s = build_shards(inp, tmp_path / "out", ShardParams(dataset="table", protocol=str(proto)), workers=1,
                     progress=False)
    assert s["packed"] == 2 and s["rejected"] == 200 + 3 + 2  # gone*, c.jpg, d-f unlisted, labels.csv
    assert s["read"] == 3 and s["files_per_s"] * s["seconds"] == pytest.approx(3)
    assert f"({s['files_per_s']:.0f} files read/s)" in format_summary(s)


@pytest.mark.parametrize("damage", ["deleted", "short"])
def test_unreadable_shard_index_is_one_line(damage, image_shards, tmp_path, monkeypatch, capsys):
    import shutil
    shards = shutil.copytree(image_shards, tmp_path / "shards")
    idx = next((shards / "test").glob("*.idx"))
    if damage == "deleted":
        idx.unlink()
    else:
        idx.write_text(idx.read_text().splitlines()[0] + "\n")
    ckpt = _untrained_checkpoint(tmp_path / "best_model.pth", "image")
    code, err = _run_main(["evaluate", ckpt, shards, "--split", "test", "--device", "cpu", "--backend", "torch",
                           "--out", tmp_path / "ev"], monkeypatch, capsys)
    line = _one_error_line(err)
    assert code == 2 and str(idx) in line and "dfp verify" in line, err


def test_training_loader_on_an_empty_split_is_an_input_error(image_shards):
    from pipeline.errors import InputError
    from pipeline.loaders import LoaderOptions, make_loader
    with pytest.raises(InputError, match="split 'nope' of .* is empty"):
        make_loader(image_shards, "nope", "torch", "cpu", LoaderOptions(batch_size=2, workers=0))


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_checkpoint_with_foreign_weights_or_missing_entries_is_one_line(command, image_shards, tmp_path, monkeypatch,
                                                                       capsys):
    state = checkpoint.load(_untrained_checkpoint(tmp_path / "m.pth", "image"))
    state.pop("format")
    bad = {"weights": {**state, "model": dict(list(state["model"].items())[:-2])},
           "entries": {k: v for k, v in state.items() if k != "preprocess"}}
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8")
    for damage, expected in (("weights", "its weights do not fit model resnet18 (Error(s) in loading state_dict"),
                             ("entries", "lacks preprocess")):
        ckpt = tmp_path / f"{damage}.pth"
        checkpoint.save(ckpt, bad[damage])
        argv = (["predict", ckpt, tmp_path / "x.jpg", "--out", tmp_path / "p.csv"] if command == "predict" else
                ["evaluate", ckpt, image_shards, "--out", tmp_path / "ev"])
        code, err = _run_main([*argv, "--device", "cpu", "--backend", "torch"], monkeypatch, capsys)
        line = _one_error_line(err)
        assert code == 2 and str(ckpt) in line and expected in line, err
