"""Teacher loading, freezing and saving."""

from __future__ import annotations

import hashlib
import os
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.engine.model import Model
from ultralytics.nn.modules import OBB, Detect, Pose, Segment
from ultralytics.nn.tasks import DetectionModel, OBBModel, PoseModel, SegmentationModel, guess_model_task

from distill.checkpoints import read_checkpoint
from distill.config import IN_MEMORY_TEACHER


def load_teacher(source: Any, nc: int | None = None, kpt_shape: list[int] | None = None) -> nn.Module:
    """Teacher model from a `.pt` checkpoint, a model `.yaml` (random weights, `nc` classes; a pose YAML takes the
    dataset's `kpt_shape`), an Ultralytics YOLO object or a bare `nn.Module`. Raises ValueError/FileNotFoundError
    with a fix."""
    if isinstance(source, Model):
        source = source.model
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix in {".yaml", ".yml"}:
            task = guess_model_task(str(path))
            if task == "pose":
                model = PoseModel(str(path), nc=nc, data_kpt_shape=tuple(kpt_shape or (None, None)), verbose=False)
            else:
                model = MODEL_CLASSES.get(task, DetectionModel)(str(path), nc=nc, verbose=False)
        elif path.suffix == ".pt":
            model = read_checkpoint(path, "teacher")
        else:
            raise ValueError(f"teacher '{source}' is neither a .pt checkpoint nor a model .yaml.")
    elif isinstance(source, nn.Module):
        model = source
    else:
        raise TypeError(f"teacher must be a path, a YOLO object or an nn.Module, got {type(source).__name__}.")
    head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
    if not isinstance(head, Detect):
        kind = type(head).__name__ if head is not None else type(model).__name__
        raise ValueError(f"teacher must be a YOLO detection model, but its head is '{kind}' "
                         f"(e.g. a classification model). Pass a detection checkpoint.")
    if getattr(head, "cv2", True) is None:
        raise ValueError("the teacher's head was fused for inference (its one-to-many branch removed, e.g. after "
                         "predict(nms=False)); load the teacher from its .pt file instead of passing that object.")
    return model


MODEL_CLASSES = {"detect": DetectionModel, "segment": SegmentationModel, "pose": PoseModel, "obb": OBBModel}


def model_task(model: nn.Module) -> str:
    """'segment', 'pose', 'obb' or 'detect', from the model's head (the three task heads extend Detect)."""
    head = model.model[-1]
    return next((task for kind, task in ((Segment, "segment"), (Pose, "pose"), (OBB, "obb")) if isinstance(head, kind)),
                "detect")


def head_keypoint_shape(head: nn.Module) -> list[int] | None:
    """A head's kpt_shape as a list ([keypoints, 2 or 3]), None for a head without keypoints."""
    return [int(v) for v in head.kpt_shape] if isinstance(head, Pose) else None


def keypoint_shape(model: nn.Module) -> list[int] | None:
    """A pose model's kpt_shape ([keypoints, 2 or 3]), None for other models."""
    return head_keypoint_shape(model.model[-1])


def check_task(teacher: nn.Module, task: str, who: str = "the teacher") -> None:
    """ValueError unless `teacher` does the student's `task`, or plain detection (which teaches the box and class
    outputs every task head shares, and the features)."""
    own = model_task(teacher)
    if own not in (task, "detect"):
        raise ValueError(f"{who} is a {own} model but the student is a {task} model. Pass a {task} teacher, or a "
                         "detection one (it teaches the features and the box and class outputs every head shares).")


def class_names(model: nn.Module) -> list[str] | None:
    """The model's class names in index order, or None when it carries none (e.g. built from a YAML)."""
    names = getattr(model, "names", None)
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, (list, tuple)):
        return None
    names = [str(n) for n in names]
    return None if names == [str(i) for i in range(len(names))] else names  # Ultralytics' placeholder names


def fingerprint(teacher: nn.Module) -> str:
    """sha1 (first 16 hex digits) of the teacher's weights and buffers as fp32 CPU bytes, in state_dict order:
    the same weights give the same print whatever file they came in (an fp16 copy is other weights)."""
    digest = hashlib.sha1()
    for key, value in teacher.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def teacher_save_path(save_dir: Path, ddp_launch: bool, index: int | None = None) -> Path:
    """Where an in-memory teacher is written: teacher.pt, or teacher<index + 1>.pt for one of several. Inside the
    run folder, except when launching DDP: Ultralytics deletes the run folder before its workers start, so the
    file goes beside it."""
    name = "teacher.pt" if index is None else f"teacher{index + 1}.pt"
    return save_dir.with_name(f"{save_dir.name}-{name}") if ddp_launch else save_dir / name


def is_teacher_file(path: Path) -> bool:
    """Whether `path` is a teacher written into a run folder by `teacher_save_path`."""
    return path.suffix == ".pt" and path.stem.startswith("teacher") and path.stem[7:] in ("", *map(str, range(1, 100)))


def freeze(teacher: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """A private fp32 copy in eval mode (BatchNorm statistics fixed), without gradients, on `device`.

    The copy matters: models built from YAMLs in one process share Ultralytics' `Conv.default_act`
    module, so the student's `train()` would otherwise reach into the teacher; and the caller's own
    model (`Distillation=model_t.model`) is left exactly as it was.
    """
    teacher = deepcopy(teacher).float().to(device).eval()
    teacher.requires_grad_(False)
    return teacher


def needs_teacher_file(source: Any) -> bool:
    """True for a teacher that no file of weights names yet: an in-memory model, or a model .yaml
    (random weights that a rebuild would draw anew)."""
    return source == IN_MEMORY_TEACHER or Path(str(source)).suffix in {".yaml", ".yml"}


def save_teacher(teacher: nn.Module, path: Path) -> Path:
    """Write `teacher` as an Ultralytics-loadable checkpoint (so DDP workers and resume can rebuild it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The task in train_args: Ultralytics reads a checkpoint's task from there before it looks at the head.
    atomic_save({"model": teacher, "train_args": {"task": model_task(teacher)}, "epoch": -1, "date": None}, path)
    return path


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so that `path` is complete or untouched."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
