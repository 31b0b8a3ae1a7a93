#!/usr/bin/env python
"""Every deployment stage of a small detector, measured side by side in one run (issue 11's table).

Stages: the teacher; the student model (yolov8n) trained alone; the teacher pruned (before any training, fine-tuned
alone, distilled from its unpruned self); the distilled pruned model exported to ONNX, fp32 and INT8. Each is
measured by distill.deploy.report: parameters, GFLOPs, file size, CPU ms per image (interleaved rounds on this
machine), mAP50-95 and mAP50. One seed: the paired gain of distilling over fine-tuning the pruned model, over
seeds, is gain.py's (`--student <the pruned .pt written here> --teacher <the same teacher>`).

    python benchmarks/deploy_stages.py --task long --data <bccd>/data.yaml --imgsz 160 --teacher t.pt \\
        --epochs 50 --student-epochs 100 --out benchmarks/results/deploy_bccd-long

Writes <out>/report.json, report.md, report.png, and keeps the trained checkpoints and exports under --work.
Absolute times vary by CPU: compare the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import Method, code_version, command_line, git_commit, machine  # noqa: I001  (sets sys.path, offline defaults)
from gain import given_teacher_problem, train_once
from recipes import STUDENT, TASKS, select_task

import torch
import ultralytics
from ultralytics import YOLO as PlainYOLO

from distill.cli import check_args
from distill.deploy.export import export_onnx
from distill.deploy.prune import prune_checkpoint
from distill.deploy.report import build_report, format_report


def best(row: dict) -> Path:
    """The best.pt of a kept run."""
    return Path(row["run"]) / "weights" / "best.pt"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="long", choices=list(TASKS), help="the training recipe (benchmarks/recipes.py)")
    p.add_argument("--data", required=True, help="the dataset's data.yaml")
    p.add_argument("--imgsz", type=int, default=None, help="image size (default: the recipe's)")
    p.add_argument("--teacher", required=True, help="the trained teacher (.pt), a YOLOv8 or YOLO11 detector: it is "
                   "also the model that is pruned")
    p.add_argument("--ratio", type=float, default=0.5, help="pruning ratio (distill.deploy.prune)")
    p.add_argument("--epochs", type=int, default=50, help="epochs of the pruned model's fine-tune and distillation")
    p.add_argument("--student-epochs", type=int, default=100, help="epochs of the student trained alone from scratch")
    p.add_argument("--student", default=STUDENT, help="the student model trained alone (a YAML)")
    p.add_argument("--loss", default="kl", help="the distillation method of the pruned model (a gain.py method spec)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--work", default="runs/deploy_stages", help="folder for the trained checkpoints and exports")
    p.add_argument("--out", default=None, help="report folder (default benchmarks/results/deploy_<task>)")
    a = p.parse_args(argv)
    # Every check before any work, cheap ones first: the stages take hours on real data, and nothing is written
    # until all pass.
    missing = [m for m in ("torch_pruning", "onnx", "onnxruntime", "onnxslim") if importlib.util.find_spec(m) is None]
    if missing:
        p.error(f"{', '.join(missing)} not installed: pip install -e '.[deploy,export]' first.")
    if min(a.epochs, a.student_epochs) < 1:
        p.error(f"--epochs {a.epochs}, --student-epochs {a.student_epochs}: give at least 1 epoch each.")
    if Path(a.student).suffix not in {".yaml", ".yml"}:
        p.error(f"--student {a.student}: give a model YAML; this stage is a student trained alone from scratch.")
    method = Method(a.loss)
    if method.kind != "distill":
        p.error(f"--loss {a.loss}: give a distillation method (e.g. kl, cwd+kl, kl:kl_weight=2).")
    try:
        task = select_task(a.task, a.data, imgsz=a.imgsz, epochs=a.epochs)
    except ValueError as e:
        p.error(str(e))
    if problem := given_teacher_problem(a.teacher, task, None):
        p.error(f"--teacher {a.teacher}: {problem}")
    teacher, work = Path(a.teacher).resolve(), Path(a.work).resolve()
    try:
        if (student_task := PlainYOLO(a.student).task) != "detect":
            p.error(f"--student {a.student} is a {student_task} model; give a detection model YAML.")
        check_args({**task.recipe, "epochs": a.epochs, **method.train_kwargs(teacher)})
    except (ValueError, TypeError, SyntaxError, FileNotFoundError) as e:  # SyntaxError: Ultralytics' unknown argument
        p.error(f"--student {a.student} / --loss {a.loss}: {e}")
    imgsz = task.recipe["imgsz"]
    name = f"{teacher.stem}-pruned{round(a.ratio * 100)}.pt"
    with tempfile.TemporaryDirectory() as tmp:  # pruning is the last check (ratio, supported layers, image size)
        try:
            t0 = time.time()
            pruned = prune_checkpoint(teacher, a.ratio, Path(tmp) / name, imgsz)
            seconds_prune = round(time.time() - t0, 1)
        except (ValueError, FileNotFoundError, ImportError) as e:
            p.error(f"--teacher {a.teacher} --ratio {a.ratio}: {e}")
        work.mkdir(parents=True, exist_ok=True)
        pruned = Path(shutil.move(pruned, work / name))
    # a report of another ratio, loss or student never overwrites the default one's
    variant = "".join(f"_{k}{v}" for k, v, default in (("ratio", a.ratio, 0.5), ("loss-", a.loss, "kl"),
                                                       ("student-", Path(a.student).stem, Path(STUDENT).stem)) if v != default)
    out = Path(a.out or f"benchmarks/results/deploy_{task.name}{variant}")
    meta = {"task": task.name, "teacher": str(teacher), "student": a.student, "ratio": a.ratio, "loss": a.loss,
            "seed": a.seed, "epochs": a.epochs, "student_epochs": a.student_epochs, "imgsz": imgsz,
            "n_train_val": task.split_sizes(), "device": a.device or "auto",
            "recipe": {k: v for k, v in task.recipe.items() if k not in {"imgsz", "seed"}}, "machine": machine(),
            "code_version": code_version(), "commit": git_commit(), "ultralytics": ultralytics.__version__,
            "torch": torch.__version__, "command": command_line("deploy_stages.py", argv)}

    train: dict = {"seconds_prune": seconds_prune}
    # separate projects: the student's and the pruned model's runs may share a method and an epoch count
    train["student"] = train_once(Method("baseline"), task, None, a.seed, str(work / "student"), a.device,
                                  epochs=a.student_epochs, model=a.student, keep=True)
    train["pruned_finetuned"] = train_once(Method("baseline"), task, None, a.seed, str(work / "pruned"), a.device,
                                           model=str(pruned), keep=True)
    train["pruned_distilled"] = train_once(method, task, teacher, a.seed, str(work / "pruned"), a.device,
                                           model=str(pruned), keep=True)
    distilled = best(train["pruned_distilled"])
    compared = 8  # validation images of the output comparison
    exported = export_onnx(distilled, task.data(), imgsz, compared, validate=False, int8=True)  # the report validates
    exported["images"] = compared

    stages = [("teacher", teacher), (f"{Path(a.student).stem}, trained alone", best(train["student"])),
              (f"pruned {a.ratio:g}, untrained", pruned), ("pruned + fine-tune", best(train["pruned_finetuned"])),
              (f"pruned + {a.loss}", distilled), (f"pruned + {a.loss}, ONNX fp32", Path(exported["onnx"])),
              (f"pruned + {a.loss}, ONNX INT8", Path(exported["int8"]["onnx"]))]
    report = build_report(stages, str(task.data()), imgsz, out)
    kept = ("epochs", "map50_95", "map50", "seconds", "run", "train_losses")  # mAPs: Ultralytics' own validation
    report.update(meta=meta, training={k: ({f: v[f] for f in kept} if isinstance(v, dict) else v)
                                       for k, v in train.items()},
                  parity={"onnx": {k: v for k, v in exported.items() if k not in {"int8", "weights"}},
                          "int8": exported["int8"]})
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(describe(report) + "\n")
    print(describe(report))
    return report


def describe(report: dict) -> str:
    """The stage table with what produced it: recipe, seed, schedules, export parity."""
    meta, train, parity = report["meta"], report["training"], report["parity"]

    def worst(d: dict) -> str:
        return ", ".join(f"{k} {v:.3g}" for k, v in d.items() if k.startswith("max_"))

    lines = [f"# Deployment stages ({meta['task']})", "",
             f"Teacher {meta['teacher']}, pruned at ratio {meta['ratio']:g}; the pruned model trained {meta['epochs']} epochs "
             f"alone and with `{meta['loss']}` from the unpruned teacher, {meta['student']} trained {meta['student_epochs']} "
             f"epochs alone from scratch; recipe {meta['recipe']}, {meta['imgsz']} px, seed {meta['seed']}, one seed. "
             f"Trained and measured on {meta['machine']}, code version {meta['code_version']}. Command: `{meta['command']}`.",
             "", format_report(report), "",
             f"Training wall time (s): student {train['student']['seconds']}, pruned + fine-tune "
             f"{train['pruned_finetuned']['seconds']}, pruned + {meta['loss']} {train['pruned_distilled']['seconds']}.",
             f"ONNX fp32 against the checkpoint on {parity['onnx'].get('images', '?')} validation images: "
             f"{worst(parity['onnx'])}. INT8: {worst(parity['int8'])}.",
             "mAPs in the table are validated at a fixed square input (rect=False, as the exported files take it). "
             "Ultralytics' own validation at the end of training (rectangular batches), mAP50-95: "
             + ", ".join(f"{k.replace('_', ' ')} {v['map50_95']:.4f}" for k, v in train.items() if isinstance(v, dict))
             + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
