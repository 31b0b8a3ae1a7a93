"""Trainers for every task: the distillation mixin over Ultralytics' segment, pose and OBB trainers, and the
plain trainers (Ultralytics' own, with the offline AMP check) that baselines and teachers train with."""

from __future__ import annotations

from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer

from distill.amp_check import OfflineAMPCheck
from distill.trainer import DistillationMixin, DistillationTrainer, PlainDetectionTrainer


class SegmentationDistillationTrainer(DistillationMixin, OfflineAMPCheck, SegmentationTrainer):
    """Distils an instance-segmentation student (yolov8n-seg, ...)."""

    student_task = "segment"


class PoseDistillationTrainer(DistillationMixin, OfflineAMPCheck, PoseTrainer):
    """Distils a pose student (yolov8n-pose, ...)."""

    student_task = "pose"


class OBBDistillationTrainer(DistillationMixin, OfflineAMPCheck, OBBTrainer):
    """Distils an oriented-box student (yolov8n-obb, ...)."""

    student_task = "obb"


class PlainSegmentationTrainer(OfflineAMPCheck, SegmentationTrainer):
    """Ultralytics' SegmentationTrainer with the offline AMP check."""


class PlainPoseTrainer(OfflineAMPCheck, PoseTrainer):
    """Ultralytics' PoseTrainer with the offline AMP check."""


class PlainOBBTrainer(OfflineAMPCheck, OBBTrainer):
    """Ultralytics' OBBTrainer with the offline AMP check."""


DISTILLATION_TRAINERS: dict[str, type[DetectionTrainer]] = {
    "detect": DistillationTrainer, "segment": SegmentationDistillationTrainer,
    "pose": PoseDistillationTrainer, "obb": OBBDistillationTrainer,
}
PLAIN_TRAINERS: dict[str, type[DetectionTrainer]] = {
    "detect": PlainDetectionTrainer, "segment": PlainSegmentationTrainer, "pose": PlainPoseTrainer,
    "obb": PlainOBBTrainer,
}


def distillation_trainer(task: str) -> type[DetectionTrainer]:
    """The distillation trainer for a student of `task`; ValueError for a task we cannot distil (e.g. classify)."""
    if task not in DISTILLATION_TRAINERS:
        raise ValueError(f"distillation supports detect, segment, pose and obb students, not a '{task}' model.")
    return DISTILLATION_TRAINERS[task]
