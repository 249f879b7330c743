import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MPLBACKEND", "Agg")


# One tiny image dataset and one tiny training run for the whole session: the tests that only read a finished run
# (evaluate, tune, cross-dataset tables, dfp metrics, resume guards) share them instead of each training its own.
# Tests that change a run or its shards work on a copy (factory.copy_run, shutil.copytree).
@pytest.fixture(scope="session")
def tiny_image_shards(tmp_path_factory) -> Path:
    """27 images (18 real, 9 fake) packed 0.6/0.2/0.2 under a folder named `shards`."""
    from factory import image_tree
    from pipeline.shards import ShardParams, build_shards
    root = tmp_path_factory.mktemp("tiny_image")
    image_tree(root / "in", 18, 9)
    build_shards(root / "in", root / "a" / "shards", ShardParams(split="0.6,0.2,0.2"), workers=1, progress=False)
    return root / "a" / "shards"


@pytest.fixture(scope="session")
def tiny_image_run(tiny_image_shards, tmp_path_factory) -> Path:
    """One epoch of resnet18 at 32 px on tiny_image_shards, torch loader, with its report. Read it; never write."""
    from pipeline.train import TrainConfig, run_training
    cfg = TrainConfig(shards=str(tiny_image_shards), out=str(tmp_path_factory.mktemp("tiny_run") / "run"),
                      backend="torch", device="cpu", epochs=1, batch_size=4, image_size=32, workers=0,
                      progress=False, model="resnet18")
    return run_training(cfg, log=lambda *a: None)

