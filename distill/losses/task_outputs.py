"""The outputs a task head adds to the detection ones, distilled where both models have them comparably.

Every term is weighted per anchor like the class and box terms of `kl`: by w_a, the teacher's top class
probability, so the student copies the teacher where the teacher sees an object, and normalised by sum_a w_a.

- Keypoints (pose): each keypoint's position in grid units of its level from the anchor, L1, weighted by the
  teacher's visibility probability (a keypoint the teacher thinks absent has an arbitrary position); plus the
  binary KL of the visibility probabilities. Needs the same kpt_shape. Heads decode raw outputs differently:
  Ultralytics' Pose as x = (2 * raw + anchor - 0.5) * stride, Pose26 as (raw + anchor) * stride; each dict's
  `kpt_form` (scale, shift) gives the position scale * raw + shift in grid units from the anchor.
- Angle (OBB): |wrapped difference| in radians, with period pi (a rectangle turned by pi is the same one).
- Masks (segment): mask coefficients are coordinates in each model's own prototype basis, so they cannot be compared
  one to one; the instance masks they assemble can. At each image's `k` anchors where the teacher is most confident,
  both models' masks (coefficients @ prototypes, at prototype resolution) are compared by per-pixel binary KL inside
  the teacher's box: Ultralytics trains masks only inside the box, so outside it the teacher's mask means nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def binary_kl(zt: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(zt)) || Bernoulli(sigmoid(zs))) per element, from logits."""
    pt = torch.sigmoid(zt)
    return pt * (F.logsigmoid(zt) - F.logsigmoid(zs)) + (1 - pt) * (F.logsigmoid(-zt) - F.logsigmoid(-zs))


POSE_FORM = (2.0, -0.5)  # Ultralytics' Pose head: position = 2 * raw - 0.5 grid units from the anchor
POSE26_FORM = (1.0, 0.0)  # Pose26: position = raw


def keypoint_term(ks: torch.Tensor, kt: torch.Tensor, ndim: int, form_s: tuple[float, float] = POSE_FORM,
                  form_t: tuple[float, float] = POSE_FORM) -> torch.Tensor:
    """(B, K * ndim, A) raw keypoints of student and teacher -> (B, A): mean over keypoints of the teacher-visibility
    weighted L1 of positions (grid units from the anchor, raw outputs read by each head's (scale, shift) form),
    plus the visibility binary KL when ndim is 3."""
    b, _, a = ks.shape
    ks, kt = ks.float().view(b, -1, ndim, a), kt.float().view(b, -1, ndim, a)
    ps, pt = form_s[0] * ks[:, :, :2] + form_s[1], form_t[0] * kt[:, :, :2] + form_t[1]
    position = (ps - pt).abs().sum(2)  # (B, K, A)
    if ndim < 3:
        return position.mean(1)
    seen = torch.sigmoid(kt[:, :, 2])
    return (seen * position + binary_kl(kt[:, :, 2], ks[:, :, 2])).mean(1)


def angle_term(angle_s: torch.Tensor, angle_t: torch.Tensor) -> torch.Tensor:
    """(B, 1, A) angles in radians -> (B, A) |difference| wrapped to [-pi/2, pi/2)."""
    diff = torch.remainder(angle_s.float() - angle_t.float() + math.pi / 2, math.pi) - math.pi / 2
    return diff.abs().sum(1)


def anchor_boxes(sides: torch.Tensor, feats: list[torch.Tensor], proto_h: int) -> torch.Tensor:
    """(B, 4, A) side distances in grid units of each anchor's level -> (B, 4, A) x1, y1, x2, y2 in prototype pixels:
    a level of grid height h has a stride of proto_h / h prototype pixels (2 for P3 under Ultralytics' Proto)."""
    centres, strides = [], []
    for f in feats:
        h, w = f.shape[-2:]
        step = proto_h / h
        ys, xs = torch.meshgrid(torch.arange(h, device=sides.device), torch.arange(w, device=sides.device), indexing="ij")
        centres.append(torch.stack([xs.flatten(), ys.flatten()]).float().add(0.5) * step)  # (2, h * w)
        strides.append(torch.full((h * w,), step, device=sides.device))
    centre, stride = torch.cat(centres, 1), torch.cat(strides)  # (2, A), (A,)
    d = sides.float() * stride
    return torch.cat([centre - d[:, :2], centre + d[:, 2:]], 1)


def prototypes(head: dict) -> torch.Tensor:
    """(B, nm, h, w) prototypes of a seg head dict (YOLO26's Proto26 adds semantic logits in training: dropped)."""
    proto = head["proto"]
    return proto[0] if isinstance(proto, (tuple, list)) else proto


def mask_term(student: dict, teacher: dict, weight: torch.Tensor, sides_t: torch.Tensor, k: int) -> torch.Tensor:
    """Instance-mask distillation, summed over each image's top-`k` teacher anchors and weighted by `weight` (B, A);
    returns (sum of weighted per-anchor losses, sum of their weights) so the caller normalises once."""
    cs, ct = student["mask_coefficient"].float(), teacher["mask_coefficient"].float()  # (B, nm, A)
    ps, pt = prototypes(student).float(), prototypes(teacher).float()  # (B, nm, h, w)
    b, _, h, w = pt.shape
    if ps.shape[-2:] != (h, w):  # another prototype resolution: compare on the teacher's
        ps = F.interpolate(ps, size=(h, w), mode="bilinear", align_corners=False)
    top_w, index = weight.topk(min(k, weight.shape[1]), dim=1)  # (B, k)
    pick = lambda c: c.gather(2, index[:, None].expand(-1, c.shape[1], -1))  # noqa: E731  (B, C, k)
    zs = torch.einsum("bnk,bnhw->bkhw", pick(cs), ps)
    zt = torch.einsum("bnk,bnhw->bkhw", pick(ct), pt)
    box = pick(anchor_boxes(sides_t, teacher["feats"], h))  # (B, 4, k)
    xs = torch.arange(w, device=pt.device).float().add(0.5).view(1, 1, 1, w)
    ys = torch.arange(h, device=pt.device).float().add(0.5).view(1, 1, h, 1)
    inside = ((xs >= box[:, 0, :, None, None]) & (xs <= box[:, 2, :, None, None]) &
              (ys >= box[:, 1, :, None, None]) & (ys <= box[:, 3, :, None, None])).float()  # (B, k, h, w)
    per_anchor = (binary_kl(zt, zs) * inside).sum((2, 3)) / inside.sum((2, 3)).clamp(min=1)
    return (per_anchor * top_w).sum(), top_w.sum()
