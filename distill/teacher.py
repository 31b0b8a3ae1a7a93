"""Teacher loading, freezing and saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.engine.model import Model
from ultralytics.nn.modules import Detect
from ultralytics.nn.tasks import DetectionModel, load_checkpoint


def load_teacher(source: Any, nc: int | None = None) -> nn.Module:
    """Teacher model from a `.pt` checkpoint, a model `.yaml` (random weights, `nc` classes),
    an Ultralytics YOLO object or a bare `nn.Module`. Raises ValueError/FileNotFoundError with a fix."""
    if isinstance(source, Model):
        source = source.model
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix in {".yaml", ".yml"}:
            model = DetectionModel(str(path), nc=nc, verbose=False)
        elif path.suffix == ".pt":
            if not path.exists():
                raise FileNotFoundError(f"teacher checkpoint '{path}' does not exist. Pass the path of a trained .pt file.")
            model, _ = load_checkpoint(str(path))
        else:
            raise ValueError(f"teacher '{source}' is neither a .pt checkpoint nor a model .yaml.")
    elif isinstance(source, nn.Module):
        model = source
    else:
        raise TypeError(f"teacher must be a path, a YOLO object or an nn.Module, got {type(source).__name__}.")
    head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else None
    if not isinstance(head, Detect):
        kind = type(head).__name__ if head is not None else type(model).__name__
        raise ValueError(f"teacher must be a YOLO detection model, but its head is '{kind}'.")
    return model


def freeze(teacher: nn.Module, device: torch.device) -> nn.Module:
    """fp32, eval mode (BatchNorm statistics fixed), no gradients, on `device`."""
    teacher = teacher.float().to(device).eval()
    teacher.requires_grad_(False)
    return teacher


def save_teacher(teacher: nn.Module, path: Path) -> Path:
    """Write `teacher` as an Ultralytics-loadable checkpoint (so DDP workers and resume can rebuild it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": teacher, "train_args": {}, "epoch": -1, "date": None}, tmp)
    tmp.replace(path)
    return path
