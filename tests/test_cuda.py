"""CUDA with Ultralytics' real AMP path (fp16 autocast, GradScaler on): what CPU tests can only imitate.

Skipped where no GPU is visible (CI, the 2-core machines); run them on a lent GPU with
`python -m pytest tests/test_cuda.py`. The AMP check is the package's offline one (distill/amp_check.py):
without yolo26n.pt on disk it keeps AMP on, as Ultralytics does offline, and the network guard
(tests/conftest.py) fails the session if anything still reaches for the network.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TRAIN
from distill import YOLO
from distill.distiller import Distiller
from distill.losses import available_losses, get_loss_class

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Every registered loss alone, two together, and self-balancing by gradient (its autograd.grad under the scaler).
CASES = [(name, {}) for name in available_losses()] + [
    ("cwd+kl", {}),
    ("cwd+kl", {"distill_balance": 0.5, "distill_balance_by": "gradient", "distill_balance_steps": 1}),
]


@pytest.mark.parametrize(("loss_type", "extra"), CASES, ids=[f"{n}{'-balanced' if e else ''}" for n, e in CASES])
def test_fp16_amp_training_on_cuda(data_yaml, teacher_pt, project, monkeypatch, loss_type, extra):
    """Two epochs on the GPU with AMP: the scaler is on, the student's maps are fp16, every term is computed
    in fp32 outside autocast and is finite, the teacher sits on the GPU, and the checkpoint validates."""
    outputs, maps = [], []
    # Spy on every __call__ the registered losses run (FeatureLoss's, LogitLoss's, or a loss's own).
    owners = {c for n in available_losses() for c in get_loss_class(n).__mro__ if "__call__" in vars(c)} - {object}
    for cls in owners:
        monkeypatch.setattr(cls, "__call__", _spied(cls.__call__, outputs))
    real_terms = Distiller.terms
    monkeypatch.setattr(Distiller, "terms", lambda self, preds, *rest: maps.append(self._student_rec._outputs[0].dtype)
                        or real_terms(self, preds, *rest))

    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, Distillation=teacher_pt, loss_type=loss_type, device=0, amp=True, project=project,
                name="cuda", **{**TRAIN, "epochs": 2}, **extra)
    trainer = model.trainer
    assert trainer.device.type == "cuda" and trainer.amp is True and trainer.scaler.is_enabled()
    assert next(trainer.distiller.teacher.parameters()).device.type == "cuda"
    assert maps and set(maps) == {torch.float16}
    assert {name for name, *_ in outputs} == set(loss_type.split("+"))
    for name, autocast_on, dtype, finite in outputs:
        assert not autocast_on and dtype == torch.float32 and finite, (name, autocast_on, dtype, finite)
    assert math.isfinite(float(trainer.loss))  # the last step's total, distillation included
    metrics = YOLO(str(trainer.best)).val(data=data_yaml, imgsz=TRAIN["imgsz"], batch=8, device=0, plots=False,
                                            project=project, name="val")
    assert 0.0 <= metrics.box.map <= 1.0


@pytest.mark.parametrize("ensemble", [False, True])
def test_two_teachers_on_cuda(data_yaml, teacher_pt, teacher11_pt, project, monkeypatch, ensemble):
    """Two teachers of other families (yolov8s, yolo11n) with AMP: both on the GPU, every term fp32 and finite, per
    teacher or against the kl ensemble target."""
    outputs = []
    owners = {c for n in ("cwd", "kl") for c in get_loss_class(n).__mro__ if "__call__" in vars(c)} - {object}
    for cls in owners:
        monkeypatch.setattr(cls, "__call__", _spied(cls.__call__, outputs))
    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, Distillation=[teacher_pt, teacher11_pt], loss_type="cwd+kl", distill_ensemble=ensemble,
                device=0, amp=True, project=project, name="two", **{**TRAIN, "epochs": 2})
    trainer = model.trainer
    assert trainer.amp is True and trainer.scaler.is_enabled() and trainer.distiller.ensemble is ensemble
    assert len(trainer.distiller.teachers) == 2
    assert all(next(t.model.parameters()).device.type == "cuda" for t in trainer.distiller.teachers)
    assert outputs and all(not on and dtype == torch.float32 and ok for _, on, dtype, ok in outputs)
    assert math.isfinite(float(trainer.loss))


def _spied(real, outputs):
    def spy(self, s, t, modules=None):
        out = real(self, s, t, modules)
        outputs.append((self.name, torch.is_autocast_enabled("cuda"), out.dtype, bool(torch.isfinite(out))))
        return out

    return spy


def test_cli_on_cuda(data_yaml, teacher_pt, tmp_path):
    """The README's command shape on the GPU: `--device 0` with AMP, to a checkpoint that loads."""
    cmd = [sys.executable, str(ROOT / "train_distill.py"), "--teacher", teacher_pt, "--student", "yolov8n.yaml",
           "--loss", "mgd", "--data", data_yaml, "--epochs", "1", "--imgsz", "64", "--batch", "8", "--device", "0",
           "--workers", "0", "--project", str(tmp_path), "--name", "cli"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "cli" / "weights" / "last.pt").is_file()
