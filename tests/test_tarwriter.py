"""The shard tar writer: standard tars whose index and checksum are computed while writing."""
import hashlib
import tarfile

import pytest
import webdataset as wds

from pipeline.formats import encode_sample, read_shard
from pipeline.tarwriter import ShardWriter, ustar_header


def samples(n):
    # sizes cover exact block multiples, empty payloads and odd lengths
    return [encode_sample(f"k{i:04d}", f"real/{i}.jpg", "real", {"jpg": bytes([i % 251]) * (i * 97 % 1500)}) for i in range(n)]


def test_shards_rotate_and_report_what_a_reread_finds(tmp_path):
    done = []
    w = ShardWriter(str(tmp_path / "s-%02d.tar"), maxcount=4, maxsize=1e9, post=lambda *a: done.append(a))
    for s in samples(10):
        w.write(s)
    w.close()
    assert [p.rsplit("/", 1)[1] for p, _, _ in done] == ["s-00.tar", "s-01.tar", "s-02.tar"]
    for path, digest, index in done:
        data = open(path, "rb").read()
        assert len(data) % 10240 == 0
        assert digest == hashlib.sha256(data).hexdigest()
        assert read_shard(path) == (digest, index)
        with tarfile.open(path) as tf:  # the standard library reads the same members and bytes
            got = [(m.name, m.size, tf.extractfile(m).read(), m.mtime, m.mode, m.uname) for m in tf]
        want = [(m.name, m.size, data[m.offset:m.offset + m.size], 0, 0o444, "bigdata") for _, ms in index for m in ms]
        assert got == want
    assert sum(len(i) for _, _, i in done) == 10


def test_same_samples_as_webdataset_tarwriter(tmp_path):
    ours = []
    w = ShardWriter(str(tmp_path / "a-%d.tar"), maxcount=100, maxsize=1e9, post=lambda *a: ours.append(a))
    with wds.TarWriter(str(tmp_path / "ref.tar"), mtime=0) as ref:
        for s in samples(7):
            w.write(s)
            ref.write(s)
    w.close()
    read = lambda p: [(s["__key__"], s["cls"], s["json"], s["jpg"]) for s in wds.WebDataset([str(p)], shardshuffle=False)]
    assert read(ours[0][0]) == read(tmp_path / "ref.tar") and len(read(ours[0][0])) == 7


def test_maxsize_starts_a_new_shard(tmp_path):
    done = []
    w = ShardWriter(str(tmp_path / "s-%d.tar"), maxcount=10**6, maxsize=3000, post=lambda *a: done.append(a))
    for s in samples(8):
        w.write(s)
    w.close()
    assert len(done) > 1 and sum(len(i) for _, _, i in done) == 8


def test_names_a_plain_header_cannot_hold_are_refused():
    with pytest.raises(ValueError):
        ustar_header("x" * 101, 1)
    with pytest.raises(UnicodeEncodeError):
        ustar_header("ñ.jpg", 1)
    hdr = ustar_header("abc.jpg", 5)
    ti = tarfile.TarInfo.frombuf(hdr, "ascii", "strict")  # checksum and fields as tarfile expects
    assert (ti.name, ti.size, ti.mode) == ("abc.jpg", 5, 0o444)


def test_abort_leaves_the_partial_file_and_calls_nothing(tmp_path):
    done = []
    w = ShardWriter(str(tmp_path / "s-%d.tar.partial"), maxcount=100, maxsize=1e9, post=lambda *a: done.append(a))
    w.write(samples(1)[0])
    w.abort()
    assert not done and (tmp_path / "s-0.tar.partial").exists()
