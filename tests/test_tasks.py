"""Segment, pose and OBB students: one distillation mixin over each Ultralytics task trainer, on real steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from ultralytics import YOLO as PlainYOLO

from conftest import ROOT, TRAIN, ddp_workers
from distill import YOLO
from distill.compare import map_curve, results_columns
from distill.distiller import MODULES_ATTR
from distill.tasks import DISTILLATION_TRAINERS, PLAIN_TRAINERS
from distill.teacher import load_teacher, model_task
from test_robustness import _digest

SUFFIX = {"segment": "-seg", "pose": "-pose", "obb": "-obb"}
OWN_LOSS = {"segment": "seg_loss", "pose": "pose_loss", "obb": "angle_loss"}  # the task's own term in results.csv
METRIC = {"segment": "metrics/mAP50-95(M)", "pose": "metrics/mAP50-95(P)", "obb": "metrics/mAP50-95(B)"}


@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_python_api_distils_each_task(task, task_data, project):
    """`YOLO('yolov8n-<task>.yaml').train(Distillation=<same-task teacher>)`: the task's trainer with the glue, its
    own loss columns beside kl and cwd (both > 0), connectors saved, and a plain checkpoint of the task's model."""
    teacher = load_teacher(f"yolov8s{SUFFIX[task]}.yaml", nc=6, kpt_shape=[4, 3])  # an in-memory model of the task
    student = YOLO(f"yolov8n{SUFFIX[task]}.yaml")
    student.train(data=task_data[task], Distillation=teacher, loss_type="kl+cwd", project=project, name=task,
                  **TRAIN)
    trainer = student.trainer
    assert type(trainer) is DISTILLATION_TRAINERS[task] and model_task(trainer.distiller.teacher) == task
    run = Path(trainer.save_dir)
    columns = results_columns(run)
    assert columns[f"train/{OWN_LOSS[task]}"][0] > 0
    assert columns["train/kl_loss"][0] > 0 and columns["train/cwd_loss"][0] > 0
    assert METRIC[task] in columns and map_curve(run) == columns[METRIC[task]]
    ckpt = torch.load(run / "weights" / "best.pt", map_location="cpu", weights_only=False)
    assert ckpt["distill"]["task"] == task and ckpt["distill"]["losses"] == ["kl", "cwd"]
    assert not hasattr(ckpt["model"], MODULES_ATTR) and not hasattr(ckpt["ema"] or ckpt["model"], MODULES_ATTR)
    connectors = torch.load(run / "weights" / "distill_modules.pt", map_location="cpu")
    assert any(k.startswith("connectors.") for k in connectors)
    plain = PlainYOLO(str(run / "weights" / "best.pt"))  # loads and predicts without this package's classes
    assert plain.task == task and type(plain.model).__module__.startswith("ultralytics.")
    assert model_task(torch.load(run / "teacher.pt", map_location="cpu", weights_only=False)["model"]) == task


@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_cli_distils_each_task(task, task_data, project, capsys):
    """`train_distill.py --student yolov8n-<task>.yaml --teacher <task teacher>`; for segment also --compare, whose
    report scores teacher, baseline and distilled student by mask mAP."""
    from distill.cli import main

    compare = ["--compare"] if task == "segment" else []
    code = main(["--teacher", f"yolov8n{SUFFIX[task]}.yaml", "--student", f"yolov8n{SUFFIX[task]}.yaml",
                 "--data", task_data[task], "--loss", "kl+mgd", "--epochs", "1", "--imgsz", "64", "--batch", "8",
                 "--project", project, "--name", task, "workers=0", "plots=False", *compare])
    assert code == 0
    run = Path(project) / task
    assert {"train/kl_loss", "train/mgd_loss", f"train/{OWN_LOSS[task]}"} <= set(results_columns(run))
    out = capsys.readouterr().out
    assert "teacher mAP50-95: 0." in out and "teacher mAP50-95: n/a" not in out  # same task: scored
    if compare:
        report = json.loads((run / "compare.json").read_text())
        baseline_run = Path(report["runs"]["baseline"])
        student_map = report["cards"]["baseline student"]["map50_95"]
        validated = PlainYOLO(str(baseline_run / "weights" / "best.pt")).val(
            data=task_data[task], imgsz=64, batch=8, plots=False, verbose=False, project=project, name="check")
        assert student_map == pytest.approx(float(validated.seg.map))  # masks, not boxes
        assert report["curves"]["baseline student"] == results_columns(baseline_run)[METRIC[task]]


def test_a_detection_teacher_teaches_a_segment_student(task_data, teacher_pt, project, capsys):
    """A detection teacher teaches a seg student through the features and the box/class outputs every head shares;
    its box mAP is not set beside the student's mask mAP in the report."""
    from distill.cli import main

    code = main(["--teacher", teacher_pt, "--student", "yolov8n-seg.yaml", "--data", task_data["segment"],
                 "--loss", "kl+cwd", "--epochs", "1", "--imgsz", "64", "--batch", "8", "--project", project,
                 "--name", "det2seg", "workers=0", "plots=False"])
    assert code == 0
    columns = results_columns(Path(project) / "det2seg")
    assert columns["train/kl_loss"][0] > 0 and columns["train/cwd_loss"][0] > 0
    assert "teacher mAP50-95: n/a" in (out := capsys.readouterr().out) and "a detect model, scored differently" in out


@pytest.mark.parametrize(("teacher", "student", "data"), [
    ("yolov8n-pose.yaml", "yolov8n-seg.yaml", "segment"),
    ("yolov8n-seg.yaml", "yolov8n.yaml", None),
    ("yolov8n-obb.yaml", "yolov8n-pose.yaml", "pose"),
])
def test_a_teacher_of_another_task_is_refused_before_training(teacher, student, data, task_data, data_yaml, tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match="model but the student is a") as err:
        YOLO(student).train(data=task_data[data] if data else data_yaml, Distillation=teacher, loss_type="cwd",
                            project=str(runs), name="bad", **TRAIN)
    assert f"Pass a {model_task(YOLO(student).model)} teacher, or a detection one" in str(err.value)
    assert not runs.exists()


KILLED_SEG_RUN = r"""
import os, sys
sys.path.insert(0, {root!r})
from distill import YOLO
from distill.teacher import load_teacher
model = YOLO("yolov8n-seg.yaml")
model.add_callback("on_fit_epoch_end", lambda tr: os._exit(3) if tr.epoch == 0 else None)  # die after epoch 1
model.train(data={data!r}, Distillation=load_teacher("yolov8s-seg.yaml", nc=6), loss_type="kl+mgd", project={project!r},
            name="run", epochs=2, imgsz=64, batch=8, workers=0, plots=False, seed=0)
"""


def test_resume_a_segment_student(task_data, project):
    """Killed after epoch 1, a seg run resumes in the seg distillation trainer with its written teacher and its
    connectors and MGD generators restored bitwise, and finishes epoch 2."""
    code = KILLED_SEG_RUN.format(root=str(ROOT), data=task_data["segment"], project=project)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 3, done.stderr[-2000:]
    last = Path(project) / "run" / "weights" / "last.pt"
    saved = torch.load(last, map_location="cpu", weights_only=False)["ema"].distill_modules.float().state_dict()
    assert any(k.startswith("mgd.") for k in saved)
    seen = {}
    model = YOLO(str(last))
    model.add_callback("on_pretrain_routine_end", lambda tr: seen.update(
        kind=type(tr), mods={k: v.clone() for k, v in getattr(tr.model, MODULES_ATTR).state_dict().items()}))
    model.train(resume=True)
    assert seen["kind"] is DISTILLATION_TRAINERS["segment"]
    assert saved.keys() == seen["mods"].keys() and all(torch.equal(saved[k], seen["mods"][k].cpu()) for k in saved)
    columns = results_columns(Path(model.trainer.save_dir))
    assert columns["epoch"] == [1, 2] and columns["train/kl_loss"][1] > 0


@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_without_a_teacher_each_task_trains_with_ultralytics_own_trainer(task, task_data, project):
    model = YOLO(f"yolov8n{SUFFIX[task]}.yaml")
    model.train(data=task_data[task], project=project, name="plain", **TRAIN)
    assert type(model.trainer) is PLAIN_TRAINERS[task] and not hasattr(model.trainer, "distiller")
    assert OWN_LOSS[task] in model.trainer.loss_names


def test_the_task_metric_is_the_tasks_own(tmp_path):
    """Reports and benchmarks read masks for segment, keypoints for pose, boxes otherwise: from Ultralytics' metrics
    objects, from the metrics dict a checkpoint carries, and from results.csv (values differ per part here)."""
    from types import SimpleNamespace as NS

    from distill.compare import task_metric

    box, seg, pose = NS(map=0.1, map50=0.2), NS(map=0.3, map50=0.4), NS(map=0.5, map50=0.6)
    assert task_metric(NS(box=box, seg=seg)) is seg and task_metric(NS(box=box, pose=pose)) is pose
    assert task_metric(NS(box=box)) is box
    stored = {"metrics/mAP50-95(B)": 0.1, "metrics/mAP50(B)": 0.2, "metrics/mAP50-95(M)": 0.3, "metrics/mAP50(M)": 0.4}
    assert (task_metric(stored).map, task_metric(stored).map50) == (0.3, 0.4)
    with pytest.raises(ValueError, match="no mask, keypoint or box mAP"):
        task_metric({"fitness": 1.0})
    (tmp_path / "results.csv").write_text("epoch, metrics/mAP50-95(B), metrics/mAP50-95(P)\n1, 0.1, 0.5\n2, 0.2, 0.6\n")
    assert map_curve(tmp_path) == [0.5, 0.6]


def test_a_pose_teacher_of_other_keypoints_is_not_scored(task_data, project, capsys):
    """A pose teacher with another kpt_shape (e.g. COCO's 17 keypoints) still teaches scores and boxes, but the report
    does not validate it on a dataset of other keypoints (Ultralytics' validator would fail on it)."""
    from distill.cli import main

    other = load_teacher("yolov8n-pose.yaml", nc=6, kpt_shape=[17, 3])
    other.names = {i: n for i, n in enumerate(("circle", "square", "triangle", "cross", "ring", "diamond"))}
    path = Path(project).parent / "other.pt"
    torch.save({"model": other, "train_args": {"task": "pose"}}, path)
    code = main(["--teacher", str(path), "--student", "yolov8n-pose.yaml", "--data", task_data["pose"], "--loss", "kl",
                 "--epochs", "1", "--imgsz", "64", "--batch", "8", "--project", project, "--name", "kpts", "workers=0",
                 "plots=False"])
    assert code == 0
    assert "its keypoints ([17, 3]) differ from the dataset's ([4, 3])" in capsys.readouterr().out


def test_the_demo_gives_a_pose_student_the_pose_labels(project):
    """No --data: the embedded synthetic set, with the student's task's labels (keypoints for a pose student)."""
    from distill.cli import main
    from distill.demo import DEMO_SPEC

    code = main(["--student", "yolov8n-pose.yaml", "--teacher", "yolov8n-pose.yaml", "--epochs", "1", "--imgsz", "64",
                 "--fraction", "0.05", "--project", project, "--name", "demo", "workers=0"])
    assert code == 0
    args = (Path(project) / "demo" / "args.yaml").read_text()
    assert f"shapes-pose-{replace(DEMO_SPEC, task='pose').key}" in args
    assert "train/pose_loss" in results_columns(Path(project) / "demo")


WORKER = r"""
    import hashlib, json
    from ultralytics.utils import RANK
    from distill.distiller import MODULES_ATTR
    digest = lambda m: hashlib.sha1(b"".join(v.cpu().numpy().tobytes() for v in m.state_dict().values())).hexdigest()
    print("WORKER", json.dumps({"rank": RANK, "trainer": type(trainer).__name__, "teacher": digest(trainer.distiller.teacher),
      "kpt_shape": list(trainer.model.model[-1].kpt_shape), "modules": sorted(getattr(trainer.model, MODULES_ATTR).state_dict())}))
"""


def test_a_ddp_worker_rebuilds_a_pose_distillation(task_data, project):
    """Ultralytics' DDP file for a pose student, run in fresh processes (ranks 0 and 1) up to training: each is the
    pose distillation trainer, with the written teacher's weights, the dataset's kpt_shape and the same connectors."""
    from distill.tasks import PoseDistillationTrainer

    trainer = PoseDistillationTrainer(overrides=dict(
        model="yolov8n-pose.yaml", data=task_data["pose"], Distillation=load_teacher("yolov8s-pose.yaml", nc=6,
        kpt_shape=[4, 3]), loss_type="kl+cwd", project=project, name="ddp", **TRAIN))
    trainer.model = trainer.get_model(cfg="yolov8n-pose.yaml")
    workers = ddp_workers(trainer, WORKER)
    digest = _digest(trainer.distiller.teacher)
    for rank, worker in enumerate(workers):
        assert worker["rank"] == rank and worker["trainer"] == "PoseDistillationTrainer"
        assert worker["teacher"] == digest and worker["kpt_shape"] == [4, 3]
        assert worker["modules"] == sorted(getattr(trainer.model, MODULES_ATTR).state_dict())
