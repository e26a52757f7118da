"""Model construction and checkpoints (safetensors weights + JSON metadata)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from facet.atomic import atomic_path, write_json

from .run_folder import BEST

log = logging.getLogger(__name__)


def resolve_pretrained(source: str, backbone: str) -> str:
    """'auto' -> a local ``<backbone>*.safetensors`` in $FACET_WEIGHTS_DIR, else 'hub'."""
    if source != "auto":
        return source
    folder = os.environ.get("FACET_WEIGHTS_DIR")
    found = sorted(Path(folder).glob(f"{backbone}*.safetensors")) if folder else []
    return str(found[0]) if found else "hub"


def create_model(backbone: str, num_classes: int, pretrained: str = "none",
                 drop_rate: float = 0.0) -> tuple[torch.nn.Module, str]:
    """A timm model and a description of where its initial weights came from."""
    model, origin = _create(backbone, num_classes, pretrained, drop_rate)
    # timm's 'goog' init draws the head from U(+-1/sqrt(num_classes)): fine for 1000 classes,
    # logits in the tens for 2 or 3. A zero head starts at the uniform prediction instead.
    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    return model, origin


def _create(backbone: str, num_classes: int, pretrained: str, drop_rate: float):
    kwargs = dict(num_classes=num_classes, drop_rate=drop_rate)
    if pretrained == "none":
        return timm.create_model(backbone, pretrained=False, **kwargs), "none (from scratch)"
    if pretrained == "hub":
        try:
            return timm.create_model(backbone, pretrained=True, **kwargs), "hub"
        except Exception as exc:  # no network, no such weights: say so, train from scratch
            log.warning("pretrained weights for %s not reachable (%s); training from scratch. "
                        "Set pretrained=<file> or $FACET_WEIGHTS_DIR.", backbone,
                        str(exc).splitlines()[0][:200])
            return timm.create_model(backbone, pretrained=False, **kwargs), "none (hub unreachable)"
    if not Path(pretrained).is_file():
        raise FileNotFoundError(f"pretrained weights file {pretrained} does not exist")
    model = timm.create_model(backbone, pretrained=True, **kwargs,
                              pretrained_cfg_overlay=dict(file=str(pretrained)))
    return model, str(pretrained)


def _folded_batchnorms(model: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    """BatchNorms with identity statistics: weights converted from a graph (e.g. TFLite) where
    BN was folded into the convolutions. Their gamma/beta scale raw conv outputs."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    folded = all(torch.all(b.running_mean == 0) and torch.all(b.running_var == 1) for b in bns)
    return bns if bns and folded else []


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> int:
    """Give folded BatchNorms real statistics without changing the eval-mode function.

    In train mode BN normalises by batch statistics, which a folded gamma/beta never expected:
    the pretrained features would be scrambled at the first step. For each BN with input x
    (mean m, variance v): running stats := (m, v), gamma' = gamma * sqrt(v + eps),
    beta' = beta + gamma * m, so eval mode still computes gamma * x + beta, and train mode now
    starts from the pretrained function. Returns how many BNs were changed.
    """
    bns = _folded_batchnorms(model)
    if not bns:
        return 0
    stats: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [b.register_forward_pre_hook(
        lambda mod, inp: stats.__setitem__(mod, (inp[0].mean((0, 2, 3)),
                                                 inp[0].var((0, 2, 3), unbiased=False))))
        for b in bns]
    was_training = model.training
    model.eval()
    try:
        model(images)  # eval mode: every BN sees the input the pretrained network gives it
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for b in bns:
        mean, var = stats[b]
        b.bias += b.weight * mean
        b.weight *= torch.sqrt(var + b.eps)
        b.running_mean.copy_(mean)
        b.running_var.copy_(var)
    return len(bns)


def save_weights(model: torch.nn.Module, meta: dict, path: Path) -> None:
    """Weights as safetensors with their metadata inside (one atomic file: what export reads),
    plus a readable JSON twin, written atomically after it."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"facet": json.dumps(meta)})
    write_json(path.with_suffix(".json"), meta)


def read_meta(path: str | Path) -> dict:
    """A checkpoint's metadata, from inside its safetensors file: always the weights' own (the
    JSON twin may lag behind them after a crash)."""
    ckpt = find_checkpoint(path)
    with safe_open(str(ckpt), framework="numpy") as f:
        return json.loads(f.metadata()["facet"])


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_checkpoint(path: str | Path) -> Path:
    """A run folder (-> its best.safetensors) or a .safetensors file."""
    path = Path(path)
    ckpt = path / BEST if path.is_dir() else path
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt} (train first: facet train ...)")
    return ckpt


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the trained model from a checkpoint; returns (model in eval mode, metadata)."""
    ckpt = find_checkpoint(path)
    meta = read_meta(ckpt)
    model, _ = create_model(meta["recipe"]["backbone"], len(meta["classes"]))
    model.load_state_dict(load_file(str(ckpt)))
    return model.eval(), meta
