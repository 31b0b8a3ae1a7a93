"""The embedded default job: synthetic data, a cached YAML-built teacher, a distilled student."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ultralytics
from ultralytics import YOLO as _PlainYOLO

from distill._offline import CACHE_DIR
from distill.checkpoints import resolve_weights
from distill.compare import map_curve
from distill.synthetic import SyntheticSpec, synthetic_dataset
from distill.tasks import PLAIN_TRAINERS

DEMO_SPEC = SyntheticSpec(n_train=256, n_val=64, imgsz=160, seed=0)
DEMO_TEACHER = "yolov8s.yaml"
DEMO_STUDENT = "yolov8n.yaml"
# From-scratch training on 256 small images: mosaic shrinks the smallest objects below a few pixels
# and AdamW at 0.003 learns far faster than the 'auto' choice (0.001). Measured on this CPU,
# 30 epochs of yolov8n: mAP50-95 0.015 with mosaic off at 'auto' lr, 0.057 with this recipe.
DEMO_RECIPE = {"imgsz": 128, "batch": 16, "mosaic": 0.0, "optimizer": "AdamW", "lr0": 0.003, "seed": 0}
DEMO_STUDENT_EPOCHS = 30
DEMO_TEACHER_EPOCHS = 35


def cached_teacher(cfg: str, data: str | Path, epochs: int, **train_args) -> Path:
    """A teacher trained from `cfg` on `data` with `train_args`, trained once and cached by recipe. `cfg` is a
    model YAML of any task (detect, -seg, -pose, -obb; from scratch) or a checkpoint (.pt: fine-tuned from its
    weights, e.g. a model pre-trained on a larger corpus; keyed by its bytes, not by its path)."""
    source = cfg
    if Path(cfg).suffix.lower() == ".pt":  # the same weights give the same teacher, wherever the file lies
        cfg = str(resolve_weights(cfg, "pre-trained"))
        source = ["checkpoint", hashlib.sha1(Path(cfg).read_bytes()).hexdigest()]
    recipe = json.dumps([source, str(Path(data).resolve()), epochs, train_args, ultralytics.__version__], sort_keys=True)
    key = hashlib.sha1(recipe.encode()).hexdigest()[:10]
    target = CACHE_DIR / "teachers" / f"{Path(cfg).stem}-{key}.pt"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        model = _PlainYOLO(cfg)
        t0 = time.time()
        model.train(data=str(data), epochs=epochs, project=tmp, name="teacher", plots=False, exist_ok=True,
                    trainer=PLAIN_TRAINERS[model.task], **train_args)
        run = Path(tmp) / "teacher"
        # How it was trained, beside it: wall seconds and the mAP50-95 curve (what a plateau is judged from).
        history = {"seconds": round(time.time() - t0, 1), "curve": [round(v, 5) for v in map_curve(run)]}
        target.with_suffix(".json").write_text(json.dumps(history))
        staged = target.with_suffix(".tmp")
        shutil.copyfile(run / "weights" / "best.pt", staged)
        staged.replace(target)  # atomic: a cache entry is complete or absent
    return target


def teacher_history(path: str | Path) -> dict:
    """Wall seconds and mAP50-95 curve of a cached teacher's training ({} for teachers cached without them)."""
    sidecar = Path(path).with_suffix(".json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else {}


def demo_data(task: str = "detect") -> Path:
    """data.yaml of the default synthetic dataset with `task`'s labels (generated on first use)."""
    return synthetic_dataset(replace(DEMO_SPEC, task=task))


_TASK_SUFFIX = {"segment": "-seg", "pose": "-pose", "obb": "-obb"}


def task_model(cfg: str, task: str) -> str:
    """The `task` variant of a detection model YAML: ('yolov8s.yaml', 'segment') -> 'yolov8s-seg.yaml'. Other
    names (a checkpoint, a YAML that already names a task) are returned as they are."""
    path = Path(cfg)
    if task == "detect" or path.suffix not in {".yaml", ".yml"} or path.stem.endswith(tuple(_TASK_SUFFIX.values())):
        return cfg
    return str(path.with_name(f"{path.stem}{_TASK_SUFFIX[task]}{path.suffix}"))
