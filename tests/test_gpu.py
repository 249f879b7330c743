"""GPU paths: DALI `mixed` decoding, torchvision GPU JPEG decoding, AMP and NCCL training.

Skipped without CUDA (CI has none). On a GPU machine: `python -m pytest tests/test_gpu.py`."""
import json
import os
import subprocess
import sys

import pytest
import torch

from pipeline.loaders import make_loader
from test_loaders import first_batch, opts, shards_for
from test_train import REPO, check_default_metrics, tiny_config, tiny_shards

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("modality", ["image", "audio", "video"])
def test_dali_mixed_agrees_with_dali_cpu(tmp_path_factory, modality):
    out = shards_for(tmp_path_factory, modality)
    for train in (True, False):
        got = {}
        for device in ("cpu", "cuda"):
            x, y, keys = first_batch(make_loader(out, "train", "dali", device, opts(train=train)))
            assert x.device.type == y.device.type == device
            assert torch.isfinite(x).all()
            got[device] = (tuple(x.shape), x.dtype, len(keys))
        assert got["cpu"] == got["cuda"], (modality, train, got)
    if modality == "image":  # the augmentation is keyed by plan position, so even training batches are the same
        for train, tol in ((False, 0.05), (True, 0.1)):  # up to IDCT and nearest-neighbour rounding differences
            a = first_batch(make_loader(out, "train", "dali", "cpu", opts(train=train)))[0]
            b = first_batch(make_loader(out, "train", "dali", "cuda", opts(train=train)))[0].cpu()
            assert (a - b).abs().mean() < tol, train


def test_torchvision_gpu_decode_agrees_with_cpu(tmp_path_factory):
    out = shards_for(tmp_path_factory, "image")
    a = first_batch(make_loader(out, "train", "torch", "cpu", opts(train=False)))[0]
    b = first_batch(make_loader(out, "train", "torch", "cuda", opts(train=False, gpu_decode=True)))[0]
    assert b.device.type == "cuda" and b.shape == a.shape and b.dtype == a.dtype
    assert (a - b.cpu()).abs().mean() < 0.05


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_amp_training_on_cuda(tmp_path, backend):
    from pipeline.train import run_training
    shards = tiny_shards(tmp_path, "image")
    out = run_training(tiny_config(shards, tmp_path / "run", device="cuda", backend=backend, model="resnet18",
                                   report=False), log=lambda *a: None)
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] in ("torch.float16", "torch.bfloat16")
    check_default_metrics(out)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per rank; world size 1 runs no DDP")
def test_torchrun_nccl(tmp_path):
    shards = tiny_shards(tmp_path, "image")
    n = torch.cuda.device_count()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_port=29531",
                        str(REPO / "scripts" / "train.py"), str(shards), "--out", str(tmp_path / "run"), "--epochs", "1",
                        "--batch-size", "3", "--image-size", "32", "--model", "resnet18", "--device", "cuda",
                        "--quiet", "--no-report"], capture_output=True, text=True, cwd=REPO, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["distributed"] == {"world_size": n, "weights_identical": True}
