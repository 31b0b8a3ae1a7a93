"""PKD: Pearson-correlation feature distillation (Cao et al., NeurIPS 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import register_loss
from distill.losses.base import FeatureLoss


def standardise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) -> same shape, each channel at zero mean and unit variance over the batch and all locations."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / (var + eps).sqrt()


@register_loss("pkd")
class PKDLoss(FeatureLoss):
    """Student and teacher maps standardised per channel, then half their mean squared difference: for each
    channel that is 1 - Pearson correlation of its B*H*W values, averaged over channels, summed over levels.
    Blind to the scale and offset of either map, so a from-scratch teacher's large activations do not
    dominate a student's small ones."""

    params = {"weight": (1.0, "loss weight (each level's term lies in [0, 2])")}

    def level(self, s: torch.Tensor, t: torch.Tensor, module=None) -> torch.Tensor:
        return F.mse_loss(standardise(s), standardise(t), reduction="mean") / 2
