"""`distill.YOLO`: a drop-in `ultralytics.YOLO` whose `train()` accepts a teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ultralytics import YOLO as _UltralyticsYOLO

from distill.checkpoints import read_checkpoint
from distill.tasks import PLAIN_TRAINERS, distillation_trainer
from distill.trainer import distill_arg_keys


class YOLO(_UltralyticsYOLO):
    """`YOLO(...).train(data=..., Distillation=teacher, loss_type='cwd')` distils a detect, segment, pose or OBB
    student (the trainer follows the model's task); without a teacher it trains exactly like `ultralytics.YOLO`,
    except that offline the AMP check never tries a download."""

    def __init__(self, model: str | Path = "yolo26n.pt", task: str | None = None, verbose: bool = False) -> None:
        if isinstance(model, (str, Path)) and str(model).endswith(".pt"):
            read_checkpoint(model, "model")  # missing / offline / corrupt: one clear sentence, not a traceback
        super().__init__(model, task=task, verbose=verbose)

    def train(self, trainer=None, **kwargs: Any):
        if trainer is None:
            resumed = bool(kwargs.get("resume")) and bool(((self.ckpt or {}).get("train_args") or {}).get("Distillation"))
            if kwargs.get("Distillation") is not None or resumed:
                trainer = distillation_trainer(self.task)
            elif given := sorted(k for k in kwargs if k in distill_arg_keys() and k != "Distillation"):
                raise ValueError(f"{', '.join(given)} need(s) a teacher: pass Distillation=<teacher> as well.")
            else:
                trainer = PLAIN_TRAINERS.get(self.task)
        return super().train(trainer=trainer, **kwargs)
