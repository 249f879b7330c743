"""DALI behaviours the loader relies on and that are easy to get wrong (from DALI's docs and issues).

Each runs on DALI's CPU backend here and again with GPU (`mixed`) decoding where CUDA exists, so a first
GPU run checks the same contracts."""
import io

import numpy as np
import pytest
import torch

DEVICES = ["cpu", pytest.param("gpu", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _run(graph, batch_size: int, device: str, sources):
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=0 if device == "gpu" else None, exec_dynamic=True)
    def pipe():
        ins = [fn.external_source(source=s, batch=True, dtype=t) for s, t in sources]
        return graph(*ins)

    p = pipe()
    p.build()
    (out,) = p.run()
    if device == "gpu":
        out = out.as_cpu()
    return [np.array(out[i]) for i in range(batch_size)]


def _jpeg(img: np.ndarray) -> np.ndarray:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=98)
    return np.frombuffer(buf.getvalue(), np.uint8)


@pytest.mark.parametrize("device", DEVICES)
def test_warp_perspective_maps_source_to_destination_and_keeps_the_given_size(device):
    """inverse_map=False: the matrix maps source to destination; `size` sets the output (else the input's)."""
    from nvidia.dali import fn, types
    img = np.zeros((24, 40, 3), np.uint8)
    img[10:14, 5:9] = 255  # a bright square at x 5..8, y 10..13
    shift = np.array([[1, 0, 7], [0, 1, 3], [0, 0, 1]], np.float32)  # x + 7, y + 3
    eye = np.eye(3, dtype=np.float32)

    def graph(x, m):
        if device == "gpu":
            x = x.gpu()
        return fn.experimental.warp_perspective(x, matrix=m, size=[24, 40], inverse_map=False,
                                                interp_type=types.INTERP_NN, border_mode="constant", fill_value=[0.0])

    same, moved = _run(graph, 2, device, [(lambda: [img, img], types.UINT8), (lambda: [eye, shift], types.FLOAT)])
    assert same.shape == moved.shape == (24, 40, 3)
    assert np.array_equal(same, img)
    ys, xs = np.nonzero(moved[..., 0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (13, 16, 12, 15)


@pytest.mark.parametrize("device", DEVICES)
def test_image_slice_takes_normalised_anchor_and_shape_in_x_y_order(device):
    from nvidia.dali import fn, types
    img = np.zeros((64, 96, 3), np.uint8)
    img[:32, 48:] = (250, 20, 20)  # top-right quadrant red, the rest black
    jpeg = _jpeg(img)

    def graph(data, anchor, shape):
        return fn.decoders.image_slice(data, anchor, shape, device="mixed" if device == "gpu" else "cpu",
                                       output_type=types.RGB, normalized_anchor=True, normalized_shape=True)

    (crop,) = _run(graph, 1, device, [(lambda: [jpeg], types.UINT8),
                                      (lambda: [np.array([0.5, 0.0], np.float32)], types.FLOAT),
                                      (lambda: [np.array([0.5, 0.5], np.float32)], types.FLOAT)])
    assert crop.shape == (32, 48, 3)  # (x=0.5, y=0) anchor, (w=0.5, h=0.5) shape
    assert crop[4:-4, 4:-4, 0].min() > 200 and crop[4:-4, 4:-4, 1].max() < 60


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=DEVICES[1].marks)])
def test_a_batch_kept_from_the_loader_is_unchanged_by_later_batches(tmp_path_factory, device):
    """Batches reach torch through DLPack without a copy: one kept from iteration k must still hold its values
    after DALI produced batches k+1..k+3 (the dynamic executor's output lifetime)."""
    from pipeline.loaders import make_loader
    from test_loaders import opts, shards_for
    out = shards_for(tmp_path_factory, "image")
    it = iter(make_loader(out, "train", "dali", device, opts(batch_size=4, epoch_len=40)))
    kept, _, _ = next(it)
    snapshot = kept.clone()
    later = [next(it)[0] for _ in range(3)]
    if device == "cuda":
        torch.cuda.synchronize()
    assert torch.equal(kept, snapshot)
    assert all(not torch.equal(kept, x) for x in later)


def test_a_forked_child_inherits_everything_frozen_before_any_after_fork_hook_runs(monkeypatch):
    """A DALI pipeline freed by the cycle collector in a forked child crashes it; threading's own after-fork hook
    (registered first) allocates and can trigger that collection, so freezing in the child is too late."""
    import gc
    import os
    from pipeline.loaders import dali as dali_loader
    r, w = os.pipe()
    armed = [False]

    def probe():  # registered before the guard, as threading's hook is: it runs before the guard's child hook
        if armed[0]:
            os.write(w, b"1" if gc.get_freeze_count() else b"0")

    os.register_at_fork(after_in_child=probe)
    monkeypatch.setattr(dali_loader, "_fork_guarded", False)
    dali_loader._guard_forks()
    before = gc.get_freeze_count()
    armed[0] = True
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    finally:
        armed[0] = False
    assert os.read(r, 1) == b"1"
    assert gc.get_freeze_count() == before  # the parent thawed
    os.close(r), os.close(w)
