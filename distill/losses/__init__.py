"""Registry of distillation losses. Adding a loss is one new file in this folder:

    from distill.losses import register_loss
    from distill.losses.base import FeatureLoss

    @register_loss("mine")
    class MyLoss(FeatureLoss):
        params = {"weight": (1.0, "loss weight"), "beta": (0.5, "what beta does")}
        def level(self, s, t, module):  # (B, C, H, W) each, fp32
            return ((s - t) ** 2).mean() * self.beta

Files in this folder are imported automatically, so the loss is usable as `loss_type='mine'`,
`--loss mine`, with arguments `mine_weight`, `mine_beta` and flags `--mine-weight`, `--mine-beta`.
"""

from __future__ import annotations

import importlib
import pkgutil

from distill.train_args import register_key
from distill.losses.base import DistillLoss, FeatureLoss, LogitLoss

_REGISTRY: dict[str, type[DistillLoss]] = {}


def register_loss(name: str):
    """Class decorator: register a DistillLoss subclass under `name` and its hyperparameters as train args."""

    def wrap(cls: type[DistillLoss]) -> type[DistillLoss]:
        if not name.isidentifier() or name != name.lower():
            raise ValueError(f"loss name must be a lowercase identifier, got {name!r}")
        if "weight" not in cls.params:
            raise TypeError(f"loss {name!r} must declare a 'weight' hyperparameter")
        cls.name = name
        _REGISTRY[name] = cls
        for key, (default, _) in cls.params.items():
            register_key(f"{name}_{key}", default)
        return cls

    return wrap


def available_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_REGISTRY)


def class_free_losses() -> list[str]:
    """Registered losses that never compare the teacher's class scores with the student's one to one (feature
    losses, and CrossKD, which compares the teacher's head with itself): usable with a teacher of other classes."""
    return [n for n in available_losses() if _REGISTRY[n].kind != "logit"]


def get_loss_class(name: str) -> type[DistillLoss]:
    """Registered class for `name`; ValueError listing the registered names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown distillation loss {name!r}. Registered losses: {', '.join(available_losses())}. "
            "Combine them with '+', e.g. 'cwd+kl'."
        ) from None


def parse_loss_spec(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """'cwd+kl' | ['cwd', 'kl'] -> ['cwd', 'kl'], each checked against the registry."""
    names = spec.split("+") if isinstance(spec, str) else list(spec)
    names = [str(n).strip().lower() for n in names if str(n).strip()]
    if not names:
        raise ValueError(f"no distillation loss given; choose from {', '.join(available_losses())}.")
    if len(set(names)) != len(names):
        raise ValueError(f"loss {spec!r} names a loss twice.")
    for name in names:
        get_loss_class(name)
    return names


def build_loss(name: str, params: dict[str, float] | None = None) -> DistillLoss:
    """Instantiate registered loss `name` with hyperparameters `params` (defaults for missing ones)."""
    return get_loss_class(name)(**(params or {}))


for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["DistillLoss", "FeatureLoss", "LogitLoss", "available_losses", "build_loss", "class_free_losses", "get_loss_class",
           "parse_loss_spec", "register_loss"]
