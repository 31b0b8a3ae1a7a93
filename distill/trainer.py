"""DistillationTrainer: an Ultralytics DetectionTrainer with a frozen teacher beside the student."""

from __future__ import annotations

from copy import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, YAML
from ultralytics.utils.torch_utils import unwrap_model

from distill.config import CORE_KEYS, IN_MEMORY_TEACHER, DistillSettings
from distill.distiller import MODULES_ATTR, Distiller
from distill.losses import get_loss_class
from distill.teacher import freeze, load_teacher, save_teacher


class DistillationTrainer(DetectionTrainer):
    """Trains the student with the detection loss plus distillation terms from a frozen teacher.

    The teacher is held here, never inside the student: Ultralytics' freeze loop, EMA and
    checkpoints only ever see the student (plus its connectors in `student.distill_modules`).
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        overrides = dict(overrides or {})
        source = overrides.get("Distillation")
        teacher = None
        if not isinstance(source, (str, Path, type(None))):  # YOLO object or nn.Module
            teacher, overrides["Distillation"] = load_teacher(source), IN_MEMORY_TEACHER
        if not overrides.get("resume"):
            # Validate everything we can before Ultralytics creates the run folder.
            settings = DistillSettings.from_args(get_cfg(cfg, overrides))
            if settings.teacher is None:
                raise ValueError("no teacher given: pass Distillation=<teacher .pt | .yaml | YOLO | nn.Module>.")
            if teacher is None and Path(str(settings.teacher)).suffix == ".pt":
                teacher = load_teacher(settings.teacher)
        super().__init__(cfg, overrides, _callbacks)
        settings = DistillSettings.from_args(self.args)
        if teacher is None:
            teacher = load_teacher(settings.teacher, nc=self.data["nc"])
        if self.args.Distillation == IN_MEMORY_TEACHER and RANK in {-1, 0}:
            # DDP workers and resume rebuild the trainer from args alone: give the teacher a path.
            self.args.Distillation = settings.teacher = str(save_teacher(teacher, self.save_dir / "teacher.pt"))
            YAML.save(self.save_dir / "args.yaml", vars(self.args))
        if self.args.compile:
            LOGGER.warning("Distillation: 'compile' is disabled because feature hooks need eager mode.")
            self.args.compile = False
        self.distiller = Distiller(freeze(teacher, self.device), settings)

    def get_model(self, cfg=None, weights: nn.Module | None = None, verbose: bool = True):
        """Student from Ultralytics, with connectors and loss layers attached before the optimizer is built."""
        model = super().get_model(cfg, weights, verbose)
        self.distiller.attach(model, weights if isinstance(weights, nn.Module) else None)
        return model

    def preprocess_batch(self, batch: dict) -> dict:
        """Runs inside autocast right before the student's forward: the teacher goes first."""
        batch = super().preprocess_batch(batch)
        epoch = getattr(self, "epoch", self.start_epoch)  # set by the training loop; absent before it starts
        self.distiller.before_forward(unwrap_model(self.model), batch["img"], epoch, self.epochs)
        return batch

    def save_model(self):
        self.distiller.release()  # hooks must never be copied into a checkpoint
        return super().save_model()

    def final_eval(self):
        """Strip distillation-only layers from the final checkpoints (keeping the trained connectors in
        weights/distill_modules.pt), then Ultralytics' own final step."""
        for f in (self.last, self.best):
            if f.exists():
                modules = finalize_checkpoint(f, self.distill_record())
                if f == self.last and modules is not None:
                    torch.save(modules.state_dict(), self.wdir / "distill_modules.pt")
        return super().final_eval()

    def distill_record(self) -> dict[str, Any]:
        """Plain-typed summary of how the student was distilled, stored as ckpt['distill']."""
        s = self.distiller.settings
        return {
            "teacher": str(s.teacher),
            "losses": list(s.losses),
            "params": copy(s.loss_params),
            "weight": s.weight,
            "schedule": s.schedule,
            "final": s.final,
            "student_layers": list(self.distiller.student_layers),
            "teacher_layers": list(self.distiller.teacher_layers),
        }


def distill_arg_keys() -> set[str]:
    """Every train argument that belongs to distillation (core keys and all registered loss params)."""
    from distill.losses import available_losses

    keys = set(CORE_KEYS)
    for name in available_losses():
        keys |= {f"{name}_{p}" for p in get_loss_class(name).params}
    return keys


def finalize_checkpoint(path: Path, record: dict[str, Any]) -> nn.Module | None:
    """Make `path` a plain student checkpoint: drop connectors/generators (returned, from the EMA),
    drop our keys from the model's args and keep the record as ckpt['distill']."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    keys = distill_arg_keys()
    removed = None
    for name in ("ema", "model"):
        model = ckpt.get(name)
        if isinstance(model, nn.Module):
            if hasattr(model, MODULES_ATTR):
                removed = removed or getattr(model, MODULES_ATTR)
                delattr(model, MODULES_ATTR)
            args = getattr(model, "args", None)
            if isinstance(args, dict):
                model.args = {k: v for k, v in args.items() if k not in keys}
            elif args is not None:
                model.args = {k: v for k, v in vars(args).items() if k not in keys}
    ckpt["distill"] = record
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return removed
