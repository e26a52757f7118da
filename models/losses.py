"""Classification losses for any number of classes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _probs(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices or (N, C) probabilities (CutMix/MixUp targets) -> (N, C) probabilities."""
    return F.one_hot(target, num_classes).float() if target.ndim == 1 else target.float()


class CrossEntropy(nn.Module):
    """Cross-entropy on class indices or probabilities, with optional class weights and label
    smoothing. The mean is over the targets' total weight, so a one-hot target gives exactly
    ``nn.CrossEntropyLoss`` (torch's own mean over probability targets divides by N instead)."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = _probs(target, logits.shape[-1])
        ce = F.cross_entropy(logits, probs, weight=self.weight, reduction="none",
                             label_smoothing=self.label_smoothing)
        return ce.sum() / ((probs * self.weight).sum() if self.weight is not None else len(ce))


class FocalLoss(nn.Module):
    """Focal loss (Lin et al.): down-weights easy examples by (1 - p_t) ** gamma, where p_t is
    the probability the model gives the target (its expectation under a soft target)."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = _probs(target, logits.shape[-1])
        ce = F.cross_entropy(logits, probs, weight=self.weight, reduction="none",
                             label_smoothing=self.label_smoothing)
        p_t = (logits.softmax(-1) * probs).sum(1)
        return ((1 - p_t).pow(self.gamma) * ce).mean()


class SoftF1Loss(nn.Module):
    """1 - macro-F1 computed on softmax probabilities: optimises the competition metric."""

    def __init__(self, num_classes: int, eps: float = 1e-7):
        super().__init__()
        self.num_classes, self.eps = num_classes, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prob = logits.float().softmax(-1)
        truth = _probs(target, self.num_classes)
        tp = (prob * truth).sum(0)
        fp = (prob * (1 - truth)).sum(0)
        fn = ((1 - prob) * truth).sum(0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        return 1 - f1.mean()


class Combined(nn.Module):
    def __init__(self, main: nn.Module, extra: nn.Module, weight: float):
        super().__init__()
        self.main, self.extra, self.weight = main, extra, weight

    def forward(self, logits, target):
        return self.main(logits, target) + self.weight * self.extra(logits, target)


def class_weights(spec: str, counts: torch.Tensor) -> torch.Tensor | None:
    """'none', 'balanced' (inverse frequency, mean 1) or explicit 'w0,w1,...'."""
    if spec == "none":
        return None
    if spec == "balanced":
        w = counts.sum() / (len(counts) * counts.clamp(min=1))
        return w / w.mean()
    w = torch.tensor([float(x) for x in spec.split(",")])
    if len(w) != len(counts):
        raise ValueError(f"class_weights has {len(w)} values for {len(counts)} classes")
    return w


def build_loss(name: str, num_classes: int, weight: torch.Tensor | None = None,
               label_smoothing: float = 0.0, focal_gamma: float = 2.0,
               f1_weight: float = 0.0) -> nn.Module:
    if name == "ce":
        loss = CrossEntropy(weight, label_smoothing)
    elif name == "focal":
        loss = FocalLoss(focal_gamma, weight, label_smoothing)
    elif name == "f1":
        return SoftF1Loss(num_classes)
    else:
        raise ValueError(f"unknown loss {name!r}: ce, focal or f1")
    return Combined(loss, SoftF1Loss(num_classes), f1_weight) if f1_weight else loss
