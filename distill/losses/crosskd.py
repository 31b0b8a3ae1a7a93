"""CrossKD: cross-head knowledge distillation (Wang et al., CVPR 2024)."""

from __future__ import annotations

import torch

from distill.losses import register_loss
from distill.losses.kl import TASK_PARAMS, KLLoss


@register_loss("crosskd")
class CrossKDLoss(KLLoss):
    """The student's Detect inputs, through the connectors to the teacher's channels, are run through the teacher's
    frozen head; its class scores and boxes are matched to the teacher's own predictions with the `kl` formula
    (binary KL on scores, LD or the decoded-box term on boxes, teacher-confidence weighted anchors). The student's
    own head is left to the ground truth, so it is not pulled between two targets. The gradient reaches the
    student through the connectors and the teacher head's inputs; no teacher weight changes.

    Needs the Detect inputs of both models as the distilled layers (the default). The teacher may have other
    classes than the data: only teacher-head outputs are compared. Class scores and boxes only, as the paper
    defines it (an OBB head's boxes are its rotated boxes): keypoints and masks are left out."""

    kind = "cross"
    params = {**{k: v for k, v in KLLoss.params.items() if k not in TASK_PARAMS}, "weight": (1.0, "loss weight")}

    @property
    def rbox_weight(self) -> float:
        """OBB heads: the rotated-box term is their box term, weighted like the others' (crosskd_box_weight)."""
        return self.box_weight

    def task_terms(self, student: dict, teacher: dict, weight: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), device=weight.device)
