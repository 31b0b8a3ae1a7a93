"""A teacher as the distiller sees it: the frozen model and how it teaches (share, class map, layer pairing).

One teacher is the one-element case of several: the distiller iterates over `Teacher` records, each with its
own layers, connectors and class map, and weighs each teacher's terms by its share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from distill.classmap import ClassMap
from distill.features import FeatureRecorder


@dataclass(eq=False)
class Teacher:
    """model: the frozen private copy. source: the path recorded in args (resume and DDP workers rebuild from it).
    share: its weight over the sum of the teachers' weights. class_map: for logit losses, None when it predicts
    the dataset's classes. layers: the teacher layers paired with the student's, set when the distiller attaches."""

    model: nn.Module
    source: str = ""
    share: float = 1.0
    class_map: ClassMap | None = None
    layers: list[int] = field(default_factory=list)
    recorder: FeatureRecorder = field(default_factory=FeatureRecorder, repr=False)

    @property
    def head(self) -> nn.Module:
        return self.model.model[-1]


def modules_of(modules: nn.ModuleDict, index: int, n_teachers: int) -> nn.ModuleDict:
    """Teacher `index`'s connectors and loss layers inside the student's `distill_modules`: the dict itself for a
    single teacher (the layout of single-teacher checkpoints), its `teacher<index>` entry for several."""
    return modules if n_teachers == 1 else modules[f"teacher{index}"]
