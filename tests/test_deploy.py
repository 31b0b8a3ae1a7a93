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


def test_an_int8_onnx_calibrated_on_training_images(data_yaml, teacher_pt, tmp_path):
    """--int8: Ultralytics' INT8 ONNX (QDQ) beside the fp32 one, both kept: about a quarter of its size, every
    convolution's weights int8 but the DFL's fixed one, the decoding that ends in the output in fp32 (so the class
    probabilities survive), run by onnxruntime on the CPU, compared on the same images and validated."""
    import shutil

    import onnx

    from distill.deploy.export import main

    weights = tmp_path / "teacher.pt"
    shutil.copyfile(teacher_pt, weights)
    assert main([str(weights), "--data", data_yaml, "--imgsz", "64", "--images", "4", "--int8"]) == 0
    report = json.loads(weights.with_suffix(".parity.json").read_text())
    int8 = report["int8"]
    assert Path(report["onnx"]).is_file() and Path(int8["onnx"]).is_file() and int8["onnx"] != report["onnx"]
    assert int8["calibration"] == {"split": "train", "fraction": 1.0} and int8["onnx_mb"] < 0.4 * report["onnx_mb"]
    graph = onnx.load(int8["onnx"]).graph
    made_by = {out: n for n in graph.node for out in n.output}
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}  # int8 -> float
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert sum(n.input[1] in dequantized for n in convs) >= len(convs) - 1  # all but the DFL's fixed 1x1 conv
    last = made_by[graph.output[0].name]  # the concat of decoded boxes and class probabilities
    assert last.op_type != "DequantizeLinear" and not any(i in dequantized for i in last.input)
    assert report["score_std"] > 0 and int8["max_score_diff"] < 0.1 and "map50_95_int8" in report


def test_the_stage_report_measures_every_stage_side_by_side(data_yaml, teacher_pt, tmp_path, capsys):
    """Checkpoints and ONNX files in one report: sizes (a pruned model smaller), times, mAP as Ultralytics validates
    it; JSON, Markdown and PNG written; a bad stage fails before anything is measured."""
    import shutil

    from ultralytics import YOLO as PlainYOLO

    from distill.deploy.report import main

    pytest.importorskip("torch_pruning")
    from distill.deploy.prune import prune_checkpoint

    weights = tmp_path / "model.pt"
    shutil.copyfile(teacher_pt, weights)
    onnx_file = PlainYOLO(str(weights)).export(format="onnx", imgsz=64, verbose=False)
    pruned = prune_checkpoint(weights, 0.5, tmp_path / "pruned.pt", imgsz=64)
    out = tmp_path / "report"
    assert main(["--data", data_yaml, "--imgsz", "64", "--images", "2", "--rounds", "2", "--out", str(out),
                 "--stage", f"model={weights}", "--stage", f"pruned={pruned}", "--stage", f"onnx={onnx_file}"]) == 0
    report = json.loads((out / "report.json").read_text())
    rows = report["stages"]
    assert list(rows) == ["model", "pruned", "onnx"] and all(r["ms_per_image"] > 0 for r in rows.values())
    assert rows["pruned"]["params_m"] < 0.4 * rows["model"]["params_m"] and rows["onnx"]["params_m"] is None
    assert rows["pruned"]["gflops"] < rows["model"]["gflops"] and rows["onnx"]["file_mb"] > rows["pruned"]["file_mb"]
    for name, path in (("model", weights), ("pruned", pruned), ("onnx", onnx_file)):  # Ultralytics' own validation
        direct = PlainYOLO(str(path), task="detect").val(data=data_yaml, imgsz=64, batch=1, rect=False, plots=False,
                                                         verbose=False)
        assert rows[name]["map50_95"] == pytest.approx(direct.box.map, abs=1e-6), name
    assert "| pruned |" in (out / "report.md").read_text() and (out / "report.png").stat().st_size > 1000
    assert "time vs first" in capsys.readouterr().out
    assert main(["--data", data_yaml, "--stage", "model", "--out", str(tmp_path / "bad")]) == 2
    assert main(["--data", data_yaml, "--stage", f"x={tmp_path / 'gone.pt'}", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
