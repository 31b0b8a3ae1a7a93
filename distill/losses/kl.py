"""Logit distillation for YOLO heads: class-score KD, and box KD on distributions or decoded boxes.

Class scores are independent sigmoids, so the faithful KD form is a per-class binary KL
(Hinton et al. 2015, with temperature T and the T^2 gradient correction). A DFL box branch predicts
a distribution over `reg_max` bins per side, distilled with softmax KL as in Localization
Distillation (Zheng et al., CVPR 2022). Heads without distributions (YOLO26: reg_max 1, the four
outputs are the side distances themselves) or with different bin counts are distilled on the decoded
side distances instead: L1 plus 1 - GIoU between the student's and the teacher's box at each anchor,
as in the IoU-based box term of BCKD (Yang et al., ICCV 2023). Both distil where the teacher sees
objects, expressed softly by weighting each anchor with the teacher's top class probability.

Task heads add their own outputs, distilled with the same anchor weights where both models have them
comparably (distill/losses/task_outputs.py): keypoints (pose), rotated boxes (OBB: one 1 - ProbIoU term in place
of the side terms), and instance masks (segment). A detection teacher of an OBB student teaches class scores only:
its axis-aligned sides cannot be set beside rotated ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.losses import register_loss
from distill.losses.base import LogitLoss
from distill.losses.task_outputs import POSE_FORM, keypoint_term, mask_term, rotated_box_term


TASK_PARAMS = ("kpt_weight", "rbox_weight", "mask_weight", "mask_anchors")  # the task heads' own outputs


@register_loss("kl")
class KLLoss(LogitLoss):
    """cls = T^2 * sum_a w_a sum_c KL_bin(a, c) / sum_a w_a, w_a = max_c sigmoid(teacher logit); plus
    box = box_weight * Tb^2 * sum_a w_a mean_side KL_softmax / sum_a w_a when both heads have the same reg_max > 1
    (and `decoded` is 0), else box = box_weight * sum_a w_a (mean_side |d_s - d_t| + 1 - GIoU) / sum_a w_a on the
    decoded side distances d (grid units; a DFL head's expected bin). OBB pairs: box = rbox_weight * sum_a w_a
    (1 - ProbIoU of the decoded rotated boxes) / sum_a w_a instead; a detection teacher of an OBB student: no box term.
    Plus the task terms (keypoints, masks) where their weights are on."""

    params = {
        # Best of 0.5 / 1 / 2 on the gain benchmark (benchmarks/results/gain_all.md). At 2 the
        # first-epoch term outweighs the whole detection loss and the seed spread is 2.7x that at 0.5.
        "weight": (0.5, "loss weight"),
        "temperature": (1.0, "class-score temperature T"),
        "box_temperature": (10.0, "DFL distribution temperature (LD paper: 10)"),
        "box_weight": (1.0, "weight of the box term, whichever it is: LD, or the decoded-box term"),
        "decoded": (0.0, "1: distil decoded boxes even between DFL heads of equal reg_max; 0: LD there"),
        # Off by default: on the synthetic pose task (short schedule, seeds 0-2, benchmarks/results/gain_pose.md) kl
        # gained +0.0369 without it and +0.0288 with it (paired -0.0080 +- 0.0050, behind on 3/3 seeds).
        "kpt_weight": (0.0, "pose: weight of the keypoint term (positions in grid units, visibility KL)"),
        "rbox_weight": (1.0, "OBB: weight of the rotated-box term (1 - ProbIoU; replaces the side terms)"),
        # Off by default: on the synthetic seg task (short schedule, seeds 0-2, benchmarks/results/gain_segment.md) kl
        # gained +0.0087 without it and +0.0070 with it (paired -0.0017 +- 0.0003, behind on 3/3 seeds).
        "mask_weight": (0.0, "segment: weight of the instance-mask term (per-pixel KL inside the teacher's box)"),
        "mask_anchors": (64.0, "segment: masks compared at this many most teacher-confident anchors per image"),
    }
    ensembles = True

    @classmethod
    def check(cls, values: dict[str, float]) -> None:
        super().check(values)
        for key in ("temperature", "box_temperature"):
            if values[key] <= 0:
                raise ValueError(f"kl_{key} must be > 0, got {values[key]}.")
        if values["box_weight"] < 0:
            raise ValueError(f"kl_box_weight must be >= 0, got {values['box_weight']}.")
        if values["decoded"] not in (0.0, 1.0):
            raise ValueError(f"kl_decoded must be 0 or 1, got {values['decoded']}.")
        for key in ("kpt_weight", "rbox_weight", "mask_weight"):
            if values.get(key, 0) < 0:
                raise ValueError(f"kl_{key} must be >= 0, got {values[key]}.")
        if "mask_anchors" in values and (values["mask_anchors"] < 1 or not float(values["mask_anchors"]).is_integer()):
            raise ValueError(f"kl_mask_anchors must be a whole number >= 1, got {values['mask_anchors']}.")

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

        if ("angle" in student) != ("angle" in teacher):  # rotated vs axis-aligned sides: not comparable
            return loss + self.task_terms(student, teacher, weight, norm)
        bs, bt = student["boxes"].float(), teacher["boxes"].float()  # (B, 4 * reg_max, A)
        reg_max = bs.shape[1] // 4
        if "angle" in student:  # OBB: sides and angle together, whatever form each box takes
            if self.rbox_weight > 0:
                term = rotated_box_term(side_distances(bs), side_distances(bt), student["angle"], teacher["angle"])
                loss = loss + self.rbox_weight * (term * weight).sum() / norm
        elif self.box_weight > 0 and reg_max > 1 and bs.shape == bt.shape and not self.decoded:  # same bins: LD
            Tb = self.box_temperature
            b, _, a = bs.shape
            log_qs = F.log_softmax(bs.view(b, 4, reg_max, a) / Tb, dim=2)
            log_qt = F.log_softmax(bt.view(b, 4, reg_max, a) / Tb, dim=2)
            kl_box = (log_qt.exp() * (log_qt - log_qs)).sum(2).mean(1)  # (B, A)
            loss = loss + self.box_weight * Tb**2 * (kl_box * weight).sum() / norm
        elif self.box_weight > 0:
            ds, dt = side_distances(bs), side_distances(bt)
            box = (ds - dt).abs().mean(1) + 1 - shared_anchor_giou(ds, dt)  # (B, A)
            loss = loss + self.box_weight * (box * weight).sum() / norm
        return loss + self.task_terms(student, teacher, weight, norm)

    def task_terms(self, student: dict, teacher: dict, weight: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """Keypoints and masks, where both dicts carry them comparably (see `task_outputs`), anchor-weighted."""
        loss = torch.zeros((), device=weight.device)
        if self.kpt_weight > 0 and "kpts" in student and "kpts" in teacher and comparable_keypoints(student, teacher):
            term = keypoint_term(student["kpts"], teacher["kpts"], student["kpt_shape"][1],
                                 student.get("kpt_form", POSE_FORM), teacher.get("kpt_form", POSE_FORM))
            loss = loss + self.kpt_weight * (term * weight).sum() / norm
        if self.mask_weight > 0 and all(k in d for d in (student, teacher) for k in ("mask_coefficient", "proto", "feats")):
            total, weights = mask_term(student, teacher, weight, side_distances(teacher["boxes"].float()),
                                       int(self.mask_anchors))
            loss = loss + self.mask_weight * total / weights.clamp(min=1e-6)
        return loss

    def ensemble(self, student: dict, teachers: list[dict], shares: list[float]) -> dict:
        """Several teachers as one: the share-weighted mean of their class probabilities at temperature T, and of
        their box distributions at Tb where every teacher has the student's bins (and `decoded` is 0: where the
        loss would use LD), else of their decoded side distances ((B, 4, A), compared as decoded boxes).
        Returned as logits that the loss turns back into exactly those means: scores T * logit(p), boxes
        Tb * log(q). Computed in log space (log-sum-exp), so confident teachers' probabilities near 0 or 1 are not
        clipped. The loss weights anchors by the sigmoid of the target's scores: the teachers' mean confidence at
        T = 1, a sharper or softer one at other T. Keypoints, when every teacher's compare with the student's:
        the mean positions and the mean visibility probability. Angles and masks have no mean that one output
        could carry (masks live in each teacher's own prototype basis), so the ensemble target has none."""
        kept = [(math.log(s), t) for s, t in zip(shares, teachers) if s > 0]
        T, Tb = self.temperature, self.box_temperature

        def log_mean(logps: list[torch.Tensor]) -> torch.Tensor:  # log sum_i s_i p_i from log p_i
            return torch.logsumexp(torch.stack([w + lp for (w, _), lp in zip(kept, logps)]), dim=0)

        scores = [t["scores"].float() / T for _, t in kept]
        logit = log_mean([F.logsigmoid(z) for z in scores]) - log_mean([F.logsigmoid(-z) for z in scores])
        boxes = [t["boxes"].float() for _, t in kept]
        reg_max = boxes[0].shape[1] // 4
        if reg_max > 1 and all(x.shape == student["boxes"].shape for x in boxes) and not self.decoded:
            b, _, a = boxes[0].shape
            log_q = log_mean([F.log_softmax(x.view(b, 4, reg_max, a) / Tb, dim=2) for x in boxes])
            target_boxes = (Tb * log_q).view(b, 4 * reg_max, a)
        else:
            target_boxes = sum(math.exp(w) * side_distances(x) for (w, _), x in zip(kept, boxes))
        target = {"scores": T * logit, "boxes": target_boxes}
        if "kpts" in student and all("kpts" in t and comparable_keypoints(student, t) for _, t in kept):
            b, _, a = student["kpts"].shape
            ndim = student["kpt_shape"][1]
            form = student.get("kpt_form", POSE_FORM)  # positions in the student's raw form, so that its reading holds
            kpts = [t["kpts"].float().view(b, -1, ndim, a) for _, t in kept]
            kpts = [torch.cat([((t.get("kpt_form", POSE_FORM)[0] * k[:, :, :2] + t.get("kpt_form", POSE_FORM)[1]) - form[1])
                               / form[0], k[:, :, 2:]], 2) for (_, t), k in zip(kept, kpts)]
            mean = sum(math.exp(w) * k for (w, _), k in zip(kept, kpts))
            if ndim == 3:
                visible = log_mean([F.logsigmoid(k[:, :, 2]) for k in kpts]) - log_mean([F.logsigmoid(-k[:, :, 2]) for k in kpts])
                mean = torch.cat([mean[:, :, :2], visible[:, :, None]], 2)
            target.update(kpts=mean.view(b, -1, a), kpt_shape=student["kpt_shape"], kpt_form=form)
        return target


def comparable_keypoints(student: dict, teacher: dict) -> bool:
    """Both heads predict the same keypoints (kpt_shape, which the distiller adds to pose head dicts)."""
    shape = student.get("kpt_shape")
    return shape is not None and tuple(shape) == tuple(teacher.get("kpt_shape") or ()) and \
        student["kpts"].shape == teacher["kpts"].shape


def side_distances(boxes: torch.Tensor) -> torch.Tensor:
    """(B, 4 * reg_max, A) head box output -> (B, 4, A) left, top, right, bottom distances in grid units: the
    expected bin of each side's distribution (DFL), or the outputs themselves when reg_max is 1."""
    b, c, a = boxes.shape
    reg_max = c // 4
    if reg_max == 1:
        return boxes
    bins = torch.arange(reg_max, device=boxes.device, dtype=boxes.dtype).view(1, 1, reg_max, 1)
    return (boxes.view(b, 4, reg_max, a).softmax(2) * bins).sum(2)


def shared_anchor_giou(ds: torch.Tensor, dt: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """GIoU of two boxes given as (B, 4, A) side distances from the same anchor point (negative sides count as 0)."""
    ds, dt = ds.clamp(min=0), dt.clamp(min=0)
    area_s = (ds[:, 0] + ds[:, 2]) * (ds[:, 1] + ds[:, 3])
    area_t = (dt[:, 0] + dt[:, 2]) * (dt[:, 1] + dt[:, 3])
    inner, outer = torch.minimum(ds, dt), torch.maximum(ds, dt)  # both boxes contain the anchor point
    inter = (inner[:, 0] + inner[:, 2]) * (inner[:, 1] + inner[:, 3])
    hull = (outer[:, 0] + outer[:, 2]) * (outer[:, 1] + outer[:, 3])
    union = area_s + area_t - inter
    return (inter + eps) / (union + eps) - (hull - union) / (hull + eps)  # two empty boxes at one point: 1
