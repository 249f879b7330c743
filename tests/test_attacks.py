"""End to end: attack names in the packed samples' JSON reach predictions CSVs, metrics.json, the report and
`dfp evaluate`'s console, and every per-attack number is scikit-learn's on the saved predictions."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from factory import image_tree
from pipeline import shards as shards_module
from pipeline.evaluate import evaluate
from pipeline.metrics import UNNAMED_ATTACK
from pipeline.shards import ShardParams, build_shards
from pipeline.train import run_training
from recompute import sk_eer
from test_train import tiny_config

ATTACKS = ("Deepfakes", "FaceSwap", "")  # by file number; the "" fakes are unnamed


def expected_attack(source: str) -> str:
    name = Path(source).stem
    return ATTACKS[int(name.split("_")[1]) % 3] if name.startswith("fake_") else ""


@pytest.fixture(scope="module")
def attack_shards(tmp_path_factory):
    """Shards whose KEY.json carry `group` and `attack` the way the public-dataset layouts write them: through the
    metadata `prepare` returns, which build_shards merges into each sample's JSON (workers=1 runs it in-process)."""
    root = tmp_path_factory.mktemp("attacks")
    image_tree(root / "in", 18, 18)
    prepare = shards_module.prepare

    def with_attack(path, modality, params):
        payload, meta = prepare(path, modality, params)
        meta["group"] = Path(path).parent.name
        if expected_attack(str(path)):
            meta["attack"] = expected_attack(str(path))
        return payload, meta

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shards_module, "prepare", with_attack)
        build_shards(root / "in", root / "shards", ShardParams(split="0.6,0.2,0.2"), workers=1, progress=False)
    return root / "shards"


def sklearn_by_attack(rows: list[dict], threshold: float) -> dict:
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    names = np.array([r["attack"] or UNNAMED_ATTACK for r in rows])
    out = {}
    for name in sorted(set(names[y == 1])):
        fs = s[(y == 1) & (names == name)]
        yy, ss = np.r_[np.zeros(int((y == 0).sum())), np.ones(fs.size)], np.r_[s[y == 0], fs]
        out[name] = {"n": fs.size, "auc": skm.roc_auc_score(yy, ss), "eer": sk_eer(yy, ss),
                     "recall": skm.recall_score(np.ones(fs.size), (fs >= threshold).astype(int))}
    return out


@pytest.mark.slow
def test_attacks_from_the_shards_to_metrics_report_and_evaluate(attack_shards, tmp_path):
    out = run_training(tiny_config(attack_shards, tmp_path / "run", model="resnet18"), log=lambda *a: None)
    metrics = json.loads((out / "metrics.json").read_text())
    t = metrics["chosen"]["threshold"]
    for split in ("val", "test"):
        rows = list(csv.DictReader(open(out / f"predictions_{split}.csv", encoding="utf-8")))
        assert list(rows[0]) == ["key", "source", "label", "score", "group", "attack"]
        assert all(r["attack"] == expected_attack(r["source"]) and r["group"] in ("g0", "g1") for r in rows)
        ref = sklearn_by_attack(rows, t)
        if set(ref) <= {UNNAMED_ATTACK}:  # no fake of the split is named: metrics.json as for a plain dataset
            assert "by_attack" not in metrics[split]
            continue
        got = metrics[split]["by_attack"]
        assert list(got) == sorted(set(ref) - {UNNAMED_ATTACK}) + [UNNAMED_ATTACK] * (UNNAMED_ATTACK in ref)
        for name in ref:
            assert got[name]["n"] == ref[name]["n"]
            for k in ("auc", "eer", "recall"):
                assert got[name][k] == pytest.approx(ref[name][k], abs=1e-12), (split, name, k)
    named = [split for split in ("val", "test") if "by_attack" in metrics[split]]
    assert "test" in named and len(metrics["test"]["by_attack"]) >= 2  # what the rest of the test reads
    text = (out / "training_results.txt").read_text(encoding="utf-8")
    assert text.count("Per attack") == len(named) and all(f"   {name} " in text for name in metrics["test"]["by_attack"])
    assert (out / "report.html").read_text(encoding="utf-8").count("<h3>Per attack</h3>") == len(named)

    lines = []
    ev = evaluate(out / "best_model.pth", attack_shards, "test", out=tmp_path / "ev", device="cpu", log=lines.append)
    assert {k: v["n"] for k, v in ev["test"]["by_attack"].items()} == \
        {k: v["n"] for k, v in metrics["test"]["by_attack"].items()}
    console = "\n".join(lines)
    assert "Per attack" in console
    for name, r in ev["test"]["by_attack"].items():
        assert any(line.split()[:2] == [name, str(r["n"])] for line in console.splitlines()), name
    assert "Per attack" in (tmp_path / "ev" / "training_results.txt").read_text(encoding="utf-8")
