"""Each loss against an independent computation of its paper formula on small hand-made tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from distill.config import DistillSettings
from distill.losses import available_losses, build_loss, get_loss_class, parse_loss_spec

rng = np.random.default_rng(0)


def _np(x):
    return np.asarray(x, dtype=np.float64)


# ---- independent references (numpy, explicit loops where the formula has sums) ----------------------------------
def ref_cwd(s, t, tau):
    n, c, h, w = s.shape
    total = 0.0
    for i in range(n):
        for j in range(c):
            zs, zt = s[i, j].reshape(-1) / tau, t[i, j].reshape(-1) / tau
            ps, pt = np.exp(zs) / np.exp(zs).sum(), np.exp(zt) / np.exp(zt).sum()
            total += sum(pt[k] * math.log(pt[k] / ps[k]) for k in range(h * w))
    return tau**2 * total / (n * c)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def ref_kl(zs, zt, bs, bt, T, Tb):
    b, nc, a = zs.shape
    reg = bs.shape[1] // 4
    num_cls = num_box = den = 0.0
    for i in range(b):
        for k in range(a):
            w = max(sigmoid(zt[i, c, k]) for c in range(nc))
            cls = 0.0
            for c in range(nc):
                p, q = sigmoid(zt[i, c, k] / T), sigmoid(zs[i, c, k] / T)
                cls += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
            box = 0.0
            for side in range(4):
                lt = bt[i, side * reg : (side + 1) * reg, k] / Tb
                ls = bs[i, side * reg : (side + 1) * reg, k] / Tb
                p, q = np.exp(lt) / np.exp(lt).sum(), np.exp(ls) / np.exp(ls).sum()
                box += (p * np.log(p / q)).sum() / 4
            num_cls += w * cls
            num_box += w * box
            den += w
    return T**2 * num_cls / den + Tb**2 * num_box / den


def ref_pkd(s, t):
    """Mean over channels of 1 - Pearson correlation of that channel's N*H*W values (the paper's objective)."""
    total = 0.0
    for j in range(s.shape[1]):
        total += 1 - np.corrcoef(s[:, j].reshape(-1), t[:, j].reshape(-1))[0, 1]
    return total / s.shape[1]


def ref_attention(s, t, p, beta, axes):
    """beta/2 * mean of squared differences of the per-image L2-normalised attention, pooling |x|^p over `axes`
    (channels for spatial attention, locations for channel attention), with explicit per-image loops."""
    total, count = 0.0, 0
    for i in range(s.shape[0]):
        a = (np.abs(s[i]) ** p).mean(axis=axes).reshape(-1)
        b = (np.abs(t[i]) ** p).mean(axis=axes).reshape(-1)
        a, b = a / np.sqrt((a**2).sum()), b / np.sqrt((b**2).sum())
        total += ((a - b) ** 2).sum()
        count += a.size
    return beta / 2 * total / count


def ref_decoded_box(bs, bt, zt, box_weight):
    """The decoded-box term with explicit loops: expected DFL bin (or the raw output when reg_max is 1) per side,
    L1 over sides plus 1 - GIoU of the two boxes around the shared anchor, weighted by the teacher's top class."""
    def sides(boxes, i, k):
        reg = boxes.shape[1] // 4
        out = []
        for side in range(4):
            logits = boxes[i, side * reg:(side + 1) * reg, k]
            out.append(logits[0] if reg == 1 else float((np.exp(logits) / np.exp(logits).sum() * np.arange(reg)).sum()))
        return out

    num = den = 0.0
    for i in range(zt.shape[0]):
        for k in range(zt.shape[2]):
            w = max(sigmoid(zt[i, c, k]) for c in range(zt.shape[1]))
            s, t = sides(bs, i, k), sides(bt, i, k)
            l1 = sum(abs(a - b) for a, b in zip(s, t)) / 4
            s, t = [max(v, 0) for v in s], [max(v, 0) for v in t]
            # boxes (x1, y1, x2, y2) around the anchor at the origin
            sx1, sy1, sx2, sy2 = -s[0], -s[1], s[2], s[3]
            tx1, ty1, tx2, ty2 = -t[0], -t[1], t[2], t[3]
            iw, ih = max(0, min(sx2, tx2) - max(sx1, tx1)), max(0, min(sy2, ty2) - max(sy1, ty1))
            inter = iw * ih
            union = (sx2 - sx1) * (sy2 - sy1) + (tx2 - tx1) * (ty2 - ty1) - inter
            hull = (max(sx2, tx2) - min(sx1, tx1)) * (max(sy2, ty2) - min(sy1, ty1))
            giou = inter / union - (hull - union) / hull
            num += w * (l1 + 1 - giou)
            den += w
    return box_weight * num / den


# ---- tests ----------------------------------------------------------------------------------------------------------
def test_registry_lists_every_loss():
    assert set(available_losses()) == {"kl", "mimic", "cwd", "mgd", "pkd", "at", "at_channel", "crosskd"}
    assert parse_loss_spec("cwd+kl") == ["cwd", "kl"] and parse_loss_spec("at_channel+kl") == ["at_channel", "kl"]
    with pytest.raises(ValueError, match="Registered losses: at, at_channel, crosskd, cwd, kl, mgd, mimic, pkd"):
        parse_loss_spec("cwd+fgd")


def test_mimic_zero_for_identical_and_known_value():
    loss = build_loss("mimic")
    t = [torch.randn(2, 4, 3, 3), torch.randn(2, 8, 2, 2)]
    assert float(loss(t, t, None)) == 0.0
    s = [torch.ones(1, 2, 2, 2), torch.full((1, 1, 1, 1), 3.0)]
    z = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 1, 1)]
    assert float(loss(s, z, None)) == pytest.approx(1.0 + 9.0)  # per-level mean, summed over levels


def test_cwd_hand_computed_value():
    loss = build_loss("cwd", {"tau": 1.0})
    s = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([[[[math.log(3.0), 0.0]]]])  # teacher distribution (3/4, 1/4), student (1/2, 1/2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(loss([s], [t], None)) == pytest.approx(expected, rel=1e-6)
    assert float(loss([t], [t], None)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_cwd_matches_reference(tau):
    s, t = rng.normal(size=(2, 3, 2, 3)), rng.normal(size=(2, 3, 2, 3))
    got = build_loss("cwd", {"tau": tau})([torch.tensor(s)], [torch.tensor(t)], None)
    assert float(got) == pytest.approx(ref_cwd(s, t, tau), rel=1e-6)


def test_mgd_formula_with_known_generator():
    loss = build_loss("mgd", {"alpha": 0.5, "mask_ratio": 0.0})
    gens = loss.build([2])
    assert isinstance(gens[0][0], nn.Conv2d) and gens[0][0].kernel_size == (3, 3)
    for m in gens.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
    t = torch.tensor(rng.normal(size=(2, 2, 3, 3)), dtype=torch.float32)
    s = torch.randn(2, 2, 3, 3)
    # zero generator -> prediction 0 -> alpha * sum(t^2) / N
    assert float(loss([s], [t], gens).detach()) == pytest.approx(0.5 * float((t**2).sum()) / 2, rel=1e-6)


def test_mgd_masks_the_paper_fraction():
    loss = build_loss("mgd", {"mask_ratio": 0.65})
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((x == 0).float().mean().item())
            return x

    torch.manual_seed(0)
    loss([torch.ones(8, 1, 32, 32)], [torch.ones(8, 1, 32, 32)], [Probe()])
    assert seen[0] == pytest.approx(0.65, abs=0.03)


def test_pkd_matches_one_minus_pearson_and_ignores_scale():
    s, t = rng.normal(size=(3, 4, 2, 3)), rng.normal(size=(3, 4, 2, 3))
    loss = build_loss("pkd")
    got = float(loss([torch.tensor(s)], [torch.tensor(t)], None))
    assert got == pytest.approx(ref_pkd(s, t), rel=1e-4)
    # scale and offset of either map, per channel, change nothing: that is the point of the loss
    scale, shift = rng.uniform(0.1, 50, size=(1, 4, 1, 1)), rng.normal(size=(1, 4, 1, 1)) * 10
    assert float(loss([torch.tensor(s * scale + shift)], [torch.tensor(t)], None)) == pytest.approx(got, rel=1e-4)
    assert float(loss([torch.tensor(t * 7 - 3)], [torch.tensor(t)], None)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss([torch.tensor(-t)], [torch.tensor(t)], None)) == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("p,beta", [(2.0, 1000.0), (1.0, 3.0)])
def test_attention_losses_match_reference(p, beta):
    s, t = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))
    for name, axes in (("at", 0), ("at_channel", (1, 2))):
        got = build_loss(name, {"p": p, "beta": beta})([torch.tensor(s)], [torch.tensor(t)], None)
        assert float(got) == pytest.approx(ref_attention(s, t, p, beta, axes), rel=1e-6), name
        assert float(build_loss(name)([torch.tensor(3 * t)], [torch.tensor(t)], None)) == pytest.approx(0, abs=1e-9)


def test_spatial_attention_needs_no_connector_and_channel_attention_does():
    assert get_loss_class("at").aligns_channels is False
    assert all(get_loss_class(n).aligns_channels for n in ("at_channel", "pkd", "cwd", "mgd", "mimic"))
    # spatial attention compares maps of different widths directly
    s, t = torch.randn(2, 8, 4, 4), torch.randn(2, 32, 4, 4)
    assert float(build_loss("at")([s], [t], None)) > 0


def test_kl_zero_for_identical_and_hand_value():
    loss = build_loss("kl", {"temperature": 1.0, "box_temperature": 1.0})
    head = {"scores": torch.randn(2, 3, 5), "boxes": torch.randn(2, 4 * 4, 5)}
    assert float(loss(head, head)) == pytest.approx(0.0, abs=1e-6)
    # one anchor, one class, reg_max 1 with equal (empty) boxes, so no box term: teacher p=0.75, student p=0.5
    s = {"scores": torch.zeros(1, 1, 1), "boxes": torch.zeros(1, 4, 1)}
    t = {"scores": torch.full((1, 1, 1), math.log(3.0)), "boxes": torch.zeros(1, 4, 1)}
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(loss(s, t)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("T,Tb", [(1.0, 10.0), (2.0, 3.0)])
def test_kl_matches_reference(T, Tb):
    zs, zt = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))
    bs, bt = rng.normal(size=(2, 4 * 5, 4)), rng.normal(size=(2, 4 * 5, 4))
    got = build_loss("kl", {"temperature": T, "box_temperature": Tb})(
        {"scores": torch.tensor(zs), "boxes": torch.tensor(bs)}, {"scores": torch.tensor(zt), "boxes": torch.tensor(bt)}
    )
    assert float(got) == pytest.approx(ref_kl(zs, zt, bs, bt, T, Tb), rel=1e-5)


def test_kl_box_weight_scales_ld_between_dfl_heads():
    """`kl_box_weight` weights LD as it weights the decoded term: 0 leaves the class term alone (the loss of the same
    scores with the teacher's own boxes), and the LD part grows linearly with it."""
    zs, zt = torch.tensor(rng.normal(size=(2, 3, 4))), torch.tensor(rng.normal(size=(2, 3, 4)))
    bs, bt = torch.tensor(rng.normal(size=(2, 4 * 5, 4))), torch.tensor(rng.normal(size=(2, 4 * 5, 4)))
    t = {"scores": zt, "boxes": bt}

    def at(w: float, boxes: torch.Tensor = bs) -> float:
        return float(build_loss("kl", {"box_weight": w})({"scores": zs, "boxes": boxes}, t))

    assert at(0.0) == pytest.approx(at(1.0, bt), rel=1e-6)
    ld = at(1.0) - at(0.0)
    assert ld > 0 and at(2.5) - at(0.0) == pytest.approx(2.5 * ld, rel=1e-6)  # float32 sums


@pytest.mark.parametrize("reg_s,reg_t,decoded", [(1, 1, 0.0), (1, 4, 0.0), (4, 1, 0.0), (4, 4, 1.0), (3, 5, 0.0)])
def test_kl_decoded_boxes_match_reference(reg_s, reg_t, decoded):
    """Heads without distributions (YOLO26, reg_max 1), with different bin counts, or by choice: decoded boxes."""
    zs, zt = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    bs = rng.normal(size=(2, 4 * reg_s, 5)) + (3 if reg_s == 1 else 0)  # mostly positive distances for reg_max 1
    bt = rng.normal(size=(2, 4 * reg_t, 5)) + (3 if reg_t == 1 else 0)
    params = {"temperature": 1.0, "box_weight": 0.7, "decoded": decoded}
    head = lambda z, b: {"scores": torch.tensor(z), "boxes": torch.tensor(b)}  # noqa: E731
    got = float(build_loss("kl", params)(head(zs, bs), head(zt, bt)))
    cls_only = float(build_loss("kl", {**params, "box_weight": 0.0})(head(zs, bs), head(zt, bt)))
    assert got - cls_only == pytest.approx(ref_decoded_box(bs, bt, zt, 0.7), rel=1e-6)
    assert got - cls_only > 0
    same = float(build_loss("kl", params)(head(zt, bt), head(zt, bt)))
    assert same == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("student,teacher", [("yolo26n.yaml", "yolo26s.yaml"), ("yolov8n.yaml", "yolo26s.yaml")])
def test_kl_pairs_and_box_term_for_real_dfl_free_and_mixed_heads(student, teacher):
    """Real heads: YOLO26 (reg_max 1) pairs distil both branches and a YOLOv8 student with a YOLO26 teacher the
    dense one; each gets a box signal."""
    from ultralytics.nn.tasks import DetectionModel

    from distill.distiller import head_pairs

    torch.manual_seed(0)
    img = torch.rand(2, 3, 64, 64)
    s_out = DetectionModel(student, nc=3, verbose=False).train()(img)
    t_out = DetectionModel(teacher, nc=3, verbose=False).eval()(img)  # the teacher runs in eval mode
    pairs = head_pairs(s_out, t_out)
    # the one-to-one branch (what YOLO26 infers with) is distilled too where both heads have it
    assert [p[1] is t_out[1][k] for p, k in zip(pairs, ("one2many", "one2one"))] == [True] * len(pairs)
    assert len(pairs) == (2 if student.startswith("yolo26") else 1)
    if len(pairs) == 2:
        assert pairs[1][0] is s_out["one2one"] and pairs[0][0] is s_out["one2many"]
    outs = pairs[0]
    with_box = float(build_loss("kl")(*outs).detach())
    cls_only = float(build_loss("kl", {"box_weight": 0.0})(*outs).detach())
    assert math.isfinite(with_box) and with_box > cls_only


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("cwd", {"weight": -1.0}, "cwd_weight must be >= 0"),
        ("cwd", {"tau": 0.0}, "cwd_tau must be > 0"),
        ("kl", {"temperature": -2.0}, "kl_temperature must be > 0"),
        ("kl", {"decoded": 0.5}, "kl_decoded must be 0 or 1"),
        ("kl", {"box_weight": -1.0}, "kl_box_weight must be >= 0"),
        ("mgd", {"mask_ratio": 1.0}, r"mgd_mask_ratio must be in \[0, 1\)"),
        ("mgd", {"alpha": -1e-5}, "mgd_alpha must be >= 0"),
        ("at", {"p": 0.5}, "at_p must be >= 1"),
        ("at_channel", {"beta": -1.0}, "at_channel_beta must be >= 0"),
    ],
)
def test_invalid_hyperparameters_are_named(name, params, match):
    with pytest.raises(ValueError, match=match):
        build_loss(name, params)
    with pytest.raises(ValueError, match=match):
        DistillSettings.from_args({"loss_type": name, **{f"{name}_{k}": v for k, v in params.items()}})


def test_readme_states_every_default_the_code_uses():
    """The README's loss table lists each hyperparameter of each registered loss with the default the code
    uses, and the options table the core defaults: a changed default must change the docs too."""
    import re
    from pathlib import Path

    from distill.config import CORE_KEYS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in available_losses():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"no README row for loss {name}"
        documented = {k: float(v) for k, v in re.findall(rf"`{name}_(\w+)` \(([-+.e\d]+)\)", row)}
        assert documented == {k: float(v[0]) for k, v in get_loss_class(name).params.items()}, name
    for key in ("loss_type", "distill_weight", "distill_schedule", "distill_final"):
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{key}`"))
        assert f"| `{CORE_KEYS[key][0]}` |" in row or f"| {CORE_KEYS[key][0]} |" in row, row


def test_parameters_of_losses_not_in_use_are_checked_and_reported():
    assert DistillSettings.from_args({"loss_type": "kl"}).unused == []
    settings = DistillSettings.from_args({"loss_type": "kl", "cwd_tau": 2.0, "mgd_weight": 1.0, "kl_weight": 3})
    assert settings.unused == ["cwd_tau"] and settings.loss_params["kl"]["weight"] == 3
    with pytest.raises(ValueError, match="mgd_mask_ratio must be in"):
        DistillSettings.from_args({"loss_type": "kl", "mgd_mask_ratio": 1.5})


def test_distill_weight_auto_is_the_tuned_weight_of_the_combination():
    from ultralytics.cfg import get_cfg

    weight = lambda **args: DistillSettings.from_args(args).weight  # noqa: E731
    assert weight() == weight(loss_type="kl+cwd") == weight(distill_weight="auto") == weight(distill_weight=None) == 4.0
    assert weight(loss_type="kl") == weight(loss_type="cwd") == weight(loss_type="cwd+kl+mgd") == 1.0
    assert weight(distill_balance=0.25) == 1.0  # the balance shares are the weights there
    assert weight(distill_balance=0.25, distill_weight=3) == 3.0  # a number given is a number used
    assert DistillSettings.from_args(get_cfg()).weight == 4.0  # the registered default, as a trainer reads it
    assert weight(distill_weight=2) == weight(distill_weight="2") == weight(loss_type="mgd", distill_weight=2) == 2.0
    assert weight(distill_weight=0) == 0.0
    with pytest.raises(ValueError, match="distill_weight must be a number >= 0 or 'auto', got 'heavy'"):
        weight(distill_weight="heavy")


def test_distillation_free_tail_and_the_schedule_before_it():
    s = DistillSettings.from_args({"distill_schedule": "linear", "distill_final": 0.1, "distill_off_epochs": 1})
    assert [round(s.factor(e, 4), 6) for e in range(4)] == pytest.approx([1, 0.55, 0.1, 0])
    with pytest.raises(ValueError, match="distill_off_epochs must be a whole number"):
        DistillSettings.from_args({"distill_off_epochs": 1.5})


@pytest.mark.parametrize(
    "schedule,factors", [("constant", [1, 1, 1]), ("linear", [1, 0.55, 0.1]), ("cosine", [1, 0.55, 0.1])]
)
def test_weight_schedules(schedule, factors):
    s = DistillSettings.from_args({"distill_schedule": schedule, "distill_final": 0.1})
    assert [round(s.factor(e, 3), 6) for e in range(3)] == pytest.approx(factors)
    if schedule == "cosine":
        assert s.factor(1, 5) > DistillSettings.from_args({"distill_schedule": "linear"}).factor(1, 5)


def test_the_loss_registry_does_not_import_the_settings():
    """distill.config reads the registry; the registry must not import distill.config back (an import cycle)."""
    import ast

    from conftest import ROOT

    for path in sorted((ROOT / "distill" / "losses").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n == "distill.config" or n.startswith("distill.config.") for n in names), path.name
