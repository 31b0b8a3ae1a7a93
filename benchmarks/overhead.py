#!/usr/bin/env python
"""Training-step cost of distillation: seconds per step and peak memory for plain student training,
each of our losses and Ultralytics' built-in distillation, on the same batches, plus the lower bound
(a plain student step + one teacher forward without gradients) and each method's ratio to it.

Each method runs in a fresh process (so peak memory is its own) through the trainer's own step:
preprocess_batch -> forward + loss -> backward -> optimizer_step. Writes <out>.json and <out>.md.

    python benchmarks/overhead.py                  # CPU here; CUDA (with AMP) where available
    python benchmarks/overhead.py --quick          # smoke-sized
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import STUDENT, Method, parse_methods  # noqa: I001  (sets sys.path and offline defaults)

import torch

DEFAULT_METHODS = "baseline;cwd;mgd;mimic;kl;builtin"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(method: Method, teacher: str, data: str, imgsz: int, batch: int, warmup: int, steps: int, device: str) -> dict:
    """Run in the child process: time `steps` training steps after `warmup`, on seeded batches."""
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils.torch_utils import autocast

    from distill import DistillationTrainer
    from distill.teacher import freeze, load_teacher

    with tempfile.TemporaryDirectory() as project:
        overrides = dict(model=STUDENT, data=data, imgsz=imgsz, batch=batch, epochs=1, workers=0, plots=False,
                         seed=0, deterministic=True, project=project, name="run", device=device, verbose=False,
                         **method.train_kwargs(Path(teacher)))
        trainer = (DistillationTrainer if method.kind == "distill" else DetectionTrainer)(overrides=overrides)
        trainer._setup_train()
        trainer.model.train()
        loader = iter(trainer.train_loader)
        batches = [next(loader) for _ in range(warmup + steps)]
        dev = trainer.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        for i, raw in enumerate(batches):
            _sync(dev)
            t0 = time.perf_counter()
            with autocast(trainer.amp, device=dev.type):
                b = trainer.preprocess_batch({k: v.clone() if torch.is_tensor(v) else v for k, v in raw.items()})
                loss, _ = trainer.model(b)
            trainer.scaler.scale(loss.sum()).backward()
            trainer.optimizer_step()
            _sync(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        out = {"method": method.spec, "step_s": statistics.median(times), "device": str(dev), "amp": bool(trainer.amp)}
        if method.kind == "baseline":  # the lower bound's second half: one teacher forward, no graph
            t = freeze(load_teacher(teacher), dev)
            fwd = []
            for i, raw in enumerate(batches):
                img = raw["img"].to(dev).float() / 255
                _sync(dev)
                t0 = time.perf_counter()
                with torch.no_grad(), autocast(trainer.amp, device=dev.type):
                    t(img)
                _sync(dev)
                if i >= warmup:
                    fwd.append(time.perf_counter() - t0)
            out["teacher_forward_s"] = statistics.median(fwd)
        out["peak_mb"] = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                          else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
        out["peak_kind"] = "CUDA max allocated" if dev.type == "cuda" else "process max RSS"
        return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke-sized: tiny images, few steps")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="';'-separated, as in gain.py")
    p.add_argument("--imgsz", type=int, default=None, help="default 256 on CPU, 640 on CUDA (64 with --quick)")
    p.add_argument("--batch", type=int, default=None, help="default 16 (4 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10, 3 with --quick)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default=None, help="default: cuda:0 if available, else cpu")
    p.add_argument("--out", default=None, help="output prefix (default benchmarks/results/overhead[_quick])")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: JSON of one measurement job
    a = p.parse_args(argv)
    if a.child:
        job = json.loads(a.child)
        print("RESULT " + json.dumps(measure(Method(job.pop("method")), **job)))
        return {}

    from ultralytics.nn.tasks import DetectionModel

    from distill.synthetic import SyntheticSpec, synthetic_dataset
    from distill.teacher import save_teacher

    cuda = torch.cuda.is_available() and a.device != "cpu"
    device = a.device or ("0" if cuda else "cpu")
    imgsz = a.imgsz or (64 if a.quick else 640 if cuda else 256)
    batch = a.batch or (4 if a.quick else 16)
    steps = a.steps or (3 if a.quick else 10)
    data = synthetic_dataset(SyntheticSpec(n_train=max(batch * (steps + a.warmup), 16), n_val=8, imgsz=max(imgsz, 96), seed=0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        teacher = save_teacher(DetectionModel("yolov8s.yaml", nc=6, verbose=False), Path(tmp) / "teacher.pt")
        for m in parse_methods(a.methods):
            job = {"method": m.spec, "teacher": str(teacher), "data": str(data), "imgsz": imgsz, "batch": batch,
                   "warmup": a.warmup, "steps": steps, "device": device}
            done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode or not line:
                raise SystemExit(f"{m.spec} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(line[0][7:]))
            print(f"[overhead] {rows[-1]}", flush=True)
    plain = rows[0]
    bound = plain["step_s"] + plain["teacher_forward_s"]
    for r in rows:
        r["ratio_to_plain"] = r["step_s"] / plain["step_s"]
        r["ratio_to_lower_bound"] = r["step_s"] / bound
    result = {"meta": {"student": STUDENT, "teacher": "yolov8s", "imgsz": imgsz, "batch": batch, "steps": steps,
                       "warmup": a.warmup, "device": rows[0]["device"], "amp": rows[0]["amp"], "torch": torch.__version__,
                       "command": "python benchmarks/overhead.py" + (" " + " ".join(argv) if argv else ""),
                       "lower_bound_s": bound},
              "rows": rows}
    out = Path(a.out or f"benchmarks/results/overhead{'_quick' if a.quick else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = [f"# Training-step overhead ({result['meta']['device']}, AMP {'on' if result['meta']['amp'] else 'off'})", "",
          f"{STUDENT} student, yolov8s teacher, imgsz {imgsz}, batch {batch}, median of {steps} steps after "
          f"{a.warmup} warm-up, same batches for every method. Lower bound = plain step + teacher forward "
          f"without gradients = {bound:.3f} s. Command: `{result['meta']['command']}`.", "",
          "| method | s/step | ratio to plain | ratio to lower bound | peak memory (MB) |", "|---|---|---|---|---|"]
    md += [f"| {r['method']} | {r['step_s']:.3f} | {r['ratio_to_plain']:.2f} | {r['ratio_to_lower_bound']:.2f} | "
           f"{r['peak_mb']:.0f} |" for r in rows]
    md += ["", f"Peak memory is the {rows[0]['peak_kind']} of each method's own process."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
