"""CWD: channel-wise distillation (Shu et al., ICCV 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import register_loss
from distill.losses.base import FeatureLoss


@register_loss("cwd")
class CWDLoss(FeatureLoss):
    """Each channel becomes a distribution over its H*W locations (softmax with temperature tau);
    loss = tau^2 * KL(teacher || student) summed over locations, averaged over N*C, summed over levels.
    """

    params = {
        "weight": (1.0, "loss weight"),
        "tau": (1.0, "softmax temperature over spatial locations (paper: 1.0)"),
    }

    @classmethod
    def check(cls, values: dict[str, float]) -> None:
        super().check(values)
        if values["tau"] <= 0:
            raise ValueError(f"cwd_tau must be > 0, got {values['tau']}.")

    def level(self, s: torch.Tensor, t: torch.Tensor, module=None) -> torch.Tensor:
        n, c, h, w = s.shape
        log_ps = F.log_softmax(s.reshape(n * c, h * w) / self.tau, dim=1)
        log_pt = F.log_softmax(t.reshape(n * c, h * w) / self.tau, dim=1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum()
        return kl * self.tau**2 / (n * c)
