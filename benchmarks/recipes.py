"""Every benchmark recipe in one place: the data, the student's and the teacher's schedules, and why.

A recipe (`Task`) is what a gain has to be measured on for the number to mean anything: the same
data, augmentation, optimizer and epochs for every method and seed. The scripts take one by name
(`--task`), or a data.yaml of yours with a named recipe's settings (`--data`).

- `short`: the embedded demo's recipe, 30 student epochs (the README's "short schedule" figures).
  Its baseline is far from converged (benchmarks/results/convergence_full_yolov8n.md), so a gain
  measured on it does not say what distillation gives a student trained to the end.
- `long`: a recipe meant to be trained to convergence. Two changes make that affordable here:
  `nbs` (nominal batch) 16 instead of 64, so the optimizer steps every batch instead of every 4th (at
  batch 16 Ultralytics accumulates nbs / batch batches per step; weight decay is rescaled with it and
  stays the same): on the demo's data, seed 0, 30 epochs reach mAP50-95 0.127 instead of 0.058 in the
  same wall time. And synthetic objects of 10 px and up, 6 at most per image, 128 val images (less
  noise in each mAP). Its epochs come from `convergence.py` (benchmarks/results/convergence_long_*):
  yolov8n has not converged by 320 epochs (seed 0: 0.5527 at 160, 0.6112 at 320, +10.6 %), so 320 is
  the longest measured budget, not a converged one; the converged schedule needs a lent GPU.
- `bccd`: `long` on a small real dataset given with `--data` (BCCD: `--task bccd --data <bccd>/data.yaml`; results
  are named `<data folder>-long`, e.g. `bccd-long`, and pool with `--task long --data <bccd>/data.yaml --imgsz 160
  --epochs 100`, the same student recipe). imgsz 160; yolov8n converges at 100 epochs
  (benchmarks/results/convergence_bccd-long_yolov8n.md). The teacher alone trains with mosaic on, for 200 epochs,
  to its plateau: on a GPU 0.5921 against the 100-epoch student's 0.5592, where yolov8s and yolov8m on the student's
  own recipe reach only 0.5757 and 0.5793 (benchmarks/results/convergence_bccd-long_*_h200.md); on one CPU core
  0.6030 (convergence_bccd-long_yolov8s-mosaic_cpu.md). `convergence.py --task bccd --data <bccd>/data.yaml
  --teacher --epochs 200` trains and caches it, and gain.py with the same `--task`, `--data` and `--device` finds
  it in the cache (or takes a copy with `--teacher`).
- `pretrain`: a larger synthetic corpus (1024 train / 128 val images, its own seed, so no image of the other
  tasks) for the regime most users are in: teacher and student pre-trained on a large corpus, then both fine-tuned
  on the target data. Each model is trained on it once through the teacher cache, and its checkpoint is then
  fine-tuned on the target (`--model <ckpt.pt>`) or given to gain.py as `--student`:

      python benchmarks/convergence.py --task pretrain --teacher --model yolov8s.yaml --epochs 30   # and yolov8n.yaml
      python benchmarks/convergence.py --task long --teacher --model <pre-trained s>.pt --data <bccd>/data.yaml \
          --imgsz 160 --set mosaic=1.0 --epochs 100                          # the teacher, fine-tuned on BCCD
      python benchmarks/convergence.py --task long --model <pre-trained n>.pt --data <bccd>/data.yaml --imgsz 160 \
          --epochs 50,100                                                    # the student's fine-tuning schedule
      python benchmarks/gain.py --task long --data <bccd>/data.yaml --imgsz 160 --epochs <E> \
          --teacher <fine-tuned s>.pt --student <pre-trained n>.pt --methods "baseline;cwd+kl"

  Measured on BCCD (one CPU core per run): the pre-trained yolov8n fine-tuned with the `long` recipe reaches 0.5402 at
  50 epochs and 0.5621 at 100 (+4.1 %, seeds 0-1: converged at 50 by the 5 % rule, narrowly); the pre-trained yolov8s
  fine-tuned for 100 epochs with mosaic reaches 0.5801 (benchmarks/results/convergence_bccd-long_pretrained-*).
- `finetune`: the demo task's data (`short`'s 256 train / 64 val images, objects down to 4 px) in the pre-trained
  regime: the `pretrain` checkpoints fine-tuned on it with `nbs` 16, the student as gain.py's `--student`, the teacher
  fine-tuned through the cache (`convergence.py --task finetune --teacher --model <pre-trained s>.pt`) and given as
  `--teacher`. The corpus has objects of 10 px and up, so the smaller objects here are new to both models. Its 30
  student epochs come from `convergence.py --task finetune --model <pre-trained n>.pt --epochs 30,60,120` (seeds 0-1;
  benchmarks/results/convergence_finetune_pretrained-yolov8n*): 60 gain +4.4 % over 30 (under the 5 % rule, narrowly),
  but 120 gain +6.2 % over 60, so the student is not at its plateau at 30; the teacher is fine-tuned for 120.
- `quick`: smoke-sized, for tests and CI.

Every recipe also runs for a segment, pose or OBB student (`--yolo-task`, default detect): the synthetic data then
carries that task's labels for the same images (distill/synthetic.py), the student and teacher are the task's
variants of the same models (yolov8n-seg.yaml, yolov8s-seg.yaml, ...), and the task is named e.g. `short-segment`.
A --data dataset must carry that task's labels.

The name recorded in results is `Task.name` ("full" is the short recipe's name in older results).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import common  # noqa: F401,I001  (sys.path and the offline defaults before distill and ultralytics load)
from distill.checkpoints import read_checkpoint
from distill.demo import DEMO_RECIPE, DEMO_SPEC, DEMO_STUDENT, DEMO_TEACHER, DEMO_TEACHER_EPOCHS, DEMO_STUDENT_EPOCHS
from distill.demo import cached_teacher, task_model
from distill.synthetic import SyntheticSpec, synthetic_dataset


@dataclass(frozen=True)
class Task:
    """A benchmark recipe: data (a synthetic spec or a data.yaml on disk; neither: a recipe for a dataset the
    user gives with --data), teacher and student epochs, and the train arguments every run shares."""

    name: str
    spec: SyntheticSpec | None
    teacher_epochs: int
    student_epochs: int
    recipe: dict[str, Any] = field(default_factory=dict)
    data_yaml: Path | None = None
    # A recipe of the pre-trained regime fine-tunes checkpoints: from a YAML it would train from scratch, a
    # different benchmark under its name.
    from_checkpoints: bool = False
    yolo_task: str = "detect"  # what the student learns: detect, segment, pose or obb
    # Train arguments the teacher alone gets, over `recipe` (e.g. mosaic: a teacher that the student's recipe
    # leaves short of its plateau).
    teacher_recipe: dict[str, Any] = field(default_factory=dict)

    def data(self) -> Path:
        return self.data_yaml if self.data_yaml is not None else synthetic_dataset(self.spec)

    def split_sizes(self) -> tuple[int, int]:
        """Number of train and val images."""
        from ultralytics.data.utils import IMG_FORMATS, check_det_dataset

        info = check_det_dataset(str(self.data()))

        def count(entry: str | list[str]) -> int:
            return sum(sum(1 for f in Path(d).rglob("*") if f.suffix[1:].lower() in IMG_FORMATS)
                       for d in ([entry] if isinstance(entry, str) else entry))

        return count(info["train"]), count(info["val"])

    def teacher(self, device: str | None = None, model: str = DEMO_TEACHER) -> Path:
        """The task's teacher (yolov8s unless `model` names another YAML): trained on the task's data with its
        recipe once, then cached."""
        extra = {"device": device} if device else {}
        if Path(model).suffix.lower() == ".pt" and (kind := checkpoint_task(model)) != self.yolo_task:
            raise ValueError(f"{model} is a {kind} model and the {self.name} task trains {self.yolo_task} ones: give a "
                             f"{self.yolo_task} checkpoint.")
        return cached_teacher(task_model(model, self.yolo_task), self.data(), self.teacher_epochs,
                              **self.teacher_train_args(), **extra)

    def teacher_train_args(self) -> dict[str, Any]:
        """The train arguments of the task's teacher: the recipe with the teacher's own settings over it."""
        return {**self.recipe, **self.teacher_recipe}

    def teacher_tag(self) -> str:
        """'_mosaic=1.0' for a teacher with its own settings ('' without): in default output names, so that results
        of a recipe's teacher never overwrite those of a teacher trained on the student's recipe."""
        return "".join(f"_{k}={v}" for k, v in sorted(self.teacher_recipe.items()))


YOLO_TASKS = ("detect", "segment", "pose", "obb")


SHORT = Task("full", DEMO_SPEC, DEMO_TEACHER_EPOCHS, DEMO_STUDENT_EPOCHS, dict(DEMO_RECIPE))
# Objects of 10 px and up (the demo's go down to 4 px at 128 px, which from-scratch training learns
# last): seed 0, 40 and 80 epochs reach 0.310 and 0.482, against 0.127 and 0.251 on the demo's data.
LONG_SPEC = SyntheticSpec(n_train=256, n_val=128, imgsz=128, seed=0, min_size=10, max_objects=6)
LONG = Task("long", LONG_SPEC, 320, 320, {**DEMO_RECIPE, "nbs": 16})
# Seed 1: images the short and long tasks never show. 30 epochs of 1024 images are 120 of the long task's 256.
PRETRAIN = Task("pretrain", replace(LONG_SPEC, n_train=1024, seed=1), 30, 30, {**DEMO_RECIPE, "nbs": 16})
QUICK = Task("quick", SyntheticSpec(n_train=48, n_val=16, imgsz=96, seed=0), 4, 3, {**DEMO_RECIPE, "imgsz": 64})
# The demo's data, fine-tuned from the pretrain checkpoints (teacher and student given as files).
FINETUNE = Task("finetune", DEMO_SPEC, 120, 30, {**DEMO_RECIPE, "nbs": 16}, from_checkpoints=True)
# `long` at 160 px on a real dataset (BCCD's cells are 10-60 px there); named "long" so that its results carry the
# name `<data folder>-long`, as the runs made with `--task long --data ... --imgsz 160 --epochs 100` do.
BCCD = Task("long", None, 200, 100, {**LONG.recipe, "imgsz": 160}, teacher_recipe={"mosaic": 1.0})
TASKS = {"short": SHORT, "long": LONG, "bccd": BCCD, "pretrain": PRETRAIN, "finetune": FINETUNE, "quick": QUICK}
STUDENT = DEMO_STUDENT


def checkpoint_task(path: str | Path) -> str:
    """The task (detect, segment, pose, obb, ...) of the model in a `.pt` checkpoint; ValueError when it cannot be
    read, FileNotFoundError when it is not on disk."""
    return read_checkpoint(path, "pre-trained").task


def select_task(name: str, data_yaml: str | Path | None = None, yolo_task: str = "detect", **overrides: Any) -> Task:
    """The recipe `name`; with `data_yaml`, that recipe on a dataset of yours (e.g. BCCD), named after its
    folder; for a `yolo_task` student other than detect, with that task's labels (and a '-<yolo_task>' name).
    overrides: epochs (the student's), teacher_epochs, or any train argument (imgsz, batch, ...); None values are
    ignored. ValueError when the combination makes no sense."""
    if name not in TASKS:
        raise ValueError(f"--task {name}: unknown recipe. Choose one of {', '.join(TASKS)}.")
    if yolo_task not in YOLO_TASKS:
        raise ValueError(f"--yolo-task {yolo_task}: choose one of {', '.join(YOLO_TASKS)}.")
    task, overrides = TASKS[name], {k: v for k, v in overrides.items() if v is not None}
    if yolo_task != "detect":
        spec = None if task.spec is None else replace(task.spec, task=yolo_task)
        task = replace(task, name=f"{name}-{yolo_task}", spec=spec, yolo_task=yolo_task)
    student_epochs = overrides.pop("epochs", task.student_epochs)
    teacher_epochs = overrides.pop("teacher_epochs", task.teacher_epochs)
    if data_yaml is None:
        if task.spec is None:  # a recipe for a dataset the user gives, with no synthetic data of its own
            raise ValueError(f"--task {name} is a recipe for a dataset you give: add --data <dataset>/data.yaml "
                             "(e.g. BCCD's).")
        if overrides or (student_epochs, teacher_epochs) != (task.student_epochs, task.teacher_epochs):
            raise ValueError("--imgsz, --epochs, --teacher-epochs and --set go with --data; the synthetic recipes are fixed "
                             "(add one to benchmarks/recipes.py instead).")
        return task
    path = Path(data_yaml).resolve()
    if not path.is_file():
        raise ValueError(f"--data {data_yaml}: no such file. Pass the path of a dataset's data.yaml.")
    # The folder names the task; a recipe other than the short one says which, so that results of two
    # recipes on one dataset never pool.
    label = path.parent.name if name == "short" else f"{path.parent.name}-{TASKS[name].name}"
    label += "" if yolo_task == "detect" else f"-{yolo_task}"
    # What the user sets wins over the teacher's own settings too.
    teacher_recipe = {k: v for k, v in task.teacher_recipe.items() if k not in overrides}
    return replace(task, name=label, spec=None, data_yaml=path, student_epochs=student_epochs,
                   teacher_epochs=teacher_epochs, recipe={**task.recipe, **overrides}, teacher_recipe=teacher_recipe)
