"""Shards at a URL: a loopback S3 server (moto) and a range-capable HTTP server, both started here.

Runs on remote shards must equal runs on the same shards on disk (history, predictions, metrics), resume
exactly, absorb a transient 500, and stop with one line on a missing or changed object."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from factory import image_tree, same_threads_env  # noqa: E402
from pipeline import storage  # noqa: E402
from pipeline.shards import ShardParams, build_shards  # noqa: E402
from pipeline.train import TrainConfig, run_training  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY_ID, SECRET = "AKIDDFPTESTKEY4711", "dfp-secret-value-0815-do-not-log"
BUCKET = "dfp-test"
COMPARED = ["epoch", "train_loss", "val_loss", "val_f1", "val_auc", "lr", "val_f1_tuned", "nonfinite_steps",
            "skipped_samples", "rescued_batches"]  # history.csv without its timings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1; the standard AWS variables point every client (and subprocess) at it."""
    from moto.server import ThreadedMotoServer
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": KEY_ID,
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage._fs.clear()
    storage.filesystem(f"s3://{BUCKET}").mkdir(BUCKET)
    yield f"s3://{BUCKET}"
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage._fs.clear()
    server.stop()


class _RangeHandler(SimpleHTTPRequestHandler):
    """Static files with `Range: bytes=a-b`; the first request of each path in `fail_first` gets a 500."""
    fail_first: set = set()
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def _fail(self) -> bool:
        with self.lock:
            if self.path in self.fail_first:
                self.fail_first.discard(self.path)
                self.send_error(500, "injected")
                return True
        return False

    def do_HEAD(self):
        if not self._fail():
            super().do_HEAD()

    def do_GET(self):
        if self._fail():
            return
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        a, b = rng.removeprefix("bytes=").split("-")
        start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start:end + 1])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    image_tree(root / "in", 12, 8)
    build_shards(root / "in", root / "shards", ShardParams(split="0.5,0.25,0.25"), workers=1, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def http(shards):
    """The shard folder served over HTTP on 127.0.0.1 (a copy, so tests may damage it)."""
    served = shards.parent / "served"
    shutil.copytree(shards, served / "set")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/set", served / "set"
    server.shutdown()


def _upload_tree(folder: Path, url: str) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for p in sorted(files, key=lambda p: p.name == "manifest.json"):  # the manifest last
        storage.upload(str(p), storage.join(url, p.relative_to(folder).as_posix()))


def _config(shards, out, **kw) -> TrainConfig:
    base = dict(shards=str(shards), out=str(out), backend="torch", device="cpu", epochs=2, batch_size=4,
                image_size=32, workers=0, progress=False, model="resnet18", report=False, patience=0, epoch_len=8)
    base.update(kw)
    return TrainConfig(**base)


def _history(run: Path) -> list[dict]:
    return list(csv.DictReader(open(run / "history.csv")))


def _same_history(a: Path, b: Path) -> None:
    ha, hb = _history(a), _history(b)
    assert len(ha) == len(hb) > 0
    for ra, rb in zip(ha, hb):
        for k in COMPARED:
            assert float(ra[k]) == pytest.approx(float(rb[k]), abs=1e-6), (k, ra, rb)


def _scores(path: Path) -> dict:
    return {r["key"]: float(r["score"]) for r in csv.DictReader(open(path))}


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, **kw)


@pytest.fixture(scope="module")
def local_run(shards, tmp_path_factory):
    return run_training(_config(shards, tmp_path_factory.mktemp("local") / "run"), log=lambda *a: None)


# ---------------------------------------------------------------- reading
def test_is_url_and_join():
    assert storage.is_url("s3://b/p") and storage.is_url("https://h/x") and not storage.is_url("/data/s3:/x")
    assert not storage.is_url("file:///tmp/x") and storage.local_path("file:///tmp/x") == "/tmp/x"
    assert storage.join("s3://b/p/", "train/real-000000.tar") == "s3://b/p/train/real-000000.tar"


@pytest.mark.slow
def test_train_from_s3_with_cache_equals_the_local_run_and_writes_no_secret(s3, shards, local_run, tmp_path):
    url = f"{s3}/train-set"
    _upload_tree(shards, url)
    cache = tmp_path / "cache"
    logged = []
    run = run_training(_config(url, tmp_path / "run", cache_dir=str(cache)), log=logged.append)
    _same_history(local_run, run)
    for name in ("predictions_val.csv", "predictions_test.csv"):
        a, b = _scores(local_run / name), _scores(run / name)
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)
    manifest = json.loads((shards / "manifest.json").read_text())
    cached = sorted(p.name for p in cache.glob("*.tar"))
    assert cached == sorted(f"{r['sha256']}.tar" for r in manifest["shards"])  # whole shards, by content
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"]["shards"] == url
    assert any(line.startswith("storage: 0 transient") for line in logged)
    assert not any(KEY_ID in str(line) or SECRET in str(line) for line in logged)
    for p in run.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert KEY_ID.encode() not in data and SECRET.encode() not in data, p


@pytest.mark.slow
def test_a_run_on_s3_killed_mid_run_resumes_to_the_uninterrupted_history(s3, shards, local_run, tmp_path):
    """A real `dfp train` process on S3 shards (moto reached through the inherited AWS variables), SIGKILLed once
    its first checkpoint exists, then `--resume`d: the history equals the uninterrupted run on local disk."""
    url = f"{s3}/resume-set"
    _upload_tree(shards, url)
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["train", url, "--out", out, "--epochs", "2", "--batch-size", "4", "--image-size", "32", "--workers", "0",
            "--device", "cpu", "--model", "resnet18", "--backend", "torch", "--no-report", "--quiet", "--patience",
            "0", "--epoch-len", "8", "--save-every", "1", "--cache-dir", cache]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=REPO, env=same_threads_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "last.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()  # still training: the kill lands mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_history(out)) if (out / "history.csv").exists() else 0
    assert done < 2
    r = _cli("train", url, "--resume", out, "--quiet", "--no-report", "--device", "cpu", "--cache-dir", cache,
             env=same_threads_env())
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    _same_history(local_run, out)


@pytest.mark.slow
def test_evaluate_over_http_with_ranged_reads_equals_local(http, shards, local_run, tmp_path):
    from pipeline.evaluate import evaluate
    url, _ = http
    for where, out in ((shards, "a"), (url, "b")):
        evaluate(local_run / "best_model.pth", where, "test", tmp_path / out, "cpu", "auto", 8, log=lambda *a: None)
    a, b = _scores(tmp_path / "a" / "predictions_test.csv"), _scores(tmp_path / "b" / "predictions_test.csv")
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a)
    rec = json.loads((tmp_path / "b" / "metrics.json").read_text())["evaluation"]
    assert rec["shards"] == url and rec["set"] == "set"


# ---------------------------------------------------------------- faults
def test_a_transient_500_is_retried_and_counted(http, shards):
    from pipeline.loaders import LoaderOptions, make_loader
    url, served = http
    manifest = json.loads((served / "manifest.json").read_text())
    tar = next(r["path"] for r in manifest["shards"] if r["split"] == "test")
    prefix = "/" + url.split("/", 3)[3]
    _RangeHandler.fail_first.update({f"{prefix}/manifest.json", f"{prefix}/{tar}"})
    before = storage.retried()
    ld = make_loader(url, "test", "torch", "cpu", LoaderOptions(batch_size=4, train=False, workers=0, image_size=32))
    remote = sum(len(k) for _, _, k in ld)
    local = make_loader(shards, "test", "torch", "cpu", LoaderOptions(batch_size=4, train=False, workers=0,
                                                                       image_size=32))
    assert remote == sum(len(k) for _, _, k in local) > 0
    assert storage.retried() - before == 2  # the manifest's and the shard's first request
    assert not _RangeHandler.fail_first


@pytest.mark.slow
def test_a_deleted_object_stops_train_with_one_line_naming_it(s3, shards, tmp_path):
    url = f"{s3}/deleted-set"
    _upload_tree(shards, url)
    manifest = json.loads((shards / "manifest.json").read_text())
    gone = storage.join(url, next(r["path"] for r in manifest["shards"] if r["split"] == "train"))
    storage.remove(gone)
    r = _cli("train", url, "--out", tmp_path / "run", "--device", "cpu", "--epochs", "1", "--quiet",
             env={**os.environ})
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and gone in lines[0] and "not found" in lines[0], r.stderr
    assert SECRET not in r.stderr + r.stdout and KEY_ID not in r.stderr + r.stdout
    assert not (tmp_path / "run").exists()


def test_a_changed_object_is_caught_by_size_and_by_checksum(s3, shards, tmp_path):
    from pipeline.errors import FormatError
    from pipeline.loaders import LoaderOptions, make_loader
    url = f"{s3}/changed-set"
    _upload_tree(shards, url)
    manifest = json.loads((shards / "manifest.json").read_text())
    row = next(r for r in manifest["shards"] if r["split"] == "val")
    data = bytearray((shards / row["path"]).read_bytes())
    data[600] ^= 0xFF  # same size, other bytes: only the checksum of a whole fetched shard sees it
    (tmp_path / "same.tar").write_bytes(bytes(data))
    storage.upload(str(tmp_path / "same.tar"), storage.join(url, row["path"]))
    opts = LoaderOptions(batch_size=4, train=False, workers=0, image_size=32, cache_dir=str(tmp_path / "c"),
                         cache_limit=1 << 30)
    with pytest.raises(FormatError, match="changed since the manifest.*sha256"):
        list(make_loader(url, "val", "torch", "cpu", opts))
    (tmp_path / "short.tar").write_bytes(bytes(data[:-512]))
    storage.upload(str(tmp_path / "short.tar"), storage.join(url, row["path"]))
    with pytest.raises(FormatError, match=f"{row['path']}: object changed.*bytes"):
        make_loader(url, "val", "torch", "cpu", opts)
    assert not list((tmp_path / "c").glob("*.tar"))  # nothing half-fetched or wrong is kept


def test_credentials_in_the_url_and_a_missing_client_are_one_line(tmp_path):
    r = _cli("train", "s3://KEY:SECRET@bucket/set", "--out", tmp_path / "r", "--device", "cpu")
    assert r.returncode == 2 and "SECRET" not in r.stderr and "environment" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        r = _cli("train", "gs://bucket/set", "--out", tmp_path / "r", "--device", "cpu")
        assert r.returncode == 2 and "gcsfs" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------- the cache
def test_cache_evicts_the_least_recently_used_and_keeps_entries_whole(http, tmp_path):
    import time
    from pipeline.shardcache import ShardCache, parse_size
    url, served = http
    manifest = json.loads((served / "manifest.json").read_text())
    rows = manifest["shards"][:3]
    limit = sum(r["bytes"] for r in rows[:2])
    cache = ShardCache(tmp_path / "c", limit)
    for r in rows[:2]:
        cache.fetch(storage.join(url, r["path"]), r["bytes"], r["sha256"])
        time.sleep(0.02)
    os.utime(cache.entry(rows[0]["sha256"]))  # the first used again: the second is now the oldest
    cache.fetch(storage.join(url, rows[2]["path"]), rows[2]["bytes"], rows[2]["sha256"])
    kept = {p.name.split(".")[0] for p in (tmp_path / "c").glob("*.tar")}
    assert kept == {rows[0]["sha256"], rows[2]["sha256"]} and cache.used() <= limit
    assert cache.entry(rows[2]["sha256"]).read_bytes() == (served / rows[2]["path"]).read_bytes()
    assert parse_size("20G") == 20 << 30 and parse_size("1.5M") == int(1.5 * (1 << 20)) and parse_size("4096") == 4096


def test_processes_sharing_a_cache_fetch_each_shard_once(http, tmp_path):
    from concurrent.futures import ProcessPoolExecutor
    url, served = http
    row = json.loads((served / "manifest.json").read_text())["shards"][0]
    with ProcessPoolExecutor(3) as pool:
        paths = list(pool.map(_fetch_one, [(str(tmp_path / "c"), storage.join(url, row["path"]), row)] * 3))
    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == (served / row["path"]).read_bytes()
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")] == [Path(paths[0]).name]


def _fetch_one(args):
    from pipeline.shardcache import ShardCache
    folder, url, row = args
    return str(ShardCache(folder, 1 << 30).fetch(url, row["bytes"], row["sha256"]))


# ---------------------------------------------------------------- writing
@pytest.mark.slow
def test_shard_to_s3_uploads_the_manifest_last_and_a_rerun_completes_it(s3, shards, tmp_path, monkeypatch):
    from pipeline import upload
    from pipeline.formats import read_manifest
    inp = shards.parent / "in"
    url = f"{s3}/built"
    calls = []
    real = storage.upload

    def dying(local, dest, *a):
        calls.append(dest.rsplit("/", 2)[-2:])
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-upload
        real(local, dest, *a)

    monkeypatch.setattr(storage, "upload", dying)
    with pytest.raises(KeyboardInterrupt):
        upload.build_and_upload(inp, url, ShardParams(split="0.5,0.25,0.25"), workers=1, progress=False)
    monkeypatch.setattr(storage, "upload", real)
    assert upload.existing_objects(url) and "manifest.json" not in upload.existing_objects(url)
    r = _cli("train", url, "--out", tmp_path / "r", "--device", "cpu")
    assert r.returncode == 2 and "manifest.json not found" in r.stderr, r.stderr  # not a shard set yet
    r = _cli("shard", inp, url, "--split", "0.5,0.25,0.25", "--workers", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    names = upload.existing_objects(url)
    local = sorted(str(p.relative_to(shards)) for p in shards.rglob("*") if p.is_file() and p.name != ".lock")
    assert names == local
    assert read_manifest(url)["shards"] == read_manifest(shards)["shards"]
    for rel in local:
        if rel.endswith(".tar"):
            assert storage.read_bytes(storage.join(url, rel)) == (shards / rel).read_bytes()
    storage.upload(str(shards / "rejects.jsonl"), storage.join(url, "notes/mine.txt"))
    r = _cli("shard", inp, url, "--quiet")
    assert r.returncode == 2 and "notes/mine.txt" in r.stderr and "did not write" in r.stderr, r.stderr


def test_an_upload_rerun_skips_what_is_provably_there_and_replaces_the_rest(s3, shards, monkeypatch):
    """Killed after k objects, then run again: only the objects not there are uploaded, plus those that are not
    provably the local file (other bytes of the same size, no or a wrong recorded sha256), and the manifest last."""
    import boto3
    from pipeline import upload
    from pipeline.remote_verify import verify_url
    url, k = f"{s3}/rerun", 5
    puts, limit, logged = [], [k], []
    real = storage.upload

    def counted(local, dest, sha256=None):
        if len(puts) == limit[0]:
            raise KeyboardInterrupt  # killed mid-upload
        puts.append(dest[len(url) + 1:])
        real(local, dest, sha256)

    monkeypatch.setattr(storage, "upload", counted)
    with pytest.raises(KeyboardInterrupt):
        upload.build_and_upload(shards.parent / "in", url, ShardParams(split="0.5,0.25,0.25"), workers=1,
                                progress=False)
    first = list(puts)
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for rel, other, meta in ((first[0], True, {}), (first[1], True, {storage.SHA256_KEY: "0" * 64}),
                             (first[2], False, {})):  # the last as another tool (or an older dfp) wrote it
        data = bytearray((shards / rel).read_bytes())
        data[len(data) // 2] ^= 0x01 if other else 0
        client.put_object(Bucket=BUCKET, Key=f"rerun/{rel}", Body=bytes(data), Metadata=meta)
    puts.clear()
    limit[0] = None
    upload.build_and_upload(shards.parent / "in", url, ShardParams(split="0.5,0.25,0.25"), workers=1,
                            progress=False, log=logged.append)
    every = {str(p.relative_to(shards)) for p in shards.rglob("*") if p.is_file() and p.name != ".lock"}
    assert set(puts) == (every - set(first)) | set(first[:3]) and len(puts) == len(set(puts))
    assert puts[-1] == "manifest.json"
    assert logged == [f"upload: {len(puts)} object(s) uploaded, {k - 3} already at {url} (same size and sha256) "
                      "skipped"]
    assert verify_url(url, progress=False)[0] == []
    assert all(storage.read_bytes(storage.join(url, rel)) == (shards / rel).read_bytes() for rel in every)


def test_a_second_upload_to_a_prefix_being_written_is_refused(s3, shards, tmp_path, monkeypatch):
    """Two dfp shard to one prefix at once: the second stops with one line (the set stays the first's, whole),
    where it used to overwrite shards that the first's manifest, written last, then named."""
    from pipeline import upload
    from pipeline.formats import read_manifest
    from pipeline.remote_verify import verify_url
    url = f"{s3}/two-at-once"
    other = image_tree(tmp_path / "other", 12, 8, seed=1)
    real, gate, paused = storage.upload, threading.Event(), threading.Event()

    def pausing(local, dest, *a):
        real(local, dest, *a)
        if not paused.is_set():
            paused.set()
            gate.wait(120)

    monkeypatch.setattr(storage, "upload", pausing)
    first = threading.Thread(target=upload.build_and_upload, args=(shards.parent / "in", url,
                             ShardParams(split="0.5,0.25,0.25")), kwargs=dict(workers=1, progress=False))
    first.start()
    try:
        assert paused.wait(120)
        r = _cli("shard", other, url, "--split", "0.5,0.25,0.25", "--workers", "1", "--quiet", env={**os.environ})
    finally:
        gate.set()
        first.join()
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "another dfp shard is uploading there" in lines[0], r.stderr
    assert storage.join(url, upload.CLAIM) in lines[0]
    assert verify_url(url, progress=False)[0] == []
    assert read_manifest(url)["shards"] == read_manifest(shards)["shards"]
    assert upload.CLAIM not in upload.existing_objects(url)


def test_a_claim_left_by_a_killed_run_is_taken_over_here_and_stands_from_elsewhere(s3, shards, monkeypatch):
    from pipeline import upload
    from pipeline.errors import InputError
    url, inp, params = f"{s3}/claimed", shards.parent / "in", ShardParams(split="0.5,0.25,0.25")
    claim = storage.join(url, upload.CLAIM)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage.filesystem(url).pipe_file(claim, json.dumps({"by": upload._machine(), "pid": dead.pid}).encode())
    logged = []
    upload.build_and_upload(inp, url, params, workers=1, progress=False, log=logged.append)
    assert any(f"taking over {claim} from pid {dead.pid}" in line for line in logged), logged
    assert upload.CLAIM not in upload.existing_objects(url) and "manifest.json" in upload.existing_objects(url)
    storage.filesystem(url).pipe_file(claim, json.dumps({"by": "elsewhere", "pid": dead.pid}).encode())
    with pytest.raises(InputError, match=f"another dfp shard is uploading there \\(elsewhere.*remove {claim}"):
        upload.build_and_upload(inp, url, params, workers=1, progress=False, log=logged.append)
    assert storage.exists(claim)  # not this run's to remove
    storage.remove(claim)
    logged.clear()
    monkeypatch.setattr(storage, "create", lambda url, data: True)  # a server that ignores If-None-Match
    upload.build_and_upload(inp, url, params, workers=1, progress=False, log=logged.append)
    assert any("ignores conditional writes" in line for line in logged), logged


# ---------------------------------------------------------------- verify, stats, audit
def test_verify_stats_and_audit_read_a_url_as_they_read_the_folder(http, shards):
    from pipeline.audit import run_audit
    from pipeline.remote_verify import verify_url
    from pipeline.verify import verify_shards
    from pipeline.stats import dataset_stats
    url, _ = http
    problems, seen = verify_url(url, progress=False)
    assert problems == [] and seen == verify_shards(shards, progress=False)[1]
    a, b = dataset_stats(shards), dataset_stats(url)
    assert {k: v for k, v in a.items() if k != "source"} == {k: v for k, v in b.items() if k != "source"}
    ra, rb = (run_audit(p, max_per_class=50, progress=False, workers=1) for p in (shards, url))
    assert [(f["name"], f["auc"]) for f in ra["features"]] == [(f["name"], f["auc"]) for f in rb["features"]]
    assert ra["n"] == rb["n"] and sum(ra["n"].values()) > 0


def test_verify_names_a_deleted_and_a_changed_object(http, shards):
    from pipeline.remote_verify import verify_url
    url, served = http
    copy = served.parent / "broken"
    shutil.copytree(shards, copy)
    manifest = json.loads((shards / "manifest.json").read_text())
    a, b = manifest["shards"][0]["path"], manifest["shards"][1]["path"]
    (copy / a).unlink()
    data = bytearray((copy / b).read_bytes())
    data[600] ^= 0xFF
    (copy / b).write_bytes(bytes(data))
    problems, _ = verify_url(url.rsplit("/", 1)[0] + "/broken", progress=False)
    assert f"{a}: missing" in problems and any(p.startswith(f"{b}: checksum mismatch") for p in problems)


def _damage(folder: Path) -> list[str]:
    """One kind of damage per shard of the set; returns the kinds (each a problem line verify must report)."""
    import hashlib
    from pipeline.formats import read_index, read_manifest, write_manifest
    manifest = read_manifest(folder)
    rows = manifest["shards"]
    assert len(rows) >= 6
    tar = [folder / r["path"] for r in rows]
    tar[0].unlink()  # missing
    tar[1].write_bytes(tar[1].read_bytes()[:-1536])  # cut short: not a whole tar
    flipped = bytearray(tar[2].read_bytes())
    flipped[600] ^= 0xFF  # same size, other bytes
    tar[2].write_bytes(bytes(flipped))
    tar[3].with_suffix(".idx").unlink()
    idx = tar[4].with_suffix(".idx")
    head, rest = idx.read_text().split("\n", 1)
    idx.write_text(f"v1.2 {int(head.split()[1]) + 1}\n{rest}")  # its header counts one sample too many
    offset, _ = read_index(tar[5].with_suffix(".idx"))[0]["jpg"]
    data = bytearray(tar[5].read_bytes())
    data[offset:offset + 2] = b"\0\0"  # no JPEG start marker, under a checksum that matches
    tar[5].write_bytes(bytes(data))
    rows[5]["sha256"] = hashlib.sha256(data).hexdigest()
    write_manifest(folder, manifest)
    return ["missing", "checksum mismatch", "unreadable index", "header says", "decode failed"]


def test_verify_of_a_damaged_url_reports_the_lines_a_local_verify_reports(http, shards):
    from pipeline.remote_verify import verify_url
    from pipeline.verify import verify_shards
    url, served = http
    copy = served.parent / "damaged"
    shutil.copytree(shards, copy)
    kinds = _damage(copy)
    local, seen = verify_shards(copy, progress=False)
    assert all(any(k in p for p in local) for k in kinds), local
    assert not any(str(copy) in p for p in local)  # named by their paths in the set, as a URL's are
    assert verify_url(url.rsplit("/", 1)[0] + "/damaged", progress=False) == (local, seen)


def test_verify_of_a_url_holds_one_shard_on_local_disk_at_a_time(s3, shards, tmp_path, monkeypatch):
    import tempfile
    from pipeline.formats import read_manifest
    from pipeline.remote_verify import verify_url
    url = f"{s3}/verify-disk"
    _upload_tree(shards, url)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    held = []
    real = storage.download

    def measured(*a, **kw):
        real(*a, **kw)
        held.append(sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()))

    monkeypatch.setattr(storage, "download", measured)
    assert verify_url(url, progress=False)[0] == []
    rows = read_manifest(shards)["shards"]
    one = max(r["bytes"] + (shards / r["path"]).with_suffix(".idx").stat().st_size for r in rows)
    assert len(held) >= 2 * len(rows) and 0 < max(held) <= one, (held, one)
    assert not any(p.is_file() for p in tmp.rglob("*"))


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_both_backends_deliver_the_local_batches_from_ranged_reads(http, shards, backend):
    import torch
    from pipeline.loaders import LoaderOptions, make_loader
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    url, _ = http
    for train in (True, False):
        opts = LoaderOptions(batch_size=4, train=train, workers=0, image_size=32, epoch_len=8)
        a = list(make_loader(shards, "train", backend, "cpu", opts))
        b = list(make_loader(url, "train", backend, "cpu", opts))
        assert len(a) == len(b) > 0
        for (xa, ya, ka), (xb, yb, kb) in zip(a, b):
            assert ka == kb and torch.equal(ya, yb) and torch.equal(xa, xb)


@pytest.mark.slow
def test_tune_on_a_url_stores_the_threshold_tuning_on_the_folder_gives(http, shards, local_run, tmp_path):
    import torch
    from pipeline.evaluate import tune
    url, _ = http
    thresholds, chosen = [], []
    for where, name in ((shards, "a"), (url, "b")):
        run = tmp_path / name
        shutil.copytree(local_run, run)
        tune(run / "best_model.pth", where, "youden", "cpu", "auto", 8, log=lambda *a: None)
        thresholds.append(torch.load(run / "best_model.pth", weights_only=False)["threshold"])
        chosen.append(json.loads((run / "metrics.json").read_text())["chosen"])
    assert thresholds[0]["threshold"] == pytest.approx(thresholds[1]["threshold"], abs=1e-6)
    assert thresholds[0]["method"] == thresholds[1]["method"] == "youden"
    assert chosen[1]["tuned_on"] == url and chosen[0]["tuned_on"] == str(shards.resolve())


@pytest.mark.slow
def test_worker_processes_read_s3_through_the_shared_cache_as_from_disk(s3, shards, tmp_path):
    import torch
    from pipeline.loaders import LoaderOptions, make_loader
    url = f"{s3}/workers-set"
    _upload_tree(shards, url)
    opts = LoaderOptions(batch_size=4, workers=2, image_size=32, epoch_len=16, cache_dir=str(tmp_path / "c"),
                         cache_limit=1 << 30)
    a, b = list(make_loader(shards, "train", "torch", "cpu", opts)), list(make_loader(url, "train", "torch", "cpu", opts))
    assert len(a) == len(b) == 4
    for (xa, ya, ka), (xb, yb, kb) in zip(a, b):
        assert ka == kb and torch.equal(xa, xb)
    manifest = json.loads((shards / "manifest.json").read_text())
    train = {f"{r['sha256']}.tar" for r in manifest["shards"] if r["split"] == "train"}
    assert {p.name for p in (tmp_path / "c").glob("*.tar")} == train


@pytest.mark.parametrize("workers", [0, 2])
def test_an_object_deleted_mid_run_stops_the_loader_with_one_line(s3, shards, workers):
    from pipeline.errors import FormatError
    from pipeline.loaders import LoaderOptions, make_loader
    url = f"{s3}/midrun-{workers}"
    _upload_tree(shards, url)
    ld = make_loader(url, "train", "torch", "cpu", LoaderOptions(batch_size=4, workers=workers, image_size=32,
                                                                  epoch_len=8))
    for row in json.loads((shards / "manifest.json").read_text())["shards"]:
        if row["split"] == "train":
            storage.remove(storage.join(url, row["path"]))
    with pytest.raises(FormatError) as e:
        list(ld)
    assert "\n" not in str(e.value) and "object not found" in str(e.value) and url in str(e.value)
