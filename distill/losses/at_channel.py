"""Channel attention transfer: the channel counterpart of AT (Zagoruyko & Komodakis, ICLR 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import register_loss
from distill.losses.at import AttentionTransfer


def channel_attention(x: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): mean over locations of |x|^p, L2-normalised per image."""
    return F.normalize(x.abs().pow(p).mean(dim=(2, 3)), dim=1)


@register_loss("at_channel")
class ChannelAttentionLoss(AttentionTransfer):
    """Which channels respond: the mean is over images and channels. Channels are compared one to one, so
    the student's map passes through the connector to the teacher's channels first."""

    attention = staticmethod(channel_attention)
