"""The deployment report: each stage of a model on its way to a device, measured side by side in one run.

    python -m distill.deploy.report --data data.yaml --imgsz 640 --out runs/deploy \\
        --stage teacher=t.pt --stage student=s.pt --stage pruned=s-pruned50.pt --stage "pruned+distilled=d.pt" \\
        --stage onnx=d.onnx --stage int8=d_int8.onnx

For each stage: parameters and GFLOPs (checkpoints; an ONNX file has its checkpoint's), file size, CPU milliseconds
per image and mAP50-95 / mAP50 on the val split (the stage's own task's metric). The times are taken in one
process, round by round over the stages (in a rotating order) on the same letterboxed validation images, so a
machine that slows down slows every stage alike; checkpoints run fused (Conv+BN, as exported and as Ultralytics
predicts), with the same number of threads for torch and onnxruntime (no spinning threads), and the median is
reported: compare them as ratios, and expect other absolute figures on another CPU. Writes report.json, report.md
and report.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch


def parse_stage(text: str) -> tuple[str, Path]:
    """'name=path' -> (name, path); ValueError for another form or a missing file."""
    name, eq, path = text.partition("=")
    if not eq or not name or not path:
        raise ValueError(f"--stage {text!r}: write it as name=path (e.g. student=best.pt).")
    if Path(path).suffix not in {".pt", ".onnx"} or not Path(path).is_file():
        raise ValueError(f"--stage {text!r}: {path} is not a .pt or .onnx file on disk.")
    return name, Path(path)


def runner(path: Path, threads: int) -> Callable[[torch.Tensor], Any]:
    """A function running the model at `path` on one (1, 3, H, W) input, on the CPU with `threads` threads."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads would steal CPU
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.numpy()})
    from ultralytics import YOLO

    net = YOLO(str(path)).model.float().fuse(verbose=False).eval()

    def run(x: torch.Tensor) -> Any:
        with torch.no_grad():
            return net(x)

    return run


def size_of(path: Path, imgsz: int) -> dict[str, float | None]:
    """Parameters (millions) and GFLOPs at imgsz of a checkpoint (None for an ONNX file: it is its checkpoint's
    network, with BatchNorm folded), and the file size (MB)."""
    if path.suffix == ".onnx":
        return {"params_m": None, "gflops": None, "file_mb": path.stat().st_size / 2**20}
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    model = YOLO(str(path)).model
    return {"params_m": get_num_params(model) / 1e6, "gflops": float(get_flops(model, imgsz)),
            "file_mb": path.stat().st_size / 2**20}


def time_stages(paths: dict[str, Path], images: list[Path], imgsz: int, rounds: int, threads: int) -> dict[str, float]:
    """Median ms per image of each stage, measured in interleaved rounds over the same images (after one warm-up)."""
    from distill.deploy.export import letterboxed

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = [letterboxed(image, imgsz) for image in images]
        runs = {name: runner(path, threads) for name, path in paths.items()}
        for run in runs.values():
            for x in inputs[:3]:  # warm-up: first-call allocations and kernel choices
                run(x)
        samples: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:  # each stage takes each slot in turn
                t0 = time.perf_counter()
                for x in inputs:
                    runs[name](x)
                samples[name].append(1000 * (time.perf_counter() - t0) / len(inputs))
    finally:
        torch.set_num_threads(before)
    return {name: statistics.median(values) for name, values in samples.items()}


def cpu_name() -> str:
    """The CPU's model name and core count (absolute times hold only for it)."""
    import os
    import platform

    info = Path("/proc/cpuinfo")
    name = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("model name")),
                platform.processor()) if info.exists() else platform.processor()
    return f"{name or 'unknown CPU'}, {os.cpu_count()} cores"


def build_report(stages: list[tuple[str, Path]], data: str, imgsz: int, out: Path, images: int = 16, rounds: int = 5,
                 threads: int = 1) -> dict[str, Any]:
    """Measure every stage and write report.json / report.md / report.png into `out`."""
    from distill.deploy.export import accuracy, val_images

    names = [name for name, _ in stages]
    if len(set(names)) < len(names):
        raise ValueError(f"stage names must differ: {', '.join(names)}.")
    paths = dict(stages)
    out.mkdir(parents=True, exist_ok=True)
    ms = time_stages(paths, val_images(data, images), imgsz, rounds, threads)
    rows = {name: {"file": str(path), **size_of(path, imgsz), "ms_per_image": ms[name],
                   **accuracy(path, data, imgsz, out / "val")} for name, path in paths.items()}
    report = {"stages": rows, "data": str(data), "imgsz": imgsz, "timed_images": images, "rounds": rounds,
              "threads": threads, "machine": cpu_name(), "torch": torch.__version__}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(format_report(report) + "\n")
    plot_report(report, out / "report.png")
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a Markdown table, times also as ratios to the first stage's."""
    def num(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    rows = report["stages"]
    first = next(iter(rows.values()))["ms_per_image"]
    lines = [f"Deployment stages at {report['imgsz']} px on {report['machine']} ({report['threads']} thread(s); median "
             f"of {report['rounds']} interleaved rounds over {report['timed_images']} validation images; absolute times "
             "vary by CPU, compare ratios).", "",
             "| stage | params (M) | GFLOPs | file (MB) | CPU ms/image | time vs first | mAP50-95 | mAP50 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {num(r['params_m'], '.2f')} | {num(r['gflops'], '.2f')} | {r['file_mb']:.1f} | "
                     f"{r['ms_per_image']:.1f} | {r['ms_per_image'] / first:.2f}x | {r['map50_95']:.4f} | {r['map50']:.4f} |")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Two panels: CPU ms per image and mAP50-95, one bar per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["stages"])
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.4 * len(names)) * 2, 4))
    for ax, key, label in ((axes[0], "ms_per_image", "CPU ms / image"), (axes[1], "map50_95", "mAP50-95 (val)")):
        ax.bar(range(len(names)), [report["stages"][n][key] for n in names], color="#4a7ab5")
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_ylabel(label)
    fig.suptitle(f"Deployment stages, {report['imgsz']} px, {report['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.deploy.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", action="append", required=True, metavar="NAME=PATH",
                   help="a stage to measure (.pt or .onnx), in the order to report; repeat for each stage")
    p.add_argument("--data", required=True, help="the dataset's data.yaml (val split: times and mAP)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--images", type=int, default=16, help="validation images timed per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (the median is reported)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and onnxruntime alike")
    p.add_argument("--out", default="runs/deploy", help="folder for report.json, report.md and report.png")
    a = p.parse_args(argv)
    try:
        stages = [parse_stage(text) for text in a.stage]
        report = build_report(stages, a.data, a.imgsz, Path(a.out), a.images, a.rounds, a.threads)
    except (ValueError, FileNotFoundError) as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":  # `python -m distill.deploy.report`: the package (and its offline defaults) loads first
    sys.exit(main())
