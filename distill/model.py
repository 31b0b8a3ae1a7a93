"""`distill.YOLO`: a drop-in `ultralytics.YOLO` whose `train()` accepts a teacher."""

from __future__ import annotations

from typing import Any

from ultralytics import YOLO as _UltralyticsYOLO

from distill.trainer import DistillationTrainer, distill_arg_keys


class YOLO(_UltralyticsYOLO):
    """`YOLO(...).train(data=..., Distillation=teacher, loss_type='cwd')` distils; without a teacher it
    trains exactly like `ultralytics.YOLO`."""

    def train(self, trainer=None, **kwargs: Any):
        if trainer is None:
            resumed = bool(kwargs.get("resume")) and bool(((self.ckpt or {}).get("train_args") or {}).get("Distillation"))
            if kwargs.get("Distillation") is not None or resumed:
                trainer = DistillationTrainer
            elif given := sorted(k for k in kwargs if k in distill_arg_keys() and k != "Distillation"):
                raise ValueError(f"{', '.join(given)} need(s) a teacher: pass Distillation=<teacher> as well.")
        return super().train(trainer=trainer, **kwargs)
