import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from pipeline.losses import (BCELoss, FocalLoss, auto_alpha, bce_pos_weight, focal_loss, make_loss,
                             resolve_alpha)


def rand_batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g) * 3
    targets = (torch.rand(n, generator=g) < 0.3).float()
    return logits, targets


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.9, 1.0), (0.0, 0.5), (-1.0, 2.0)])
def test_focal_matches_torchvision(alpha, gamma):
    logits, targets = rand_batch()
    for red in ("mean", "sum", "none"):
        ours = focal_loss(logits, targets, alpha, gamma, red)
        ref = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=red)
        torch.testing.assert_close(ours, ref)


def test_focal_calls_torchvision(monkeypatch):
    import pipeline.losses as L
    calls = []
    real = L.sigmoid_focal_loss
    monkeypatch.setattr(L, "sigmoid_focal_loss", lambda *a, **k: calls.append(k) or real(*a, **k))
    logits, targets = rand_batch()
    focal_loss(logits, targets, alpha=-0.5)
    assert calls and calls[0]["alpha"] == -1.0      # any negative alpha -> torchvision's "off"


def test_focal_gamma0_no_alpha_is_bce():
    logits, targets = rand_batch()
    torch.testing.assert_close(focal_loss(logits, targets, alpha=-1, gamma=0),
                               F.binary_cross_entropy_with_logits(logits, targets))
    torch.testing.assert_close(make_loss("focal", [1, 1], alpha=-1, gamma=0)(logits, targets),
                               make_loss("bce", [1, 1])(logits, targets))


def test_auto_alpha_and_pos_weight():
    assert auto_alpha([900, 100]) == pytest.approx(0.9)
    assert auto_alpha({"real": 100, "fake": 300}) == pytest.approx(0.25)
    assert auto_alpha([50, 50]) == pytest.approx(0.5)
    assert bce_pos_weight([900, 100]) == pytest.approx(9.0)
    assert bce_pos_weight({"real": 100, "fake": 400}) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="both classes"):
        bce_pos_weight([10, 0])
    with pytest.raises(ValueError, match="no samples"):
        auto_alpha([0, 0])
    with pytest.raises(ValueError):
        auto_alpha([1, 2, 3])


def test_make_loss_dispatch_and_shapes():
    logits, targets = rand_batch()
    counts = [900, 100]
    focal = make_loss("focal", counts)
    assert isinstance(focal, FocalLoss) and focal.alpha == 0.25 and focal.gamma == 2.0
    auto = make_loss("focal", counts, alpha="auto", gamma=1.5)
    assert auto.alpha == pytest.approx(0.9) and auto.gamma == 1.5
    assert make_loss("focal", counts, alpha="0.4").alpha == pytest.approx(0.4)
    torch.testing.assert_close(focal(logits, targets), sigmoid_focal_loss(logits, targets, 0.25, 2, "mean"))
    # (B, 1) logits and integer targets give the same scalar
    out = focal(logits[:, None], targets.long())
    assert out.dim() == 0
    torch.testing.assert_close(out, focal(logits, targets))

    wbce = make_loss("weighted_bce", counts)
    assert isinstance(wbce, BCELoss) and float(wbce.pos_weight) == pytest.approx(9.0)
    torch.testing.assert_close(wbce(logits[:, None], targets),
                               F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor(9.0)))
    assert "pos_weight" in dict(wbce.named_buffers())          # follows .to(device)
    bce = make_loss("bce", counts)
    torch.testing.assert_close(bce(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))

    # half-precision logits (autocast) are computed in float32
    assert focal(logits.half(), targets).dtype == torch.float32

    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        make_loss("hinge", counts)
    with pytest.raises(ValueError, match="focal-alpha"):
        make_loss("focal", counts, alpha="lots")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_loss("focal", counts, alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        make_loss("focal", counts, gamma=-1)
    with pytest.raises(ValueError, match="both classes"):
        make_loss("weighted_bce", [10, 0])
    with pytest.raises(ValueError, match=r"\(B,\) or \(B, 1\)"):
        bce(torch.zeros(2, 2), torch.zeros(2, 2))
    assert resolve_alpha(-1, counts) == -1


def test_loss_backward():
    logits, targets = rand_batch()
    logits.requires_grad_(True)
    for name in ("focal", "weighted_bce", "bce"):
        logits.grad = None
        make_loss(name, [900, 100], alpha="auto")(logits, targets).backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
