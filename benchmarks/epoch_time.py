#!/usr/bin/env python
"""Seconds per training epoch: the plain student vs the student distilled with each loss, measured
side by side in one process on the same data, recipe and seed. Writes JSON and a Markdown table.

    python benchmarks/epoch_time.py --epochs 4 --out benchmarks/results/epoch_time
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import distill  # noqa: E402,F401  (offline defaults first)
import torch  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from common import output_file  # noqa: E402  (the benchmarks' folder is on sys.path when run as a script)
from distill import YOLO  # noqa: E402
from distill.compare import results_columns  # noqa: E402
from distill.losses import available_losses  # noqa: E402
from distill.synthetic import SyntheticSpec, synthetic_dataset  # noqa: E402


def epoch_seconds(run_dir: Path) -> list[float]:
    """Per-epoch wall seconds from results.csv's cumulative `time` column."""
    cumulative = results_columns(run_dir)["time"]
    return [b - a for a, b in zip([0.0] + cumulative, cumulative)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="yolov8s.yaml", help="teacher YAML (weights do not change timings)")
    p.add_argument("--student", default="yolov8n.yaml")
    p.add_argument("--losses", default=",".join(available_losses()), help="comma-separated losses to time")
    p.add_argument("--epochs", type=int, default=4, help="epochs per method; the first and last are not timed")
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/epoch_time", help="output prefix (.json and .md)")
    a = p.parse_args()
    if a.epochs < 3:
        p.error("--epochs must be >= 3: the first (warm-up) and last (final validation) epochs are not timed")

    data = synthetic_dataset(SyntheticSpec(n_train=a.n_train, n_val=32))
    nc = 6
    common = dict(data=str(data), epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, device=a.device, seed=0,
                  plots=False, val=False, verbose=False, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in ["plain", *a.losses.split(",")]:
            kwargs = {} if method == "plain" else {
                "Distillation": DetectionModel(a.teacher, nc=nc, verbose=False), "loss_type": method}
            model = YOLO(a.student)
            model.train(project=tmp, name=method, **common, **kwargs)
            times = epoch_seconds(Path(tmp) / method)[1:-1]
            rows.append({"method": method, "epoch_s": statistics.median(times), "epochs_timed": len(times)})
            print(f"{method}: {rows[-1]['epoch_s']:.2f} s/epoch", flush=True)
    base = rows[0]["epoch_s"]
    for r in rows:
        r["ratio_to_plain"] = r["epoch_s"] / base
    meta = {"teacher": a.teacher, "student": a.student, "imgsz": a.imgsz, "batch": a.batch, "n_train": a.n_train,
            "epochs": a.epochs, "device": a.device, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    output_file(out, ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = [f"Seconds per epoch, {a.student} student, {a.teacher} teacher, {a.n_train} images at {a.imgsz} px, "
          f"batch {a.batch}, device {a.device}; median of epochs 2..{a.epochs - 1}.", "",
          "| method | s/epoch | ratio to plain |", "|---|---|---|"]
    md += [f"| {r['method']} | {r['epoch_s']:.2f} | {r['ratio_to_plain']:.2f} |" for r in rows]
    output_file(out, ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
