"""Structured channel pruning of a YOLOv8 or YOLO11 detection checkpoint, into a plain Ultralytics checkpoint.

    python -m distill.deploy.prune runs/exp/weights/best.pt --ratio 0.5            # -> best-pruned50.pt

Channels are removed by the magnitude of their weights (L2 over each coupled group of channels) with
torch-pruning, which follows every layer a channel feeds (concats, residuals, the head's inputs). The result must
stay an ordinary Ultralytics model: Ultralytics rebuilds a model from its YAML whenever it trains a checkpoint and
copies over only the weights whose shapes fit, so a pruned model whose YAML still describes the old widths would
silently train from random weights. So the pruned widths are written into the model's YAML (each layer's channels,
width and depth multiples 1), the model is rebuilt from that YAML and the pruned weights are loaded into it strictly,
and the two must compute the same outputs; a model that cannot be written that way is refused.

Three structures need care:
- C2f (and YOLO11's C3k2, a C2f) splits its first conv's output in two equal halves (`chunk(2)`), which
  torch-pruning cannot trace. While pruning, that conv is held as two convs, one per half; every group is pruned at
  the same ratio, so the halves keep equal widths, and they are joined again.
- Widths a module derives from others are left out of the pruning and then cut to what the YAML will rebuild: the
  blocks inside a C2f/C3k2 (each as wide as the half, with hidden widths a fixed fraction of it: a C2f bottleneck's
  1, a C3k2 bottleneck's 1/2, a C3k's 1/2), SPPF's hidden width (its input // 2) and the Detect head's
  (c2 = max(16, ch0 // 4, 4 reg_max), c3 = max(ch0, min(nc, 100))).
- YOLO11's C2PSA (attention, whose head count follows its width) is kept whole, with the width it is fed.

`--ratio` is the fraction of each group's channels removed, rounded down to a multiple of 8 kept (a group that would
keep fewer than 8 is left as it is).

Supported: detection models built only from Conv, C2f, C3k2 (without attention), SPPF, C2PSA, Concat, Upsample and
a Detect head without an end-to-end branch (YOLOv8, YOLO11). Others (YOLO26, segment/pose/OBB heads, ...) are
refused with a clear message. Needs the `deploy` extra
(`pip install 'yolo-distill[deploy]'`: torch-pruning).
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distill.distiller import MODULES_ATTR

SUPPORTED = ("Conv", "C2f", "C3k2", "SPPF", "C2PSA", "Concat", "Upsample", "Detect")


def check_prunable(model: nn.Module) -> None:
    """ValueError unless every layer of `model` is one this pruner knows how to write back as YAML."""
    from ultralytics.nn.modules import Bottleneck, C3k2, Detect
    from ultralytics.nn.modules.block import C3k

    others = sorted({type(m).__name__ for m in model.model if type(m).__name__ not in SUPPORTED})
    head = model.model[-1]
    if others or type(head) is not Detect:
        raise ValueError(f"pruning supports YOLOv8/YOLO11 detection models ({', '.join(SUPPORTED)}); this one has "
                         f"{', '.join(others) or type(head).__name__}. Prune a yolov8 or yolo11 detection checkpoint.")
    if getattr(head, "one2one_cv2", None) is not None:
        raise ValueError("pruning supports Detect heads without an end-to-end (one-to-one) branch; this one has one.")
    if any(isinstance(b, C3k2) and not all(isinstance(m, (Bottleneck, C3k)) for m in b.m) for b in model.model):
        raise ValueError("pruning supports C3k2 blocks of bottlenecks or C3k, not the attention form (YOLO26's).")


def _split_c2f(block: nn.Module) -> None:
    """Hold a C2f's first conv as two convs, one per half, with a forward that uses them (for tracing)."""
    conv, half = block.cv1, block.c
    halves = []
    for i in range(2):
        part = copy.deepcopy(conv)  # keeps the activation the model was built with
        part.conv.out_channels, part.bn.num_features = half, half
        part.conv.weight = nn.Parameter(conv.conv.weight.data[i * half:(i + 1) * half].clone())
        for name in ("weight", "bias"):
            setattr(part.bn, name, nn.Parameter(getattr(conv.bn, name).data[i * half:(i + 1) * half].clone()))
        for name in ("running_mean", "running_var"):
            setattr(part.bn, name, getattr(conv.bn, name)[i * half:(i + 1) * half].clone())
        halves.append(part)
    block.half_a, block.half_b = halves
    del block.cv1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.half_a(x), self.half_b(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    block.forward = types.MethodType(forward, block)


def _join_c2f(block: nn.Module) -> None:
    """Undo `_split_c2f` on the pruned halves: one conv again, `c` the new half width."""
    a, b = block.half_a, block.half_b
    if a.conv.out_channels != b.conv.out_channels:
        raise ValueError(f"the halves of a C2f were pruned to {a.conv.out_channels} and {b.conv.out_channels} channels; "
                         "C2f needs equal halves. Try another --ratio.")
    conv = copy.deepcopy(a)
    conv.conv = nn.Conv2d(a.conv.in_channels, 2 * a.conv.out_channels, a.conv.kernel_size, a.conv.stride,
                          a.conv.padding, bias=False)
    conv.conv.weight.data = torch.cat([a.conv.weight.data, b.conv.weight.data])
    conv.bn = nn.BatchNorm2d(2 * a.conv.out_channels, eps=a.bn.eps, momentum=a.bn.momentum)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(conv.bn, name).data = torch.cat([getattr(a.bn, name).data, getattr(b.bn, name).data])
    block.cv1, block.c = conv, a.conv.out_channels
    del block.half_a, block.half_b, block.forward  # back to C2f's own forward


def _cut_outputs(graph: Any, conv: nn.Conv2d, keep: int) -> None:
    """Remove the output channels of `conv` of the smallest L2 weight norm over their whole group (every layer they
    reach, through torch-pruning's dependency graph) until `keep` remain."""
    import torch_pruning as tp

    drop = conv.out_channels - keep
    if drop <= 0:
        return
    whole = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
    score = tp.importance.MagnitudeImportance(p=2)(whole)  # over every layer the channels reach, as in the pruning
    idxs = score.argsort()[:drop].tolist()
    graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs).prune()


def derived_convs(model: nn.Module) -> list[tuple[nn.Module, Callable[[], int]]]:
    """(conv, its width as the YAML rebuilds it) for every conv whose width derives from another's: the blocks inside
    each C2f/C3k2 (from the block's half width), SPPF's hidden conv. Read before pruning (the fractions), evaluated
    after it (the widths)."""
    from ultralytics.nn.modules import C2f, C3k2
    from ultralytics.nn.modules.block import C3k

    out: list[tuple[nn.Module, Callable[[], int]]] = []
    for block in (m for m in model.model if isinstance(m, C2f)):
        def half(block: nn.Module = block) -> int:
            return block.half_a.conv.out_channels if hasattr(block, "half_a") else block.c

        for m in block.m:
            if isinstance(m, C3k):  # C3(c, c, e=0.5): two hidden convs of c // 2, bottlenecks as wide, out as the half
                inner = lambda h=half: int(h() * 0.5)  # noqa: E731  (bound now: `half` is rebound per block)
                out += [(m.cv1, inner), (m.cv2, inner), (m.cv3, half)]
                out += [(b.cv1, inner) for b in m.m] + [(b.cv2, inner) for b in m.m]
            else:  # a bottleneck: hidden width a fixed fraction of the half (1 in C2f, 1/2 in C3k2), out the half
                fraction = 0.5 if isinstance(block, C3k2) else 1.0
                out += [(m.cv1, lambda f=fraction, h=half: int(h() * f)), (m.cv2, half)]
    for sppf in (m for m in model.model if type(m).__name__ == "SPPF"):
        out.append((sppf.cv1, lambda c=sppf.cv1: c.conv.in_channels // 2))
    return out


def head_layers_kept(head: nn.Module) -> list[nn.Module]:
    """The Detect head's layers whose outputs the pruning leaves (their widths are cut afterwards to what Detect
    derives). Not a YOLO11 class branch's first, depthwise conv: its width is its input's, and torch-pruning prunes a
    depthwise conv's input and output as one, so keeping it would keep the neck's outputs whole as well."""
    kept: list[nn.Module] = [head.cv2, head.dfl]
    for branch in head.cv3:
        first = branch[0]
        kept += [first[1:], *branch[1:]] if isinstance(first, nn.Sequential) else list(branch)
    return kept


def kept_whole(model: nn.Module) -> list[nn.Module]:
    """C2PSA blocks and the conv that feeds each (its width must stay the block's): never pruned."""
    out = []
    for i, layer in enumerate(model.model):
        if type(layer).__name__ == "C2PSA":
            if not isinstance(layer.f, int):
                raise ValueError(f"layer {i} (C2PSA) takes several inputs; the pruner supports one.")
            feeder = model.model[layer.f if layer.f >= 0 else i + layer.f]  # Ultralytics' `f` counts back from i
            conv = next((m for m in (getattr(feeder, "cv2", None), feeder) if hasattr(m, "conv")), None)
            if conv is None:
                raise ValueError(f"layer {i} (C2PSA) is fed by a {type(feeder).__name__}; the pruner needs a conv there.")
            out += [layer, conv]
    return out


def _fit_derived_widths(model: nn.Module, example: torch.Tensor, derived: list) -> None:
    """Cut the widths modules derive from others to what the YAML rebuilds: the `derived` convs (see derived_convs),
    Detect's hidden convs (from its first input width and the class count)."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=_forward)
    for conv, width in derived:
        _cut_outputs(graph, conv.conv, width())
    head = model.model[-1]
    ch0 = head.cv2[0][0].conv.in_channels
    c2, c3 = max(16, ch0 // 4, head.reg_max * 4), max(ch0, min(head.nc, 100))
    for i in range(head.nl):
        for branch, width in ((head.cv2[i], c2), (head.cv3[i], c3)):
            for stage in (branch[0], branch[1]):  # Conv (YOLOv8), or DWConv then a 1x1 Conv (YOLO11)
                _cut_outputs(graph, (stage[-1] if isinstance(stage, nn.Sequential) else stage).conv, width)


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def pruned_yaml(model: nn.Module) -> dict:
    """The model's YAML with every layer's channels as they are now (width and depth multiples 1, no scales)."""
    from ultralytics.nn.modules import C2f, C3k2, Conv
    from ultralytics.nn.modules.block import C3k

    cfg = copy.deepcopy(model.yaml)
    for key in ("scales", "scale", "yaml_file"):
        cfg.pop(key, None)
    cfg.update(depth_multiple=1.0, width_multiple=1.0)
    rows = cfg["backbone"] + cfg["head"]
    for row, layer in zip(rows, model.model):
        if isinstance(layer, Conv):
            row[3] = [layer.conv.out_channels, *row[3][1:]]
        elif isinstance(layer, C3k2):
            # C3k2(c1, c2, n, c3k, e, attn, g, shortcut): half width int(c2 * e), as for C2f below
            c2 = layer.cv2.conv.out_channels
            row[1], row[3] = len(layer.m), [c2, isinstance(layer.m[0], C3k), (layer.c + 0.5) / c2, *row[3][3:]]
        elif isinstance(layer, C2f):
            c2 = layer.cv2.conv.out_channels
            shortcut = layer.m[0].add if len(layer.m) else False
            # C2f(c1, c2, n, shortcut, g, e) takes its half width as int(c2 * e): an e just above half / c2
            groups = row[3][2] if len(row[3]) > 2 else 1
            row[1], row[3] = len(layer.m), [c2, shortcut, groups, (layer.c + 0.5) / c2]
        elif type(layer).__name__ == "SPPF":
            row[3] = [layer.cv2.conv.out_channels, *row[3][1:]]
        elif type(layer).__name__ == "C2PSA":  # kept whole: its real width and block count, without the scale
            row[1], row[3] = len(layer.m), [layer.cv2.conv.out_channels, *row[3][1:]]
    n_back = len(cfg["backbone"])
    cfg["backbone"], cfg["head"] = rows[:n_back], rows[n_back:]
    return cfg


def rebuild(model: nn.Module, cfg: dict) -> nn.Module:
    """A fresh DetectionModel from `cfg` with `model`'s weights loaded strictly; ValueError if the YAML does not
    rebuild exactly this model (shapes or outputs)."""
    from ultralytics.nn.tasks import DetectionModel

    built = DetectionModel(copy.deepcopy(cfg), ch=cfg.get("channels", 3), nc=model.model[-1].nc, verbose=False)
    try:
        built.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line or "Missing" in line
                       or "Unexpected" in line), str(e).splitlines()[0])
        raise ValueError(f"the pruned model cannot be written as an Ultralytics YAML ({detail}).") from None
    for attr in ("names", "args", "stride"):
        if hasattr(model, attr):
            setattr(built, attr, getattr(model, attr))
    built.eval().requires_grad_(False)
    model.eval()
    # every layer's output, not only the decoded head output (which an untrained net barely ties to its features)
    x = torch.rand(2, cfg.get("channels", 3), 64, 64)
    outputs: dict[int, list[torch.Tensor]] = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, out, k=k: outputs.setdefault(k, []).append(out))
             for net in (model, built) for k, layer in enumerate(net.model)]
    try:
        with torch.no_grad():
            _forward(model, x), _forward(built, x)
    finally:
        for hook in hooks:
            hook.remove()
    for k, (a, b) in outputs.items():
        a, b = (a[0], b[0]) if isinstance(a, (tuple, list)) else (a, b)
        if isinstance(a, torch.Tensor) and not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()) + 1e-6):
            raise ValueError(f"layer {k} of the model rebuilt from the pruned YAML computes other outputs than the "
                             "pruned model's.")
    return built


def prune_model(model: nn.Module, ratio: float, imgsz: int = 640) -> nn.Module:
    """A pruned copy of a detection model: about `ratio` of the channels of each prunable group removed (multiples
    of 8 kept), head inputs following, rebuilt from its own YAML."""
    import torch_pruning as tp

    if not 0 < ratio < 1:
        raise ValueError(f"--ratio must be between 0 and 1 (the fraction of channels removed), got {ratio}.")
    check_prunable(model)
    from ultralytics.nn.modules import C2f

    model = copy.deepcopy(model).float().cpu()
    if hasattr(model, MODULES_ATTR):  # an unfinished distilled last.pt still carries its connectors
        delattr(model, MODULES_ATTR)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    blocks = [m for m in model.model if isinstance(m, C2f)]
    for block in blocks:
        _split_c2f(block)
    stride = int(max(model.stride))
    if imgsz % stride:
        raise ValueError(f"--imgsz {imgsz} must be a multiple of the model's largest stride ({stride}).")
    example = torch.rand(1, model.yaml.get("channels", 3), imgsz, imgsz)
    derived = derived_convs(model)  # widths set afterwards from the ones they derive from
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                  ignored_layers=[*head_layers_kept(model.model[-1]), *kept_whole(model),
                                                  *(c for c, _ in derived)], round_to=8, forward_fn=_forward)
    pruner.step()
    _fit_derived_widths(model, example, derived)
    for block in blocks:
        _join_c2f(block)
    return rebuild(model, pruned_yaml(model))


def prune_checkpoint(weights: str | Path, ratio: float, out: str | Path | None = None, imgsz: int = 640) -> Path:
    """Prune the checkpoint at `weights` and write a plain Ultralytics checkpoint (default `<name>-pruned<pct>.pt`
    beside it); returns its path."""
    from datetime import datetime

    import ultralytics
    from ultralytics.nn.tasks import torch_safe_load

    from distill.checkpoints import read_checkpoint, resolve_weights
    from distill.teacher import atomic_save
    from distill.trainer import distill_arg_keys

    read_checkpoint(weights, "model")  # missing or corrupt: one clear sentence
    ckpt, _ = torch_safe_load(str(resolve_weights(weights, "model")))
    model = ckpt.get("ema") or ckpt["model"]
    pruned = prune_model(model, ratio, imgsz)
    ours = distill_arg_keys()  # a distilled checkpoint's train arguments: keep Ultralytics' own
    train_args = {k: v for k, v in (ckpt.get("train_args") or {}).items() if k not in ours}
    out = Path(out) if out else Path(weights).with_name(f"{Path(weights).stem}-pruned{round(ratio * 100)}.pt")
    atomic_save({"date": datetime.now().isoformat(), "version": ultralytics.__version__, "epoch": -1,
                 "best_fitness": None, "model": pruned.half(), "ema": None, "updates": None, "optimizer": None,
                 "train_args": train_args, "train_metrics": None, "train_results": None,
                 "pruned": [*(ckpt.get("pruned") or []), {"from": str(weights), "ratio": ratio}]}, out)  # each step
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill.deploy.prune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="a YOLOv8 or YOLO11 detection checkpoint (.pt)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of each prunable group's channels to remove")
    p.add_argument("--out", default=None, help="output .pt (default: <weights>-pruned<pct>.pt)")
    p.add_argument("--imgsz", type=int, default=640, help="image size of the trace and of the GFLOPs reported")
    a = p.parse_args(argv)
    try:
        from ultralytics.utils.torch_utils import get_flops, get_num_params

        from distill.checkpoints import read_checkpoint

        before = read_checkpoint(a.weights, "model")
        out = prune_checkpoint(a.weights, a.ratio, a.out, a.imgsz)
        after = read_checkpoint(out, "model")
    except (ValueError, FileNotFoundError, ImportError) as e:  # ImportError: the deploy extra is missing
        print(f"prune: error: {e}", file=sys.stderr)
        return 2
    print(f"{a.weights}: {get_num_params(before) / 1e6:.2f} M parameters, {get_flops(before, a.imgsz):.2f} GFLOPs\n"
          f"{out}: {get_num_params(after) / 1e6:.2f} M parameters, {get_flops(after, a.imgsz):.2f} GFLOPs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
