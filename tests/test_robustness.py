"""Long-run paths: resume after a kill, DDP worker rebuild, NaN recovery, bad input, no teacher graph."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, TRAIN
from distill import YOLO, DistillationTrainer
from distill.compare import results_columns
from distill.config import DistillSettings
from distill.distiller import MODULES_ATTR
from distill.teacher import fingerprint

KILLED_RUN = r"""
import os, sys
sys.path.insert(0, {root!r})
from distill import YOLO
model = YOLO("yolov8n.yaml")
model.add_callback("on_fit_epoch_end", lambda tr: os._exit(3) if tr.epoch == 0 else None)  # die after epoch 1
model.train(data={data!r}, Distillation={teacher!r}, loss_type={loss!r}, project={project!r}, name="run",
            distill_schedule="linear", distill_final=0.2, epochs=3, imgsz=64, batch=8, workers=0, plots=False, seed=0)
"""


def _killed_run(data_yaml, teacher_pt, project, loss: str = "cwd+mgd") -> Path:
    code = KILLED_RUN.format(root=str(ROOT), data=data_yaml, teacher=teacher_pt, project=project, loss=loss)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr[-2000:]
    last = Path(project) / "run" / "weights" / "last.pt"
    assert last.exists()
    return last


def _column(run: Path, name: str) -> list[float]:
    return results_columns(run)[name]


def test_resume_in_python_restores_connectors_exactly(data_yaml, teacher_pt, project):
    last = _killed_run(data_yaml, teacher_pt, project)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0
    assert not any("teacher" in k for k in ckpt["ema"].state_dict())  # the teacher is never in a checkpoint
    saved = ckpt["ema"].distill_modules.float().state_dict()
    seen = {}
    model = YOLO(str(last))
    model.add_callback(
        "on_pretrain_routine_end",
        lambda tr: seen.update(start=tr.start_epoch, mods={k: v.clone() for k, v in getattr(tr.model, MODULES_ATTR).state_dict().items()}),
    )
    model.add_callback("on_train_epoch_end", lambda tr: seen.setdefault("factors", []).append(tr.distiller.factor))
    model.train(resume=True)
    assert seen["start"] == 1
    assert seen["factors"] == pytest.approx([0.6, 0.2])  # the linear schedule continues from epoch 2 of 3
    assert saved.keys() == seen["mods"].keys()
    assert all(torch.equal(saved[k], seen["mods"][k].cpu()) for k in saved)  # bitwise
    run = Path(model.trainer.save_dir)
    assert _column(run, "epoch") == [1, 2, 3]
    assert all(v > 0 for v in _column(run, "train/cwd_loss")) and all(v > 0 for v in _column(run, "train/mgd_loss"))


def test_resume_keeps_the_resolved_distill_weight(data_yaml, teacher_pt, project, tmp_path, monkeypatch):
    """distill_weight 'auto' is resolved once, when a run starts: resume takes the number from the checkpoint, so a
    later change of the tuned weights cannot change a run halfway, and a checkpoint written before 'auto' existed
    (which holds 1.0) resumes at 1."""
    import distill.config

    last = _killed_run(data_yaml, teacher_pt, project, loss="cwd+kl")
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["train_args"]["distill_weight"] == 4.0
    ckpt["train_args"]["distill_weight"] = 1.0
    torch.save(ckpt, tmp_path / "before_auto.pt")
    monkeypatch.setitem(distill.config.TUNED_WEIGHTS, frozenset({"cwd", "kl"}), 2.0)
    for path, expected in ((last, 4.0), (tmp_path / "before_auto.pt", 1.0)):
        seen = {}
        model = YOLO(str(path))
        model.add_callback("on_pretrain_routine_end",
                           lambda tr: seen.update(weight=tr.distiller.settings.weight, start=tr.start_epoch))
        model.train(resume=True)
        assert seen == {"weight": expected, "start": 1}, path
    assert DistillSettings.from_args({}).weight == 2.0  # a fresh run would take the patched table


def test_resume_refuses_a_changed_teacher(data_yaml, teacher_pt, project, tmp_path):
    """The checkpoint records a fingerprint of the teacher's weights; resume rebuilds the teacher from its path and
    refuses it when the file there now holds other weights, before any training step."""
    import shutil

    from distill.teacher import load_teacher

    teacher = tmp_path / "teacher.pt"
    shutil.copyfile(teacher_pt, teacher)
    last = _killed_run(data_yaml, str(teacher), project)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["train_args"]["distill_teacher_fingerprint"] == fingerprint(load_teacher(str(teacher)))
    changed = torch.load(teacher, map_location="cpu", weights_only=False)
    with torch.no_grad():
        next(changed["model"].parameters()).add_(0.01)  # e.g. the teacher retrained in place
    torch.save(changed, teacher)
    before = last.read_bytes()
    with pytest.raises(ValueError, match="is not the one this run started with"):
        YOLO(str(last)).train(resume=True)
    assert last.read_bytes() == before  # nothing trained, nothing rewritten


def test_resume_from_the_cli(data_yaml, teacher_pt, project):
    last = _killed_run(data_yaml, teacher_pt, project)
    done = subprocess.run([sys.executable, str(ROOT / "train_distill.py"), "--resume", str(last)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Resuming training" in done.stdout + done.stderr and "student mAP50-95" in done.stdout
    run = last.parent.parent
    assert _column(run, "epoch") == [1, 2, 3] and _column(run, "train/cwd_loss")[-1] > 0


WORKER_REPORT = r"""
    import hashlib, json
    from ultralytics.utils import RANK
    from distill.distiller import MODULES_ATTR
    d = trainer.distiller
    digest = hashlib.sha1(b"".join(v.cpu().numpy().tobytes() for v in d.teacher.state_dict().values())).hexdigest()
    model = trainer.model
    print("WORKER", json.dumps({"rank": RANK, "teacher": digest, "teacher_path": str(trainer.args.Distillation),
      "student_layers": d.student_layers, "teacher_layers": d.teacher_layers,
      "fingerprint": trainer.args.distill_teacher_fingerprint,
      "losses": {n: vars(l) for n, l in d.losses.items()}, "modules": sorted(getattr(model, MODULES_ATTR).state_dict())}))
"""


def _digest(model: torch.nn.Module) -> str:
    import hashlib

    return hashlib.sha1(b"".join(v.cpu().numpy().tobytes() for v in model.state_dict().values())).hexdigest()


@pytest.mark.parametrize("kind", ["in-memory", "yaml"])
def test_ddp_worker_rebuilds_the_same_distillation(kind, data_yaml, teacher_pt, project):
    """Ultralytics' own DDP file, run in a fresh process up to the point where the worker would train. A teacher
    given as an object or as a .yaml (random weights) is written once, so every rank loads the same weights."""
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

    source = YOLO(teacher_pt).model if kind == "in-memory" else "yolov8s.yaml"
    trainer = DistillationTrainer(overrides=dict(
        model="yolov8n.yaml", data=data_yaml, Distillation=source, loss_type="cwd+kl",
        cwd_tau=2.0, project=project, name="ddp", **TRAIN))
    trainer.model = trainer.get_model(cfg="yolov8n.yaml")
    file = generate_ddp_file(trainer)
    run_files = lambda: {p: p.read_bytes() for p in trainer.save_dir.rglob("*") if p.is_file()}  # noqa: E731
    try:
        workers = []
        for rank in (0, 1):  # Ultralytics reads RANK from the environment; no process group on CPU (LOCAL_RANK unset)
            before = run_files()
            script = Path(file).read_text().replace("trainer.train()", "trainer._setup_train()\n" + WORKER_REPORT)
            done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"})
            assert done.returncode == 0, done.stderr[-3000:]
            workers.append(json.loads(done.stdout.split("WORKER ", 1)[1].splitlines()[0]))
            if rank == 1:
                assert run_files() == before  # a rank other than 0 writes nothing into the run
    finally:
        ddp_cleanup(trainer, file)
    d = trainer.distiller
    assert [w["rank"] for w in workers] == [0, 1]
    for worker in workers:
        assert worker["teacher"] == _digest(d.teacher)
        assert worker["teacher_path"] == str(trainer.save_dir / "teacher.pt")
        assert worker["student_layers"] == d.student_layers and worker["teacher_layers"] == d.teacher_layers
        assert worker["fingerprint"] == trainer.args.distill_teacher_fingerprint == fingerprint(d.teacher)
        assert worker["losses"] == {n: vars(l) for n, l in d.losses.items()} and worker["losses"]["cwd"]["tau"] == 2.0
        assert worker["modules"] == sorted(getattr(trainer.model, MODULES_ATTR).state_dict())
    assert yaml.safe_load((trainer.save_dir / "args.yaml").read_text())["Distillation"] == str(trainer.save_dir / "teacher.pt")


def test_the_teacher_follows_the_trainer_to_its_device(data_yaml, teacher_pt, project, monkeypatch):
    """A DDP worker is built on the first GPU and moved to its own only in _setup_ddp; the teacher must follow.
    CPU-only here, so the rank's device is a distinct CPU device object standing in for cuda:LOCAL_RANK."""
    rank_device = torch.device("cpu", 1)
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=data_yaml, Distillation=teacher_pt,
                                                 loss_type="cwd", project=project, name="device", **TRAIN))
    assert next(trainer.distiller.teacher.parameters()).device == torch.device("cpu")  # not on the first GPU
    moved = []
    real_to = trainer.distiller.teacher.to
    monkeypatch.setattr(trainer.distiller.teacher, "to", lambda *a, **k: moved.append(a[0]) or real_to(*a, **k))
    trainer.device = rank_device  # what _setup_ddp does before _setup_train
    trainer._setup_train()
    assert moved[:1] == [rank_device]  # moved to the rank's device before anything else in the set-up


def test_only_rank_zero_finalises_checkpoints(data_yaml, teacher_pt, project, monkeypatch):
    """final_eval rewrites last.pt / best.pt and writes distill_modules.pt on rank 0 only (as Ultralytics strips
    its optimizer on rank 0 only); other ranks leave the files alone."""
    import ultralytics.engine.trainer as engine

    import distill.trainer

    real_final_eval = DistillationTrainer.final_eval
    monkeypatch.setattr(DistillationTrainer, "final_eval", lambda self: None)  # stop the run just before it
    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, Distillation=teacher_pt, loss_type="cwd", project=project, name="ranks", **TRAIN)
    trainer = model.trainer
    files = [trainer.last, trainer.best]
    before = [f.read_bytes() for f in files]
    for module in (engine, distill.trainer):  # as in a DDP worker of rank 1
        monkeypatch.setattr(module, "RANK", 1)
    real_final_eval(trainer)
    assert [f.read_bytes() for f in files] == before and not (trainer.wdir / "distill_modules.pt").exists()
    for module in (engine, distill.trainer):
        monkeypatch.setattr(module, "RANK", -1)
    real_final_eval(trainer)
    assert (trainer.wdir / "distill_modules.pt").exists()
    assert all("distill" in torch.load(f, map_location="cpu", weights_only=False) for f in files)


def test_ddp_launch_keeps_the_teacher_outside_the_run_folder(tmp_path):
    from distill.teacher import teacher_save_path

    run = tmp_path / "runs" / "exp"
    assert teacher_save_path(run, ddp_launch=False) == run / "teacher.pt"
    # Ultralytics deletes the run folder before starting DDP workers
    assert teacher_save_path(run, ddp_launch=True) == tmp_path / "runs" / "exp-teacher.pt"
    assert teacher_save_path(run, ddp_launch=False, index=1) == run / "teacher2.pt"  # the second of several
    assert teacher_save_path(run, ddp_launch=True, index=0) == tmp_path / "runs" / "exp-teacher1.pt"


def test_nan_takes_ultralytics_recovery_and_distillation_survives(data_yaml, teacher_pt, project):
    """The cwd term turns NaN (inside the graph, so the weights are poisoned) for the first pass of epoch 2;
    Ultralytics reloads last.pt and redoes the epoch, with distillation still active."""
    state = {"epochs_started": 0, "poisoned_steps": 0}

    def on_epoch_start(trainer):
        state["epochs_started"] += 1
        loss = trainer.distiller.losses["cwd"]
        if not hasattr(loss, "_real_level"):
            loss._real_level = loss.level

            def level(s, t, module):
                value = loss._real_level(s, t, module)
                if state["epochs_started"] == 2:  # epoch 2, first attempt only
                    state["poisoned_steps"] += 1
                    return value * float("nan")
                return value

            loss.level = level

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_epoch_start", on_epoch_start)
    model.train(data=data_yaml, Distillation=teacher_pt, loss_type="cwd", project=project, name="nan",
                **{**TRAIN, "epochs": 3})
    assert state["poisoned_steps"] > 0
    assert state["epochs_started"] == 4  # epoch 2 was redone after reloading last.pt
    values = _column(Path(model.trainer.save_dir), "train/cwd_loss")
    assert len(values) == 3 and all(math.isfinite(v) and v > 0 for v in values)


def test_wrapped_student_needs_no_name_matching(data_yaml, teacher_pt, project):
    """Under DDP the student is wrapped (names gain a 'module.' prefix); layers are matched by index on the
    unwrapped model, so a wrapped student distils the same way."""
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=data_yaml, Distillation=teacher_pt,
                                                 loss_type="cwd", project=project, name="wrapped", **TRAIN))
    trainer._setup_train()
    trainer.model = torch.nn.DataParallel(trainer.model)  # CPU: a plain wrapper adding the 'module.' prefix
    assert next(iter(dict(trainer.model.named_parameters()))).startswith("module.")
    trainer.model.train()
    _, items = trainer.model(trainer.preprocess_batch(next(iter(trainer.train_loader))))
    assert float(items["cwd_loss"]) > 0


def test_teacher_forward_builds_no_graph(data_yaml, teacher_pt, project):
    trainer = DistillationTrainer(overrides=dict(model="yolov8n.yaml", data=data_yaml, Distillation=teacher_pt,
                                                 loss_type="cwd+kl", project=project, name="graph", **TRAIN))
    trainer._setup_train()
    trainer.model.train()
    with torch.enable_grad():
        trainer.preprocess_batch(next(iter(trainer.train_loader)))
    from distill.distiller import head_pairs

    ((feats, raw),) = trainer.distiller._teacher_out  # one teacher
    head = head_pairs(raw, raw)[0][1]
    for t in [*feats, raw[0], head["scores"], head["boxes"]]:
        assert not t.requires_grad and t.grad_fn is None
    assert not any(p.requires_grad for p in trainer.distiller.teacher.parameters())
    trainer.distiller.release()


# ---- bad input: one clear message, nothing on disk ----------------------------------------------------------------
def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train_distill.py"), *args], capture_output=True, text=True, cwd=cwd)


def _assert_clean_failure(done: subprocess.CompletedProcess, message: str, project: str) -> None:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not Path(project).exists() or not any(Path(project).iterdir()), list(Path(project).rglob("*"))


@pytest.fixture(scope="module")
def classify_pt(tmp_path_factory) -> str:
    from ultralytics import YOLO as PlainYOLO

    path = tmp_path_factory.mktemp("cls") / "classifier.pt"
    PlainYOLO("yolov8n-cls.yaml").save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def truncated_pt(tmp_path_factory, teacher_pt) -> str:
    path = tmp_path_factory.mktemp("bad") / "truncated.pt"
    data = Path(teacher_pt).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


@pytest.fixture(scope="module")
def renamed_data(tmp_path_factory, data_yaml) -> str:
    # No name left in common with the teacher's (circle, square, ...): nothing a logit loss could match.
    text = Path(data_yaml).read_text()
    for name in ("circle", "square", "triangle", "cross", "ring", "diamond"):
        text = text.replace(f": {name}", f": x_{name}")
    path = tmp_path_factory.mktemp("renamed") / "data.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing_teacher", "teacher checkpoint 'nowhere/teacher.pt' does not exist"),
        ("missing_student", "student checkpoint 'nowhere/student.pt' does not exist"),
        ("offline_asset", "teacher weights 'yolov8s.pt' are not on disk and this machine is offline"),
        ("offline_student", "student weights 'yolov8n.pt' are not on disk and this machine is offline"),
        ("classifier", "teacher must be a YOLO detection model, but its head is 'Classify'"),
        ("classes", "shares no class name with the dataset; the logit loss 'kl' (of loss_type 'kl') needs classes it "
                    "can match by name"),
        ("classes_default", "the logit loss 'kl' (of loss_type 'cwd+kl', the default) needs classes it can match by "
                            "name. Use a teacher trained on these classes, or only losses that need no shared classes"),
        ("levels", "the student (yolov8n-p2.yaml) distils 4 levels"),
        ("unknown_loss", "unknown distillation loss 'fgd'. Registered losses: at, at_channel, crosskd, cwd, kl, mgd, mimic, pkd"),
        ("negative_weight", "distill_weight must be >= 0"),
        ("temperature", "kl_temperature must be > 0"),
        ("mask_ratio", "mgd_mask_ratio must be in [0, 1)"),
        ("truncated", "could not be read"),
    ],
)
def test_bad_input_fails_before_training(case, message, data_yaml, teacher_pt, classify_pt, truncated_pt,
                                         renamed_data, tmp_path):
    project = str(tmp_path / "runs")
    base = ["--data", data_yaml, "--epochs", "1", "--imgsz", "64", "--batch", "8", "--project", project, "workers=0"]
    args = {
        "missing_teacher": ["--teacher", "nowhere/teacher.pt"],
        "missing_student": ["--teacher", teacher_pt, "--student", "nowhere/student.pt"],
        "offline_asset": ["--teacher", "yolov8s.pt"],
        "offline_student": ["--teacher", teacher_pt, "--student", "yolov8n.pt"],
        "classifier": ["--teacher", classify_pt],
        "classes": ["--teacher", teacher_pt, "--loss", "kl", "--data", renamed_data],
        "classes_default": ["--teacher", teacher_pt, "--data", renamed_data],  # no --loss: the message names the default
        "levels": ["--teacher", teacher_pt, "--student", "yolov8n-p2.yaml"],
        "unknown_loss": ["--teacher", teacher_pt, "--loss", "cwd+fgd"],
        "negative_weight": ["--teacher", teacher_pt, "--distill-weight", "-1"],
        "temperature": ["--teacher", teacher_pt, "--loss", "kl", "--kl-temperature", "0"],
        "mask_ratio": ["--teacher", teacher_pt, "--loss", "mgd", "--mgd-mask-ratio", "1.5"],
        "truncated": ["--teacher", truncated_pt],
    }[case]
    _assert_clean_failure(_cli(*base, *args, cwd=tmp_path), message, project)


@pytest.mark.parametrize(("flags", "message"), [(["--loss", "bogus"], "unknown distillation loss 'bogus'"),
                                               (["--kl-temperature", "0"], "kl_temperature must be > 0")])
def test_the_demo_checks_its_arguments_before_making_data_or_a_teacher(flags, message, tmp_path, monkeypatch):
    """No --data: the demo would generate its dataset and train its teacher (minutes) before a bad flag surfaced."""
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    project = str(tmp_path / "runs")
    done = _cli(*flags, "--project", project, cwd=tmp_path)
    _assert_clean_failure(done, message, project)
    assert "Preparing the demo teacher" not in done.stdout
    assert not (tmp_path / "cache").exists()


def test_feature_losses_proceed_with_a_warning_on_other_classes(renamed_data, teacher_pt, project, monkeypatch):
    import distill.trainer

    warnings: list[str] = []
    monkeypatch.setattr(distill.trainer.LOGGER, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    model = YOLO("yolov8n.yaml")
    model.train(data=renamed_data, Distillation=teacher_pt, loss_type="cwd", mgd_weight=2, project=project, name="warn",
                **TRAIN)
    assert (Path(model.trainer.save_dir) / "weights" / "best.pt").exists()
    assert any("teacher's classes" in w and "feature losses proceed" in w for w in warnings)
    assert any("mgd_weight set, but loss_type is 'cwd'" in w for w in warnings)  # a parameter with no effect


def test_python_api_errors_leave_nothing(data_yaml, project):
    with pytest.raises(FileNotFoundError, match="teacher checkpoint 'gone.pt' does not exist"):
        YOLO("yolov8n.yaml").train(data=data_yaml, Distillation="gone.pt", project=project, **TRAIN)
    with pytest.raises(ValueError, match="cwd_tau must be > 0"):
        YOLO("yolov8n.yaml").train(data=data_yaml, Distillation="yolov8s.yaml", cwd_tau=0, project=project, **TRAIN)
    with pytest.raises(FileNotFoundError, match="model weights 'yolov8x.pt' are not on disk"):
        YOLO("yolov8x.pt")
    assert not Path(project).exists()


def test_resume_keeps_the_distillation_free_tail(data_yaml, teacher_pt, project, monkeypatch):
    """distill_off_epochs=1 of 3, killed after epoch 1: the resumed run distils epoch 2 and trains epoch 3 on the
    detection loss alone, with no teacher forward there."""
    from distill.features import FeatureRecorder

    code = KILLED_RUN.replace("loss_type={loss!r}", 'loss_type="cwd", distill_off_epochs=1').replace(
        'distill_schedule="linear", distill_final=0.2, ', "")
    done = subprocess.run([sys.executable, "-c", code.format(root=str(ROOT), data=data_yaml, teacher=teacher_pt,
                                                             project=project)], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr[-2000:]
    last = Path(project) / "run" / "weights" / "last.pt"
    assert torch.load(last, map_location="cpu", weights_only=False)["train_args"]["distill_off_epochs"] == 1
    runs, real_run = [], FeatureRecorder.run
    monkeypatch.setattr(FeatureRecorder, "run", lambda self, model, img: runs.append(img.shape[0]) or real_run(self, model, img))
    counts = []
    model = YOLO(str(last))
    model.add_callback("on_train_epoch_start", lambda tr: counts.append(len(runs)))
    model.add_callback("on_train_epoch_end", lambda tr: counts.append(len(runs)))
    model.train(resume=True)
    assert counts[1] - counts[0] == 2 and counts[3] == counts[2]  # epoch 2: both batches; epoch 3: no teacher
    column = _column(Path(model.trainer.save_dir), "train/cwd_loss")
    assert len(column) == 3 and column[0] > 0 and column[1] > 0 and column[2] == 0
