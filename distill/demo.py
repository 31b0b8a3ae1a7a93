"""The embedded default job: synthetic data, a cached YAML-built teacher, a distilled student."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import ultralytics
from ultralytics import YOLO as _PlainYOLO

from distill._offline import CACHE_DIR
from distill.synthetic import SyntheticSpec, synthetic_dataset

DEMO_SPEC = SyntheticSpec(n_train=256, n_val=64, imgsz=160, seed=0)
DEMO_TEACHER = "yolov8s.yaml"
DEMO_STUDENT = "yolov8n.yaml"
DEMO_TRAIN = {"imgsz": 128, "batch": 16, "epochs": 20}
DEMO_TEACHER_EPOCHS = 30


def cached_teacher(
    cfg: str, data: str | Path, epochs: int, imgsz: int, batch: int = 16, seed: int = 0, device: str | None = None
) -> Path:
    """A teacher trained from `cfg` on `data`, trained once and cached by recipe."""
    recipe = f"{cfg}|{Path(data).resolve()}|{epochs}|{imgsz}|{batch}|{seed}|{ultralytics.__version__}"
    key = hashlib.sha1(recipe.encode()).hexdigest()[:10]
    target = CACHE_DIR / "teachers" / f"{Path(cfg).stem}-{key}.pt"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        model = _PlainYOLO(cfg)
        extra = {"device": device} if device is not None else {}
        model.train(
            data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, seed=seed, project=tmp, name="teacher",
            plots=False, exist_ok=True, **extra,
        )
        best = Path(tmp) / "teacher" / "weights" / "best.pt"
        staged = target.with_suffix(".tmp")
        shutil.copyfile(best, staged)
        staged.replace(target)  # atomic: a cache entry is complete or absent
    return target


def demo_data() -> Path:
    """data.yaml of the default synthetic dataset (generated on first use)."""
    return synthetic_dataset(DEMO_SPEC)
