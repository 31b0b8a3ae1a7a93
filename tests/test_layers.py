"""Which layers are distilled: defaults, pairing across families, negative indices, unusable outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from conftest import TRAIN
from distill import YOLO
from distill.features import pair_layers


@pytest.fixture(scope="module")
def models() -> dict[str, DetectionModel]:
    return {name: DetectionModel(f"{name}.yaml", nc=6, verbose=False) for name in ("yolov8n", "yolov8s", "yolo11s")}


def test_pairing_rules(models):
    v8n, v8s, v11s = models["yolov8n"], models["yolov8s"], models["yolo11s"]
    assert pair_layers(v8n, v11s, None, None) == ([15, 18, 21], [16, 19, 22])  # each model's Detect inputs
    # one side given: a Detect input pairs with the other model's Detect input at the same position
    assert pair_layers(v8n, v11s, [15, 18, 21], None) == ([15, 18, 21], [16, 19, 22])
    assert pair_layers(v8n, v11s, [21], None) == ([21], [22])
    assert pair_layers(v8n, v11s, None, [19]) == ([18], [19])
    # other layers keep their index where both models share a layout (v8n / v8s), and are refused otherwise
    assert pair_layers(v8n, v8s, [6, 9], None) == ([6, 9], [6, 9])
    with pytest.raises(ValueError, match="set distill_teacher_layers as well"):
        pair_layers(v8n, v11s, [6], None)
    # negative indices count back from the head, like Ultralytics' `from`: -1 is the layer feeding the head
    assert pair_layers(v8n, v11s, [-1], None) == ([21], [22])
    assert pair_layers(v8n, v8s, [-2, -1], [-2, -1]) == ([20, 21], [20, 21])
    with pytest.raises(ValueError, match=r"student layer 22 is out of range: the model has layers 0..21"):
        pair_layers(v8n, v8s, [22], None)
    with pytest.raises(ValueError, match="teacher layer -23 is out of range"):
        pair_layers(v8n, v8s, None, [-23])


def test_student_layers_alone_pair_with_the_teachers_detect_inputs(data_yaml, project):
    """`distill_layers` set, `distill_teacher_layers` not: a YOLO11 teacher is tapped at its own Detect inputs
    (16, 19, 22), not at the student's indices (15, 18, 21: Concat layers in YOLO11)."""
    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, Distillation="yolo11s.yaml", loss_type="cwd", distill_layers="15,18,21",
                project=project, name="pair", **TRAIN)
    record = torch.load(Path(model.trainer.save_dir) / "weights" / "last.pt", map_location="cpu",
                        weights_only=False)["distill"]
    assert (record["student_layers"], record["teacher_layers"]) == ([15, 18, 21], [16, 19, 22])
    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, Distillation="yolo11s.yaml", loss_type="cwd", distill_layers="-1", project=project,
                name="last", **TRAIN)
    assert (model.trainer.distiller.student_layers, model.trainer.distiller.teacher_layers) == ([21], [22])


def test_a_layer_without_one_feature_map_is_refused_before_training(data_yaml, tmp_path):
    """YOLOv9's CBLinear layers output a tuple of splits: a clear error, and no run folder left behind."""
    project = tmp_path / "runs"
    with pytest.raises(ValueError, match=r"teacher layer 10 \(CBLinear\) outputs a tuple of 1, not one \(B, C, H, W\)"):
        YOLO("yolov8n.yaml").train(data=data_yaml, Distillation="yolov9e.yaml", loss_type="cwd", distill_layers="21",
                                   distill_teacher_layers="10", project=str(project), name="tuple", **TRAIN)
    assert not project.exists() or not any(project.iterdir()), list(project.rglob("*"))


def test_a_teacher_fused_for_end_to_end_inference_is_refused():
    """Fusing a YOLO26 head for NMS-free inference deletes its dense branch, which distillation reads."""
    from distill.teacher import load_teacher

    model = DetectionModel("yolo26n.yaml", nc=3, verbose=False)
    assert load_teacher(model) is model
    model.model[-1].end2end = True
    model.fuse(verbose=False)
    with pytest.raises(ValueError, match="head was fused for inference"):
        load_teacher(model)


def test_gradient_probe_skips_maps_of_frozen_layers():
    """grad_norm over the distilled maps when some come from frozen layers (Ultralytics' freeze=): only the others."""
    from distill.distiller import grad_norm

    frozen, live = torch.ones(2, 3), torch.full((2, 3), 2.0, requires_grad=True)
    value = (live**2).sum() + frozen.sum()
    assert float(grad_norm(value, [frozen, live])) == pytest.approx(float((2 * live).norm()))
    assert float(grad_norm(frozen.sum(), [frozen])) == 0.0
