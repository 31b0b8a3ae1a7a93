"""yolo-distill: knowledge distillation for Ultralytics YOLO detectors (and segment, pose and OBB models)."""

from distill._offline import apply_offline_defaults

apply_offline_defaults()  # before ultralytics is imported anywhere below

from distill import config  # noqa: E402  (registers train arguments)
from distill.losses import available_losses, build_loss, register_loss  # noqa: E402
from distill.model import YOLO  # noqa: E402
from distill.tasks import OBBDistillationTrainer, PoseDistillationTrainer, SegmentationDistillationTrainer  # noqa: E402
from distill.trainer import DistillationTrainer  # noqa: E402

__version__ = "0.1.0"
__all__ = ["YOLO", "DistillationTrainer", "SegmentationDistillationTrainer", "PoseDistillationTrainer",
           "OBBDistillationTrainer", "available_losses", "build_loss", "register_loss", "__version__"]
