"""Shared fixtures: a tiny synthetic dataset and a teacher checkpoint the tests train themselves."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The tests' teachers and datasets (a benchmark run without --teacher trains the task's teacher through the cache,
# the demo makes its data there) go to a private folder, never into the user's own cache; subprocesses inherit it.
# Set before distill is imported: it reads the variable once.
os.environ["DISTILL_CACHE_DIR"] = tempfile.mkdtemp(prefix="yolo-distill-tests-")
atexit.register(shutil.rmtree, os.environ["DISTILL_CACHE_DIR"], ignore_errors=True)

import distill  # noqa: E402,F401  (offline defaults before ultralytics loads)
from distill.synthetic import SyntheticSpec, synthetic_dataset  # noqa: E402

TINY = SyntheticSpec(n_train=16, n_val=8, imgsz=96, seed=1, max_objects=6)
TRAIN = dict(epochs=1, imgsz=64, batch=8, workers=0, plots=False, seed=0, exist_ok=True)


@pytest.fixture(scope="session")
def data_yaml(tmp_path_factory) -> str:
    return str(synthetic_dataset(TINY, root=tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def teacher_pt(tmp_path_factory, data_yaml) -> str:
    """A yolov8s checkpoint trained for one epoch on the tiny data (same classes as the student)."""
    from ultralytics import YOLO

    from distill.trainer import PlainDetectionTrainer

    project = tmp_path_factory.mktemp("teacher")
    model = YOLO("yolov8s.yaml")
    # Ultralytics' own trainer, but with the offline AMP check: on a GPU its check would try to fetch yolo26n.pt.
    model.train(data=data_yaml, project=str(project), name="t", trainer=PlainDetectionTrainer, **TRAIN)
    return str(project / "t" / "weights" / "last.pt")


@pytest.fixture(scope="session")
def teacher11_pt(tmp_path_factory, data_yaml) -> str:
    """A yolo11n checkpoint trained for one epoch on the tiny data: a second teacher of another family and widths."""
    from ultralytics import YOLO

    from distill.trainer import PlainDetectionTrainer

    project = tmp_path_factory.mktemp("teacher11")
    YOLO("yolo11n.yaml").train(data=data_yaml, project=str(project), name="t", trainer=PlainDetectionTrainer, **TRAIN)
    return str(project / "t" / "weights" / "last.pt")


@pytest.fixture(scope="session")
def task_data(tmp_path_factory) -> dict[str, str]:
    """data.yaml of the tiny synthetic set with segment, pose and obb labels (the same images as `data_yaml`)."""
    from dataclasses import replace

    root = tmp_path_factory.mktemp("task_data")
    return {task: str(synthetic_dataset(replace(TINY, task=task), root=root)) for task in ("segment", "pose", "obb")}


def ddp_workers(trainer, report: str) -> list[dict]:
    """Ultralytics' own DDP file for `trainer`, run in fresh processes as ranks 0 and 1 up to the point where they
    would train (Ultralytics reads RANK from the environment; no process group on CPU); each rank runs `report`
    (code printing 'WORKER <json>') after its set-up. Returns the reports in rank order."""
    import json
    import os
    import subprocess

    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

    file = generate_ddp_file(trainer)
    try:
        workers = []
        for rank in (0, 1):
            script = Path(file).read_text().replace("trainer.train()", "trainer._setup_train()\n" + report)
            done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"})
            assert done.returncode == 0, done.stderr[-3000:]
            workers.append(json.loads(done.stdout.split("WORKER ", 1)[1].splitlines()[0]))
    finally:
        ddp_cleanup(trainer, file)
    return workers


@pytest.fixture()
def project(tmp_path) -> str:
    return str(tmp_path / "runs")


NETGUARD = Path(__file__).resolve().parent / "netguard"


@pytest.fixture(scope="session", autouse=True)
def no_network(tmp_path_factory):
    """Fail the session if anything (Ultralytics included) tries to reach a non-local host, in this process
    or in any Python subprocess a test starts: they inherit PYTHONPATH and load netguard/sitecustomize.py."""
    import importlib.util
    import os

    log = tmp_path_factory.mktemp("net") / "attempts.log"
    log.touch()
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "DISTILL_NET_LOG")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), saved["PYTHONPATH"]]))
    os.environ["DISTILL_NET_LOG"] = str(log)
    spec = importlib.util.spec_from_file_location("distill_netguard", NETGUARD / "sitecustomize.py")
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)  # this process: the same guard

    yield log
    guard.uninstall()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    attempts = log.read_text().strip()
    assert not attempts, f"network access attempted:\n{attempts}"


@pytest.fixture(autouse=True)
def teacher_stays_frozen(monkeypatch):
    """Every test that trains: afterwards every teacher's weights and BatchNorm buffers are bitwise unchanged,
    it is in eval mode, needs no gradients, sits in no optimizer parameter group, and is not inside the student."""
    import torch

    from distill.trainer import DistillationMixin, DistillationTrainer

    original = DistillationTrainer._do_train  # Ultralytics' own; on the mixin, the guard covers every task's trainer

    def checked(self):
        teachers = [t.model for t in self.distiller.teachers]
        # on the CPU: moved in _setup_train
        before = [{k: v.detach().clone() for k, v in t.state_dict().items()} for t in teachers]
        try:
            return original(self)
        finally:
            for i, (teacher, saved) in enumerate(zip(teachers, before)):
                after = teacher.state_dict()
                assert saved.keys() == after.keys()
                assert all(torch.equal(v.to(after[k].device), after[k]) for k, v in saved.items()), \
                    f"teacher {i + 1}: weights or buffers changed"
                assert not any(m.training for m in teacher.modules()), f"teacher {i + 1} left eval mode"
                assert not any(p.requires_grad for p in teacher.parameters()), f"teacher {i + 1} requires grad"
                ids = {id(p) for p in teacher.parameters()}
                if self.optimizer is not None:
                    assert not any(id(p) in ids for g in self.optimizer.param_groups for p in g["params"])
                # not inside the student, so neither in its EMA copy nor in any checkpoint made from them
                student = getattr(self.model, "module", self.model)  # a str when the set-up failed before building it
                if isinstance(student, torch.nn.Module):
                    assert not any(id(p) in ids for p in student.parameters()), f"teacher {i + 1} is inside the student"

    monkeypatch.setattr(DistillationMixin, "_do_train", checked, raising=False)
