"""MGD: masked generative distillation (Yang et al., ECCV 2022)."""

from __future__ import annotations

import torch
from torch import nn

from distill.losses import register_loss
from distill.losses.base import FeatureLoss


@register_loss("mgd")
class MGDLoss(FeatureLoss):
    """Drop each location of the aligned student map with probability `mask_ratio`, regenerate the
    teacher map with a conv3x3-ReLU-conv3x3 generator; loss = alpha * sum of squared error / N.
    """

    params = {
        "weight": (1.0, "loss weight (the paper's scale is alpha)"),
        "alpha": (2e-5, "alpha_mgd, scale of the summed squared error (paper, one-stage detectors: 2e-5)"),
        "mask_ratio": (0.65, "lambda_mgd, probability that a location is masked (paper: 0.65)"),
    }

    @classmethod
    def check(cls, values: dict[str, float]) -> None:
        super().check(values)
        if values["alpha"] < 0:
            raise ValueError(f"mgd_alpha must be >= 0, got {values['alpha']}.")
        if not 0 <= values["mask_ratio"] < 1:
            raise ValueError(f"mgd_mask_ratio must be in [0, 1), got {values['mask_ratio']}.")

    def build(self, channels: list[int]) -> nn.Module:
        """One generator per level on the teacher's channel count."""
        return nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)) for c in channels
        )

    def level(self, s: torch.Tensor, t: torch.Tensor, generator: nn.Module) -> torch.Tensor:
        n, _, h, w = s.shape
        keep = (torch.rand(n, 1, h, w, device=s.device) >= self.mask_ratio).to(s.dtype)
        return self.alpha * (generator(s * keep) - t).pow(2).sum() / n
