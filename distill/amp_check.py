"""Ultralytics' AMP check without its download, for the trainers this package runs.

On a GPU, `BaseTrainer._setup_train` calls `check_amp`, which compares fp32 and AMP predictions of a
pretrained `yolo26n.pt` and fetches that file from GitHub when it is not in `weights_dir`. Offline
(`YOLO_OFFLINE=1`, this package's default) the fetch still tries the network once, fails, and the check
ends as "skipped, AMP stays on" (on a firewalled host the attempt can also hang). `offline_amp_check()`
gives Ultralytics' offline answer without the attempt, on any accelerator; with the check weights on disk,
or online, Ultralytics' own check runs unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

CHECK_WEIGHTS = "yolo26n.pt"  # what Ultralytics' check loads
# GPUs whose fp16 Ultralytics (8.4.190's check_amp) does not trust (GTX 16xx, low-end Turing Quadro/T cards,
# K40m): AMP off there. Revisit when the Ultralytics pin moves.
_UNSAFE_GPU = re.compile(r"(nvidia|geforce|quadro|tesla).*?(16[356]0|t400|t550|t600|t1000|t1200|t2000|k40m)", re.I)


def would_download() -> bool:
    """True when Ultralytics' AMP check would reach for the network: offline mode and no check weights on disk."""
    from ultralytics.utils import WEIGHTS_DIR, env_bool

    return env_bool("YOLO_OFFLINE") and not (WEIGHTS_DIR / CHECK_WEIGHTS).is_file()


def amp_check(model: nn.Module) -> bool:
    """Whether to train `model` with AMP: Ultralytics' `check_amp`, or its offline answer without the fetch."""
    import torch
    from ultralytics.utils import LOGGER, WEIGHTS_DIR
    from ultralytics.utils.checks import check_amp

    device = next(model.parameters()).device
    if device.type in {"cpu", "mps"} or not would_download():
        return check_amp(model)  # CPU/MPS: False at once; with the weights or online: the full check
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    if _UNSAFE_GPU.search(name):
        LOGGER.warning(f"AMP: disabled on {name}, whose fp16 Ultralytics does not trust (NaN losses, zero mAP).")
        return False
    LOGGER.warning(f"AMP: checks skipped offline (no {CHECK_WEIGHTS} in {WEIGHTS_DIR}), so AMP stays on, as "
                   f"Ultralytics decides offline. Put {CHECK_WEIGHTS} there, or set YOLO_OFFLINE=0 to let Ultralytics "
                   "fetch it, to run the check; train with amp=False if losses turn NaN.")
    return True


@contextmanager
def offline_amp_check() -> Iterator[None]:
    """Within the block, the trainer's `check_amp` is `amp_check` (the trainer looks it up in its module)."""
    import ultralytics.engine.trainer as engine

    original = engine.check_amp
    engine.check_amp = amp_check
    try:
        yield
    finally:
        engine.check_amp = original


class OfflineAMPCheck:
    """Trainer mixin: Ultralytics' set-up with `amp_check` in place of `check_amp`."""

    def _setup_train(self):
        with offline_amp_check():
            return super()._setup_train()
