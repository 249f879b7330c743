"""`--freeze-backbone` and `--unfreeze-last N`: which parts of a Detector's backbone train.

Frozen parts have `requires_grad=False`, stay out of the optimizer (AdamW's weight decay never touches them) and
stay in eval mode while the rest trains (`Detector.train` keeps them there), so BatchNorm running statistics and
dropout are those of the weights file: a frozen tensor in `best_model.pth` is the loaded one, bit for bit.

A "block" is a unit of the network's own top-level structure, in forward order:
  torchvision resnet18 / resnet50, audio_resnet18, r2plus1d_18   layer1 .. layer4 (4 stages of residual blocks)
  torchvision efficientnet_b0 / _b4, mobilenet_v3_large          features[1:-1] (efficientnet: its 7 MBConv stages;
                                                                 mobilenet: its 15 inverted-residual blocks)
  timm models                                                    children of `blocks` (ViT, EfficientNet, Xception:
                                                                 transformer blocks or stages), `stages` (ConvNeXt)
                                                                 or `layers` (Swin), else numbered children
                                                                 `layer1..`, `block1..`, `s1..` (ResNet, legacy
                                                                 Xception, RegNet)
  video frame_pool                                               the blocks of its frame backbone
  anything else with a `blocks` / `stages` / `layers` container   its children (e.g. torchaudio wav2vec2's
                                                                 encoder.transformer.layers)
`--unfreeze-last N` trains the last N blocks, everything the network runs after them (final norm, 1x1 head conv,
pooling layers with weights) and the head; everything before them (stem, patch / position embeddings, earlier
blocks) is frozen. A network with none of these structures (e.g. Inception-v3) has no blocks to count: one error.
"""
from __future__ import annotations

import re

from torch import nn

from .errors import ModelError

CONTAINERS = ("blocks", "stages", "layers")
NUMBERED = re.compile(r"(layer|block|stage|s)(\d+)")


def _torchvision_features(module: nn.Module) -> bool:
    import torchvision
    return isinstance(module, (torchvision.models.EfficientNet, torchvision.models.MobileNetV3))


def _numbered(module: nn.Module) -> list[str]:
    """Children named prefix1, prefix2, ... (at least two, one prefix), in registration order."""
    groups: dict[str, list[str]] = {}
    for name in module._modules:
        m = NUMBERED.fullmatch(name)
        if m:
            groups.setdefault(m.group(1), []).append(name)
    best = max(groups.values(), key=len, default=[])
    return best if len(best) >= 2 else []


def _blocks_here(module: nn.Module) -> tuple[str, list[str]] | None:
    """(path of the parent below `module`, its children that are blocks), or None."""
    if _torchvision_features(module):
        return "features", list(module.features._modules)[1:-1]
    numbered = _numbered(module)
    if numbered:
        return "", numbered
    for name in CONTAINERS:
        child = module._modules.get(name)
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child):
            return name, list(child._modules)
    return None


def find_blocks(net: nn.Module) -> tuple[str, list[str]] | None:
    """(parent path, block names) of the first module, breadth first, that has blocks (see the module docstring)."""
    queue = [("", net)]
    while queue:
        path, module = queue.pop(0)
        found = _blocks_here(module)
        if found is not None:
            sub, names = found
            return ".".join(p for p in (path, sub) if p), names
        queue += [(f"{path}.{n}" if path else n, m) for n, m in module._modules.items() if m is not None]
    return None


def _get(module: nn.Module, path: str) -> nn.Module:
    return module.get_submodule(path) if path else module


def split_backbone(net: nn.Module, label: str) -> tuple[list[nn.Module], list[nn.Parameter], list[nn.Module],
                                                         list[nn.Module]]:
    """(modules before the blocks, parameters held directly by modules on the way to them (position embeddings,
    class tokens: before), the blocks, modules after the blocks). Raises ModelError where there are no blocks."""
    found = find_blocks(net)
    if found is None:
        raise ModelError(f"--unfreeze-last: {label} has no blocks dfp can count (no blocks / stages / layers, no "
                         f"layer1.. children); use --freeze-backbone alone, or fine-tune the whole network")
    parent, names = found
    before, direct, after = [], [], []
    parts = parent.split(".") if parent else []
    for depth in range(len(parts) + 1):
        owner = _get(net, ".".join(parts[:depth]))
        direct += list(owner._parameters.values())
        if depth < len(parts):  # an ancestor: its children around the one leading to the blocks
            kids = list(owner._modules.items())
            at = [n for n, _ in kids].index(parts[depth])
            before += [m for _, m in kids[:at]]
            after += [m for _, m in kids[at + 1:]]
        else:
            kids = list(owner._modules.items())
            order = [n for n, _ in kids]
            first, last = order.index(names[0]), order.index(names[-1])
            before += [m for _, m in kids[:first]]
            after += [m for _, m in kids[last + 1:]]
    blocks = [_get(net, ".".join(p for p in (parent, n) if p)) for n in names]
    return [m for m in before if m is not None], [p for p in direct if p is not None], blocks, \
        [m for m in after if m is not None]


def apply(model, freeze_backbone: bool, unfreeze_last: int) -> dict | None:
    """Freeze a Detector's backbone (all of it, or all but its last `unfreeze_last` blocks and what follows them).
    Returns what was done (config.json's "freeze"), or None when nothing is frozen."""
    if not freeze_backbone and not unfreeze_last:
        return None
    backbone = model.backbone
    label = model.name
    if unfreeze_last:
        before, direct, blocks, _after = split_backbone(backbone, label)
        if unfreeze_last > len(blocks):
            raise ModelError(f"--unfreeze-last {unfreeze_last}: {label} has only {len(blocks)} blocks; give at most "
                             f"{len(blocks)}")
        frozen = before + blocks[:len(blocks) - unfreeze_last]
        for p in direct:
            p.requires_grad_(False)
    else:
        blocks, frozen = None, [backbone]
    for m in frozen:
        m.requires_grad_(False)
    model.frozen_modules = frozen
    model.train(model.training)
    count = lambda ps: sum(p.numel() for p in ps)
    return {"backbone": "frozen" if not unfreeze_last else f"last {unfreeze_last} of {len(blocks)} blocks train",
            "blocks": None if blocks is None else len(blocks), "unfreeze_last": unfreeze_last,
            "trainable_parameters": count(p for p in model.parameters() if p.requires_grad),
            "frozen_parameters": count(p for p in model.parameters() if not p.requires_grad)}


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """What the optimizer updates: every parameter that is not frozen."""
    return [p for p in model.parameters() if p.requires_grad]
