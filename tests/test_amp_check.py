"""The offline AMP check: Ultralytics' answer without its download of yolo26n.pt, in every trainer we run.

On a GPU the real path ran in tests/test_cuda.py (whose network guard caught the download attempt before this
check existed); here the decision is driven with a stand-in CUDA device, and the wiring with real CPU training.
"""

from __future__ import annotations

import pytest
import torch
import ultralytics.engine.trainer as engine
import ultralytics.utils.checks as checks

import distill.amp_check as amp
from conftest import TRAIN
from distill import YOLO


class _OnCuda(torch.nn.Module):
    """A model whose parameters claim to live on an accelerator (only `.device` is read before the decision)."""

    def __init__(self, device: str = "cuda:0"):
        super().__init__()
        self._device = torch.device(device)

    def parameters(self, recurse: bool = True):
        yield type("Param", (), {"device": self._device})()


@pytest.fixture()
def offline_without_weights(monkeypatch, tmp_path):
    import ultralytics.utils as uu

    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setattr(uu, "WEIGHTS_DIR", tmp_path)
    return tmp_path


def _forbid_ultralytics_check(monkeypatch):
    def fetching(model):
        raise AssertionError("Ultralytics' check_amp ran: it would download yolo26n.pt")

    monkeypatch.setattr(checks, "check_amp", fetching)


@pytest.mark.parametrize(("gpu", "expected"), [("NVIDIA H200", True), ("NVIDIA GeForce GTX 1660 Ti", False),
                                               ("Quadro T1000", False)])
def test_offline_answer_without_the_download(gpu, expected, offline_without_weights, monkeypatch):
    _forbid_ultralytics_check(monkeypatch)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    assert amp.amp_check(_OnCuda()) is expected


def test_other_accelerators_get_the_offline_answer_too(offline_without_weights, monkeypatch):
    """Ultralytics' check returns early only on CPU and MPS: on XPU or NPU it would fetch the weights as well."""
    _forbid_ultralytics_check(monkeypatch)
    assert amp.amp_check(_OnCuda("xpu")) is True


@pytest.mark.parametrize("case", ["weights on disk", "online", "cpu"])
def test_ultralytics_check_runs_whenever_it_needs_no_download(case, offline_without_weights, monkeypatch):
    calls = []
    monkeypatch.setattr(checks, "check_amp", lambda model: calls.append(model) or "ultralytics")
    model = _OnCuda()
    if case == "weights on disk":
        (offline_without_weights / amp.CHECK_WEIGHTS).write_bytes(b"x")
    elif case == "online":
        monkeypatch.setenv("YOLO_OFFLINE", "0")
    else:
        model = torch.nn.Linear(1, 1)
    assert amp.amp_check(model) == "ultralytics" and calls == [model]


@pytest.mark.parametrize("with_teacher", [True, False])
def test_trainers_use_it_and_put_ultralytics_back(with_teacher, data_yaml, teacher_pt, project, monkeypatch):
    """Distilled and plain runs of distill.YOLO: the trainer's set-up calls amp_check (amp=True is the default),
    and afterwards Ultralytics' module holds its own check_amp again."""
    original, seen = engine.check_amp, []
    real = amp.amp_check
    monkeypatch.setattr(amp, "amp_check", lambda model: seen.append(type(model).__name__) or real(model))
    extra = {"Distillation": teacher_pt, "loss_type": "kl"} if with_teacher else {}
    YOLO("yolov8n.yaml").train(data=data_yaml, project=project, name="amp", **extra, **TRAIN)
    assert seen == ["DetectionModel"]
    assert engine.check_amp is original
