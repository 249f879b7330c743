"""Packing across machines: `dfp shard INPUT PART --part K/N` on N machines, then `dfp shard --merge OUT PART...`,
gives the very files a one-machine `dfp shard INPUT OUT` writes (manifest, every shard and .idx, rejects.jsonl);
parts that do not belong together are refused with one line."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factory import audio_tree, corrupt_images, image_tree, smooth_image, unusual_images, video_tree, write_jpeg
from pipeline import cli
from pipeline.errors import FormatError, InputError
from pipeline.formats import read_manifest
from pipeline.parts import PART_FILE, SAMPLES, merge_parts, pack_part, parse_part, share
from pipeline.shards import ShardParams, build_shards
from pipeline.verify import verify_shards
from test_shards import accounting


def files(folder: Path) -> dict[str, bytes]:
    """Every file under folder (the lock file aside: present only while a writer holds it) by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".dfp.lock"}


def single_and_merged(inp: Path, root: Path, n: int, order=None, part_workers=1, **kw) -> tuple[Path, Path]:
    """OUT from one build and OUT merged from n parts (given to the merge in `order`, default reversed)."""
    params = ShardParams(**kw)
    single, merged = root / "single", root / "merged"
    build_shards(inp, single, params, workers=1, progress=False)
    parts = [root / "parts" / f"p{k}" for k in range(1, n + 1)]
    for k, folder in enumerate(parts, 1):
        pack_part(inp, folder, params, (k, n), workers=part_workers, progress=False)
    merge_parts(merged, [parts[i] for i in (order or range(n - 1, -1, -1))], progress=False)
    return single, merged


def assert_same_build(inp: Path, single: Path, merged: Path) -> None:
    a, b = files(single), files(merged)
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []
    manifest = read_manifest(merged)
    assert manifest["shards"] and [r["sha256"] for r in manifest["shards"]] == \
        [r["sha256"] for r in read_manifest(single)["shards"]]
    problems, _ = verify_shards(merged, progress=False)
    assert problems == []
    accounting(inp, merged)  # every input file in exactly one sample or in rejects.jsonl


def _main(argv, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", ["dfp", *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    return e.value.code, capsys.readouterr().err


# ---------------------------------------------------------------- equality
def test_images_in_three_parts_equal_one_build_with_size_and_count_cut_shards(tmp_path):
    inp = image_tree(tmp_path / "in", n_real=10, n_fake=7)
    rng = np.random.default_rng(3)
    unusual_images(inp, rng)
    corrupt_images(inp, rng)  # failures to prepare land in parts 2 and 3, pre-packing rejects are spread
    single, merged = single_and_merged(inp, tmp_path, 3, part_workers=2, max_count=4, max_size=6000, max_side=128)
    m = read_manifest(single)
    assert len(m["shards"]) >= 6 and min(r["samples"] for r in m["shards"]) < 4  # --max-size cut some shards
    assert m["rejected"] >= 5
    assert_same_build(inp, single, merged)


def test_debias_parts_store_the_quality_a_one_machine_build_chooses_over_all_inputs(tmp_path):
    inp = image_tree(tmp_path / "in", n_real=6, n_fake=4)
    for i, q in enumerate((55, 70)):  # the lowest qualities sit in one part: every part must still use them
        Image.fromarray(smooth_image(np.random.default_rng(i), 64, 48)).save(inp / "real" / f"low{i}.jpg", quality=q)
    single, merged = single_and_merged(inp, tmp_path, 2, order=range(2), debias=True, max_side=48)
    assert read_manifest(single)["params"]["jpeg_quality"] < 95
    assert_same_build(inp, single, merged)


def test_audio_with_more_parts_than_files(tmp_path):
    inp = audio_tree(tmp_path / "in")
    n_files = sum(1 for p in inp.rglob("*") if p.is_file())
    single, merged = single_and_merged(inp, tmp_path, n_files + 2, order=range(n_files + 2), max_count=2,
                                       trim_silence=True)
    ranges = [json.loads((p / PART_FILE).read_text())["range"] for p in (tmp_path / "parts").iterdir()]
    assert any(lo == hi for lo, hi in ranges), "some part holds no file"
    assert_same_build(inp, single, merged)


def test_video_in_two_parts(tmp_path):
    inp = video_tree(tmp_path / "in")
    single, merged = single_and_merged(inp, tmp_path, 2, frames=3, max_count=2, split="0.5,0.25,0.25")
    assert read_manifest(merged)["frames"] == 3
    assert_same_build(inp, single, merged)


def test_public_dataset_layout_ffpp_with_groups_across_classes(tmp_path):
    from test_datasets import ffpp_tree, mp4
    inp = ffpp_tree(tmp_path / "in", [("000", "001"), ("002", "003"), ("004", "005")], methods=("Deepfakes",))
    mp4(inp / "manipulated_sequences/Deepfakes/masks/videos/000_001.mp4")  # a reject of the layout
    single, merged = single_and_merged(inp, tmp_path, 3, dataset="ff++", frames=2, max_count=3,
                                       split="0.34,0.33,0.33")
    samples = [r for r in read_manifest(merged)["shards"]]
    assert {r["split"] for r in samples} == {"train", "val", "test"}
    assert_same_build(inp, single, merged)


def test_faces_split_after_every_part_found_its_faces(tmp_path):
    from test_faces import paste
    rng = np.random.default_rng(0)
    for cls, n in (("real", 3), ("fake", 3)):
        for i in range(n):
            f = smooth_image(rng, 320, 240)
            if i != 1:  # one faceless picture per class: rejected in its part, never split
                paste(f, 20 + 40 * i, 30, 1.0)
            write_jpeg(tmp_path / "in" / cls / f"{i}.jpg", f)
    single, merged = single_and_merged(tmp_path / "in", tmp_path, 3, faces=True, face_size=64,
                                       split="0.5,0.25,0.25")
    rejects = (merged / "rejects.jsonl").read_text()
    assert rejects.count("\n") == 2 and "real/1.jpg" in rejects and "fake/1.jpg" in rejects
    assert read_manifest(merged)["params"]["face_step"]
    assert_same_build(tmp_path / "in", single, merged)


# ---------------------------------------------------------------- the CLI, refusals
@pytest.fixture(scope="module")
def three_parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    inp = image_tree(root / "in", n_real=6, n_fake=4)
    for k in (1, 2, 3):
        pack_part(inp, root / f"p{k}", ShardParams(max_count=3), (k, 3), workers=1, progress=False)
    return root


def copy_parts(root: Path, tmp: Path) -> list[Path]:
    out = []
    for k in (1, 2, 3):
        shutil.copytree(root / f"p{k}", tmp / f"p{k}")
        out.append(tmp / f"p{k}")
    return out


def test_cli_parts_then_merge_as_a_scheduler_runs_them(tmp_path, monkeypatch, capsys):
    inp = image_tree(tmp_path / "in", n_real=5, n_fake=4)
    for k in (1, 2):
        code, err = _main(["shard", inp, tmp_path / f"part{k}", "--part", f"{k}/2", "--max-count", "2", "--quiet",
                           "--workers", "1"], monkeypatch, capsys)
        assert code in (0, None), err
    code, err = _main(["shard", "--merge", tmp_path / "out", tmp_path / "part1", tmp_path / "part2", "--quiet"],
                      monkeypatch, capsys)
    assert code in (0, None), err
    code, err = _main(["shard", inp, tmp_path / "single", "--max-count", "2", "--quiet"], monkeypatch, capsys)
    assert code in (0, None), err
    assert_same_build(inp, tmp_path / "single", tmp_path / "out")
    assert files(tmp_path / "part1") and (tmp_path / "part1" / SAMPLES).exists()  # copied, the parts stay


@pytest.mark.parametrize("case,expect", [
    ("missing", "part 2/3 missing"),
    ("twice", "part 1/3 given twice"),
    ("other_n", "part 1/2"),
    ("other_options", "--seed 1"),
    ("other_input", "planned another input"),
    ("changed", "changed after part 3/3 was written"),
    ("unfinished", "holds no finished part"),
    ("other_version", "was packed by dfp 0.0.0"),
    ("overlap", "overlap"),
])
def test_merge_refuses_parts_that_do_not_make_one_build(three_parts, tmp_path, monkeypatch, capsys, case, expect):
    p1, p2, p3 = copy_parts(three_parts, tmp_path)
    given, out = [p1, p2, p3], tmp_path / "out"
    inp = three_parts / "in"
    if case == "missing":
        given = [p1, p3]
    elif case == "twice":
        shutil.copytree(p1, tmp_path / "again")
        given = [p1, tmp_path / "again", p2, p3]
    elif case == "other_n":
        pack_part(inp, tmp_path / "half", ShardParams(max_count=3), (1, 2), workers=1, progress=False)
        given = [p2, p3, tmp_path / "half"]
    elif case == "other_options":
        shutil.rmtree(p2)
        pack_part(inp, p2, ShardParams(max_count=3, seed=1), (2, 3), workers=1, progress=False)
    elif case == "other_input":
        other = tmp_path / "in2"
        shutil.copytree(inp, other)
        write_jpeg(other / "real" / "new.jpg", smooth_image(np.random.default_rng(9), 40, 40))
        shutil.rmtree(p2)
        pack_part(other, p2, ShardParams(max_count=3), (2, 3), workers=1, progress=False)
    elif case == "changed":
        data = bytearray((p3 / SAMPLES).read_bytes())
        data[-10] ^= 0xFF
        (p3 / SAMPLES).write_bytes(bytes(data))
    elif case == "other_version":
        doc = json.loads((p2 / PART_FILE).read_text())
        (p2 / PART_FILE).write_text(json.dumps({**doc, "tool": "dfp 0.0.0"}))
    elif case == "unfinished":
        (p2 / PART_FILE).unlink()
    elif case == "overlap":
        out = p1 / "merged"
    code, err = _main(["shard", "--merge", out, *given, "--quiet"], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expect in err, err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written, not even the folder
    assert all((p / SAMPLES).exists() for p in (p1, p3))  # the parts are left as they were


@pytest.mark.parametrize("text,expect", [("0/3", "K counts from 1"), ("4/3", "K counts from 1"),
                                         ("two", "give K/N"), ("1/0", "K counts from 1")])
def test_bad_part_is_one_line(tmp_path, monkeypatch, capsys, text, expect):
    inp = image_tree(tmp_path / "in", n_real=2, n_fake=2)
    code, err = _main(["shard", inp, tmp_path / "p", "--part", text], monkeypatch, capsys)
    assert code == 2 and expect in err and len(err.strip().splitlines()) == 1, err
    assert parse_part("3/8") == (3, 8)


def test_part_and_merge_together_and_extra_arguments_are_refused(tmp_path, monkeypatch, capsys):
    inp = image_tree(tmp_path / "in", n_real=2, n_fake=2)
    code, err = _main(["shard", "--merge", tmp_path / "o", inp, "--part", "1/2"], monkeypatch, capsys)
    assert code == 2 and "--part and --merge" in err
    code, err = _main(["shard", inp, tmp_path / "o", tmp_path / "x"], monkeypatch, capsys)
    assert code == 2 and "unexpected argument" in err


@pytest.mark.parametrize("extra,named", [(["--seed", "3"], "--seed"), (["--faces", "--max-count", "9"],
                                                                    "--max-count, --faces"),
                                          (["--workers", "2"], "--workers")])
def test_merge_refuses_packing_options_it_would_not_apply(extra, named, tmp_path, monkeypatch, capsys):
    parts = [tmp_path / "part1", tmp_path / "part2"]
    for p in parts:
        p.mkdir()
    code, err = _main(["shard", "--merge", tmp_path / "out", *parts, *extra], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {named}: --merge takes every packing "
                                                                 "option from the parts' part.json"), err
    assert not (tmp_path / "out").exists()


def test_shares_cover_the_plan_once():
    for total in (0, 1, 7, 100):
        for n in (1, 3, 8):
            ranges = [share(total, k, n) for k in range(1, n + 1)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


# ---------------------------------------------------------------- folders, interruption
def test_part_folder_and_shard_folder_are_not_mistaken_for_each_other(three_parts, tmp_path):
    inp = three_parts / "in"
    with pytest.raises(InputError, match="which dfp shard did not write"):
        build_shards(inp, three_parts / "p1", ShardParams(), workers=1, progress=False)
    build_shards(inp, tmp_path / "shards", ShardParams(), workers=1, progress=False)
    with pytest.raises(InputError, match="which dfp shard did not write"):
        pack_part(inp, tmp_path / "shards", ShardParams(), (1, 3), workers=1, progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="notes.txt"):
        pack_part(inp, tmp_path / "mine", ShardParams(), (1, 3), workers=1, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_an_interrupted_merge_is_no_shard_set_and_its_rerun_completes_it(three_parts, tmp_path, monkeypatch):
    import pipeline.shards as shards
    parts = copy_parts(three_parts, tmp_path)
    out = tmp_path / "out"

    def killed(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(shards, "write_manifest", killed)  # shards and rejects.jsonl in place, no manifest
    with pytest.raises(KeyboardInterrupt):
        merge_parts(out, parts, progress=False)
    assert (out / "train").is_dir()
    with pytest.raises(FormatError):
        read_manifest(out)
    monkeypatch.undo()
    merge_parts(out, parts, progress=False)
    build_shards(three_parts / "in", tmp_path / "single", ShardParams(max_count=3), workers=1, progress=False)
    assert_same_build(three_parts / "in", tmp_path / "single", out)


def test_a_rerun_part_replaces_its_folder_and_merges_the_same(three_parts, tmp_path):
    parts = copy_parts(three_parts, tmp_path)
    before = files(parts[1])
    pack_part(three_parts / "in", parts[1], ShardParams(max_count=3), (2, 3), workers=2, progress=False)
    assert files(parts[1]) == before  # workers do not change a part's bytes
    merge_parts(tmp_path / "a", parts, progress=False)
    merge_parts(tmp_path / "a", parts, progress=False)  # over a previous merge, as over a previous build
    build_shards(three_parts / "in", tmp_path / "single", ShardParams(max_count=3), workers=1, progress=False)
    assert_same_build(three_parts / "in", tmp_path / "single", tmp_path / "a")
