"""Class scores of a teacher trained on other classes, matched to the dataset's classes by name.

Logit losses compare class scores one to one. A teacher whose class list differs from the dataset's
(typically a COCO-80 checkpoint over a dataset of a few COCO classes) can still teach those classes: its
score rows are picked by name, in the dataset's order, and dataset classes it does not know get no
class-score signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassMap:
    """Dataset classes `student` (indices into the student's head) taught by teacher classes `teacher`."""

    student: tuple[int, ...]
    teacher: tuple[int, ...]
    missing: tuple[str, ...]  # dataset classes no teacher class is named after

    def describe(self, names: list[str], teacher_names: list[str]) -> str:
        pairs = [f"{names[s]}<-{teacher_names[t]}({t})" for s, t in zip(self.student, self.teacher)]
        return ", ".join(pairs[:8]) + (f", ... ({len(pairs)} in all)" if len(pairs) > 8 else "")

    def select(self, student: dict, teacher: dict) -> tuple[dict, dict]:
        """Raw head dicts with `scores` (B, nc, A) cut to the matched classes, in the dataset's order."""
        s_idx = torch.tensor(self.student, device=student["scores"].device)
        t_idx = torch.tensor(self.teacher, device=teacher["scores"].device)
        return ({**student, "scores": student["scores"].index_select(1, s_idx)},
                {**teacher, "scores": teacher["scores"].index_select(1, t_idx)})


def _key(name: str) -> str:
    return " ".join(str(name).split()).casefold()  # 'Traffic  Light' == 'traffic light'


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
