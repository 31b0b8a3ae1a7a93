"""Logit distillation for YOLO heads: class-score KD and DFL box-distribution KD.

Class scores are independent sigmoids, so the faithful KD form is a per-class binary KL
(Hinton et al. 2015, with temperature T and the T^2 gradient correction). The box branch predicts
a distribution over `reg_max` bins per side, distilled with softmax KL as in Localization
Distillation (Zheng et al., CVPR 2022). LD distils where the teacher sees objects; we express
that region softly by weighting each anchor with the teacher's top class probability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.losses import register_loss
from distill.losses.base import LogitLoss


@register_loss("kl")
class KLLoss(LogitLoss):
    """cls = T^2 * sum_a w_a sum_c KL_bin(a, c) / sum_a w_a;  box = Tb^2 * sum_a w_a mean_side KL_softmax / sum_a w_a;
    w_a = max_c sigmoid(teacher logit). Returns cls + box (box only when both heads have the same reg_max > 1).
    """

    params = {
        # Best of 0.5 / 1 / 2 on the gain benchmark (benchmarks/results/gain_all.md). At 2 the
        # first-epoch term outweighs the whole detection loss and the seed spread is 2.7x that at 0.5.
        "weight": (0.5, "loss weight"),
        "temperature": (1.0, "class-score temperature T"),
        "box_temperature": (10.0, "DFL distribution temperature (LD paper: 10)"),
    }

    @classmethod
    def check(cls, values: dict[str, float]) -> None:
        super().check(values)
        for key in ("temperature", "box_temperature"):
            if values[key] <= 0:
                raise ValueError(f"kl_{key} must be > 0, got {values[key]}.")

    def __call__(self, student: dict, teacher: dict, modules=None) -> torch.Tensor:
        zs, zt = student["scores"].float(), teacher["scores"].float()  # (B, nc, A)
        weight = zt.sigmoid().amax(1)  # (B, A)
        norm = weight.sum().clamp(min=1e-6)
        T = self.temperature
        pt = torch.sigmoid(zt / T)
        kl_cls = pt * (F.logsigmoid(zt / T) - F.logsigmoid(zs / T)) + (1 - pt) * (
            F.logsigmoid(-zt / T) - F.logsigmoid(-zs / T)
        )
        loss = T**2 * (kl_cls.sum(1) * weight).sum() / norm

        bs, bt = student["boxes"].float(), teacher["boxes"].float()  # (B, 4 * reg_max, A)
        reg_max = bs.shape[1] // 4
        if reg_max > 1 and bs.shape == bt.shape:  # heads with different bin counts share no box distribution
            Tb = self.box_temperature
            b, _, a = bs.shape
            log_qs = F.log_softmax(bs.view(b, 4, reg_max, a) / Tb, dim=2)
            log_qt = F.log_softmax(bt.view(b, 4, reg_max, a) / Tb, dim=2)
            kl_box = (log_qt.exp() * (log_qt - log_qs)).sum(2).mean(1)  # (B, A)
            loss = loss + Tb**2 * (kl_box * weight).sum() / norm
        return loss
