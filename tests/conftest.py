"""Shared fixtures: a tiny synthetic dataset and a teacher checkpoint the tests train themselves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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

    project = tmp_path_factory.mktemp("teacher")
    model = YOLO("yolov8s.yaml")
    model.train(data=data_yaml, project=str(project), name="t", **TRAIN)
    return str(project / "t" / "weights" / "last.pt")


@pytest.fixture()
def project(tmp_path) -> str:
    return str(tmp_path / "runs")


@pytest.fixture(scope="session", autouse=True)
def no_network():
    """Fail the session if anything (Ultralytics included) tries to reach a non-local host."""
    import socket

    attempts: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    local = ("127.", "::1", "localhost", "0.0.0.0")

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if not str(host).startswith(local) and sock.family != getattr(socket, "AF_UNIX", None):
            attempts.append(f"connect {address}")
            raise OSError("network disabled in tests")
        return real_connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not str(host).startswith(local):
            attempts.append(f"resolve {host}")
            raise socket.gaierror("network disabled in tests")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.getaddrinfo = guarded_connect, guarded_getaddrinfo
    yield
    socket.socket.connect, socket.getaddrinfo = real_connect, real_getaddrinfo
    assert not attempts, f"network access attempted: {attempts}"


@pytest.fixture(autouse=True)
def teacher_stays_frozen(monkeypatch):
    """Every test that trains: afterwards the teacher's weights and BatchNorm buffers are bitwise unchanged,
    it is in eval mode, needs no gradients and sits in no optimizer parameter group."""
    import torch

    from distill.trainer import DistillationTrainer

    original = DistillationTrainer._do_train

    def checked(self):
        teacher = self.distiller.teacher
        before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
        try:
            return original(self)
        finally:
            after = teacher.state_dict()
            assert before.keys() == after.keys()
            assert all(torch.equal(v, after[k]) for k, v in before.items()), "teacher weights or buffers changed"
            assert not any(m.training for m in teacher.modules()), "teacher left eval mode"
            assert not any(p.requires_grad for p in teacher.parameters()), "teacher parameters require grad"
            ids = {id(p) for p in teacher.parameters()}
            if self.optimizer is not None:
                assert not any(id(p) in ids for g in self.optimizer.param_groups for p in g["params"])

    monkeypatch.setattr(DistillationTrainer, "_do_train", checked)
