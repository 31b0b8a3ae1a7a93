"""The outputs a task head adds to the detection ones, distilled where both models have them comparably.

Every term is weighted per anchor like the class and box terms of `kl`: by w_a, the teacher's top class
probability, so the student copies the teacher where the teacher sees an object, and normalised by sum_a w_a.

- Keypoints (pose): each keypoint's position in grid units of its level from the anchor, L1, weighted by the
  teacher's visibility probability (a keypoint the teacher thinks absent has an arbitrary position); plus the
  binary KL of the visibility probabilities. Needs the same kpt_shape. Heads decode raw outputs differently:
  Ultralytics' Pose as x = (2 * raw + anchor - 0.5) * stride, Pose26 as (raw + anchor) * stride; each dict's
  `kpt_form` (scale, shift) gives the position scale * raw + shift in grid units from the anchor.
- Rotated boxes (OBB): an OBB head's side distances are measured in the frame its angle turns, so sides and angle
  mean something only together, and one box has several (w, h, angle) forms: turned by pi, or by pi/2 with w and h
  swapped. So the student's and the teacher's boxes are decoded around their shared anchor (grid units) and compared
  by 1 - ProbIoU (Llerena et al., 2021; the similarity Ultralytics' OBB loss trains with), which is the same
  for every form of a box. It replaces the side terms of `kl` for OBB pairs.
- Masks (segment): mask coefficients are coordinates in each model's own prototype basis, so they cannot be compared
  one to one; the instance masks they assemble can. At each image's `k` anchors where the teacher is most confident,
  both models' masks (coefficients @ prototypes, at prototype resolution) are compared by per-pixel binary KL inside
  the teacher's box: Ultralytics trains masks only inside the box, so outside it the teacher's mask means nothing.
"""

from __future__ import annotations

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


def hellinger(boxes_a: torch.Tensor, boxes_b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """(N, 5) x, y, w, h, angle -> (N,): 1 - ProbIoU, the Hellinger distance between the boxes' Gaussians (mean the
    centre, covariance R diag(w^2, h^2) R^T / 12; Llerena et al., 2021), via the Bhattacharyya distance
    B = (mu_a - mu_b)^T S^-1 (mu_a - mu_b) / 8 + ln(det S / sqrt(det S_a det S_b)) / 2, S = (S_a + S_b) / 2, and
    H = sqrt(1 - exp(-B)), computed as sqrt(1 - exp(-B) + d^2) - d with d = 1e-4: exactly 0 where the boxes agree,
    with a finite gradient there, and within 1e-4 of H elsewhere."""
    def covariance(box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        var_w, var_h = box[:, 2].clamp(min=eps).pow(2) / 12, box[:, 3].clamp(min=eps).pow(2) / 12
        cos, sin = torch.cos(box[:, 4]), torch.sin(box[:, 4])
        return var_w * cos**2 + var_h * sin**2, var_w * sin**2 + var_h * cos**2, (var_w - var_h) * cos * sin

    (a1, b1, c1), (a2, b2, c2) = covariance(boxes_a), covariance(boxes_b)  # [[a, c], [c, b]]
    a, b, c = (a1 + a2) / 2, (b1 + b2) / 2, (c1 + c2) / 2
    det = (a * b - c**2).clamp(min=eps)
    dx, dy = boxes_a[:, 0] - boxes_b[:, 0], boxes_a[:, 1] - boxes_b[:, 1]
    mahalanobis = (b * dx**2 + a * dy**2 - 2 * c * dx * dy) / det
    det_a, det_b = (a1 * b1 - c1**2).clamp(min=eps), (a2 * b2 - c2**2).clamp(min=eps)
    bhattacharyya = (mahalanobis / 8 + 0.5 * torch.log(det / (det_a * det_b).sqrt())).clamp(min=0)
    return (1 - torch.exp(-bhattacharyya) + 1e-8).sqrt() - 1e-4


def rotated_box_term(sides_s: torch.Tensor, sides_t: torch.Tensor, angle_s: torch.Tensor,
                     angle_t: torch.Tensor) -> torch.Tensor:
    """(B, 4, A) side distances (grid units, in each box's rotated frame) and (B, 1, A) angles (radians) of student
    and teacher -> (B, A): 1 - ProbIoU of the two rotated boxes decoded around the shared anchor point."""
    def rotated(sides: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:  # (B * A, 5) x, y, w, h, angle
        sides, angle = sides.float().clamp(min=0), angle.float()
        off_x, off_y = (sides[:, 2] - sides[:, 0]) / 2, (sides[:, 3] - sides[:, 1]) / 2  # centre in the box's frame
        cos, sin = torch.cos(angle[:, 0]), torch.sin(angle[:, 0])
        box = torch.stack([off_x * cos - off_y * sin, off_x * sin + off_y * cos, sides[:, 0] + sides[:, 2],
                           sides[:, 1] + sides[:, 3], angle[:, 0]], -1)  # (B, A, 5)
        return box.reshape(-1, 5)

    b, _, a = sides_s.shape
    return hellinger(rotated(sides_s, angle_s), rotated(sides_t, angle_t)).view(b, a)


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
