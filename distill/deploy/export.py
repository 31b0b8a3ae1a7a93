"""Export a student checkpoint to ONNX with Ultralytics' own exporter, and check that the file computes what the
checkpoint computes: the decoded head output on the same letterboxed validation images, and mAP on the val split
(both at the export's fixed square input size). With `--int8`, also Ultralytics' INT8 ONNX file for CPUs
(`export(format="onnx", quantize=8)`: onnxruntime static quantization of the convolutions, calibrated here on the
training split; the head's decoding stays in fp32), with the same checks. Writes `<model>.parity.json` beside the
ONNX file.

    python -m distill.deploy.export runs/distill/exp/weights/best.pt --data data.yaml --imgsz 640 --int8

Needs the `export` extra (`pip install 'yolo-distill[export]'`: onnx, onnxruntime, onnxslim).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


def val_images(data: str | Path, n: int) -> list[Path]:
    """The first `n` validation images of a dataset (sorted by name)."""
    from ultralytics.data.utils import IMG_FORMATS, check_det_dataset

    split = check_det_dataset(str(data))["val"]
    files = []
    for entry in map(Path, split if isinstance(split, list) else [split]):
        if entry.suffix == ".txt":  # a list of image paths, relative to the list's folder (as in coco.yaml)
            files += [entry.parent / line.strip() for line in entry.read_text().splitlines() if line.strip()]
        else:
            files += [f for f in entry.rglob("*") if f.suffix[1:].lower() in IMG_FORMATS]
    files = sorted(f for f in files if f.suffix[1:].lower() in IMG_FORMATS)
    if not files:
        raise ValueError(f"{data}: no validation images to compare the export on.")
    return files[:n]


def letterboxed(image: Path, imgsz: int) -> torch.Tensor:
    """(1, 3, imgsz, imgsz) float in [0, 1], RGB: the exporter's fixed input shape, filled the way Ultralytics fills it."""
    import cv2
    from ultralytics.data.augment import LetterBox

    bgr = cv2.imread(str(image))
    boxed = LetterBox((imgsz, imgsz), auto=False)(image=bgr)
    return torch.from_numpy(np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1))).float().div(255).unsqueeze(0)


def onnx_parity(weights: str | Path, onnx_path: str | Path, images: list[Path], imgsz: int) -> dict[str, float]:
    """Largest differences between the checkpoint's and the ONNX file's decoded outputs (B, 4 + nc, anchors) on
    `images`: boxes in pixels, class scores in probability; the largest box difference at each image's 100 anchors
    the checkpoint is most confident in (where detections come from: an INT8 file's boxes at background anchors can
    be far off and cost nothing); plus the spread of the scores (0 would compare nothing)."""
    import onnxruntime as ort
    from ultralytics import YOLO

    net = YOLO(str(weights)).model.float().eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    box, score, top_box, spread = 0.0, 0.0, 0.0, []
    for image in images:
        x = letterboxed(image, imgsz)
        with torch.no_grad():
            ref = net(x)
        ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).numpy()
        out = session.run(None, {name: x.numpy()})[0]
        if out.shape != ref.shape:
            raise ValueError(f"{onnx_path}: output shape {out.shape}, the checkpoint's is {ref.shape}.")
        box = max(box, float(np.abs(out[:, :4] - ref[:, :4]).max()))
        top = np.argsort(-ref[0, 4:].max(0))[:100]
        top_box = max(top_box, float(np.abs(out[0, :4, top] - ref[0, :4, top]).max()))
        score = max(score, float(np.abs(out[:, 4:] - ref[:, 4:]).max()))
        spread.append(float(ref[:, 4:].std()))
    return {"max_box_diff_px": box, "max_box_diff_top100_px": top_box, "max_score_diff": score,
            "score_std": float(np.mean(spread))}


def stage_task(path: Path) -> str:
    """The task of a checkpoint, or of an ONNX file from the metadata Ultralytics' exporter writes into it."""
    if path.suffix == ".onnx":
        import onnx

        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return meta.get("task", "detect")
    from ultralytics import YOLO

    return YOLO(str(path)).task


def accuracy(path: Path, data: str, imgsz: int, project: Path | None = None) -> dict[str, float]:
    """mAP50-95 and mAP50 of one stage on the val split, at the fixed square input the exports take (rect=False:
    a checkpoint's default rectangular batches would letterbox differently from its export). project: where the
    validation writes (default: Ultralytics' own runs folder)."""
    from ultralytics import YOLO

    from distill.compare import task_metric

    metrics = YOLO(str(path), task=stage_task(path)).val(data=data, imgsz=imgsz, batch=1, rect=False, plots=False,
                                                         verbose=False, device="cpu", name=f"val-{path.stem}",
                                                         exist_ok=True, **({"project": str(project)} if project else {}))
    score = task_metric(metrics)
    return {"map50_95": float(score.map), "map50": float(score.map50)}


def export_onnx(weights: str | Path, data: str | Path, imgsz: int, images: int = 8, validate: bool = True,
                int8: bool = False, calibration_fraction: float = 1.0) -> dict[str, Any]:
    """ONNX file of `weights` (next to it), its output parity on `images` validation images, and both mAPs; with
    `int8` also Ultralytics' INT8 ONNX file, calibrated on that fraction of the training split, with its parity and
    mAP."""
    from ultralytics import YOLO

    weights = Path(weights)
    # INT8 first: Ultralytics' INT8 export writes the fp32 file under the same name on its way and removes it after
    int8_path = Path(YOLO(str(weights)).export(format="onnx", imgsz=imgsz, dynamic=False, quantize=8, data=str(data),
                                               split="train", fraction=calibration_fraction, verbose=False)) if int8 else None
    onnx_path = Path(YOLO(str(weights)).export(format="onnx", imgsz=imgsz, dynamic=False, verbose=False))
    compared = val_images(data, images)
    report: dict[str, Any] = {"weights": str(weights), "onnx": str(onnx_path), "imgsz": imgsz,
                              "onnx_mb": round(onnx_path.stat().st_size / 2**20, 2),
                              **onnx_parity(weights, onnx_path, compared, imgsz)}
    files = [("pt", weights), ("onnx", onnx_path)]
    if int8_path is not None:
        report["int8"] = {"onnx": str(int8_path), "calibration": {"split": "train", "fraction": calibration_fraction},
                          "onnx_mb": round(int8_path.stat().st_size / 2**20, 2),
                          **onnx_parity(weights, int8_path, compared, imgsz)}
        files.append(("int8", int8_path))
    if validate:
        # rect=False for all (in accuracy): the export takes fixed imgsz x imgsz inputs, and the checkpoint's default
        # rectangular batches would letterbox differently (0.009 mAP50-95 apart on a yolov8s whose outputs agree to
        # 1e-4 px).
        for key, source in files:
            score = accuracy(Path(source), str(data), imgsz)
            report[f"map50_95_{key}"], report[f"map50_{key}"] = score["map50_95"], score["map50"]
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="a student checkpoint (.pt)")
    p.add_argument("--data", required=True, help="the dataset's data.yaml (its val split is compared on)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--images", type=int, default=8, help="validation images for the output comparison")
    p.add_argument("--no-val", action="store_true", help="skip the mAP of the models")
    p.add_argument("--int8", action="store_true", help="also Ultralytics' INT8 ONNX file (onnxruntime static "
                   "quantization), calibrated on the training split")
    p.add_argument("--calibration-fraction", type=float, default=1.0, help="with --int8: the fraction of the training "
                   "split to calibrate on")
    a = p.parse_args(argv)
    if not Path(a.weights).is_file():
        p.error(f"{a.weights}: no such checkpoint.")
    try:
        report = export_onnx(a.weights, a.data, a.imgsz, a.images, validate=not a.no_val, int8=a.int8,
                             calibration_fraction=a.calibration_fraction)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    Path(report["onnx"]).with_suffix(".parity.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":  # `python -m distill.deploy.export`: the package (and its offline defaults) loads first
    sys.exit(main())
