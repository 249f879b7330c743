"""Nothing of the user's is replaced: dfp shard's OUT and dfp train's --out are dfp's own or empty, one writer
per folder (a lock, taken over from a killed holder), resume only on the same shards, and folders that cannot
be written (read-only, full) are one line with nothing half-written left."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

from factory import copy_run, image_tree
from pipeline import cli
from pipeline.errors import InputError
from pipeline.lock import LOCK_FILE, FolderLock
from pipeline.shards import ShardParams, build_shards

REPO = Path(__file__).resolve().parents[1]


def _run_main(argv, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["dfp", *map(str, argv)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _one_line(err: str, needle: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0] and "Traceback" not in err, err


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("guards")
    image_tree(root / "in", 18, 9)
    build_shards(root / "in", root / "shards", ShardParams(split="0.6,0.2,0.2"), workers=1, progress=False)
    return root / "shards"


# ---------------------------------------------------------------- dfp shard: OUT
def test_shard_refuses_an_out_that_contains_input(tmp_path, monkeypatch, capsys):
    """`cp -r data p/train; dfp shard p/train p` replaced the source images with shards."""
    image_tree(tmp_path / "p" / "train", 4, 2)
    before = _snapshot(tmp_path)
    code, _, err = _run_main(["shard", tmp_path / "p" / "train", tmp_path / "p", "--quiet"], monkeypatch, capsys)
    assert code == 2
    _one_line(err, "contains INPUT")
    assert _snapshot(tmp_path) == before


def test_shard_leaves_a_presplit_dataset_named_as_out_alone(tmp_path, monkeypatch, capsys):
    """`dfp shard data presplit` over someone's presplit/{train,val,test}/{real,fake} left 15 of 121 files."""
    image_tree(tmp_path / "data", 4, 2)
    for split in ("train", "val", "test"):
        image_tree(tmp_path / "presplit" / split, 2, 2)
    before = _snapshot(tmp_path / "presplit")
    code, _, err = _run_main(["shard", tmp_path / "data", tmp_path / "presplit", "--quiet"], monkeypatch, capsys)
    assert code == 2
    _one_line(err, "which dfp shard did not write")
    assert _snapshot(tmp_path / "presplit") == before


def _notes(out: Path) -> None:
    out.mkdir()
    (out / "notes.txt").write_text("mine")


def _other_manifest(out: Path) -> None:
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": "someone-else/2"}))
    (out / "train").mkdir()


def _file_among_shards(out: Path) -> None:
    build_shards(out.parent / "in", out, ShardParams(), workers=1, progress=False)
    (out / "train" / "keep_me.jpg").write_bytes(b"mine")


def _linked_split(out: Path) -> None:
    out.mkdir()
    (out.parent / "elsewhere").mkdir()
    (out / "val").symlink_to(out.parent / "elsewhere")


@pytest.mark.parametrize("make", [_notes, _other_manifest, _file_among_shards, _linked_split])
def test_shard_refuses_an_out_holding_anything_it_did_not_write(tmp_path, make, monkeypatch, capsys):
    image_tree(tmp_path / "in", 4, 2)
    out = tmp_path / "out"
    make(out)
    before = _snapshot(out)
    code, _, err = _run_main(["shard", tmp_path / "in", out, "--quiet"], monkeypatch, capsys)
    assert code == 2
    _one_line(err, f"OUT {out} holds")
    assert _snapshot(out) == before


def _interrupted_before_the_manifest(out: Path) -> None:
    """A kill between moving the splits in and writing the manifest: the build folder is still there."""
    (out / "manifest.json").unlink()
    (out / ".building").mkdir()
    (out / LOCK_FILE).write_text("{}")  # a killed holder's file: its flock went with the process


@pytest.mark.parametrize("state", ["empty", "previous", "interrupted"])
def test_shard_rebuilds_its_own_output(tmp_path, state):
    inp = image_tree(tmp_path / "in", 6, 3)
    out = tmp_path / "out"
    out.mkdir()
    if state != "empty":
        build_shards(inp, out, ShardParams(seed=1), workers=1, progress=False)
    if state == "interrupted":
        _interrupted_before_the_manifest(out)
    build_shards(inp, out, ShardParams(seed=2), workers=1, progress=False)
    assert json.loads((out / "manifest.json").read_text())["params"]["seed"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "rejects.jsonl", "test", "train", "val"]


# ---------------------------------------------------------------- the lock
def test_a_second_build_into_one_out_is_refused_naming_the_holder(tmp_path, monkeypatch, capsys):
    """Two builds shared OUT/.building: one left a manifest whose shard failed verify, the other a traceback."""
    image_tree(tmp_path / "in", 4, 2)
    out = tmp_path / "out"
    out.mkdir()
    lock = FolderLock(out).acquire()  # another writer, as far as flock is concerned
    try:
        code, _, err = _run_main(["shard", tmp_path / "in", out, "--quiet"], monkeypatch, capsys)
    finally:
        lock.release()
    assert code == 2
    _one_line(err, f"is in use by pid {os.getpid()}")
    assert sorted(p.name for p in out.iterdir()) == []  # the holder's lock file went with its release


_HOLDER = textwrap.dedent("""
    import os, sys, time
    from pipeline.lock import FolderLock
    FolderLock(sys.argv[1]).acquire()
    if sys.argv[2] == "fork":
        ready_r, ready_w = os.pipe()
        if os.fork() == 0:  # a worker that outlives its killed parent
            os.write(ready_w, b"x")  # fork() returns here after the lock's at-fork handler ran in this child
            time.sleep(60)
            os._exit(0)
        os.read(ready_r, 1)  # "held" only once the worker exists: a loaded machine may not have run it yet
    print("held", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("mode", ["alone", "fork"])
def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, mode):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), mode], stdout=subprocess.PIPE, env=env,
                              text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"in use by pid {holder.pid} on .*-c {re.escape(str(tmp_path))}"):
            FolderLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        lock = FolderLock(tmp_path).acquire()  # its worker, if any, still lives: it holds no lock
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        lock.release()
        assert not (tmp_path / LOCK_FILE).exists()
    finally:
        try:
            os.killpg(holder.pid, signal.SIGKILL)  # the parent, or the worker it left behind
        except ProcessLookupError:
            pass
        holder.wait()


# ---------------------------------------------------------------- dfp train: --out
def _fake_run(run: Path) -> None:
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "history.csv").write_text("epoch\n1\n2\n3\n4\n5\n")
    (run / "best_model.pth").write_bytes(b"weights")


def _train_args(shards: Path, out: Path, *more) -> list:
    return ["train", shards, "--out", out, "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--model",
            "resnet18", "--backend", "torch", "--workers", "0", "--device", "cpu", "--quiet", "--no-report", *more]


@pytest.fixture
def no_training(monkeypatch):
    """What the run would have been given, without training: the guards run before it."""
    import pipeline.train as train
    started = []
    monkeypatch.setattr(train, "_run", lambda cfg, *a: started.append(cfg) or Path(cfg.out))
    return started


def test_train_refuses_a_finished_run_and_overwrite_moves_it_aside(shards, tmp_path, monkeypatch, capsys,
                                                                     no_training):
    """`dfp train SHARDS --out EXISTING_RUN` replaced best_model.pth and history.csv (5 rows -> 1)."""
    run = tmp_path / "run"
    _fake_run(run)
    before = _snapshot(run)
    code, _, err = _run_main(_train_args(shards, run), monkeypatch, capsys)
    assert code == 2 and not no_training
    _one_line(err, f"--out {run} already holds a run")
    assert _snapshot(run) == before
    code, out, err = _run_main(_train_args(shards, run, "--overwrite"), monkeypatch, capsys)
    assert code == 0 and len(no_training) == 1, err
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and _snapshot(aside[0]) == before and str(aside[0]) in out
    assert list(run.iterdir()) == []  # the new run starts in an empty folder (its lock released at the end)
    code, _, err = _run_main(_train_args(shards, run, "--overwrite", "--resume", run), monkeypatch, capsys)
    assert code == 2
    _one_line(err, "--overwrite starts a new run")


def test_run_dir_rules(tmp_path):
    from pipeline.rundir import claim
    empty, stale, foreign = tmp_path / "empty", tmp_path / "stale", tmp_path / "foreign"
    for d in (empty, stale, foreign):
        d.mkdir()
    (stale / LOCK_FILE).write_text("{}")
    (foreign / "photos").mkdir()
    for d in (empty, stale, tmp_path / "new" / "deeper"):
        claim(d, resume=False, overwrite=False).release()
    for overwrite in (False, True):
        with pytest.raises(InputError, match="holds no dfp run"):
            claim(foreign, resume=False, overwrite=overwrite)
    assert [p.name for p in foreign.iterdir()] == ["photos"]
    _fake_run(tmp_path / "r")
    with pytest.raises(InputError, match="holds SHARDS"):
        claim(tmp_path / "r", resume=False, overwrite=True, shards=tmp_path / "r" / "shards")


@pytest.mark.parametrize("resume", [False, True])
def test_a_second_train_into_one_run_is_refused_naming_the_holder(shards, tmp_path, monkeypatch, capsys, no_training,
                                                                  resume):
    """Two `dfp train` into one --out collided on last.pth.partial, or the later replaced the earlier."""
    run = tmp_path / "run"
    run.mkdir()
    lock = FolderLock(run).acquire()
    try:
        args = ["train", shards, "--resume", run, "--device", "cpu"] if resume else _train_args(shards, run)
        code, _, err = _run_main(args, monkeypatch, capsys)
    finally:
        lock.release()
    assert code == 2 and not no_training
    _one_line(err, f"{run} is in use by pid {os.getpid()}")


# ---------------------------------------------------------------- resume and a finished run
@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_image_run):
    """The session's finished one-epoch run (conftest.py) with shards of its own (tests re-pack them), packed
    from the same images with the same options: the same bytes, so the run's recorded digest is theirs."""
    root = tmp_path_factory.mktemp("finished")
    image_tree(root / "in", 18, 9)
    build_shards(root / "in", root / "shards", ShardParams(split="0.6,0.2,0.2"), workers=1, progress=False)
    copy_run(tiny_image_run, root / "run", keep_last=True)
    return root


@pytest.mark.slow
def test_resume_on_shards_repacked_in_place_is_refused(finished, tmp_path, monkeypatch, capsys):
    """Re-packing the shards in place with another --seed and resuming trained on former val/test samples."""
    import torch
    from pipeline.formats import read_manifest
    from pipeline.resume import check_same_shards, shards_digest
    run, shards = finished / "run", finished / "shards"
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert json.loads((run / "config.json").read_text())["dataset"]["shards_digest"] == ckpt["shards_digest"]
    copy = tmp_path / "moved"
    shutil.copytree(shards, copy)
    check_same_shards(ckpt, shards_digest(read_manifest(copy)), str(copy))  # moved or copied: the same shards
    before = (run / "last.pth").read_bytes()
    try:
        build_shards(finished / "in", shards, ShardParams(split="0.6,0.2,0.2", seed=5), workers=1, progress=False)
        code, _, err = _run_main(["train", shards, "--resume", run, "--device", "cpu", "--quiet"], monkeypatch, capsys)
    finally:  # the same options give the same bytes: the other tests get their shards back
        build_shards(finished / "in", shards, ShardParams(split="0.6,0.2,0.2"), workers=1, progress=False)
    assert code == 2
    _one_line(err, "the shards differ")
    assert (run / "last.pth").read_bytes() == before
    check_same_shards(ckpt, shards_digest(read_manifest(shards)), str(shards))


@contextmanager
def read_only(folder: Path):
    """chmod for a user; for root (who writes anyway) a read-only bind mount, where this machine allows one."""
    folder.chmod(0o555)
    mounted = False
    if os.access(folder, os.W_OK):
        mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
        if mounted:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("cannot make a folder read-only on this machine")
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # -l: a failed test may hold a file open
        folder.chmod(0o755)


@pytest.mark.parametrize("command", ["train", *(pytest.param(c, marks=pytest.mark.slow)
                                                 for c in ("resume", "report", "tune"))])
def test_a_read_only_run_dir_is_one_line(shards, tmp_path, monkeypatch, capsys, command, request):
    """Each wrote into the folder until it failed with a traceback."""
    run = tmp_path / "run"
    if command == "train":
        run.mkdir()
    else:  # a real run (trained once for the module)
        finished = request.getfixturevalue("finished")
        shutil.copytree(finished / "run", run)
        shards = finished / "shards"
    args = {"train": _train_args(shards, run), "resume": ["train", shards, "--resume", run, "--device", "cpu"],
            "report": ["report", run],
            "tune": ["tune", run / "best_model.pth", shards, "--device", "cpu", "--backend", "torch"]}[command]
    before = _snapshot(run)
    with read_only(run):
        code, _, err = _run_main(args, monkeypatch, capsys)
    assert code == 2
    _one_line(err, f"{run}: cannot write there")
    assert _snapshot(run) == before


# ---------------------------------------------------------------- a full disk
@contextmanager
def _small_disk(folder: Path, how: str, monkeypatch):
    """A 2 MB tmpfs where this machine lets us mount one; else every checkpoint write fails as a full disk does."""
    folder.mkdir()
    if how == "tmpfs":
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
    else:
        import pipeline.checkpoint as checkpoint

        class Full:
            def __init__(self, f):
                self.f = f

            def write(self, b):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *a):
                self.f.close()

        monkeypatch.setattr(checkpoint, "open", lambda *a, **k: Full(open(*a, **k)), raising=False)
    try:
        yield folder
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # -l: a failed test may hold a file open


@pytest.mark.slow
@pytest.mark.parametrize("how", ["tmpfs", "simulated"])
def test_a_full_disk_while_training_is_one_line_and_leaves_no_partial(shards, tmp_path, monkeypatch, capsys, how):
    with _small_disk(tmp_path / "disk", how, monkeypatch) as disk:
        run = disk / "run"
        code, _, err = _run_main(_train_args(shards, run, "--epoch-len", "8"), monkeypatch, capsys)
        # no last.pth was written, so nothing is resumable: the run removes what it wrote (or leaves no .partial)
        left = sorted(p.name for p in run.iterdir()) if run.exists() else []
    assert code == 1
    _one_line(err, f"{run / 'best_model.pth'}: No space left on device")
    assert not [n for n in left if n.endswith(".partial")] and LOCK_FILE not in left, left


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(shards, tmp_path, monkeypatch, capsys):
    """It left a run dir with only config.json, which the next attempt then had to --overwrite."""
    from pipeline.errors import TrainingError

    def fails(*a, **k):
        raise TrainingError("the loss is not finite (stand-in for a failure in the first epoch)")
    import pipeline.train as train
    monkeypatch.setattr(train, "_fit_epoch", fails)
    run = tmp_path / "run"
    code, _, err = _run_main(_train_args(shards, run), monkeypatch, capsys)
    assert code == 1 and "not finite" in err, err
    assert not run.exists()
    run.mkdir()
    (run / "keep.txt").write_text("the user's")  # a folder that was not empty is refused, never emptied
    code, _, err = _run_main(_train_args(shards, run), monkeypatch, capsys)
    assert code == 2 and (run / "keep.txt").exists()
