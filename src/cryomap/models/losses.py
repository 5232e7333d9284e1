"""Losses for the U-Net: BCE or Dice+BCE for thresholded labels, MSE or L1 for continuous labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce", "dice_bce", "dice", "mse", "l1")


def soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice coefficient per sample, 2|P·T|/(|P| + |T|) with smoothing ``eps`` (voxels)."""
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    return (2 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)


def unet_loss(kind: str, logits: torch.Tensor, target: torch.Tensor, activation: str = "sigmoid") -> torch.Tensor:
    """Mean loss of ``kind`` between the network's pre-activation ``logits`` and ``target``.

    BCE terms use the logits (``binary_cross_entropy_with_logits``, stable at saturation); MSE/L1
    compare the activated output (sigmoid, or the logits themselves with ``activation="none"``).
    """
    if kind in ("bce", "dice_bce", "dice"):
        prob = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        if kind == "bce":
            return bce
        dice = 1.0 - soft_dice(prob, target).mean()
        return dice if kind == "dice" else dice + bce
    out = torch.sigmoid(logits) if activation == "sigmoid" else logits
    if kind == "mse":
        return F.mse_loss(out, target)
    if kind == "l1":
        return F.l1_loss(out, target)
    raise ValueError(f"unknown loss {kind!r} (one of {', '.join(LOSSES)})")


def dice_iou(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> tuple[float, float]:
    """Hard Dice and IoU of ``pred > threshold`` against ``target > threshold`` (whole batch)."""
    p = pred > threshold
    t = target > threshold
    inter = (p & t).sum().item()
    ps, ts = p.sum().item(), t.sum().item()
    union = ps + ts - inter
    dice = 2 * inter / (ps + ts) if ps + ts else 1.0
    iou = inter / union if union else 1.0
    return float(dice), float(iou)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps over all voxels."""
    a = a.flatten().double() - a.double().mean()
    b = b.flatten().double() - b.double().mean()
    den = (a.norm() * b.norm()).item()
    return float((a @ b).item() / den) if den > 0 else 0.0
