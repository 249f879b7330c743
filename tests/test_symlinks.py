"""Symlinked inputs: links are followed, never packed twice, and broken ones are listed in rejects.jsonl."""
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from factory import image_tree, smooth_image, write_jpeg
from pipeline.datasets import discover, sources
from pipeline.formats import read_manifest
from test_shards import all_samples, build


def seen_by_user(inp: Path) -> set[str]:
    """Every path under inp that is not a folder, as `find -L` lists it, plus the entries it reports as
    link loops: an oracle for 'every path under INPUT as the user sees it' that shares no code with dfp."""
    r = subprocess.run(["find", "-L", ".", "!", "-type", "d"], cwd=inp, capture_output=True, text=True,
                       env={**os.environ, "LC_ALL": "C"})
    paths = set(r.stdout.splitlines())
    paths |= set(re.findall(r"'([^']+)': Too many levels of symbolic links", r.stderr))
    paths |= set(re.findall(r"loop detected; '([^']+)' is part", r.stderr))
    return {p[2:] for p in paths}


def lossless(inp: Path, out: Path) -> tuple[dict, dict]:
    """{source: sample} packed and {source: reason} rejected; together exactly the paths the user sees."""
    packed = {}
    for s in all_samples(out):
        src = json.loads(s["json"])["source"]
        assert src not in packed, f"{src} packed twice"
        packed[src] = s
    rejects = {}
    for line in (out / "rejects.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["source"] not in rejects and r["source"] not in packed
        rejects[r["source"]] = r["reason"]
    assert set(packed) | set(rejects) == seen_by_user(inp)
    return packed, rejects


def jpeg(path: Path, seed: int) -> Path:
    return write_jpeg(path, smooth_image(np.random.default_rng(seed), 40, 30))


def test_linked_files_inside_and_outside_input_are_packed_under_the_link(tmp_path):
    inp = image_tree(tmp_path / "in", n_real=3, n_fake=2)
    outside = jpeg(tmp_path / "elsewhere" / "o.jpg", 1)
    inside = jpeg(inp / "extra" / "e.jpg", 2)
    (inp / "fake" / "out.jpg").symlink_to(outside)
    (inp / "fake" / "rel.jpg").symlink_to("../extra/e.jpg")
    os.mkfifo(inp / "real" / "pipe.jpg")
    out = tmp_path / "out"
    build(inp, out)
    packed, rejects = lossless(inp, out)
    for src, target in (("fake/out.jpg", outside), ("fake/rel.jpg", inside)):
        assert packed[src]["jpg"] == target.read_bytes() and packed[src]["cls"] == b"1"
    assert rejects["extra/e.jpg"] == "not under a real/fake class folder"
    assert rejects["real/pipe.jpg"].startswith("not a regular file")
    assert sum(c["fake"] for c in read_manifest(out)["splits"].values()) == 2 + 2


def test_linked_folder_and_linked_class_folder_are_walked(tmp_path):
    inp = image_tree(tmp_path / "in", n_real=3, n_fake=0)
    more = tmp_path / "data" / "more"
    jpeg(more / "a" / "x.jpg", 1)
    jpeg(more / "y.jpg", 2)
    for i in range(3):
        jpeg(tmp_path / "data" / "fakes" / f"f{i}.jpg", 10 + i)
    (inp / "real" / "more").symlink_to(more)
    (inp / "fake").symlink_to(tmp_path / "data" / "fakes")  # the whole class folder is a link
    out = tmp_path / "out"
    summary = build(inp, out)
    packed, rejects = lossless(inp, out)
    assert {"real/more/a/x.jpg", "real/more/y.jpg", "fake/f0.jpg", "fake/f1.jpg", "fake/f2.jpg"} <= set(packed)
    assert summary["packed"] == 8 and not rejects
    assert json.loads(packed["real/more/a/x.jpg"]["json"])["source"] == "real/more/a/x.jpg"


def test_dangling_links_and_link_loops_are_rejected_and_the_walk_ends(tmp_path):
    inp = image_tree(tmp_path / "in", n_real=3, n_fake=3)
    (inp / "real" / "dangling.jpg").symlink_to("missing.jpg")
    (inp / "fake" / "self.jpg").symlink_to("self.jpg")
    (inp / "real" / "up").symlink_to("..")
    a, b = tmp_path / "o" / "a", tmp_path / "o" / "b"  # two folders linking to each other
    jpeg(b / "img.jpg", 1)
    a.mkdir()
    (a / "to_b").symlink_to("../b")
    (b / "to_a").symlink_to("../a")
    (inp / "fake" / "a").symlink_to(a)
    found = {}
    walker = threading.Thread(target=lambda: found.update(d=discover("folders", inp)), daemon=True)
    walker.start()
    walker.join(60)
    assert "d" in found, "the walk did not end"
    out = tmp_path / "out"
    build(inp, out)
    packed, rejects = lossless(inp, out)
    assert "fake/a/to_b/img.jpg" in packed
    assert rejects["real/dangling.jpg"] == "dangling link: target missing.jpg does not exist"
    assert rejects["fake/self.jpg"].startswith("link loop:")
    assert rejects["real/up"].startswith(f"link loop: leads back to {os.path.realpath(inp)}")
    assert rejects["fake/a/to_b/to_a"].startswith(f"link loop: leads back to {os.path.realpath(a)}")


def test_two_links_to_one_folder_pack_it_once(tmp_path):
    inp = image_tree(tmp_path / "in", n_real=3, n_fake=2)
    shared = tmp_path / "shared"
    for name in ("s0.jpg", "s1.jpg"):
        jpeg(shared / name, len(name))
    (inp / "fake" / "b_link").symlink_to(shared)
    (inp / "fake" / "a_link").symlink_to(shared)
    plain = jpeg(inp / "real" / "z.jpg", 5)
    (inp / "real" / "0alias.jpg").symlink_to(plain.name)  # sorts first, but the path without a link wins
    out = tmp_path / "out"
    summary = build(inp, out)
    packed, rejects = lossless(inp, out)
    assert {"fake/a_link/s0.jpg", "fake/a_link/s1.jpg", "real/z.jpg"} <= set(packed)
    for name in ("s0.jpg", "s1.jpg"):
        assert rejects[f"fake/b_link/{name}"] == f"duplicate: the same file as fake/a_link/{name}, packed under that path"
    assert rejects["real/0alias.jpg"] == "duplicate: the same file as real/z.jpg, packed under that path"
    assert summary["packed"] == 3 + 2 + 2 + 1 and summary["reasons"] == {"duplicate": 3}


def test_unreadable_link_targets_are_rejected_not_fatal(tmp_path, monkeypatch):
    inp = image_tree(tmp_path / "in", n_real=3, n_fake=2)
    locked_file = jpeg(tmp_path / "locked.jpg", 1)
    locked_dir = tmp_path / "locked_dir"
    jpeg(locked_dir / "x.jpg", 2)
    (inp / "fake" / "f.jpg").symlink_to(locked_file)
    (inp / "fake" / "d").symlink_to(locked_dir)
    real_access, real_scandir = os.access, os.scandir
    # tests run as root, who may read anything: simulate the permissions
    monkeypatch.setattr(sources.os, "access", lambda p, mode: str(p) != str(locked_file) and real_access(p, mode))

    def scandir(path):
        if str(path).endswith("/d"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(sources.os, "scandir", scandir)
    d = discover("folders", inp)
    rejects = {r["source"]: r["reason"] for r in d.rejects}
    assert rejects["fake/f.jpg"] == f"unreadable link target: {locked_file} (permission denied)"
    assert rejects["fake/d"] == f"unreadable link target: cannot list {locked_dir} (Permission denied)"
    assert len(d.candidates) == 5


def test_stats_on_raw_input_counts_linked_files(tmp_path):
    inp = image_tree(tmp_path / "in", n_real=4, n_fake=0)
    for i in range(3):
        jpeg(tmp_path / "fakes" / f"f{i}.jpg", i)
    (inp / "fake").symlink_to(tmp_path / "fakes")
    (inp / "real" / "again").symlink_to(inp / "real" / "g0")  # duplicates count once
    (inp / "real" / "gone.jpg").symlink_to(tmp_path / "nothing.jpg")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "stats", str(inp), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["total"] == {"real": 4, "fake": 3}
    assert st["not_packable"] == 2 + 1  # real/again/* are duplicates of real/g0/*, gone.jpg dangles
