"""Offline-clean defaults for Ultralytics; must run before `ultralytics` is imported.

Ultralytics otherwise probes DNS, checks PyPI for updates, pip-installs missing extras and
downloads `Arial.ttf` the first time it draws a label or checks a dataset. The env defaults use
`setdefault`, so a user's own environment wins (e.g. `YOLO_OFFLINE=0` to allow asset downloads).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CACHE_DIR = Path(os.environ.get("DISTILL_CACHE_DIR", Path.home() / ".cache" / "yolo-distill"))


def apply_offline_defaults() -> None:
    """Set Ultralytics' offline env defaults, then provide the fonts it would otherwise download."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    from ultralytics.utils import USER_CONFIG_DIR  # import only after the env is set

    try:
        _provide_fonts(Path(USER_CONFIG_DIR))
    except OSError:
        pass  # read-only config dir: Ultralytics' font check then warns instead of plotting labels


def _provide_fonts(font_dir: Path) -> None:
    """check_font() looks in USER_CONFIG_DIR first: give it matplotlib's DejaVu Sans under Arial's names."""
    names = ("Arial.ttf", "Arial.Unicode.ttf")
    if all((font_dir / n).exists() for n in names):
        return
    import matplotlib  # a dependency of ultralytics

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    font_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = font_dir / name
        if not target.exists() and source.exists():
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)  # atomic: a concurrent process never sees a half-copied font
