"""Channel attention transfer: the channel counterpart of AT (Zagoruyko & Komodakis, ICLR 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import register_loss
from distill.losses.at import PARAMS, check_attention
from distill.losses.base import FeatureLoss


def channel_attention(x: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): mean over locations of |x|^p, L2-normalised per image."""
    return F.normalize(x.abs().pow(p).mean(dim=(2, 3)), dim=1)


@register_loss("at_channel")
class ChannelAttentionLoss(FeatureLoss):
    """Which channels respond: beta/2 * mean over images and channels of the squared difference between the
    normalised channel attention vectors, summed over levels. Channels are compared one to one, so the
    student's map passes through the connector to the teacher's channels first."""

    params = PARAMS

    @classmethod
    def check(cls, values: dict[str, float]) -> None:
        super().check(values)
        check_attention(cls.name, values)

    def level(self, s: torch.Tensor, t: torch.Tensor, module=None) -> torch.Tensor:
        return self.beta / 2 * (channel_attention(s, self.p) - channel_attention(t, self.p)).pow(2).mean()
