"""Real training steps: every loss distils, connectors learn, the teacher never changes."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TRAIN
from distill import YOLO, DistillationTrainer
from distill.compare import results_columns
from distill.distiller import MODULES_ATTR, DistillationCriterion

LOSSES = ["cwd", "mgd", "mimic", "kl", "pkd", "at", "at_channel", "crosskd"]


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_teacher_untouched(trainer, before: dict[str, torch.Tensor]) -> None:
    teacher = trainer.distiller.teacher
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # weights and BatchNorm buffers, bitwise
        assert torch.equal(v, after[k].to(v.device)), f"teacher tensor {k} changed"
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_ids for g in trainer.optimizer.param_groups for p in g["params"])


def _results(run_dir: Path) -> list[dict[str, float]]:
    """results.csv as one dict per epoch."""
    columns = results_columns(run_dir)
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


@pytest.mark.parametrize("loss,student,teacher", [*[(loss, "yolov8n.yaml", None) for loss in LOSSES],
                                                  ("kl", "yolo26n.yaml", "yolo26s.yaml"),
                                                  ("cwd", "yolo26n.yaml", "yolo26s.yaml")])
def test_optimizer_steps_lower_the_distillation_term(loss, student, teacher, data_yaml, teacher_pt, project):
    """Eight real optimizer steps on one batch, through the trainer's own hooks, shrink the term.
    Detection gains are zeroed so that the distillation term alone drives the steps. YOLO26 pairs too
    (end-to-end heads, DFL-free boxes)."""
    trainer = DistillationTrainer(
        overrides=dict(model=student, data=data_yaml, Distillation=teacher or teacher_pt, loss_type=loss,
                       project=project, name=loss, optimizer="AdamW", lr0=0.001, warmup_epochs=0,
                       box=0.0, cls=0.0, dfl=0.0, **TRAIN)
    )
    trainer._setup_train()
    teacher_before = _snapshot(trainer.distiller.teacher)
    modules = getattr(trainer.model, MODULES_ATTR, None)
    modules_before = _snapshot(modules) if modules is not None else {}
    batch = next(iter(trainer.train_loader))
    values = []
    trainer.model.train()
    for _ in range(8):
        torch.manual_seed(0)  # same MGD mask every step: the change is the optimizer's doing
        step = trainer.preprocess_batch({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
        total, items = trainer.model(step)
        assert isinstance(trainer.model.criterion, DistillationCriterion)
        # scaled by batch size like Ultralytics' detection loss (box, cls, dfl come first)
        assert float(total[3].detach()) == pytest.approx(float(items[f"{loss}_loss"]) * step["img"].shape[0], rel=1e-5)
        values.append(float(items[f"{loss}_loss"]))
        trainer.scaler.scale(total.sum()).backward()
        trainer.optimizer_step()
    assert values[0] > 0
    assert values[-1] < values[0], values
    if loss == "at":  # one-channel attention maps: the student's own maps, no trainable connector
        assert all(isinstance(c, torch.nn.Identity) for c in modules["connectors"]) and not modules_before
    elif modules is not None:  # connectors / generators are trained
        after = getattr(trainer.model, MODULES_ATTR).state_dict()
        assert modules_before and any(not torch.equal(v, after[k]) for k, v in modules_before.items())
    _assert_teacher_untouched(trainer, teacher_before)


def test_spatial_attention_sees_the_students_own_channels_beside_a_connector_loss(data_yaml, teacher_pt, project,
                                                                                   monkeypatch):
    """With at+cwd the connectors exist (cwd compares channels), yet `at` gets the student's own maps."""
    from distill.losses.at import SpatialAttentionLoss
    from distill.losses.cwd import CWDLoss

    channels = {"at": [], "cwd": []}
    for cls, name in ((SpatialAttentionLoss, "at"), (CWDLoss, "cwd")):
        real = cls.level
        monkeypatch.setattr(cls, "level", lambda self, s, t, m, _r=real, _n=name: channels[_n].append(
            (s.shape[1], t.shape[1])) or _r(self, s, t, m))
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=data_yaml, Distillation=teacher_pt,
                                                 loss_type="at+cwd", project=project, name="atcwd", **TRAIN))
    trainer._setup_train()
    trainer.model.train()
    trainer.model(trainer.preprocess_batch(next(iter(trainer.train_loader))))
    assert channels["at"] == [(64, 128), (128, 256), (256, 512)]  # student's own widths against the teacher's
    assert channels["cwd"] == [(128, 128), (256, 256), (512, 512)]  # through the connectors


def test_the_last_epochs_train_without_the_teacher(data_yaml, teacher_pt, project, monkeypatch):
    """distill_off_epochs=1 of 3: epochs 1-2 distil, epoch 3 trains on the detection loss alone and the teacher never
    runs in it; results.csv keeps every term's column (0 in the tail)."""
    from distill.features import FeatureRecorder

    runs = []
    real_run = FeatureRecorder.run
    monkeypatch.setattr(FeatureRecorder, "run", lambda self, model, img: runs.append(img.shape[0]) or real_run(self, model, img))
    epochs = []
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_epoch_end", lambda tr: epochs.append(len(runs)))
    model.train(data=data_yaml, Distillation=teacher_pt, loss_type="cwd+kl", distill_off_epochs=1, project=project,
                name="tail", **{**TRAIN, "epochs": 3})
    # teacher forwards per epoch (the first count also holds the set-up's shape probes): 2 batches, 2, then none
    assert epochs[1] - epochs[0] == 2 and epochs[2] == epochs[1]
    for name in ("cwd", "kl"):  # every term, feature and head alike
        column = [float(r[f"train/{name}_loss"]) for r in _results(model.trainer.save_dir)]
        assert column[0] > 0 and column[1] > 0 and column[2] == 0, name
    assert torch.load(model.trainer.last, map_location="cpu", weights_only=False)["distill"]["off_epochs"] == 1


def test_a_tail_as_long_as_training_is_refused(data_yaml, teacher_pt, project):
    with pytest.raises(ValueError, match="distill_off_epochs=1 leaves none of the 1 epochs"):
        YOLO("yolov8n.yaml").train(data=data_yaml, Distillation=teacher_pt, loss_type="cwd", distill_off_epochs=1,
                                   project=project, name="tail1", **TRAIN)
    assert not (Path(project) / "tail1").exists()


def test_crosskd_is_zero_when_the_student_is_the_teacher_and_needs_the_detect_inputs(data_yaml, teacher_pt, project):
    """The teacher's head on the teacher's own maps reproduces its predictions: with a student that is a copy of the
    teacher (identity connectors), the CrossKD term is 0 on a real batch; other layers than the Detect inputs are
    refused before training."""
    trainer = DistillationTrainer(overrides=dict(model=teacher_pt, data=data_yaml, Distillation=teacher_pt,
                                                 loss_type="crosskd", project=project, name="cross0", **TRAIN))
    trainer._setup_train()
    trainer.model.eval()  # BatchNorm on running statistics, as the frozen teacher's
    for m in getattr(trainer.model, MODULES_ATTR)["connectors"]:
        assert isinstance(m, torch.nn.Identity)
    batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
    _, items = trainer.model.loss(batch)
    assert float(items["crosskd_loss"]) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="crosskd runs the teacher's head on the student's Detect inputs"):
        YOLO("yolov8n.yaml").train(data=data_yaml, Distillation=teacher_pt, loss_type="crosskd", distill_layers="9",
                                   project=project, name="cross1", **TRAIN)


@pytest.mark.parametrize("loss_name,student,teacher", [("crosskd", "yolov8n.yaml", None),
                                                       ("crosskd", "yolo26n.yaml", "yolo26s.yaml"),
                                                       ("kl", "yolo26n.yaml", "yolo26s.yaml")])
def test_head_terms_on_a_real_step_match_their_formulas(loss_name, student, teacher, data_yaml, teacher_pt, project):
    """On a real training step, a head term equals an independent computation: the numpy reference of the `kl`
    formula (LD for DFL heads, the decoded-box term for YOLO26's reg_max 1) between the teacher's own predictions
    and, for `kl`, the student's head outputs, both branches of end-to-end heads summed; for CrossKD, the student's
    Detect inputs (own hooks) through the trained connectors and the teacher's box and class convolutions, applied
    here by hand, on the dense branch. CrossKD's gradient alone reaches the connectors, the student's neck and
    backbone but not the student's own head; the teacher stays outside the optimizer and bitwise unchanged under an
    optimizer step, and no teacher tensor is part of the student."""
    from test_losses import ref_decoded_box, ref_kl

    # Temperatures other than the defaults: read from the arguments, and a float32 sum that stays well conditioned (at
    # T 1, Tb 10 a one-epoch teacher's near-uniform bins give a 1e-4 term that float32 only gets to within 1 %).
    trainer = DistillationTrainer(overrides=dict(model=student, data=data_yaml, Distillation=teacher or teacher_pt,
                                                 loss_type=loss_name, **{f"{loss_name}_temperature": 4.0,
                                                                         f"{loss_name}_box_temperature": 1.0},
                                                 project=project, name="headref", **TRAIN))
    trainer._setup_train()
    distiller, model = trainer.distiller, trainer.model
    t_model, s_head = distiller.teacher, model.model[-1]
    t_head, loss = t_model.model[-1], distiller.losses[loss_name]
    # An untrained end-to-end head's two branches are copies: scale each model's one-to-one branch its own way, so that
    # comparing the wrong branches (or crossing them) gives another value.
    for head, factor in ((t_head, 1.5), (s_head, 0.5)):
        if getattr(head, "one2one_cv2", None) is not None:
            with torch.no_grad():
                for p in [*head.one2one_cv2.parameters(), *head.one2one_cv3.parameters()]:
                    p.mul_(factor)
    teacher_before = _snapshot(t_model)
    model.train()
    captured: dict[int, torch.Tensor] = {}
    hooks = [model.model[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, out))
             for i in [*s_head.f, len(model.model) - 1]]
    batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
    total, items = model(batch)
    for h in hooks:
        h.remove()

    with torch.no_grad():
        t_raw = t_model(batch["img"])[1]  # eval mode: (decoded, raw dict)
        if loss_name == "crosskd":
            aligned = [c(captured[i]) for c, i in zip(getattr(model, MODULES_ATTR)["connectors"], s_head.f)]
            pairs = [({"boxes": torch.cat([t_head.cv2[k](x).flatten(2) for k, x in enumerate(aligned)], -1),
                       "scores": torch.cat([t_head.cv3[k](x).flatten(2) for k, x in enumerate(aligned)], -1)},
                      t_raw.get("one2many", t_raw))]
        else:
            s_raw = captured[len(model.model) - 1]  # train mode: the raw dict
            pairs = [(s_raw[b], t_raw[b]) for b in ("one2many", "one2one")]
    expected, cls_part = 0.0, 0.0
    for s_out, t_out in pairs:
        zs, bs = s_out["scores"].detach().double().numpy(), s_out["boxes"].detach().double().numpy()
        zt, bt = t_out["scores"].double().numpy(), t_out["boxes"].double().numpy()
        assert zs.shape == zt.shape and bs.shape == bt.shape and zs.shape[-1] == (64 // 8) ** 2 + 4**2 + 2**2
        expected += ref_kl(zs, zt, bs, bt, loss.temperature, loss.box_temperature)  # LD is 0 for one bin
        cls_part += ref_kl(zs, zt, bt, bt, loss.temperature, loss.box_temperature)  # the teacher's boxes: no box term
        if t_head.reg_max == 1:
            expected += ref_decoded_box(bs, bt, zt, loss.box_weight)
    assert (loss.temperature, loss.box_temperature) == (4.0, 1.0)
    assert distiller.settings.weight == loss.box_weight == distiller.factor == 1.0
    assert loss.weight == {"crosskd": 1.0, "kl": 0.5}[loss_name]  # the documented defaults
    assert float(items[f"{loss_name}_loss"]) == pytest.approx(loss.weight * expected, rel=1e-3)
    assert expected - cls_part > 0.05 * expected  # the box term counts in the comparison, and so does the class term
    if not (loss_name == "crosskd" and t_head.reg_max == 1):  # but where an untrained YOLO26 teacher's class convolutions
        assert cls_part > 0.05 * expected  # give their bias prior whatever maps they are fed
    if loss_name != "crosskd":
        return

    trainer.optimizer.zero_grad()
    total[3].backward()  # the CrossKD term alone (box, cls, dfl come first)

    def moved(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert all(moved(model.model[i]) for i in s_head.f) and moved(model.model[0])  # neck and backbone
    assert moved(getattr(model, MODULES_ATTR)["connectors"])
    assert not moved(s_head)  # the student's own head is left to the ground truth
    trainer.optimizer_step()
    _assert_teacher_untouched(trainer, teacher_before)
    t_storage = {p.data_ptr() for p in t_model.state_dict().values()}
    assert not any(v.data_ptr() in t_storage for v in model.state_dict().values())


def _record_items(monkeypatch) -> list[dict[str, float]]:
    """The distillation terms of every training step, as they entered the loss vector (the criterion's last
    n entries divided by the batch size), checked against the items it reports for logging."""
    seen: list[dict[str, float]] = []
    real = DistillationCriterion.__call__

    def spy(self, preds, batch):
        training_step = self.distiller.pending  # the teacher ran for this batch
        loss, items = real(self, preds, batch)
        if training_step:
            names = [f"{n}_loss" for n in self.distiller.losses]
            trained = loss[-len(names):].detach() / batch["img"].shape[0]
            logged = torch.stack([items[n] for n in names])
            assert torch.allclose(trained, logged, rtol=1e-5), (trained, logged)
            seen.append(dict(zip(names, trained.tolist())))
        return loss, items

    monkeypatch.setattr(DistillationCriterion, "__call__", spy)
    return seen


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_end_to_end(loss, data_yaml, teacher_pt, project, monkeypatch):
    """results.csv's train/<loss>_loss is the epoch mean of the terms that entered the loss vector that was
    backpropagated; validation and the EMA run plain."""
    items = _record_items(monkeypatch)
    model = YOLO("yolov8n.yaml")
    seen = {}
    model.add_callback("on_pretrain_routine_end", lambda tr: seen.update(teacher=_snapshot(tr.distiller.teacher),
                                                                         batches=len(tr.train_loader)))
    model.train(data=data_yaml, Distillation=teacher_pt, loss_type=loss, project=project, name=loss, **{**TRAIN, "epochs": 2})
    trainer = model.trainer
    _assert_teacher_untouched(trainer, seen["teacher"])
    rows = _results(trainer.save_dir)
    nb = seen["batches"]
    assert len(rows) == 2 and len(items) == 2 * nb
    for epoch, row in enumerate(rows):
        terms = [i[f"{loss}_loss"] for i in items[epoch * nb:(epoch + 1) * nb]]
        assert all(t > 0 and math.isfinite(t) for t in terms)
        assert float(row[f"train/{loss}_loss"]) == pytest.approx(sum(terms) / nb, rel=1e-3, abs=1e-5)  # csv: 5 decimals
        assert f"val/{loss}_loss" not in row  # validation runs the plain EMA: no always-zero column
    assert {"val/box_loss", "val/cls_loss", "val/dfl_loss"} <= set(rows[0]) and float(rows[-1]["val/box_loss"]) > 0
    ema = trainer.ema.ema
    assert not isinstance(getattr(ema, "criterion", None), DistillationCriterion)
    assert all(not m._forward_hooks for m in ema.modules())
    assert all(not m._forward_hooks for m in trainer.model.modules())


def test_the_default_combination_trains_at_its_tuned_weight(data_yaml, teacher_pt, project, monkeypatch):
    """distill_weight 'auto' with the default cwd+kl: the terms of the first step (same seed, data and weights) are
    4x those of distill_weight=1; args.yaml and the checkpoint record the number, so resume does not re-resolve."""
    import yaml

    items = _record_items(monkeypatch)
    firsts = {}
    for name, extra in (("auto", {}), ("one", {"distill_weight": 1})):
        items.clear()
        model = YOLO("yolov8n.yaml")
        model.train(data=data_yaml, Distillation=teacher_pt, project=project, name=name, **TRAIN, **extra)
        firsts[name] = items[0]
        saved = yaml.safe_load((model.trainer.save_dir / "args.yaml").read_text())["distill_weight"]
        ckpt = torch.load(model.trainer.last, map_location="cpu", weights_only=False)
        assert saved == ckpt["train_args"]["distill_weight"] == ckpt["distill"]["weight"] == (4.0 if name == "auto" else 1.0)
    assert set(firsts["auto"]) == {"cwd_loss", "kl_loss"}
    for term, value in firsts["one"].items():
        assert value > 0 and firsts["auto"][term] == pytest.approx(4 * value, rel=1e-4), term


@pytest.mark.parametrize("teacher,student", [("yolov8s.yaml", "yolov8n.yaml"), ("yolo11s.yaml", "yolov8n.yaml")])
def test_channel_mismatched_pairs_need_no_configuration(teacher, student, data_yaml, project):
    model = YOLO(student)
    model.train(data=data_yaml, Distillation=teacher, loss_type="cwd+mgd", project=project, name="pair", **TRAIN)
    trainer = model.trainer
    connectors = getattr(trainer.model, MODULES_ATTR)["connectors"]
    s_ch = [c.in_channels for c in connectors]
    t_ch = [c.out_channels for c in connectors]
    assert s_ch == [64, 128, 256] and t_ch == [128, 256, 512]
    assert float(_results(trainer.save_dir)[-1]["train/cwd_loss"]) > 0


def test_logit_loss_rejects_different_class_counts(data_yaml, project):
    from ultralytics.nn.tasks import DetectionModel

    teacher = DetectionModel("yolov8s.yaml", nc=80, verbose=False)  # 80 unnamed classes vs the data's 6 named ones
    with pytest.raises(ValueError, match="carries no class names, so its classes cannot be matched"):
        YOLO("yolov8n.yaml").train(data=data_yaml, Distillation=teacher, loss_type="kl", project=project, name="nc", **TRAIN)


def test_without_teacher_it_is_plain_ultralytics(data_yaml, project):
    from ultralytics.models.yolo.detect import DetectionTrainer

    from distill.trainer import PlainDetectionTrainer

    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, project=project, name="plain", **TRAIN)
    assert type(model.trainer) is PlainDetectionTrainer  # Ultralytics' DetectionTrainer, AMP check kept offline
    assert PlainDetectionTrainer.__mro__[2:] == DetectionTrainer.__mro__  # nothing else between them
    assert not any("cwd" in k for k in _results(model.trainer.save_dir)[0])
    with pytest.raises(ValueError, match="need\\(s\\) a teacher"):
        YOLO("yolov8n.yaml").train(data=data_yaml, loss_type="cwd", project=project, name="x", **TRAIN)


def test_amp_stays_on_and_terms_are_fp32(data_yaml, teacher_pt, project, monkeypatch):
    """With AMP on (check_amp passes, as on a healthy GPU; on this CPU autocast means bfloat16), the student's
    forward runs in reduced precision, the run keeps AMP, and every loss computes in fp32 outside autocast."""
    import distill.amp_check as amp
    from distill.distiller import Distiller
    from distill.losses.base import FeatureLoss
    from distill.losses.kl import KLLoss

    monkeypatch.setattr(amp, "amp_check", lambda model: True)  # what the trainers' set-up asks
    calls, raw = [], []

    def spy_on(cls):
        real = cls.__call__

        def spy(self, s, t, modules=None):
            out = real(self, s, t, modules)
            inputs = {x.dtype for x in s} | {x.dtype for x in t} if isinstance(s, list) else {s["scores"].dtype}
            calls.append((self.name, inputs, torch.is_autocast_enabled("cpu"), out.dtype))
            return out

        monkeypatch.setattr(cls, "__call__", spy)

    spy_on(FeatureLoss)
    spy_on(KLLoss)
    real_terms = Distiller.terms
    monkeypatch.setattr(Distiller, "terms", lambda self, preds, *rest: raw.append(self._student_rec._outputs[0].dtype)
                        or real_terms(self, preds, *rest))
    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, Distillation=teacher_pt, loss_type="cwd+mgd+kl", amp=True, project=project, name="amp",
                **TRAIN)
    assert model.trainer.amp is True
    assert raw and set(raw) == {torch.bfloat16}  # the student's maps came from an autocast forward
    assert {name for name, *_ in calls} == {"cwd", "mgd", "kl"}
    for name, inputs, autocast_on, out in calls:
        assert not autocast_on and out == torch.float32, name
        # feature losses get fp32 maps; kl gets the head's autocast (bf16) scores and casts them itself
        assert inputs == ({torch.bfloat16} if name == "kl" else {torch.float32}), name


PLUGIN = """
from distill.losses import register_loss
from distill.losses.base import FeatureLoss


@register_loss("l1test")
class L1Loss(FeatureLoss):
    params = {"weight": (1.0, "loss weight"), "scale": (2.0, "multiplier")}

    def level(self, s, t, module):
        return (s - t).abs().mean() * self.scale
"""


def test_a_new_loss_is_one_file(tmp_path, data_yaml, teacher_pt):
    """A file dropped into distill/losses/ is found by the package's own auto-import: it is a --loss choice with
    its own flags and trains, with nothing else edited (run on a copy of the package in a fresh process)."""
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "distill", pkg / "distill", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "train_distill.py", pkg / "train_distill.py")
    (pkg / "distill" / "losses" / "l1test.py").write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pkg), os.environ.get("PYTHONPATH", "")])}

    def cli(*args):
        return subprocess.run([sys.executable, str(pkg / "train_distill.py"), *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env)

    helped = cli("--help")
    assert helped.returncode == 0 and "--l1test-scale" in helped.stdout and "l1test" in helped.stdout
    project = tmp_path / "runs"
    done = cli("--teacher", teacher_pt, "--data", data_yaml, "--loss", "cwd+l1test", "--l1test-scale", "3",
               "--distill-schedule", "linear", "--distill-final", "0.25", "--epochs", "2", "--imgsz", "64",
               "--batch", "8", "--project", str(project), "--name", "plugin", "workers=0", "plots=False")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _results(project / "plugin")
    assert all(float(r["train/l1test_loss"]) > 0 for r in rows)
    record = torch.load(project / "plugin" / "weights" / "last.pt", map_location="cpu", weights_only=False)["distill"]
    assert record["losses"] == ["cwd", "l1test"] and record["params"]["l1test"] == {"weight": 1.0, "scale": 3.0}
    # the linear schedule: the term's weight falls from 1 to 0.25, so the logged term shrinks far more than the loss
    assert float(rows[1]["train/l1test_loss"]) < 0.5 * float(rows[0]["train/l1test_loss"])
