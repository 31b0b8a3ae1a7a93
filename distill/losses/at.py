"""AT: attention transfer (Zagoruyko & Komodakis, ICLR 2017), spatial attention maps. Channel attention: at_channel.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import register_loss
from distill.losses.base import FeatureLoss

PARAMS = {
    "weight": (1.0, "loss weight"),
    "p": (2.0, "exponent of |F| in the attention map, >= 1 (paper: 2)"),
    "beta": (1000.0, "the paper's beta: each level's term is beta / 2 times the mean squared difference"),
}


def check_attention(name: str, values: dict[str, float]) -> None:
    if values["p"] < 1:  # below 1 the gradient of |x|^p is infinite at x = 0 (exact zeros are common under AMP)
        raise ValueError(f"{name}_p must be >= 1, got {values['p']}.")
    if values["beta"] < 0:
        raise ValueError(f"{name}_beta must be >= 0, got {values['beta']}.")


def spatial_attention(x: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W): mean over channels of |x|^p, L2-normalised per image."""
    return F.normalize(x.abs().pow(p).mean(dim=1).flatten(1), dim=1)


@register_loss("at")
class SpatialAttentionLoss(FeatureLoss):
    """Where each network looks: beta/2 * mean over images and locations of the squared difference between
    the normalised spatial attention maps of student and teacher, summed over levels. The maps have one
    channel, so the student's own map is compared (no connector); only the grid is resized to the teacher's."""

    params = PARAMS
    aligns_channels = False

    @classmethod
    def check(cls, values: dict[str, float]) -> None:
        super().check(values)
        check_attention(cls.name, values)

    def level(self, s: torch.Tensor, t: torch.Tensor, module=None) -> torch.Tensor:
        return self.beta / 2 * (spatial_attention(s, self.p) - spatial_attention(t, self.p)).pow(2).mean()

