"""Finding and reading model weights, with one clear sentence for each way it can fail."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def resolve_weights(path: str | Path, role: str) -> Path:
    """The on-disk path of `.pt` weights for `role` ('teacher' / 'student').

    A missing official Ultralytics asset name (e.g. 'yolov8s.pt') is fetched the way Ultralytics does
    when this machine is online; otherwise a FileNotFoundError says what to do.
    """
    from ultralytics.utils import ONLINE
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    path = Path(path)
    if path.exists():
        return path
    if path.name in GITHUB_ASSETS_NAMES and str(path) == path.name:
        if not ONLINE:
            raise FileNotFoundError(
                f"{role} weights '{path}' are not on disk and this machine is offline (or YOLO_OFFLINE=1), so they "
                "cannot be downloaded: download them where a network is available and pass their path."
            )
        try:
            fetched = Path(attempt_download_asset(str(path)))
        except Exception as e:  # any network or server failure
            raise FileNotFoundError(f"{role} weights '{path}' could not be downloaded ({type(e).__name__}); "
                                    "download them by hand and pass their path.") from None
        if fetched.exists():
            return fetched
    raise FileNotFoundError(f"{role} checkpoint '{path}' does not exist. Pass the path of a trained .pt file.")


def read_checkpoint(path: str | Path, role: str) -> nn.Module:
    """The model inside an Ultralytics `.pt` checkpoint; ValueError if the file is truncated or corrupt."""
    from ultralytics.nn.tasks import load_checkpoint

    path = resolve_weights(path, role)
    try:
        model, _ = load_checkpoint(str(path))
    except Exception as e:
        raise ValueError(
            f"{role} checkpoint '{path}' could not be read ({type(e).__name__}: {str(e)[:200]}); "
            "the file is truncated, corrupt or not an Ultralytics checkpoint."
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{role} checkpoint '{path}' holds no model.")
    return model
