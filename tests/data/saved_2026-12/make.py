import sys; sys.path.insert(0, "/work/main/tests")
from pathlib import Path
from factory import image_tree
from pipeline.shards import ShardParams, build_shards
from pipeline.train import TrainConfig, run_training
root = Path("/tmp/golden")
image_tree(root / "in", 18, 9)
build_shards(root / "in", root / "shards", ShardParams(split="0.6,0.2,0.2"), workers=1, progress=False)
cfg = TrainConfig(shards=str(root / "shards"), out=str(root / "run"), backend="torch", device="cpu", epochs=1,
                  batch_size=4, image_size=32, workers=0, progress=False, model="timm:test_efficientnet", report=False)
run_training(cfg, log=lambda *a: None)
