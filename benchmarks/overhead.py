#!/usr/bin/env python
"""Training-step cost of distillation: seconds per step and peak memory for plain student training,
each of our losses and Ultralytics' built-in distillation, against the lower bound (a plain student
step plus one teacher forward without gradients).

Time: one process builds every method's trainer and times their steps interleaved (step i of every
method, in an order rotated each step, then the next i), on the same batches, through the trainer's own
step: preprocess_batch -> forward + loss -> backward -> optimizer_step. The lower bound is its own slot
in the same loop (the plain trainer's step and a teacher forward, timed together), so slow drift of the
machine hits every method alike. Memory: each method in a fresh process, so its peak is its own; the
plain run never loads a teacher. Writes <out>.json and <out>.md.

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

from common import Method, code_version, command_line, finite, git_commit, machine, output_file, parse_methods  # noqa: I001  (sets sys.path and offline defaults)
from recipes import STUDENT

import torch

DEFAULT_METHODS = "baseline;cwd;mgd;mimic;kl;builtin"
LOWER_BOUND = "lower bound"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(method: Method, teachers: list[str], data: str, imgsz: int, batch: int, device: str, project: str):
    """A set-up trainer for `method` (with all `teachers`, or those its spec picks), ready to step."""
    from distill.trainer import DistillationTrainer, PlainDetectionTrainer

    overrides = dict(model=STUDENT, data=data, imgsz=imgsz, batch=batch, epochs=1, workers=0, plots=False, seed=0,
                     deterministic=True, project=project, name=method.spec.replace(":", "_"), device=device,
                     verbose=False, **method.train_kwargs([Path(t) for t in teachers]))
    trainer = (DistillationTrainer if method.kind == "distill" else PlainDetectionTrainer)(overrides=overrides)
    trainer._setup_train()
    trainer.model.train()
    return trainer


def step(trainer, raw: dict) -> dict:
    """One training step through the trainer's own code; returns its loss items."""
    from ultralytics.utils.torch_utils import autocast

    with autocast(trainer.amp, device=trainer.device.type):
        b = trainer.preprocess_batch({k: v.clone() if torch.is_tensor(v) else v for k, v in raw.items()})
        loss, items = trainer.model(b)
    trainer.scaler.scale(loss.sum()).backward()
    trainer.optimizer_step()
    return items


def time_all(methods: list[str], teacher: list[str], data: str, imgsz: int, batch: int, warmup: int, steps: int,
             device: str) -> dict:
    """Child process: interleaved timing of every method and of the lower bound (with the first teacher)."""
    from ultralytics.utils.torch_utils import autocast

    from distill.teacher import freeze, load_teacher

    with tempfile.TemporaryDirectory() as project:
        trainers = {spec: build(Method(spec), teacher, data, imgsz, batch, device, project) for spec in methods}
        plain = trainers[methods[0]]
        dev = plain.device
        frozen = freeze(load_teacher(teacher[0]), dev)
        loader = iter(plain.train_loader)
        batches = [next(loader) for _ in range(warmup + steps)]

        teacher_images = [0]

        def lower_bound(raw: dict) -> dict:
            items = step(plain, raw)
            with torch.no_grad(), autocast(plain.amp, device=dev.type):
                out = frozen(raw["img"].to(dev).float() / 255)
            teacher_images[0] += out[0].shape[0]  # decoded boxes (B, 4 + nc, A): the full forward ran
            return items

        slots = {**{spec: (lambda raw, t=t: step(t, raw)) for spec, t in trainers.items()}, LOWER_BOUND: lower_bound}
        names = list(slots)
        times: dict[str, list[float]] = {n: [] for n in names}
        items: dict[str, list[str]] = {}
        for i, raw in enumerate(batches):
            for name in names[i % len(names):] + names[:i % len(names)]:  # rotate: no method is always first
                _sync(dev)
                t0 = time.perf_counter()
                out = slots[name](raw)
                _sync(dev)
                if i >= warmup:
                    times[name].append(time.perf_counter() - t0)
                items.setdefault(name, sorted(out))
        teachers = {spec: len(t.distiller.teachers) if hasattr(t, "distiller") else 0 for spec, t in trainers.items()}
        return {"step_s": {n: statistics.median(v) for n, v in times.items()}, "loss_items": items, "teachers": teachers,
                "teacher_images": teacher_images[0], "device": str(dev), "amp": bool(plain.amp)}


def peak_memory(method: str, teacher: list[str], data: str, imgsz: int, batch: int, warmup: int, steps: int,
                device: str) -> dict:
    """Child process: peak memory of `method` alone over warmup + steps training steps."""
    with tempfile.TemporaryDirectory() as project:
        trainer = build(Method(method), teacher, data, imgsz, batch, device, project)
        dev = trainer.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        loader = iter(trainer.train_loader)
        for _ in range(warmup + steps):
            step(trainer, next(loader))
        _sync(dev)
        peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
        return {"peak_mb": peak, "peak_kind": "CUDA max allocated" if dev.type == "cuda" else "process max RSS"}


def child(job: dict) -> dict:
    run = {"time": time_all, "memory": peak_memory}[job.pop("mode")]
    return run(**job)


def run_child(job: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True)
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not line:
        raise SystemExit(f"{job['mode']} job failed:\n{done.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke-sized: tiny images, few steps")
    p.add_argument("--methods", default=DEFAULT_METHODS, help="';'-separated, as in gain.py")
    p.add_argument("--imgsz", type=int, default=None, help="default 256 on CPU, 640 on CUDA (64 with --quick)")
    p.add_argument("--batch", type=int, default=None, help="default 16 (4 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default 10, 3 with --quick)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--teachers", nargs="+", default=["yolov8s.yaml"], metavar="YAML",
                   help="teacher model(s), random weights (they do not change timings); with several, every distilled "
                   "method uses all unless its spec picks some, e.g. 'kl:teachers=1;kl:teachers=1+2'")
    p.add_argument("--device", default=None, help="default: cuda:0 if available, else cpu")
    p.add_argument("--out", default=None, help="output prefix (default benchmarks/results/overhead[_quick])")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: JSON of one measurement job
    a = p.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(json.loads(a.child))))
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
    try:
        methods = [m.spec for m in parse_methods(a.methods)]
    except ValueError as e:
        p.error(str(e))
    with tempfile.TemporaryDirectory() as tmp:
        teachers = [str(save_teacher(DetectionModel(cfg, nc=6, verbose=False), Path(tmp) / f"teacher{i}.pt"))
                    for i, cfg in enumerate(a.teachers)]
        shared = {"teacher": teachers, "data": str(data), "imgsz": imgsz, "batch": batch, "warmup": a.warmup,
                  "steps": steps, "device": device}
        memory = {}
        for spec in methods:
            memory[spec] = run_child({"mode": "memory", "method": spec, **shared})
            print(f"[overhead] memory {spec}: {memory[spec]}", flush=True)
        timing = run_child({"mode": "time", "methods": methods, **shared})
    plain, bound = timing["step_s"][methods[0]], timing["step_s"][LOWER_BOUND]
    rows = [{"method": spec, "step_s": timing["step_s"][spec], "ratio_to_plain": timing["step_s"][spec] / plain,
             "ratio_to_lower_bound": timing["step_s"][spec] / bound, "loss_items": timing["loss_items"][spec],
             "teachers": timing["teachers"][spec],
             **memory[spec]} for spec in methods]
    names = ", ".join(Path(t).stem for t in a.teachers)
    meta = {"student": STUDENT, "teacher": names, "imgsz": imgsz, "batch": batch, "steps": steps, "warmup": a.warmup,
            "device": timing["device"], "amp": timing["amp"], "torch": torch.__version__, "machine": machine(),
            "code_version": code_version(), "commit": git_commit(), "lower_bound_s": bound,
            "lower_bound_teacher_images": timing["teacher_images"], "lower_bound_ratio_to_plain": bound / plain,
            "command": command_line("overhead.py", argv)}
    result = {"meta": meta, "rows": rows}
    out = Path(a.out or f"benchmarks/results/overhead{'_quick' if a.quick else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    output_file(out, ".json").write_text(json.dumps(finite(result), indent=2))
    md = [f"# Training-step overhead ({meta['device']}, AMP {'on' if meta['amp'] else 'off'})", "",
          f"{STUDENT} student, {'teacher' if len(a.teachers) == 1 else 'teachers (1, 2, ...)'} {names}, imgsz {imgsz}, "
          f"batch {batch}; median of {steps} steps after "
          f"{a.warmup} warm-up, every method and the lower bound interleaved in one loop on the same batches. "
          f"Lower bound = plain step + {'the first ' if len(a.teachers) > 1 else ''}teacher's forward without gradients, timed as one slot: {bound:.3f} s "
          f"({bound / plain:.2f}x plain). Machine: {meta['machine']}; code {meta['code_version']}. "
          f"Command: `{meta['command']}`.", "",
          "| method | s/step | ratio to plain | ratio to lower bound | peak memory (MB) |", "|---|---|---|---|---|"]
    md += [f"| {r['method']} | {r['step_s']:.3f} | {r['ratio_to_plain']:.2f} | {r['ratio_to_lower_bound']:.2f} | "
           f"{r['peak_mb']:.0f} |" for r in rows]
    md += ["", f"Peak memory: the {rows[0]['peak_kind']} of each method's own process over the same steps; the plain "
           "run never loads a teacher. Absolute times depend on the machine; compare ratios."]
    output_file(out, ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
