"""Deployment: a distilled student exports to ONNX with Ultralytics' exporter and computes what the checkpoint does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TRAIN
from distill import YOLO

pytest.importorskip("onnxruntime", reason="the export extra: pip install -e '.[export]'")


def test_distilled_student_exports_to_onnx_with_output_parity(data_yaml, teacher_pt, project):
    from distill.deploy.export import main

    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, Distillation=teacher_pt, loss_type="kl", project=project, name="onnx", **TRAIN)
    best = Path(model.trainer.save_dir) / "weights" / "best.pt"
    assert main([str(best), "--data", data_yaml, "--imgsz", "64", "--images", "4"]) == 0
    report = json.loads(best.with_suffix(".parity.json").read_text())
    assert Path(report["onnx"]).is_file() and report["onnx_mb"] > 0
    assert report["score_std"] > 0  # the outputs compared are not constant
    assert report["max_box_diff_px"] < 1e-2 and report["max_score_diff"] < 1e-4
    assert report["map50_95_onnx"] == pytest.approx(report["map50_95_pt"], abs=1e-4)
    with pytest.raises(SystemExit):
        main([str(best.with_name("gone.pt")), "--data", data_yaml])


def test_validation_images_from_a_folder_or_an_image_list(data_yaml, tmp_path):
    """The val split as a folder (the synthetic data) or as a .txt list of paths relative to it (as in coco.yaml)."""
    from distill.deploy.export import val_images

    from_folder = val_images(data_yaml, 3)
    root = Path(data_yaml).parent
    (tmp_path / "val.txt").write_text("\n".join(str(p) for p in sorted((root / "images" / "val").iterdir())))
    listed = tmp_path / "data.yaml"
    listed.write_text(f"path: {root}\ntrain: images/train\nval: {tmp_path / 'val.txt'}\nnames: {{0: circle}}\n")
    assert len(from_folder) == 3 and val_images(listed, 3) == from_folder
