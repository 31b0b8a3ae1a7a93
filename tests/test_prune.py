"""Structured pruning into a plain Ultralytics checkpoint, and distilling the pruned student from the unpruned model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TRAIN
from distill import YOLO
from distill.compare import results_columns

pytest.importorskip("torch_pruning")

from distill.deploy.prune import main, prune_checkpoint, prune_model  # noqa: E402

# What plain Ultralytics does with a checkpoint it is asked to train: rebuild the model from the checkpoint's YAML
# and copy over the weights whose shapes fit. In a process where this package cannot be imported.
PLAIN_RETRAIN = r"""
import sys
sys.modules["distill"] = None
import torch
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionTrainer
model = YOLO(sys.argv[1])
trainer = DetectionTrainer(overrides=dict(model=sys.argv[1], data=sys.argv[2], epochs=1, imgsz=64, workers=0,
                                          plots=False, project=sys.argv[3], name="plain"))
rebuilt = trainer.get_model(cfg=model.model.yaml, weights=model.model, verbose=False)
a, b = model.model.float().state_dict(), rebuilt.state_dict()
assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights lost in the rebuild"
metrics = model.val(data=sys.argv[2], imgsz=64, batch=8, plots=False, verbose=False, project=sys.argv[3], name="val")
print("PLAIN OK", sum(p.numel() for p in model.model.parameters()), metrics.box.map)
"""


def test_a_pruned_checkpoint_is_a_plain_ultralytics_one(teacher_pt, data_yaml, tmp_path):
    """Half the channels of each group go (about a quarter of the parameters stay); the result loads, validates and
    is rebuilt from its own YAML with every weight by plain Ultralytics, and computes what the pruned model does."""
    out = prune_checkpoint(teacher_pt, 0.5, tmp_path / "pruned.pt", imgsz=64)
    before = sum(p.numel() for p in YOLO(teacher_pt).model.parameters())
    ckpt = torch.load(out, map_location="cpu", weights_only=False)
    model = ckpt["model"].float()
    after = sum(p.numel() for p in model.parameters())
    assert 0.15 * before < after < 0.4 * before
    assert ckpt["pruned"] == {"from": teacher_pt, "ratio": 0.5} and model.yaml["width_multiple"] == 1.0
    assert not any(hasattr(m, "half_a") or "forward" in vars(m) for m in model.modules())  # no pruning scaffolding left
    done = subprocess.run([sys.executable, "-c", PLAIN_RETRAIN, str(out), data_yaml, str(tmp_path / "runs")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "PLAIN OK" in done.stdout, done.stderr[-3000:]
    assert int(done.stdout.split("PLAIN OK ")[1].split()[0]) == after


def test_the_pruned_model_computes_what_its_yaml_rebuilds(teacher_pt):
    from ultralytics.nn.tasks import DetectionModel

    pruned = prune_model(YOLO(teacher_pt).model, 0.25, imgsz=64)
    rebuilt = DetectionModel(pruned.yaml, nc=pruned.model[-1].nc, verbose=False)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(pruned.eval()(x)[0], rebuilt.eval()(x)[0], atol=1e-4)
    from ultralytics.nn.modules import Conv

    original = [m.conv.out_channels for m in YOLO(teacher_pt).model.modules() if isinstance(m, Conv)]
    widths = [m.conv.out_channels for m in pruned.modules() if isinstance(m, Conv)]
    assert all(w % 8 == 0 for w in widths) and sum(widths) < 0.85 * sum(original)  # multiples of 8, a quarter gone


def test_distil_the_pruned_student_from_the_unpruned_model(teacher_pt, data_yaml, project, tmp_path):
    """The pruned yolov8s trains as a student of the unpruned one: its own widths are kept (not rebuilt from the
    original YAML), connectors map them to the teacher's, and the distillation terms train."""
    out = prune_checkpoint(teacher_pt, 0.5, tmp_path / "pruned.pt", imgsz=64)
    pruned_widths = [m.out_channels for m in torch.load(out, weights_only=False)["model"].modules()
                     if isinstance(m, torch.nn.Conv2d)]
    student = YOLO(str(out))
    student.train(data=data_yaml, Distillation=teacher_pt, loss_type="cwd+kl", project=project, name="pruned", **TRAIN)
    trained = torch.load(Path(project) / "pruned" / "weights" / "last.pt", weights_only=False)["model"]
    assert [m.out_channels for m in trained.modules() if isinstance(m, torch.nn.Conv2d)] == pruned_widths
    columns = results_columns(Path(project) / "pruned")
    assert columns["train/cwd_loss"][0] > 0 and columns["train/kl_loss"][0] > 0


def test_models_the_pruner_cannot_write_back_are_refused(tmp_path, capsys):
    from ultralytics.nn.tasks import DetectionModel

    with pytest.raises(ValueError, match="supports YOLOv8-style detection models .* this one has C2PSA, C3k2"):
        prune_model(DetectionModel("yolo11n.yaml", nc=3, verbose=False), 0.5)
    with pytest.raises(ValueError, match="--ratio must be between 0 and 1"):
        prune_model(DetectionModel("yolov8n.yaml", nc=3, verbose=False), 1.5)
    assert main([str(tmp_path / "missing.pt"), "--ratio", "0.5"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_command_reports_sizes(teacher_pt, tmp_path, capsys):
    assert main([teacher_pt, "--ratio", "0.5", "--imgsz", "64", "--out", str(tmp_path / "p.pt")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'p.pt'}:" in out and "M parameters" in out and (tmp_path / "p.pt").is_file()
