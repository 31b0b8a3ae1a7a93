"""Connectors: align student neck maps to the teacher's channels and spatial size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def build_connectors(student_channels: list[int], teacher_channels: list[int]) -> nn.ModuleList:
    """Per level: a trainable 1x1 conv C_s -> C_t where channels differ, else Identity."""
    return nn.ModuleList(
        nn.Conv2d(cs, ct, kernel_size=1) if cs != ct else nn.Identity()
        for cs, ct in zip(student_channels, teacher_channels)
    )


def align(connector: nn.Module, student: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C_s, h, w) -> (B, C_t, H, W): channel projection, then bilinear resize if the grids differ."""
    out = connector(student)
    if tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
    return out
