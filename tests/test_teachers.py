"""Several teachers at once: weighting, the ensemble target, the CLI and Python API, resume, DDP workers, class maps."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import ROOT, TRAIN, ddp_workers
from distill import YOLO, DistillationTrainer
from distill.compare import results_columns
from distill.config import DistillSettings
from distill.distiller import MODULES_ATTR, Distiller, head_pairs
from distill.losses.kl import KLLoss, side_distances
from distill.teacher import fingerprint, freeze, load_teacher
from distill.teachers import Teacher
from test_classmap import _subset
from test_robustness import _digest
from test_training import _snapshot


def test_two_teachers_of_other_families_through_the_python_api(data_yaml, teacher_pt, teacher11_pt, project):
    """A yolov8s object and a yolo11n file, weighted 3:1: each gets its own layers and connectors (to its own
    widths), both stay frozen and outside the optimizer, and the checkpoint records both."""
    seen = {}

    def at_start(tr):
        seen["before"] = [_snapshot(t.model) for t in tr.distiller.teachers]
        seen["ids"] = {id(p) for t in tr.distiller.teachers for p in t.model.parameters()}

    def at_end(tr):
        seen["after"] = [_snapshot(t.model) for t in tr.distiller.teachers]
        seen["in_optimizer"] = any(id(p) in seen["ids"] for g in tr.optimizer.param_groups for p in g["params"])
        seen["frozen"] = all(not p.requires_grad for t in tr.distiller.teachers for p in t.model.parameters())

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_pretrain_routine_end", at_start)
    model.add_callback("on_train_end", at_end)
    model.train(data=data_yaml, Distillation=[YOLO(teacher_pt).model, teacher11_pt], loss_type="cwd+kl",
                distill_teacher_weights="3,1", project=project, name="two", **TRAIN)
    run = Path(model.trainer.save_dir)
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["Distillation"] == [str(run / "teacher1.pt"), teacher11_pt] and (run / "teacher1.pt").exists()
    record = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)["distill"]
    assert record["teacher"] == args["Distillation"] and record["teacher_shares"] == [0.75, 0.25]
    assert record["teacher_fingerprint"] == [fingerprint(load_teacher(teacher_pt)), fingerprint(load_teacher(teacher11_pt))]
    assert record["teacher_layers"] == [[15, 18, 21], [16, 19, 22]] and record["student_layers"] == [15, 18, 21]
    assert record["class_map"] == [None, None] and record["ensemble"] is False
    saved = torch.load(run / "weights" / "distill_modules.pt", map_location="cpu")
    assert saved["teacher0.connectors.0.weight"].shape == (128, 64, 1, 1)  # yolov8n P3 (64) -> yolov8s P3 (128)
    assert not any(k.startswith("teacher1.") for k in saved)  # yolo11n has yolov8n's widths: identity connectors
    for before, after in zip(seen["before"], seen["after"]):
        assert before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())
    assert not seen["in_optimizer"] and seen["frozen"]
    columns = results_columns(run)
    assert columns["train/cwd_loss"][0] > 0 and columns["train/kl_loss"][0] > 0


def _student_terms(distiller: Distiller, student, modules, img: torch.Tensor) -> torch.Tensor:
    setattr(student, MODULES_ATTR, modules)
    distiller.before_forward(student, img, 0, 1)
    terms, _ = distiller.terms(student(img), torch.tensor(1.0))
    return terms.detach()


def test_each_term_is_the_share_weighted_sum_of_the_teachers_terms(teacher_pt, teacher11_pt):
    """On one real forward of one student: the two-teacher terms equal 0.25 x teacher A's + 0.75 x teacher B's, each
    computed by a one-teacher distiller with the same connectors; the ensemble kl term is a different number."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    a, b = freeze(load_teacher(teacher_pt)), freeze(load_teacher(teacher11_pt))
    with torch.no_grad():  # one-epoch teachers predict nearly alike: make their class scores disagree
        for p in b.model[-1].cv3.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    student = DetectionModel("yolov8n.yaml", nc=a.model[-1].nc, verbose=False)
    student.args = get_cfg()
    student.train()
    img = torch.rand(2, 3, 64, 64)
    # deterministic losses only (MGD draws a random mask per call, so its terms depend on the order of the draws)
    two = DistillSettings.from_args({"Distillation": ["a.pt", "b.pt"], "loss_type": "cwd+pkd+kl"})
    one = DistillSettings.from_args({"Distillation": "a.pt", "loss_type": "cwd+pkd+kl"})
    both = Distiller([Teacher(a, "a.pt", 0.25), Teacher(b, "b.pt", 0.75)], two)
    both.attach(student)
    modules = getattr(student, MODULES_ATTR)
    assert set(modules) == {"teacher0", "teacher1"}
    v_both = _student_terms(both, student, modules, img)
    alone = []
    for i, t in enumerate((a, b)):
        d = Distiller([Teacher(t, "x.pt", 1.0)], one)
        d.attach(student)
        alone.append(_student_terms(d, student, modules[f"teacher{i}"], img))
    assert torch.allclose(v_both, 0.25 * alone[0] + 0.75 * alone[1], rtol=1e-5, atol=1e-7)
    assert (alone[0] != alone[1]).all() and (v_both > 0).all()
    ens = Distiller([Teacher(a, "a.pt", 0.25), Teacher(b, "b.pt", 0.75)],
                    DistillSettings.from_args({"Distillation": ["a.pt", "b.pt"], "loss_type": "cwd+pkd+kl",
                                               "distill_ensemble": True}))
    ens.attach(student)
    v_ens = _student_terms(ens, student, modules, img)
    assert torch.allclose(v_ens[:2], v_both[:2], rtol=1e-5)  # feature terms: per teacher either way
    # the kl term against the ensemble, computed here from the models' own outputs (kl_weight 0.5)
    with torch.no_grad():
        preds = student(img)
        pa, pb = head_pairs(preds, a(img)), head_pairs(preds, b(img))
    kl = KLLoss()
    expected = 0.5 * sum(kl(s, kl.ensemble(s, [ta, tb], [0.25, 0.75])) for (s, ta), (_, tb) in zip(pa, pb))
    assert torch.isclose(v_ens[2], expected, rtol=1e-5)
    assert not torch.isclose(v_ens[2], v_both[2], rtol=1e-2)  # not the weighted sum of the per-teacher terms


def test_the_ensemble_target_is_the_mean_of_the_teachers_probabilities():
    """scores: sigmoid(target / T) is the share-weighted mean of sigmoid(z_i / T); boxes: softmax(target / Tb) per
    side is the mean of the teachers' distributions at Tb; without shared bins, the mean decoded side distances.
    One teacher with share 1 is that teacher, loss for loss."""
    torch.manual_seed(0)
    loss = KLLoss(temperature=2.0, box_temperature=10.0)
    b, nc, a, reg = 2, 3, 7, 16
    teachers = [{"scores": torch.randn(b, nc, a) * 8, "boxes": torch.randn(b, 4 * reg, a) * 3} for _ in range(3)]
    student = {"scores": torch.randn(b, nc, a), "boxes": torch.randn(b, 4 * reg, a)}
    shares = [0.5, 0.3, 0.2]
    target = loss.ensemble(student, teachers, shares)
    mean_p = sum(s * torch.sigmoid(t["scores"] / 2.0) for s, t in zip(shares, teachers))
    assert torch.allclose(torch.sigmoid(target["scores"] / 2.0), mean_p, atol=1e-6)

    def dist(x):
        return F.softmax(x.view(b, 4, reg, a) / 10.0, dim=2)

    assert torch.allclose(dist(target["boxes"]), sum(s * dist(t["boxes"]) for s, t in zip(shares, teachers)), atol=1e-6)
    yolo26 = {"scores": student["scores"], "boxes": torch.rand(b, 4, a)}  # a student without distributions
    decoded = loss.ensemble(yolo26, teachers, shares)["boxes"]
    assert torch.allclose(decoded, sum(s * side_distances(t["boxes"]) for s, t in zip(shares, teachers)), atol=1e-5)
    single = loss.ensemble(student, teachers[:1], [1.0])
    assert torch.allclose(loss(student, single), loss(student, teachers[0]), rtol=1e-5)
    extreme = [{"scores": torch.full((1, 1, 1), -40.0), "boxes": torch.zeros(1, 64, 1)},
               {"scores": torch.full((1, 1, 1), -30.0), "boxes": torch.zeros(1, 64, 1)}]
    z = loss.ensemble({"boxes": torch.zeros(1, 64, 1)}, extreme, [0.5, 0.5])["scores"]
    p = 0.5 * (torch.sigmoid(torch.tensor(-20.0, dtype=torch.float64)) + torch.sigmoid(torch.tensor(-15.0, dtype=torch.float64)))
    assert math.isclose(float(z) / 2.0, math.log(p / (1 - p)), rel_tol=1e-4)  # no clipping of confident teachers


def test_two_teachers_from_the_cli_with_the_ensemble_target(data_yaml, teacher_pt, teacher11_pt, project):
    """`--teacher a.pt b.pt` (a key=value right after them still passes through), distill_ensemble on; the report
    scores each teacher."""
    done = subprocess.run([sys.executable, str(ROOT / "train_distill.py"), "--teacher", teacher_pt, teacher11_pt,
                           "warmup_epochs=0", "--loss", "kl", "--distill-ensemble", "True", "--data", data_yaml,
                           "--epochs", "1", "--imgsz", "64", "--batch", "8", "--project", project, "--name", "cli2",
                           "workers=0", "plots=False"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "teacher 1 mAP50-95:" in done.stdout and "teacher 2 mAP50-95:" in done.stdout
    run = Path(project) / "cli2"
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["Distillation"] == [teacher_pt, teacher11_pt] and args["warmup_epochs"] == 0
    record = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)["distill"]
    assert record["ensemble"] is True and record["teacher_shares"] == [0.5, 0.5]
    assert results_columns(run)["train/kl_loss"][0] > 0


KILLED_RUN = r"""
import os, sys
sys.path.insert(0, {root!r})
from distill import YOLO
model = YOLO("yolov8n.yaml")
model.add_callback("on_fit_epoch_end", lambda tr: os._exit(3) if tr.epoch == 0 else None)  # die after epoch 1
model.train(data={data!r}, Distillation={teachers!r}, loss_type="cwd+mgd", project={project!r}, name="run",
            epochs=2, imgsz=64, batch=8, workers=0, plots=False, seed=0)
"""


def test_resume_with_two_teachers(data_yaml, teacher_pt, teacher11_pt, project, tmp_path):
    """After a kill, resume rebuilds both teachers from their paths: a changed second teacher is refused by name;
    restored, the run continues with both teachers' connectors and MGD generators restored bitwise."""
    import shutil

    second = tmp_path / "second.pt"
    shutil.copyfile(teacher11_pt, second)
    code = KILLED_RUN.format(root=str(ROOT), data=data_yaml, teachers=[teacher_pt, str(second)], project=project)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr[-2000:]
    last = Path(project) / "run" / "weights" / "last.pt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    saved = ckpt["ema"].distill_modules.float().state_dict()
    assert any(k.startswith("teacher1.mgd.") for k in saved) and any(k.startswith("teacher0.mgd.") for k in saved)
    original = second.read_bytes()
    changed = torch.load(second, map_location="cpu", weights_only=False)
    with torch.no_grad():
        next(changed["model"].parameters()).add_(0.01)
    torch.save(changed, second)
    with pytest.raises(ValueError, match=re.escape(f"the teacher at {second} is not the one this run started with")):
        YOLO(str(last)).train(resume=True)
    second.write_bytes(original)
    seen = {}
    model = YOLO(str(last))
    model.add_callback("on_pretrain_routine_end", lambda tr: seen.update(
        n=len(tr.distiller.teachers), mods={k: v.clone() for k, v in getattr(tr.model, MODULES_ATTR).state_dict().items()}))
    model.train(resume=True)
    assert seen["n"] == 2 and saved.keys() == seen["mods"].keys()
    assert all(torch.equal(saved[k], seen["mods"][k].cpu()) for k in saved)
    assert results_columns(Path(model.trainer.save_dir))["epoch"] == [1, 2]


WORKER_REPORT = r"""
    import hashlib, json
    from ultralytics.utils import RANK
    from distill.distiller import MODULES_ATTR
    d = trainer.distiller
    digest = lambda m: hashlib.sha1(b"".join(v.cpu().numpy().tobytes() for v in m.state_dict().values())).hexdigest()
    print("WORKER", json.dumps({"rank": RANK, "teachers": [digest(t.model) for t in d.teachers],
      "paths": trainer.args.Distillation, "shares": [t.share for t in d.teachers],
      "layers": [t.layers for t in d.teachers], "fingerprint": trainer.args.distill_teacher_fingerprint,
      "modules": sorted(getattr(trainer.model, MODULES_ATTR).state_dict())}))
"""


def test_a_ddp_worker_rebuilds_both_teachers(data_yaml, teacher_pt, project):
    """Ultralytics' DDP file in fresh processes (ranks 0 and 1) up to training: an in-memory teacher and a .yaml one
    are each written once, and every rank loads the same weights, shares, layers and connectors."""
    trainer = DistillationTrainer(overrides=dict(
        model="yolov8n.yaml", data=data_yaml, Distillation=[YOLO(teacher_pt).model, "yolo11n.yaml"], loss_type="cwd",
        distill_teacher_weights=[2, 1], project=project, name="ddp2", **TRAIN))
    trainer.model = trainer.get_model(cfg="yolov8n.yaml")
    workers = ddp_workers(trainer, WORKER_REPORT)
    d = trainer.distiller
    digests = [_digest(t.model) for t in d.teachers]
    paths = [str(trainer.save_dir / "teacher1.pt"), str(trainer.save_dir / "teacher2.pt")]
    for worker in workers:
        assert worker["teachers"] == digests and worker["paths"] == paths
        assert worker["shares"] == pytest.approx([2 / 3, 1 / 3]) and worker["layers"] == [[15, 18, 21], [16, 19, 22]]
        assert worker["fingerprint"] == [fingerprint(t.model) for t in d.teachers]
        assert worker["modules"] == sorted(getattr(trainer.model, MODULES_ATTR).state_dict())


def test_class_maps_per_teacher_and_the_ensemble_needs_the_same_classes(data_yaml, teacher_pt, teacher11_pt, project,
                                                                       tmp_path, monkeypatch):
    """Dataset classes circle, triangle (teacher classes 0 and 2). Teacher 1 knows both; teacher 2 (its triangle
    renamed) only circle: per-teacher terms train, each with its own map, and teacher 2's missing class is named;
    an ensemble over them is refused before anything is written."""
    import distill.trainer as trainer_module

    warnings = []
    monkeypatch.setattr(trainer_module.LOGGER, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    data = _subset(data_yaml, tmp_path / "part", {0: "circle", 2: "triangle"})
    renamed = YOLO(teacher11_pt).model
    renamed.names = {**renamed.names, 2: "wedge"}
    model = YOLO("yolov8n.yaml")
    model.train(data=data, Distillation=[teacher_pt, renamed], loss_type="kl", project=project, name="maps", **TRAIN)
    record = torch.load(model.trainer.last, map_location="cpu", weights_only=False)["distill"]
    assert record["class_map"] == [{0: 0, 1: 2}, {0: 0}]
    assert any(w.startswith("Distillation: teacher 2 (<in-memory teacher>) has no class named triangle") for w in warnings), warnings
    assert not any("teacher 1" in w and "no class named" in w for w in warnings)
    with pytest.raises(ValueError, match="distill_ensemble needs teachers that teach the same dataset classes"):
        YOLO("yolov8n.yaml").train(data=data, Distillation=[teacher_pt, renamed], loss_type="kl", distill_ensemble=True,
                                   project=str(tmp_path / "ens"), name="x", **TRAIN)
    assert not (tmp_path / "ens").exists()
    # a teacher of the dataset's classes and one that names them all in another order do share a target
    shuffled = YOLO(teacher11_pt).model
    shuffled.names = {i: shuffled.names[len(shuffled.names) - 1 - i] for i in shuffled.names}
    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, Distillation=[teacher_pt, shuffled], loss_type="kl", distill_ensemble=True,
                project=project, name="same", **TRAIN)
    record = torch.load(model.trainer.last, map_location="cpu", weights_only=False)["distill"]
    assert record["ensemble"] is True and record["class_map"] == [None, {i: 5 - i for i in range(6)}]


@pytest.mark.parametrize(("extra", "message"), [
    ({"distill_teacher_weights": "1"}, "distill_teacher_weights gives 1 weight(s) for 2 teacher(s)"),
    ({"distill_teacher_weights": "1,0"}, "distill_teacher_weights must all be > 0"),
    ({"distill_teacher_layers": "15,18,21;16,19,22;1"}, "gives 3 ';'-separated lists for 2 teacher(s)"),
    ({"second": "missing.pt"}, "teacher 2 (missing.pt): teacher checkpoint 'missing.pt' does not exist"),
])
def test_bad_teacher_lists_fail_before_training(extra, message, data_yaml, teacher_pt, tmp_path):
    extra = dict(extra)
    teachers = [teacher_pt, extra.pop("second", teacher_pt)]
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        YOLO("yolov8n.yaml").train(data=data_yaml, Distillation=teachers, loss_type="cwd",
                                   project=str(tmp_path / "runs"), name="bad", **extra, **TRAIN)
    assert message in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_a_random_second_teacher_is_named_in_the_warning(data_yaml, teacher_pt, project, monkeypatch):
    import distill.trainer as trainer_module

    warnings = []
    monkeypatch.setattr(trainer_module.LOGGER, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=data_yaml,
                                                 Distillation=[teacher_pt, "yolov8s.yaml"], loss_type="cwd",
                                                 project=project, name="rand", **TRAIN))
    assert any("teacher 2 (yolov8s.yaml): the teacher is built from yolov8s.yaml, so its weights are random" in w
               for w in warnings), warnings
    assert [t.source for t in trainer.distiller.teachers] == [teacher_pt, str(trainer.save_dir / "teacher2.pt")]


def test_each_teacher_can_have_its_own_explicit_layers(teacher_pt, teacher11_pt):
    """distill_teacher_layers '12,15;13,16' pairs the student's 12, 15 with yolov8s's 12, 15 and yolo11n's 13, 16;
    one list applies to every teacher."""
    from ultralytics.nn.tasks import DetectionModel

    a, b = freeze(load_teacher(teacher_pt)), freeze(load_teacher(teacher11_pt))
    student = DetectionModel("yolov8n.yaml", nc=a.model[-1].nc, verbose=False)
    each = DistillSettings.from_args({"Distillation": ["a.pt", "b.pt"], "loss_type": "cwd", "distill_layers": "12,15",
                                      "distill_teacher_layers": "12,15;13,16"})
    d = Distiller([Teacher(a, "a.pt", 0.5), Teacher(b, "b.pt", 0.5)], each)
    d.attach(student)
    assert d.student_layers == [12, 15] and [t.layers for t in d.teachers] == [[12, 15], [13, 16]]
    connectors = getattr(student, MODULES_ATTR)
    assert [type(c).__name__ for c in connectors["teacher1"]["connectors"]] == ["Identity", "Identity"]
    shared = DistillSettings.from_args({"Distillation": ["a.pt", "b.pt"], "loss_type": "cwd", "distill_layers": "12,15",
                                        "distill_teacher_layers": "12,15"})
    d = Distiller([Teacher(a, "a.pt", 0.5), Teacher(b, "b.pt", 0.5)], shared)
    d.attach(student)
    assert [t.layers for t in d.teachers] == [[12, 15], [12, 15]]
