"""Offline-clean defaults for Ultralytics; must run before `ultralytics` is imported.

Ultralytics otherwise probes DNS, checks PyPI for updates, pip-installs missing extras and
downloads `Arial.ttf` the first time it draws a label. Every default here is `setdefault`,
so a user's own environment wins (e.g. `YOLO_OFFLINE=0` to allow asset downloads).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CACHE_DIR = Path(os.environ.get("DISTILL_CACHE_DIR", Path.home() / ".cache" / "yolo-distill"))


def apply_offline_defaults() -> None:
    """Set Ultralytics env defaults and provide the font it would otherwise download."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(CACHE_DIR / "ultralytics-config")))
    # Ultralytics' USER_CONFIG_DIR is <YOLO_CONFIG_DIR>/Ultralytics; check_font() looks there first.
    font_dir = config_dir / "Ultralytics"
    try:
        font_dir.mkdir(parents=True, exist_ok=True)
        _provide_fonts(font_dir)
    except OSError:
        pass  # read-only home: Ultralytics falls back to its own temp dir and may warn about fonts


def _provide_fonts(font_dir: Path) -> None:
    names = ("Arial.ttf", "Arial.Unicode.ttf")
    if all((font_dir / n).exists() for n in names):
        return
    import matplotlib  # a dependency of ultralytics; ships DejaVuSans

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in names:
        target = font_dir / name
        if not target.exists() and source.exists():
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)  # atomic: a concurrent process never sees a half-copied font
