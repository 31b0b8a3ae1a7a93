"""Shared set-up for the benchmarks: the fixed synthetic task, its cached teacher, and method specs."""

from __future__ import annotations

import hashlib
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import distill  # noqa: E402,F401  (offline defaults before ultralytics loads)
from distill.demo import DEMO_RECIPE, DEMO_SPEC, DEMO_STUDENT, DEMO_STUDENT_EPOCHS, DEMO_TEACHER, DEMO_TEACHER_EPOCHS  # noqa: E402
from distill.demo import cached_teacher  # noqa: E402
from distill.synthetic import SyntheticSpec, synthetic_dataset  # noqa: E402


@dataclass(frozen=True)
class Task:
    """A benchmark task: data (a synthetic spec or a data.yaml on disk), teacher recipe, student recipe."""

    name: str
    spec: SyntheticSpec | None
    teacher_epochs: int
    student_epochs: int
    recipe: dict[str, Any] = field(default_factory=dict)
    data_yaml: Path | None = None

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

    def teacher(self, device: str | None = None) -> Path:
        extra = {"device": device} if device else {}
        return cached_teacher(DEMO_TEACHER, self.data(), self.teacher_epochs, **self.recipe, **extra)


# The full task is the demo's: what the README quotes. Quick is a smoke-sized version for CI.
FULL = Task("full", DEMO_SPEC, DEMO_TEACHER_EPOCHS, DEMO_STUDENT_EPOCHS, dict(DEMO_RECIPE))
QUICK = Task("quick", SyntheticSpec(n_train=48, n_val=16, imgsz=96, seed=0), 4, 3, {**DEMO_RECIPE, "imgsz": 64})
STUDENT = DEMO_STUDENT


def data_task(data_yaml: str | Path, base: Task = FULL, **overrides: Any) -> Task:
    """`base`'s recipe on a dataset of the user's (e.g. BCCD). overrides: imgsz, batch, epochs,
    teacher_epochs, or any other train argument; None values are ignored."""
    path = Path(data_yaml).resolve()
    if not path.is_file():
        raise SystemExit(f"--data {data_yaml}: no such file. Pass the path of a dataset's data.yaml.")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    student_epochs = overrides.pop("epochs", base.student_epochs)
    teacher_epochs = overrides.pop("teacher_epochs", base.teacher_epochs)
    return Task(path.parent.name, None, teacher_epochs, student_epochs, {**base.recipe, **overrides}, path)


@dataclass(frozen=True)
class Method:
    """'baseline' | 'builtin[:dis=6]' | '<loss>[+<loss>][:key=value,...]', e.g. 'cwd:cwd_weight=10'."""

    spec: str

    @property
    def kind(self) -> str:
        head = self.spec.split(":", 1)[0]
        return head if head in {"baseline", "builtin"} else "distill"

    @property
    def overrides(self) -> dict[str, Any]:
        from ultralytics.cfg import smart_value

        head, _, tail = self.spec.partition(":")
        out = {k: smart_value(v) for k, v in (kv.split("=", 1) for kv in tail.split(",") if kv)}
        if self.kind == "distill":
            out["loss_type"] = head
        return out

    def train_kwargs(self, teacher: Path) -> dict[str, Any]:
        """Train arguments that turn a plain run into this method."""
        if self.kind == "baseline":
            return {}
        if self.kind == "builtin":  # Ultralytics' own distillation (score-weighted feature MSE)
            return {"distill_model": str(teacher), **self.overrides}
        return {"Distillation": str(teacher), **self.overrides}


def parse_methods(text: str) -> list[Method]:
    methods = [Method(s.strip()) for s in text.split(";") if s.strip()]
    if not methods or methods[0].kind != "baseline":
        methods.insert(0, Method("baseline"))
    return methods


def machine() -> str:
    """CPU model and core count, or the GPU's name: absolute times and even mAP depend on it."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{cpu}, {os.cpu_count()} cores"


# What decides a result: the package, the benchmark scripts, the presets and the pins. Results, docs and
# tests do not, so committing results or editing the README leaves the version as it is.
CODE_FILES = ("distill/**/*.py", "benchmarks/*.py", "configs/*.yaml", "pyproject.toml")


def code_version(root: Path | None = None) -> str:
    """'code-<hash>' of the files in CODE_FILES under `root` (this checkout) as they are on disk, committed
    or not: two results with the same version ran the same code."""
    root = root or Path(__file__).resolve().parents[1]
    digest = hashlib.sha1()
    for path in sorted({p for pattern in CODE_FILES for p in root.glob(pattern) if p.is_file()}):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"code-{digest.hexdigest()[:12]}"


def git_commit() -> str | None:
    """The commit checked out, with '+changes' when the tree differs from it; None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changed else "")


def finite(obj):
    """`obj` with NaN and infinities replaced by None, so the JSON written is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
