"""Mimic: FitNets-style feature imitation (Romero et al., ICLR 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import register_loss
from distill.losses.base import FeatureLoss


@register_loss("mimic")
class MimicLoss(FeatureLoss):
    """Mean squared error between the aligned student map and the teacher map, summed over levels."""

    params = {"weight": (1.0, "loss weight")}

    def level(self, s: torch.Tensor, t: torch.Tensor, module=None) -> torch.Tensor:
        return F.mse_loss(s, t, reduction="mean")
