"""`dfp evaluate CKPT A B ...`: one cross-dataset table whose rows are each set's own metrics at the checkpoint's
threshold, beside each set's own folder; bad input stops before anything is written. The session's tiny run
(conftest.py) is the checkpoint."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from factory import dfp_in_process, image_tree, smooth_image, write_jpeg
from pipeline import checkpoint, cli, crossdata, evaluate as ev
from pipeline.errors import InputError
from pipeline.predictions import read_prediction_table
from pipeline.shards import ShardParams, build_shards
from pipeline.thresholds import all_thresholds

QUIET = dict(device="cpu", log=lambda *a: None)


def _video_tree(root: Path, seed: int) -> Path:
    """Another dataset: 6 real and 4 fake 'videos' of 3 frames each (one folder per video)."""
    rng = np.random.default_rng(seed)
    for cls, videos in (("real", 6), ("fake", 4)):
        for v in range(videos):
            for f in range(3):
                write_jpeg(root / cls / f"v{v}" / f"{f}.jpg", smooth_image(rng, 56 + 8 * v, 48))
    return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory, tiny_image_shards, tiny_image_run):
    """(run, own, copy, other): the session's run and its own shards (conftest.py), a copy under the same folder
    name, another dataset."""
    root = tmp_path_factory.mktemp("crossdata")
    own = tiny_image_shards
    copy = root / "b" / "shards"
    shutil.copytree(own, copy)
    other = root / "other"
    build_shards(_video_tree(root / "vid", seed=1), other, ShardParams(split="0.4,0.2,0.4", group_depth=1),
                 workers=1, progress=False)
    return tiny_image_run, own, copy, other


def _error_line(err: str) -> str:
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _hter(cm) -> float:
    (tn, fp), (fn, tp) = cm
    return (fp / (tn + fp) + fn / (fn + tp)) / 2


@pytest.mark.slow
def test_table_rows_are_each_sets_own_metrics_at_the_checkpoints_threshold(sets, tmp_path, monkeypatch, capsys):
    run, own, copy, other = sets
    ckpt = run / "best_model.pth"
    stored = checkpoint.load(ckpt)["threshold"]["threshold"]
    out = tmp_path / "cross"
    code, printed, err = dfp_in_process(["evaluate", ckpt, own, copy, other, "--device", "cpu", "--out", out],
                                   monkeypatch, capsys)
    assert code == 0, err
    doc = json.loads((out / "cross_dataset.json").read_text())
    rows = doc["rows"]
    assert [r["shards"] for r in rows] == [str(p.resolve()) for p in (own, copy, other)]
    names = [r["name"] for r in rows]
    assert len(set(names)) == 3 and len({r["folder"] for r in rows}) == 3, names
    assert names[2] == "other" and all(n.startswith("shards-") for n in names[:2])
    md = (out / "cross_dataset.md").read_text()
    for r in rows:
        folder = Path(r["folder"])
        assert folder.parent == out and folder.name.endswith("-test")
        block = json.loads((folder / "metrics.json").read_text())["test"]
        tuned = block["tuned"]
        assert tuned["threshold"] == stored == r["threshold"]
        assert r["n"] == sum(map(sum, tuned["confusion_matrix"]))
        for key in ("auc", "eer", "min_dcf"):
            assert r[key] == block[key], key
        assert r["accuracy"] == tuned["accuracy"] and r["f1"] == tuned["f1"]
        assert r["hter"] == pytest.approx(_hter(tuned["confusion_matrix"]))
        assert r["video_auc"] == (block["video"]["auc"] if "video" in block else None)
        assert f"- {r['name']}: `{r['shards']}` -> `{r['folder']}`" in md
        assert f"| {r['name']} | {r['n']} |" in md and f"| {r['name']} | {r['n']} |" in printed
    assert "video" in json.loads((Path(rows[2]["folder"]) / "metrics.json").read_text())["test"]
    assert rows[2]["video_auc"] is not None and rows[0]["video_auc"] is None
    assert doc["chosen"]["threshold"] == stored and doc["evaluation"]["split"] == "test"
    assert checkpoint.load(ckpt)["threshold"]["threshold"] == stored  # no set re-tuned it


@pytest.mark.slow
def test_default_table_beside_the_evaluations_is_never_replaced_by_another(sets, tmp_path):
    run, own, copy, other = sets
    run = Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("last.pth", "eval")))
    ckpt = run / "best_model.pth"
    first = crossdata.cross_evaluate(ckpt, [own, other], "test", **QUIET)
    table = run / "eval" / "cross_dataset-test.json"
    assert json.loads(table.read_text())["rows"] == first["rows"]
    assert {Path(r["folder"]).name for r in first["rows"]} == {"shards-test", "other-test"}
    crossdata.cross_evaluate(ckpt, [own, other], "test", **QUIET)  # the same evaluation replaces its own table
    assert sorted(p.name for p in (run / "eval").glob("cross_dataset*")) == ["cross_dataset-test.json",
                                                                             "cross_dataset-test.md"]
    second = crossdata.cross_evaluate(ckpt, [own, copy], "test", **QUIET)
    tables = sorted((run / "eval").glob("cross_dataset*.json"))
    assert len(tables) == 2
    assert json.loads(table.read_text())["evaluation"]["sets"] == [str(own.resolve()), str(other.resolve())]
    newer = next(t for t in tables if t != table)
    assert json.loads(newer.read_text())["rows"] == second["rows"]
    assert newer.with_suffix(".md").is_file()
    _tune_elsewhere(run, own)
    stored = checkpoint.load(ckpt)["threshold"]["threshold"]
    for path in tables:  # dfp tune brought both tables to its threshold, row by row from the retargeted folders
        doc = json.loads(path.read_text())
        assert doc["chosen"]["threshold"] == stored and f"{stored:.4f}" in path.with_suffix(".md").read_text()
        for r in doc["rows"]:
            tuned = json.loads((Path(r["folder"]) / "metrics.json").read_text())["test"]["tuned"]
            assert r["threshold"] == tuned["threshold"] == stored
            assert r["accuracy"] == tuned["accuracy"] and r["hter"] == pytest.approx(_hter(tuned["confusion_matrix"]))


def _tune_elsewhere(run: Path, shards: Path) -> None:
    """dfp tune with the method whose val threshold lies farthest from the stored one, so the threshold moves."""
    ckpt = run / "best_model.pth"
    old = checkpoint.load(ckpt)["threshold"]["threshold"]
    val = read_prediction_table(run / "predictions_val.csv")
    table = all_thresholds(val.labels, val.scores)
    method = max(table, key=lambda m: abs(table[m] - old))
    ev.tune(ckpt, shards, method, **QUIET)
    assert checkpoint.load(ckpt)["threshold"]["threshold"] != old


def test_plan_gives_sets_of_one_name_their_own_folders_and_rows(tmp_path):
    sets = [tmp_path / x / "shards" for x in "ab"] + [tmp_path / "c" / "other"]
    ckpt = tmp_path / "run" / "best_model.pth"
    records, folders, stem = crossdata.plan(ckpt, sets, "val", tmp_path / "out")
    assert len(set(folders)) == 3 and all(f.parent == tmp_path / "out" for f in folders)
    assert folders[0].name == "shards-val" and folders[1].name != "shards-val" and folders[2].name == "other-val"
    names = crossdata.set_names(records)
    assert len(set(names)) == 3 and names[2] == "other"
    assert stem == tmp_path / "out" / "cross_dataset"
    assert crossdata.plan(ckpt, sets, "val")[2] == tmp_path / "run" / "eval" / "cross_dataset-val"
    with pytest.raises(InputError, match="given twice"):
        crossdata.plan(ckpt, [sets[0], sets[1], sets[0] / ".." / "shards"], "val")


@pytest.fixture
def small_set(tmp_path):
    shards = tmp_path / "shards"
    build_shards(image_tree(tmp_path / "in"), shards, ShardParams(split="0.6,0.2,0.2"), workers=1, progress=False)
    ckpt = tmp_path / "best_model.pth"
    ckpt.write_bytes(b"not read: the sets are checked first")
    return ckpt, shards


@pytest.mark.parametrize("case", ["missing", "twice"])
def test_bad_sets_exit_2_with_one_line_and_write_nothing(small_set, case, tmp_path, monkeypatch, capsys):
    ckpt, shards = small_set
    second = tmp_path / "absent" if case == "missing" else tmp_path / "in" / ".." / "shards"
    out = tmp_path / "cross"
    code, _, err = dfp_in_process(["evaluate", ckpt, shards, second, "--device", "cpu", "--out", out], monkeypatch, capsys)
    assert code == 2
    line = _error_line(err)
    assert str(second) in line and ("not found" in line if case == "missing" else "given twice" in line)
    assert not out.exists() and not (tmp_path / "eval").exists()
