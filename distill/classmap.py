"""Class scores of a teacher trained on other classes, matched to the dataset's classes by name.

Logit losses compare class scores one to one. A teacher whose class list differs from the dataset's
(typically a COCO-80 checkpoint over a dataset of a few COCO classes) can still teach those classes: its
score rows are picked by name, in the dataset's order, and dataset classes it does not know get no
class-score signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from ultralytics.utils import LOGGER

from distill.config import AUTO_LOSSES, DistillSettings
from distill.losses import class_free_losses, get_loss_class
from distill.teacher import class_names


@dataclass(frozen=True)
class ClassMap:
    """Dataset classes `student` (indices into the student's head) taught by teacher classes `teacher`."""

    student: tuple[int, ...]
    teacher: tuple[int, ...]
    missing: tuple[str, ...]  # dataset classes no teacher class is named after
    # index tensors per (side, device), made once: select() runs every step, and a fresh host-to-GPU copy each time
    # would stall it
    _indices: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def describe(self, names: list[str], teacher_names: list[str]) -> str:
        pairs = [f"{names[s]}<-{teacher_names[t]}({t})" for s, t in zip(self.student, self.teacher)]
        return ", ".join(pairs[:8]) + (f", ... ({len(pairs)} in all)" if len(pairs) > 8 else "")

    def unmatched(self, teacher_names: list[str]) -> list[str]:
        """Teacher classes no dataset class is matched to (what a user could rename a dataset class to)."""
        return [n for i, n in enumerate(teacher_names) if i not in self.teacher]

    def select(self, student: dict, teacher: dict) -> tuple[dict, dict]:
        """Raw head dicts with `scores` (B, nc, A) cut to the matched classes, in the dataset's order."""
        return ({**student, "scores": student["scores"].index_select(1, self._index("student", student["scores"]))},
                {**teacher, "scores": teacher["scores"].index_select(1, self._index("teacher", teacher["scores"]))})

    def _index(self, side: str, like: torch.Tensor) -> torch.Tensor:
        key = (side, like.device)
        if key not in self._indices:
            self._indices[key] = torch.tensor(getattr(self, side), device=like.device)
        return self._indices[key]


def covered_classes(cmap: ClassMap | None) -> tuple[int, ...] | None:
    """The dataset classes a teacher's logits teach: None for all of them (same classes, or a map that leaves none
    out), else the mapped ones. Two teachers can share one ensemble target only when these are equal."""
    return cmap.student if cmap is not None and cmap.missing else None


def _key(name: str) -> str:
    return " ".join(str(name).replace("_", " ").replace("-", " ").split()).casefold()  # 'Traffic_Light' == 'traffic light'


def match_classes(names: list[str], teacher_names: list[str] | None) -> ClassMap | None:
    """How the teacher's classes teach the dataset's `names`: None when both lists are the same (nothing to
    map); a ClassMap when names overlap (case and spacing ignored). ValueError when the teacher has no class
    names or shares none."""
    if teacher_names is not None and list(teacher_names) == list(names):
        return None
    if teacher_names is None:
        raise ValueError("the teacher carries no class names, so its classes cannot be matched to the dataset's")
    index = {}
    for i, name in enumerate(teacher_names):
        index.setdefault(_key(name), i)  # a duplicated teacher name: its first class
    pairs = [(s, index[_key(n)]) for s, n in enumerate(names) if _key(n) in index]
    if not pairs:
        raise ValueError("the teacher shares no class name with the dataset")
    missing = tuple(n for n in names if _key(n) not in index)
    return ClassMap(tuple(s for s, _ in pairs), tuple(t for _, t in pairs), missing)


def dataset_names(data: dict) -> list[str]:
    """Class names of an Ultralytics dataset dict, in index order."""
    return [str(data["names"][i]) for i in sorted(data["names"])]


def _logit_losses(settings: DistillSettings) -> list[str]:
    return [n for n in settings.losses if get_loss_class(n).kind == "logit"]


def same_classes(teacher: nn.Module, names: list[str]) -> bool:
    """Whether the teacher predicts exactly the dataset's classes, in its order (its mAP on the dataset means
    something only then)."""
    t_names = class_names(teacher)
    return teacher.model[-1].nc == len(names) and (t_names is None or t_names == names)  # unnamed: trust the order


def class_map(teacher: nn.Module, names: list[str], settings: DistillSettings) -> ClassMap | None:
    """Which teacher class scores the logit losses compare with which of the dataset's: None for the same classes
    (or no logit loss), else a match by name. ValueError (with the fix) when a logit loss has nothing to compare."""
    if same_classes(teacher, names) or not (logit := _logit_losses(settings)):
        return None
    try:
        return match_classes(names, class_names(teacher))
    except ValueError as e:
        spec = "+".join(settings.losses)
        given = f"loss_type '{spec}'" + (", the default" if spec == AUTO_LOSSES["dfl"] else "")
        raise ValueError(f"{_differ(teacher, names)}, and {e}; the logit loss '{'+'.join(logit)}' (of {given}) needs "
                         "classes it can match by name. Use a teacher trained on these classes, or only losses that "
                         f"need no shared classes ({', '.join(class_free_losses())}), e.g. --loss cwd "
                         "(loss_type='cwd').") from None


def check_classes(teacher: nn.Module, names: list[str], settings: DistillSettings,
                  who: str = "the teacher") -> ClassMap | None:
    """Before training: fail when a logit loss cannot match the teacher's classes, else say what is distilled and
    return the class map (as `class_map`). who: how messages name the teacher (e.g. 'teacher 2 (b.pt)')."""
    if same_classes(teacher, names):
        return None
    cmap = class_map(teacher, names, settings)
    differ = _differ(teacher, names).replace("the teacher", who, 1)
    if cmap is None:  # feature losses only
        LOGGER.warning(f"Distillation: {differ}; feature losses proceed.")
        return None
    LOGGER.info(f"Distillation: {differ}; class scores are distilled by name: "
                f"{cmap.describe(names, class_names(teacher))}.")
    if cmap.missing:
        LOGGER.warning(f"Distillation: {who} has no class named {', '.join(cmap.missing)}: those classes get no "
                       "class-score signal from it and little box signal (anchors are weighted by the teacher's "
                       "confidence in the matched classes); feature losses, if any, are unaffected. Its unmatched "
                       f"classes: {', '.join(cmap.unmatched(class_names(teacher))[:12])}.")
    return cmap


def _differ(teacher: nn.Module, names: list[str]) -> str:
    t_names, t_nc = class_names(teacher), teacher.model[-1].nc

    def show(seq):
        return ", ".join(seq[:6]) + (", ..." if len(seq) > 6 else "")

    return (f"the teacher's classes ({t_nc}: {show(t_names) if t_names else 'unnamed'}) differ from the dataset's "
            f"({len(names)}: {show(names)})")
