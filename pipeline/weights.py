"""Weights files read and fitted into a network: what the torchvision / timm models (models.py) and the SSL
front-ends (ssl.py) share.

A file is read with safetensors (``.safetensors``) or ``torch.load(weights_only=True)``; a dfp checkpoint's
``model`` or a ``state_dict`` entry is unwrapped, and DDP's ``module.`` and torch.compile's ``_orig_mod.`` key
prefixes are dropped. `state_dict_in` and `load_strict` fail with a one-line ModelError naming the file; the
callers of `load_file` word its failures, which differ by what the file may hold.
"""
from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn

from .errors import ModelError


class _HeldNotice:
    """stdout that holds torch.hub's 'Downloading: ...' line back until the fetch succeeds, so a failed one leaves
    only dfp's one-line error."""

    def __init__(self, stream):
        self.stream, self.held = stream, []

    def write(self, text: str) -> int:
        if self.held or text.startswith("Downloading: "):
            self.held.append(text)
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def held_download_notice():
    held = _HeldNotice(sys.stdout)
    with contextlib.redirect_stdout(held):
        yield
    sys.stdout.write("".join(held.held))  # reached only when the fetch worked


def _strip_prefixes(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        for p in ("module.", "_orig_mod."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def load_file(path: str):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file as load_safetensors
        return load_safetensors(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def state_dict_in(obj, path: str) -> dict:
    """The tensors by name a loaded weights file holds (itself, or under 'model' / 'state_dict'), without the
    wrappers' key prefixes; a one-line ModelError when it holds none."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise ModelError(f"--weights {path}: holds no state dict (expected tensors by name, or a checkpoint with 'model')")
    return _strip_prefixes(obj)


def load_strict(module: nn.Module, sd: dict, path: str, name: str, ignore: tuple[str, ...] = ()) -> None:
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore)}
    expected = {k for k in module.state_dict() if not k.startswith(ignore)}
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise ModelError(f"--weights {path}: does not fit model {name}: {', '.join(parts)}")
    try:
        module.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else str(e).strip().splitlines()[0]
        raise ModelError(f"--weights {path}: does not fit model {name}: {detail[:300]}") from None
