"""Ultralytics train arguments of our own: one registry that the settings and the losses both write to.

Ultralytics validates every train argument against `DEFAULT_CFG_DICT`; a key registered here is an
ordinary argument from then on (args.yaml, checkpoints, resume, DDP, "did you mean" on a typo).
"""

from __future__ import annotations

from typing import Any

from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT


def register_key(key: str, default: Any) -> None:
    """Make `key` a valid Ultralytics train argument with `default` (idempotent)."""
    if key not in DEFAULT_CFG_DICT:
        DEFAULT_CFG_DICT[key] = default
        setattr(DEFAULT_CFG, key, default)
