"""AT: attention transfer (Zagoruyko & Komodakis, ICLR 2017), spatial attention maps. Channel attention: at_channel.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import register_loss
from distill.losses.base import FeatureLoss


def spatial_attention(x: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W): mean over channels of |x|^p, L2-normalised per image."""
    return F.normalize(x.abs().pow(p).mean(dim=1).flatten(1), dim=1)


class AttentionTransfer(FeatureLoss):
    """beta/2 * mean squared difference between the student's and the teacher's normalised attention
    (`attention(x, p)`, one vector per image), summed over levels. Subclasses choose the attention."""

    params = {
        "weight": (1.0, "loss weight"),
        "p": (2.0, "exponent of |F| in the attention map, >= 1 (paper: 2)"),
        "beta": (1000.0, "the paper's beta: each level's term is beta / 2 times the mean squared difference"),
    }

    @staticmethod
    def attention(x: torch.Tensor, p: float) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def check(cls, values: dict[str, float]) -> None:
        super().check(values)
        if values["p"] < 1:  # below 1 the gradient of |x|^p is infinite at x = 0 (exact zeros are common under AMP)
            raise ValueError(f"{cls.name}_p must be >= 1, got {values['p']}.")
        if values["beta"] < 0:
            raise ValueError(f"{cls.name}_beta must be >= 0, got {values['beta']}.")

    def level(self, s: torch.Tensor, t: torch.Tensor, module=None) -> torch.Tensor:
        return self.beta / 2 * (self.attention(s, self.p) - self.attention(t, self.p)).pow(2).mean()


@register_loss("at")
class SpatialAttentionLoss(AttentionTransfer):
    """Where each network looks: the mean is over images and locations. The maps have one channel, so the
    student's own map is compared (no connector); only the grid is resized to the teacher's."""

    aligns_channels = False
    attention = staticmethod(spatial_attention)
