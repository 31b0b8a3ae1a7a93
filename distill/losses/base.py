"""Base classes for distillation losses.

A loss is a plain callable (not an `nn.Module`): anything trainable it needs (e.g. MGD's
generators) it builds with `build()` from torch-native layers, and the trainer stores those in
the student so the optimizer, EMA, DDP and checkpoints handle them like any student layer.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import nn


class DistillLoss:
    """One distillation term. Subclasses set `name` (via `register_loss`), `kind` and `params`.

    `params` maps hyperparameter -> (paper default, help). Each becomes the train argument
    `<name>_<param>` (e.g. `cwd_tau`) and the CLI flag `--<name>-<param>`.
    """

    name: ClassVar[str] = ""
    # "feature": neck maps; "logit": Detect head outputs; "cross": the teacher head's outputs on the student's
    # aligned Detect inputs against the teacher's own (called like a logit loss)
    kind: ClassVar[str] = "feature"
    # Whether the student's maps pass through the connectors to the teacher's channels (feature and cross kinds).
    aligns_channels: ClassVar[bool] = True
    params: ClassVar[dict[str, tuple[float, str]]] = {"weight": (1.0, "loss weight")}

    def __init__(self, **values: float) -> None:
        merged = {k: v[0] for k, v in self.params.items()} | values
        self.check(merged)
        for key, value in merged.items():
            setattr(self, key, float(value))

    @classmethod
    def check(cls, values: dict[str, float]) -> None:
        """Raise ValueError naming the argument when a hyperparameter is out of range."""
        if values["weight"] < 0:
            raise ValueError(f"{cls.name}_weight must be >= 0, got {values['weight']}.")

    @classmethod
    def read_params(cls, get: Callable[[str], Any]) -> dict[str, float]:
        """Read `<name>_<param>` values through `get`, falling back to defaults, and validate them."""
        values = {}
        for key, (default, _) in cls.params.items():
            raw = get(f"{cls.name}_{key}")
            try:
                values[key] = float(default if raw is None else raw)
            except (TypeError, ValueError):
                raise ValueError(f"{cls.name}_{key} must be a number, got {raw!r}.") from None
        cls.check(values)
        return values

    def build(self, channels: list[int]) -> nn.Module | None:
        """Trainable parts, one entry per level (torch-native layers only), or None."""
        return None


class FeatureLoss(DistillLoss):
    """Loss on paired neck maps, resized to the teacher's grid. With `aligns_channels` (the default) the
    student's maps first pass through a trainable connector to the teacher's channels; a loss on a
    channel-free quantity (e.g. spatial attention) sets it False and gets the student's own channels."""

    kind = "feature"

    def __call__(self, student: list[torch.Tensor], teacher: list[torch.Tensor], modules: nn.Module | None) -> torch.Tensor:
        """student, teacher: per level (B, C, H, W) fp32 -> scalar, summed over levels."""
        return sum(
            self.level(s, t, None if modules is None else modules[i]) for i, (s, t) in enumerate(zip(student, teacher))
        )

    def level(self, s: torch.Tensor, t: torch.Tensor, module: nn.Module | None) -> torch.Tensor:
        raise NotImplementedError


class LogitLoss(DistillLoss):
    """Loss on Detect head outputs: dicts with `scores` (B, nc, A) logits and `boxes` (B, 4*reg_max, A)."""

    kind = "logit"
    # Whether `ensemble` can make one target of several teachers' outputs (distill_ensemble).
    ensembles: ClassVar[bool] = False

    def __call__(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], modules: Any = None) -> torch.Tensor:
        raise NotImplementedError

    def ensemble(self, student: dict[str, torch.Tensor], teachers: list[dict[str, torch.Tensor]],
                 shares: list[float]) -> dict[str, torch.Tensor]:
        """One teacher-like head dict from several (same anchors and classes as `student`), weighted by `shares`
        (sum 1), to be compared with `student` by this loss."""
        raise NotImplementedError
