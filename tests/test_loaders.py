import shutil

import numpy as np
import pytest
import torch

from factory import audio_tree, image_tree, video_tree
from pipeline.formats import read_manifest
from pipeline.loaders import LoaderOptions, make_loader
from pipeline.shards import ShardParams, build_shards


def shards_for(tmp_path_factory, modality):
    root = tmp_path_factory.mktemp(modality)
    make = {"image": lambda p: image_tree(p, 24, 8), "audio": audio_tree, "video": video_tree}[modality]
    make(root / "in")
    build_shards(root / "in", root / "out", ShardParams(frames=4, split="0.6,0.2,0.2"), workers=1, progress=False)
    return root / "out"


@pytest.fixture(scope="module")
def shards_of(tmp_path_factory):
    """modality -> shards, built once per module."""
    built = {}
    return lambda modality: built.get(modality) or built.setdefault(modality, shards_for(tmp_path_factory, modality))


@pytest.fixture(scope="module")
def image_shards(shards_of):
    return shards_of("image")


def opts(**kw):
    base = dict(batch_size=4, workers=0, image_size=48, audio_seconds=1.0)
    base.update(kw)
    return LoaderOptions(**base)


def first_batch(loader):
    return next(iter(loader))


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_backends_agree_on_shapes_and_dtypes(shards_of, modality):
    out = shards_of(modality)
    for train in (True, False):
        got = {}
        for backend in ("torch", "dali"):
            x, y, keys = first_batch(make_loader(out, "train", backend, "cpu", opts(train=train)))
            got[backend] = (tuple(x.shape), x.dtype, y.dtype, len(keys))
            assert torch.isfinite(x).all()
        assert got["torch"] == got["dali"], (modality, train, got)
    if modality == "audio":  # evaluation log-mels are the same computation in both backends
        a = first_batch(make_loader(out, "train", "torch", "cpu", opts(train=False)))[0]
        b = first_batch(make_loader(out, "train", "dali", "cpu", opts(train=False)))[0]
        assert torch.allclose(a, b, atol=1e-2)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_evaluation_covers_each_sample_once_across_ranks(image_shards, backend):
    keys = []
    for rank in range(2):
        ld = make_loader(image_shards, "train", backend, "cpu", opts(train=False, batch_size=5), rank=rank, world_size=2)
        for _, _, k in ld:
            keys += k
    m = read_manifest(image_shards)
    assert len(keys) == len(set(keys)) == sum(m["splits"]["train"].values())


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_training_ranks_disjoint_equal_and_deterministic(image_shards, backend):
    def plan(rank, seed=0):
        ld = make_loader(image_shards, "train", backend, "cpu", opts(seed=seed), rank=rank, world_size=2)
        xs, ks = [], []
        for x, _, k in ld:
            xs.append(x)
            ks.append(tuple(k))
        return len(ld), xs, ks

    n0, x0, k0 = plan(0)
    n1, _, k1 = plan(1)
    assert n0 == n1 == len(k0) == len(k1) > 0
    again = plan(0)
    assert again[2] == k0 and all(torch.equal(a, b) for a, b in zip(again[1], x0))
    assert plan(0, seed=1)[2] != k0


def test_weighted_sampling_balances_delivered_classes(image_shards):
    ld = make_loader(image_shards, "train", "torch", "cpu", opts(sampling="inverse", epoch_len=400, batch_size=20))
    ld.producer = _NoDecode(ld)
    for _ in ld:
        pass
    got = ld.class_counts_delivered()
    assert abs(got["fake"] / 400 - 0.5) < 0.1, got
    nat = make_loader(image_shards, "train", "torch", "cpu", opts(sampling="natural", batch_size=4))
    nat.producer = _NoDecode(nat)
    keys = [k for _, _, ks in nat for k in ks]
    # one pass over the data: every sample once, the last batch topped up by wrap-around
    assert set(keys) == set(nat.index.keys.astype(str))
    assert len(keys) - len(set(keys)) < 4


class _NoDecode:
    """Stand-in producer that skips decoding: the plan alone decides which labels are delivered."""

    def __init__(self, loader):
        self.loader = loader

    def run(self, batches):
        for idx in batches:
            yield torch.zeros(len(idx), 3, 2, 2, dtype=torch.uint8), np.ones(len(idx), bool), idx


def test_minority_augmentation_picks_recipes_by_plan_position_not_class(image_shards, monkeypatch):
    import pipeline.loaders.decode as dec
    from pipeline.augment import IMAGE, STRONG_SHARE, strong_views
    seen = []
    real = dec.torch_image_train

    def spy(img, aug, size):
        seen.append(aug)
        return real(img, aug, size)

    monkeypatch.setattr(dec, "torch_image_train", spy)
    o = opts(batch_size=8, epoch_len=64)
    ld = make_loader(image_shards, "train", "torch", "cpu", o)
    assert ld.cfg.strong_share == STRONG_SHARE  # the split is imbalanced: minority augmentation is on
    labels = []
    for _, y, _ in ld:
        labels += y.int().tolist()
    expect = strong_views(0, 0, np.arange(len(labels)), STRONG_SHARE)
    assert [a is IMAGE["strong"] for a in seen] == expect.tolist()
    both = [{bool(s) for s, l in zip(expect, labels) if l == c} for c in (0, 1)]
    assert both == [{False, True}, {False, True}]  # each class gets both recipes
    # the DALI feed draws the same choices from the same keys
    dl = make_loader(image_shards, "train", "dali", "cpu", o)
    from pipeline.loaders.dali import aug_fields
    dl.producer._iter = enumerate(dl.batches())
    cols = dl.producer._source()
    fed = dict(zip(aug_fields("image"), cols[len(dl.index.exts):]))
    _, idx, ok = dl.producer.fed[0]
    assert [bool(s) for s in fed["strong"]] == expect[:8][ok].tolist()
    off = make_loader(image_shards, "train", "torch", "cpu", opts(minority_augment=False))
    assert off.cfg.strong_share == 0.0


def corrupt_copy(image_shards, dest):
    """A copy of the shards with two bad train samples: a wrecked JPEG header and a truncated last sample."""
    out = dest / "bad"
    shutil.copytree(image_shards, out)
    m = read_manifest(out)
    real_shard = next(r for r in m["shards"] if r["split"] == "train" and r["class"] == "real")
    from pipeline.formats import read_index
    path = out / real_shard["path"]
    idx = read_index(path.with_suffix(".idx"))
    data = bytearray(path.read_bytes())
    off, size = idx[0]["jpg"]
    data[off + 2: off + 40] = b"\x00" * 38  # wreck the JPEG header of the first sample
    path.write_bytes(bytes(data))
    # truncate the fake shard in the middle of its last sample
    fake_shard = next(r for r in m["shards"] if r["split"] == "train" and r["class"] == "fake")
    fpath = out / fake_shard["path"]
    last = read_index(fpath.with_suffix(".idx"))[-1]["jpg"]
    with open(fpath, "r+b") as f:
        f.truncate(last[0] + last[1] // 2)
    return out, m


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_corrupt_samples_are_skipped_and_counted(image_shards, tmp_path, backend):
    out, m = corrupt_copy(image_shards, tmp_path)
    ev = make_loader(out, "train", backend, "cpu", opts(train=False, batch_size=6))
    keys = [k for _, _, ks in ev for k in ks]
    assert ev.skipped == 2
    assert len(keys) == sum(m["splits"]["train"].values()) - 2

    if backend == "dali":  # the wrecked header passes the cheap check, so DALI fails and the batch is run again
        assert ev.rescued_batches == 1

    tr = make_loader(out, "train", backend, "cpu", opts(batch_size=6, epoch_len=60, sampling="natural"))
    shapes = {tuple(x.shape) for x, _, _ in tr}
    assert shapes == {(6, 3, 48, 48)}  # failed slots refilled: every batch keeps its shape
    assert tr.skipped >= 1


def test_the_skipped_samples_warning_comes_from_rank_0_only(image_shards, tmp_path, capsys):
    """Each rank skips its own share; the run's total is rank 0's to report, so only rank 0 warns."""
    out, _ = corrupt_copy(image_shards, tmp_path)
    said = {}
    for rank in (0, 1):
        ev = make_loader(out, "train", "torch", "cpu", opts(train=False, batch_size=6), rank=rank, world_size=2)
        for _ in ev:
            pass
        assert ev.skipped == 1  # the wrecked first sample is rank 0's, the truncated last one rank 1's
        said[rank] = capsys.readouterr().err
    assert said[0].startswith("warning: skipped 1 unreadable sample(s) in ") and "(on rank 0 of 2)" in said[0]
    assert said[1] == ""


@pytest.mark.parametrize("rank, shown", [(None, True), ("0", True), ("1", False)])
def test_the_cache_limit_warning_prints_once_under_torchrun(tmp_path, monkeypatch, capsys, rank, shown):
    from pipeline.loaders.remote import RemoteShards
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    RemoteShards(["http://127.0.0.1:9/a.tar"], [{"bytes": 2 << 30, "sha256": "0"}], str(tmp_path), 1 << 30)
    err = capsys.readouterr().err
    assert err == ("warning: 2.00 GiB of shards do not fit --cache-limit 1.00 GiB; reading samples by ranged "
                   "reads instead\n" if shown else "")


@pytest.mark.parametrize("data", [b"<html>not an index</html>\n", b"v1.2 1\njpg 0\n", b"v1.2 x\n", b"\xff\xfe"])
def test_an_unreadable_index_at_a_url_is_one_format_error(monkeypatch, data):
    from pipeline import storage
    from pipeline.errors import FormatError, exit_code
    from pipeline.loaders.index import _index_entries
    monkeypatch.setattr(storage, "read_text", lambda url: data.decode("utf-8"))  # storage.read_text's decoding
    with pytest.raises(FormatError, match=r"^http://h/s/train-real-000000.idx: unreadable shard index") as e:
        _index_entries("http://h/s/train-real-000000.idx")
    assert exit_code(e.value) == 2 and "\n" not in str(e.value)


def test_dali_error_on_samples_that_decode_is_raised_not_rescued(image_shards, tmp_path, monkeypatch):
    """Only an undecodable sample may be skipped: when the CPU decoder reads every sample of the batch
    DALI failed on, the fault is DALI's and must surface."""
    import pipeline.loaders.dali as dali
    from pipeline.errors import LoaderError
    out, _ = corrupt_copy(image_shards, tmp_path)
    monkeypatch.setattr(dali, "decodes", lambda *a: True)
    ev = make_loader(out, "train", "dali", "cpu", opts(train=False, batch_size=6))
    with pytest.raises(LoaderError, match="whose samples all decode on the CPU"):
        for _ in ev:
            pass


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_dali_augmentation_is_keyed_by_plan_position_not_pipeline_age(shards_of, modality):
    """A resumed epoch (fresh pipeline, started mid-epoch) gets bit-identical batches."""
    out = shards_of(modality)
    o = opts(batch_size=4, epoch_len=24)
    old = make_loader(out, "train", "dali", "cpu", o)
    for _ in old:  # epoch 0 ages the pipeline
        pass
    old.set_epoch(1)
    ref = [x.clone() for x, _, _ in old]
    fresh = make_loader(out, "train", "dali", "cpu", o)
    fresh.set_epoch(1, start_batch=2)
    got = [x.clone() for x, _, _ in fresh]
    assert len(got) == len(ref) - 2 and old.skipped == fresh.skipped == 0
    for a, b in zip(ref[2:], got):
        assert torch.equal(a, b)
    assert not torch.equal(ref[0], ref[1])  # and the augmentation is random at all



def test_resume_mid_epoch_gives_the_remaining_batches(image_shards):
    full = make_loader(image_shards, "train", "torch", "cpu", opts())
    ks = [k for _, _, k in full]
    part = make_loader(image_shards, "train", "torch", "cpu", opts())
    part.set_epoch(0, start_batch=2)
    assert len(part) == len(ks) - 2
    assert [k for _, _, k in part] == ks[2:]


def test_torch_backend_main_process_jpeg_decode_path(image_shards):
    """The torchvision decode_jpeg(device=...) path; on this machine the device is the CPU."""
    ld = make_loader(image_shards, "train", "torch", "cpu", opts(gpu_decode=True))
    x, y, k = first_batch(ld)
    assert x.shape == (4, 3, 48, 48) and x.dtype == torch.float32 and len(k) == 4


def test_loader_index_memory_is_arrays_only(image_shards):
    ld = make_loader(image_shards, "train", "torch", "cpu", opts())
    idx = ld.index
    assert all(isinstance(getattr(idx, a), np.ndarray) for a in ("labels", "shard", "offsets", "sizes", "keys"))
    per_sample = sum(getattr(idx, a).nbytes for a in ("labels", "shard", "offsets", "sizes", "keys")) / len(idx)
    assert per_sample < 64


def test_a_forked_child_never_tears_down_the_parents_dali_pipeline(image_shards):
    """DataLoader workers are forked; a DALI pipeline collected in such a child (its threads are not
    there) crashed it. The loader sits in reference cycles, so only the cycle collector frees it."""
    import gc
    import os
    import time
    ld = make_loader(image_shards, "train", "dali", "cpu", opts())
    x, _, _ = next(iter(ld))
    assert x.dtype == torch.float32
    del ld, x
    pid = os.fork()
    if pid == 0:  # child: collect everything it inherited, then leave without running atexit handlers
        gc.collect()
        os._exit(0)
    deadline = time.monotonic() + 60
    done, status = os.waitpid(pid, os.WNOHANG)
    while not done:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung while collecting the parent's DALI objects")
        time.sleep(0.05)
        done, status = os.waitpid(pid, os.WNOHANG)
    gc.collect()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child ended with status {status:#x}"


def test_dali_colour_saturates_only_strong_samples_and_normalises():
    """The colour step writes float into the normalisation; saturation reaches the strong samples only."""
    from nvidia.dali import fn, pipeline_def, types
    from pipeline.augment import MEAN, STD
    from pipeline.loaders.dali import _colour
    pixel = np.array([200, 60, 40], np.uint8)
    img = np.broadcast_to(pixel, (8, 8, 3)).copy()

    @pipeline_def(batch_size=2, num_threads=1, device_id=None, enable_conditionals=True, exec_dynamic=True)
    def pipe():
        x, strong = fn.external_source(source=lambda: ([img, img], [np.float32(0), np.float32(1)]), num_outputs=2,
                                       batch=True, dtype=[types.UINT8, types.FLOAT])
        return _colour(x, strong, params=(1.0, 1.0, 1.5), finish=lambda y: fn.crop_mirror_normalize(
            y, dtype=types.FLOAT, output_layout="CHW", mean=[255 * m for m in MEAN], std=[255 * s for s in STD]))

    p = pipe()
    p.build()
    (out,) = p.run()
    std, strong = (np.array(out[i]) for i in range(2))
    assert std.shape == strong.shape == (3, 8, 8) and std.dtype == np.float32
    plain = (pixel / 255.0 - np.array(MEAN)) / np.array(STD)
    assert np.allclose(std[:, 0, 0], plain, atol=1e-5)  # brightness = contrast = 1: just normalised
    rgb = strong[:, 0, 0] * np.array(STD) * 255 + np.array(MEAN) * 255
    assert rgb[0] - rgb[2] > 1.3 * (200 - 40)  # saturation 1.5 spreads the channels apart
    assert abs(rgb @ [0.299, 0.587, 0.114] - pixel @ [0.299, 0.587, 0.114]) < 3  # and keeps the brightness


def test_dali_crop_warp_geometry_flip_rotation_and_black_corners():
    """One warp does crop-resize, flip and rotation; corners a rotation uncovers are black."""
    import io
    from PIL import Image
    from nvidia.dali import fn, pipeline_def, types
    from pipeline.loaders.dali import _crop_warp
    ramp = np.tile(np.linspace(40, 240, 64).astype(np.uint8)[None, :, None], (64, 1, 3))  # brighter to the right
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "JPEG", quality=98)
    jpeg = np.frombuffer(buf.getvalue(), np.uint8)

    @pipeline_def(batch_size=3, num_threads=1, device_id=None, exec_dynamic=True)
    def pipe():
        data = fn.external_source(source=lambda: [jpeg] * 3, batch=True, dtype=types.UINT8)
        flip = fn.external_source(source=lambda: [np.float32(0), np.float32(1), np.float32(0)], batch=True)
        angle = fn.external_source(source=lambda: [np.float32(0), np.float32(0), np.float32(30)], batch=True)
        return _crop_warp(data, (fn.constant(fdata=[0.0, 0.0]), fn.constant(fdata=[1.0, 1.0]), flip, angle), 32, "cpu")

    p = pipe()
    p.build()
    (out,) = p.run()
    plain, flipped, rotated = (np.array(out[i]).astype(int) for i in range(3))
    assert plain.shape == (32, 32, 3)
    assert plain[16, 2, 0] < plain[16, 16, 0] < plain[16, 29, 0]  # the ramp survives the resize
    assert np.abs(flipped[:, ::-1] - plain).mean() < 4  # flip mirrors left-right
    assert rotated[0, 0].max() == 0 and rotated[-1, -1].max() == 0  # uncovered corners are black
    assert abs(rotated[16, 16, 0] - plain[16, 16, 0]) < 8  # the centre stays put


def test_keyed_uniforms_depend_only_on_seed_epoch_and_position():
    from pipeline.augment import keyed_uniforms
    whole = keyed_uniforms(3, 7, np.arange(20000), 9)
    assert np.array_equal(keyed_uniforms(3, 7, np.arange(100, 164), 9), whole[100:164])  # any slice, same draws
    assert not np.isclose(keyed_uniforms(3, 8, np.arange(64), 9), whole[:64]).any()  # another epoch
    assert not np.isclose(keyed_uniforms(4, 7, np.arange(64), 9), whole[:64]).any()  # another seed
    assert whole.min() >= 0.0 and whole.max() < 1.0
    hist = np.histogram(whole, bins=10, range=(0, 1))[0] / whole.size
    assert np.abs(hist - 0.1).max() < 0.005  # uniform
    assert np.abs(np.corrcoef(whole.T) - np.eye(9)).max() < 0.03  # columns independent


def test_a_skipped_sample_does_not_shift_its_neighbours_augmentation(image_shards):
    o = opts(batch_size=4, epoch_len=8, sampling="natural")
    full = make_loader(image_shards, "train", "dali", "cpu", o)
    x_full, _, keys_full = next(iter(full))
    gap = make_loader(image_shards, "train", "dali", "cpu", o)
    gap.producer.bad.add(int(gap.batches()[0][1]))  # the batch's second sample cannot be read
    x_gap, _, keys_gap = next(iter(gap))
    assert keys_gap[:3] == [keys_full[0], keys_full[2], keys_full[3]]
    assert torch.equal(x_gap[:3], x_full[[0, 2, 3]])
