"""The task heads' own outputs in `kl`: keypoints, angles and instance masks, against independent computations."""

from __future__ import annotations

import math

import pytest
import torch

from distill.config import DistillSettings
from distill.distiller import Distiller, head_pairs
from distill.losses.kl import KLLoss
from distill.losses.task_outputs import keypoint_term, mask_term, rotated_box_term
from distill.teacher import freeze, load_teacher


def _bkl(pt: float, ps: float) -> float:
    return pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))


def _sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_keypoint_term_by_hand():
    """Two keypoints (x, y, visibility logit) at one anchor: positions in grid units are twice the raw difference,
    weighted by the teacher's visibility probability, plus the visibility binary KL; mean over keypoints."""
    ks = torch.tensor([0.1, 0.2, 0.0, 0.5, 0.5, 2.0]).view(1, 6, 1)
    kt = torch.tensor([0.3, 0.2, 3.0, 0.5, 1.0, -3.0]).view(1, 6, 1)
    expected = ((_sig(3) * 2 * 0.2 + _bkl(_sig(3), _sig(0))) + (_sig(-3) * 2 * 0.5 + _bkl(_sig(-3), _sig(2)))) / 2
    assert keypoint_term(ks, kt, 3).item() == pytest.approx(expected, rel=1e-5)
    assert keypoint_term(ks.view(1, 2, 3, 1)[:, :, :2].reshape(1, 4, 1), kt.view(1, 2, 3, 1)[:, :, :2].reshape(1, 4, 1),
                         2).item() == pytest.approx((2 * 0.2 + 2 * 0.5) / 2, rel=1e-5)  # no visibility: plain L1


def _probiou(a: tuple, b: tuple) -> float:
    """ProbIoU of two (x, y, w, h, angle) boxes from its definition (Llerena et al., 2021): 1 - Hellinger distance
    of the boxes' Gaussians (mean the centre, covariance R diag(w^2, h^2) R^T / 12)."""
    import numpy as np

    def gauss(box):
        x, y, w, h, r = box
        rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
        return np.array([x, y]), rot @ np.diag([w * w / 12, h * h / 12]) @ rot.T

    (m1, s1), (m2, s2) = gauss(a), gauss(b)
    sigma = (s1 + s2) / 2
    d = m1 - m2
    bd = d @ np.linalg.inv(sigma) @ d / 8 + 0.5 * math.log(np.linalg.det(sigma) / math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    return 1 - math.sqrt(1 - math.exp(-bd))


def test_rotated_box_term_is_one_minus_probiou_and_the_same_for_every_form_of_a_box():
    """Sides (l, t, r, b) in the frame turned by the angle: the box (l, t, r, b, a) is also (t, r, b, l, a + pi/2) and
    (r, b, l, t, a + pi); against the teacher's box every form scores the same, and the term is 1 - ProbIoU of the
    decoded boxes (centre R(a) ((r - l) / 2, (b - t) / 2) from the anchor, w = l + r, h = t + b)."""
    l, t, r, b, a = 1.0, 2.0, 3.0, 0.5, 0.3
    forms = [((l, t, r, b), a), ((t, r, b, l), a + math.pi / 2), ((r, b, l, t), a + math.pi)]
    teacher_sides, teacher_angle = (1.5, 1.5, 2.5, 1.0), 0.5

    def term(sides, angle):
        return rotated_box_term(torch.tensor(sides).view(1, 4, 1), torch.tensor(teacher_sides).view(1, 4, 1),
                                torch.tensor([[[angle]]]), torch.tensor([[[teacher_angle]]])).item()

    values = [term(sides, angle) for sides, angle in forms]
    assert values[0] == pytest.approx(values[1], abs=1e-5) == pytest.approx(values[2], abs=1e-5)
    assert term(teacher_sides, teacher_angle) == pytest.approx(0, abs=1e-4)

    def box(sides, angle):
        l, t, r, b = sides
        ox, oy = (r - l) / 2, (b - t) / 2
        return (ox * math.cos(angle) - oy * math.sin(angle), ox * math.sin(angle) + oy * math.cos(angle), l + r, t + b, angle)

    assert values[0] == pytest.approx(1 - _probiou(box((l, t, r, b), a), box(teacher_sides, teacher_angle)), abs=2e-4)
    assert values[0] > 0.05


def test_a_detection_teacher_teaches_an_obb_student_its_class_scores_only():
    """Rotated and axis-aligned sides cannot be compared: the box term drops out, whatever the teacher's boxes are."""
    student = _head("obb")
    teacher = {"scores": torch.randn(2, 3, 20), "boxes": torch.randn(2, 64, 20) * 5}
    scores_only = KLLoss()({"scores": student["scores"], "boxes": teacher["boxes"]}, teacher)  # equal boxes: LD is 0
    assert KLLoss()(student, teacher).item() == pytest.approx(scores_only.item(), rel=1e-6)
    assert KLLoss()(student, {**teacher, "boxes": torch.randn(2, 64, 20)}).item() == pytest.approx(scores_only.item(), rel=1e-6)


def test_mask_term_by_loops():
    """Masks assembled from each model's own coefficients and prototypes, binary KL per pixel inside the teacher's
    box (prototype pixels), averaged per anchor, weighted by the teacher's confidence at its top-k anchors."""
    torch.manual_seed(0)
    nm, h, w = 2, 4, 4
    feats = [torch.zeros(1, 8, 2, 2)]  # one level, 2 x 2 grid: 2 prototype pixels per cell
    sides = torch.tensor([[0.5, 0.5, 0.5, 0.5], [1.0, 0.2, 0.4, 1.0], [0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5]]).T[None]
    student = {"mask_coefficient": torch.randn(1, nm, 4), "proto": torch.randn(1, nm, h, w)}
    teacher = {"mask_coefficient": torch.randn(1, nm, 4), "proto": torch.randn(1, nm, h, w), "feats": feats}
    weight = torch.tensor([[0.9, 0.8, 0.1, 0.05]])
    total, norm = mask_term(student, teacher, weight, sides, k=2)
    centres = [(1.0, 1.0), (3.0, 1.0)]  # anchors 0 and 1: grid cells (0, 0) and (1, 0)
    expected = 0.0
    for a, (cx, cy) in enumerate(centres):
        x1, y1, x2, y2 = cx - 2 * sides[0, 0, a], cy - 2 * sides[0, 1, a], cx + 2 * sides[0, 2, a], cy + 2 * sides[0, 3, a]
        losses = []
        for i in range(h):
            for j in range(w):
                if x1 <= j + 0.5 <= x2 and y1 <= i + 0.5 <= y2:
                    zs = float(sum(student["mask_coefficient"][0, n, a] * student["proto"][0, n, i, j] for n in range(nm)))
                    zt = float(sum(teacher["mask_coefficient"][0, n, a] * teacher["proto"][0, n, i, j] for n in range(nm)))
                    losses.append(_bkl(_sig(zt), _sig(zs)))
        expected += float(weight[0, a]) * sum(losses) / len(losses)
    assert norm.item() == pytest.approx(0.9 + 0.8)
    assert total.item() == pytest.approx(expected, rel=1e-4)


def _head(task: str, b: int = 2, a: int = 20, nc: int = 3) -> dict:
    torch.manual_seed(1)
    head = {"scores": torch.randn(b, nc, a), "boxes": torch.randn(b, 64, a)}
    if task == "pose":
        head.update(kpts=torch.randn(b, 12, a), kpt_shape=(4, 3))
    if task == "obb":
        head.update(angle=torch.rand(b, 1, a) * math.pi - math.pi / 4)
    if task == "segment":  # 20 anchors: levels of 4 x 4 and 2 x 2
        head.update(mask_coefficient=torch.randn(b, 4, a), proto=torch.randn(b, 4, 8, 8),
                    feats=[torch.zeros(b, 1, 4, 4), torch.zeros(b, 1, 2, 2)])
    return head


@pytest.mark.parametrize(("task", "key", "param"), [("pose", "kpts", "kpt_weight"), ("obb", "angle", "rbox_weight"),
                                                    ("segment", "mask_coefficient", "mask_weight")])
def test_kl_adds_each_task_term_with_its_weight(task, key, param):
    """Equal outputs: kl is 0. Only the task output differs: kl is exactly weight x that term; weight 0 leaves it out."""
    teacher = _head(task)
    student = {k: v.clone() if torch.is_tensor(v) else v for k, v in teacher.items()}
    assert KLLoss()(student, teacher).item() == pytest.approx(0, abs=1e-6)
    student[key] = student[key] + 0.3 * torch.randn_like(student[key])
    weight = teacher["scores"].sigmoid().amax(1)
    if task == "pose":
        term = (keypoint_term(student["kpts"], teacher["kpts"], 3) * weight).sum() / weight.sum()
    elif task == "obb":  # the rotated-box term stands in for the side terms of an OBB pair
        sides = teacher["boxes"].view(2, 4, 16, 20).softmax(2).mul(torch.arange(16.0).view(1, 1, 16, 1)).sum(2)
        term = (rotated_box_term(sides, sides, student["angle"], teacher["angle"]) * weight).sum() / weight.sum()
    else:
        total, norm = mask_term(student, teacher, weight, teacher["boxes"].view(2, 4, 16, 20).softmax(2).mul(
            torch.arange(16.0).view(1, 1, 16, 1)).sum(2), k=64)
        term = total / norm
    assert term > 0
    assert KLLoss(**{param: 2.5})(student, teacher).item() == pytest.approx(2.5 * term.item(), rel=1e-4, abs=1e-6)
    assert KLLoss(**{param: 0.0})(student, teacher).item() == pytest.approx(0, abs=1e-6)


def test_keypoints_of_another_shape_are_left_out_and_the_ensemble_averages_them():
    teacher = _head("pose")
    student = {**teacher, "kpts": teacher["kpts"] + 0.5}
    other = {**teacher, "kpts": torch.randn(2, 6, 20), "kpt_shape": (2, 3)}
    base = KLLoss(kpt_weight=0.0)(student, teacher)
    assert KLLoss(kpt_weight=1.0)(student, other) == pytest.approx(base.item())  # another kpt_shape: no keypoint term
    assert KLLoss(kpt_weight=1.0)(student, teacher) > base  # the same kpt_shape: the term is there
    a, b = _head("pose"), {**_head("pose"), "kpts": torch.randn(2, 12, 20) * 3}
    target = KLLoss().ensemble(student, [a, b], [0.25, 0.75])
    mean = 0.25 * a["kpts"].view(2, 4, 3, 20) + 0.75 * b["kpts"].view(2, 4, 3, 20)
    got = target["kpts"].view(2, 4, 3, 20)
    assert torch.allclose(got[:, :, :2], mean[:, :, :2], atol=1e-6)
    seen = 0.25 * a["kpts"].view(2, 4, 3, 20)[:, :, 2].sigmoid() + 0.75 * b["kpts"].view(2, 4, 3, 20)[:, :, 2].sigmoid()
    assert torch.allclose(got[:, :, 2].sigmoid(), seen, atol=1e-6) and target["kpt_shape"] == (4, 3)


@pytest.mark.parametrize(("task", "param"), [("pose", "kpt_weight"), ("obb", "rbox_weight"), ("segment", "mask_weight")])
def test_real_heads_of_each_task_feed_their_own_term(task, param):
    """One forward of a real yolov8n-<task> student and a yolov8s-<task> teacher through the Distiller: the kl term
    with the task weight at 1 minus the term at 0 is what `kl` gives for that weight on the models' own outputs (the
    task outputs reach the loss, read the way the loss reads them)."""
    from ultralytics.cfg import get_cfg

    suffix = {"pose": "-pose", "obb": "-obb", "segment": "-seg"}[task]
    torch.manual_seed(0)
    teacher = freeze(load_teacher(f"yolov8s{suffix}.yaml", nc=3, kpt_shape=[4, 3]))
    student = load_teacher(f"yolov8n{suffix}.yaml", nc=3, kpt_shape=[4, 3])
    student.args = get_cfg(overrides={"task": task})
    student.train()
    img = torch.rand(2, 3, 64, 64)
    values = {}
    for weight in (0.0, 1.0):
        d = Distiller(teacher, DistillSettings.from_args({"Distillation": "t.pt", "loss_type": "kl", f"kl_{param}": weight}))
        d.attach(student)
        d.before_forward(student, img, 0, 1)
        terms, _ = d.terms(student(img), torch.tensor(1.0))
        values[weight] = terms[0].item() / 0.5  # kl_weight 0.5
    with torch.no_grad():
        s, t = head_pairs(student(img), teacher(img))[0]
    s, t = ({**s, "kpt_shape": (4, 3)}, {**t, "kpt_shape": (4, 3)}) if task == "pose" else (s, t)
    expected = KLLoss(**{param: 1.0})(s, t) - KLLoss(**{param: 0.0})(s, t)  # the task term, from their own outputs
    assert expected > 0
    assert values[1.0] - values[0.0] == pytest.approx(expected.item(), rel=1e-3)


def test_keypoints_of_pose_and_pose26_heads_are_compared_where_they_decode():
    """Pose decodes x as (2 raw + anchor - 0.5) * stride, Pose26 as (raw + anchor) * stride: raw outputs that decode to
    the same positions give no position term, and a shift of 0.5 grid cells costs 0.5 per coordinate."""
    from distill.losses.task_outputs import POSE26_FORM, POSE_FORM

    raw_v8 = torch.tensor([0.3, 0.7, 5.0]).view(1, 3, 1)  # one keypoint, visible
    raw_26 = torch.tensor([2 * 0.3 - 0.5, 2 * 0.7 - 0.5, 5.0]).view(1, 3, 1)  # the same position in Pose26's form
    assert keypoint_term(raw_26, raw_v8, 3, POSE26_FORM, POSE_FORM).item() == pytest.approx(0, abs=1e-6)
    moved = raw_26 + torch.tensor([0.5, 0.0, 0.0]).view(1, 3, 1)
    assert keypoint_term(moved, raw_v8, 3, POSE26_FORM, POSE_FORM).item() == pytest.approx(_sig(5) * 0.5, rel=1e-5)
    target = KLLoss().ensemble({"scores": torch.zeros(1, 1, 1), "boxes": torch.zeros(1, 64, 1), "kpts": raw_v8,
                                "kpt_shape": (1, 3), "kpt_form": POSE_FORM},
                               [{"scores": torch.zeros(1, 1, 1), "boxes": torch.zeros(1, 64, 1), "kpts": raw_26,
                                 "kpt_shape": (1, 3), "kpt_form": POSE26_FORM}], [1.0])
    assert torch.allclose(target["kpts"][:, :2], raw_v8[:, :2], atol=1e-6)  # the Pose26 teacher read in the student's form
