"""Feature capture: which layers to distil, their shapes, and forward hooks that record them."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn


def head_index(model: nn.Module) -> int:
    """Index of the head, the last layer; distillable layers are 0 .. head_index - 1."""
    return len(model.model) - 1


def detect_inputs(model: nn.Module) -> list[int]:
    """Indices of the layers feeding the Detect head (`model.model[-1].f`), e.g. [15, 18, 21] for YOLOv8.
    Ultralytics' `from` counts negative entries back from the layer itself: -1 is the layer before the head."""
    head = model.model[-1]
    sources = head.f if isinstance(head.f, (list, tuple)) else [head.f]
    return [head_index(model) + i if i < 0 else i for i in sources]


def resolve_layers(model: nn.Module, layers: list[int], who: str) -> list[int]:
    """Explicit layer indices, checked against the model's depth. Negative ones count back from the head
    like Ultralytics' `from`: -1 is the layer feeding the head, -2 the one before it."""
    h = head_index(model)
    out = []
    for i in layers:
        j = h + i if i < 0 else i
        if not 0 <= j < h:
            raise ValueError(f"{who} layer {i} is out of range: the model has layers 0..{h - 1} before its head "
                             f"(or -1..-{h}, counted back from the head).")
        out.append(j)
    return out


def same_layout(a: nn.Module, b: nn.Module) -> bool:
    """True when two models have the same layer types wired the same way (e.g. yolov8n and yolov8s),
    so that a layer index means the same place in both."""
    if len(a.model) != len(b.model):
        return False
    return all(type(x) is type(y) and x.f == y.f for x, y in zip(a.model, b.model))


def pair_layers(student: nn.Module, teacher: nn.Module, s_layers: list[int] | None,
                t_layers: list[int] | None) -> tuple[list[int], list[int]]:
    """Student and teacher layers to distil, level by level.

    Unset on both sides: each model's Detect inputs. Set on one side only: the other side takes, for a
    Detect input, the other model's Detect input at the same position (YOLOv8's 15/18/21 pair with
    YOLO11's 16/19/22); for any other layer the same index, when both models share their layout."""
    s_in, t_in = detect_inputs(student), detect_inputs(teacher)
    if s_layers is None and t_layers is None:
        return s_in, t_in
    s = resolve_layers(student, s_layers, "student") if s_layers is not None else None
    t = resolve_layers(teacher, t_layers, "teacher") if t_layers is not None else None
    if s is None:
        return _counterpart(t, teacher, student, t_in, s_in, "distill_layers"), t
    if t is None:
        return s, _counterpart(s, student, teacher, s_in, t_in, "distill_teacher_layers")
    return s, t


def _counterpart(layers: list[int], given: nn.Module, other: nn.Module, given_in: list[int], other_in: list[int],
                 missing: str) -> list[int]:
    if all(i in given_in for i in layers) and len(given_in) == len(other_in):
        return [other_in[given_in.index(i)] for i in layers]
    if same_layout(given, other):
        return list(layers)
    raise ValueError(f"layers {layers} are not all Detect inputs ({given_in}) and the two models are laid out "
                     f"differently, so their counterparts are unknown: set {missing} as well.")


def _describe(output) -> str:
    if torch.is_tensor(output):
        return f"a tensor of shape {tuple(output.shape)}"
    return f"a {type(output).__name__} of {len(output)}" if isinstance(output, (tuple, list)) else type(output).__name__


@torch.no_grad()
def probe_shapes(model: nn.Module, layers: list[int], who: str = "model", imgsz: int = 128) -> list[tuple[int, int, int]]:
    """(C, H, W) of each layer's output for one blank `imgsz` image, found by a dry run in eval mode
    (eval so that the probe leaves BatchNorm statistics untouched). ValueError for a layer whose output is
    not one (B, C, H, W) map (e.g. CBLinear's tuple of splits)."""
    was_training = model.training
    recorder = FeatureRecorder(stop_when_complete=True)
    ch = model.yaml.get("channels", 3) if isinstance(getattr(model, "yaml", None), dict) else 3
    param = next(model.parameters())
    try:
        model.eval()
        with recorder.armed([model.model[i] for i in layers]):
            recorder.run(model, torch.zeros(1, ch, imgsz, imgsz, device=param.device, dtype=param.dtype))
        outputs = recorder.take()
    finally:
        model.train(was_training)
    for i, out in zip(layers, outputs):
        if not (torch.is_tensor(out) and out.dim() == 4):
            raise ValueError(f"{who} layer {i} ({type(model.model[i]).__name__}) outputs {_describe(out)}, not one "
                             "(B, C, H, W) feature map; choose other layers with distill_layers / distill_teacher_layers.")
    return [tuple(f.shape[1:]) for f in outputs]


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
