"""Feature capture: which layers to distil, their shapes, and forward hooks that record them."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn


def detect_inputs(model: nn.Module) -> list[int]:
    """Indices of the layers feeding the Detect head (`model.model[-1].f`), e.g. [15, 18, 21] for YOLOv8."""
    head = model.model[-1]
    sources = head.f if isinstance(head.f, (list, tuple)) else [head.f]
    n = len(model.model)
    return [i % n if i < 0 else i for i in sources]  # Ultralytics allows -1 for "previous layer"


def resolve_layers(model: nn.Module, layers: list[int] | None, who: str) -> list[int]:
    """Explicit `layers` (checked against the model's depth) or the Detect inputs."""
    if layers is None:
        return detect_inputs(model)
    n = len(model.model)
    out = []
    for i in layers:
        if not -n <= i < n - 1:
            raise ValueError(f"{who} layer {i} is out of range: the model has layers 0..{n - 2} before its head.")
        out.append(i % n)
    return out


@torch.no_grad()
def probe_shapes(model: nn.Module, layers: list[int], imgsz: int = 128) -> list[tuple[int, int, int]]:
    """(C, H, W) of each layer's output for one blank `imgsz` image, found by a dry run in eval mode
    (eval so that the probe leaves BatchNorm statistics untouched)."""
    was_training = model.training
    recorder = FeatureRecorder(stop_when_complete=True)
    ch = model.yaml.get("channels", 3) if isinstance(getattr(model, "yaml", None), dict) else 3
    param = next(model.parameters())
    try:
        model.eval()
        with recorder.armed([model.model[i] for i in layers]):
            recorder.run(model, torch.zeros(1, ch, imgsz, imgsz, device=param.device, dtype=param.dtype))
        return [tuple(f.shape[1:]) for f in recorder.take()]
    finally:
        model.train(was_training)


class _Complete(Exception):
    """Raised from a hook once every requested output is recorded, to skip the rest of the forward."""


class FeatureRecorder:
    """Forward hooks on chosen modules that keep their latest outputs.

    Hooks are registered only for the span of one forward (`arm` ... `take`/`disarm`): a model that is
    deep-copied or pickled (EMA, checkpoints, DDP launch) must never carry them.
    """

    def __init__(self, stop_when_complete: bool = False) -> None:
        self.stop_when_complete = stop_when_complete
        self._handles: list = []
        self._outputs: list[torch.Tensor | None] = []

    def arm(self, modules: list[nn.Module]) -> None:
        self.disarm()
        self._outputs = [None] * len(modules)
        self._handles = [m.register_forward_hook(partial(self._store, i)) for i, m in enumerate(modules)]

    def disarm(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def armed(self, modules: list[nn.Module]) -> "FeatureRecorder":
        self.arm(modules)
        return self

    def __enter__(self) -> "FeatureRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.disarm()

    @property
    def is_armed(self) -> bool:
        return bool(self._handles)

    def run(self, model: nn.Module, x: torch.Tensor):
        """model(x), stopping early once all outputs are recorded if `stop_when_complete`; returns the output or None."""
        try:
            return model(x)
        except _Complete:
            return None

    def take(self) -> list[torch.Tensor]:
        """Recorded outputs in the order the modules were armed; disarms the hooks."""
        self.disarm()
        outputs, self._outputs = self._outputs, []
        if any(o is None for o in outputs):
            missing = [i for i, o in enumerate(outputs) if o is None]
            raise RuntimeError(f"feature hooks recorded nothing for layer positions {missing}: did the forward run?")
        return outputs

    def _store(self, index: int, module: nn.Module, inputs, output) -> None:
        self._outputs[index] = output
        if self.stop_when_complete and all(o is not None for o in self._outputs):
            raise _Complete
