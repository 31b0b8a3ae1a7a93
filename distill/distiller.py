"""The distillation step: teacher forward, captured features, connectors, losses, weighted sum.

Data flow per training batch:
  trainer.preprocess_batch -> Distiller.before_forward (teacher forward, arm student hooks)
  student forward (Ultralytics)           -> hooks record the student's maps
  student.criterion = DistillationCriterion -> detection loss + Distiller.terms()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from ultralytics.nn.modules import OBB, Pose, Segment
from ultralytics.nn.modules.head import Pose26
from ultralytics.utils import LOGGER

from distill.balance import Balancer
from distill.classmap import ClassMap, covered_classes
from distill.config import DistillSettings
from distill.connectors import align, build_connectors
from distill.features import FeatureRecorder, detect_inputs, pair_layers, probe_shapes
from distill.losses import build_loss, class_free_losses
from distill.losses.task_outputs import POSE26_FORM, POSE_FORM
from distill.teacher import head_keypoint_shape
from distill.teachers import Teacher, modules_of

MODULES_ATTR = "distill_modules"  # student attribute holding connectors and loss-owned layers
OFF = ([], None)  # teacher outputs of a step whose distillation factor is 0 (no teacher forward)


def model_name(model: nn.Module) -> str:
    """The YAML a model was built from (e.g. 'yolov8n-p2.yaml'), or its class name."""
    yaml = getattr(model, "yaml", None)
    name = yaml.get("yaml_file") if isinstance(yaml, dict) else None
    return str(name or type(model).__name__)


def raw_head(preds: Any) -> dict:
    """The raw head dict of train-mode output (itself) or eval-mode output ((decoded, raw))."""
    return preds[1] if isinstance(preds, (tuple, list)) else preds


def head_pairs(student_preds: Any, teacher_preds: Any) -> list[tuple[dict, dict]]:
    """(student, teacher) raw head dicts (`boxes`, `scores`, `feats`) to distil, from train- or eval-mode Detect
    output: the dense branch always; the one-to-one branch of end-to-end heads (YOLO26's NMS-free branch) too
    when both models have one."""
    s, t = raw_head(student_preds), raw_head(teacher_preds)
    pairs = [(s.get("one2many", s), t.get("one2many", t))]
    if "one2one" in s and "one2one" in t:
        pairs.append((s["one2one"], t["one2one"]))
    return pairs


def keypoint_reading(head: nn.Module) -> dict:
    """What a loss needs to read a pose head's raw `kpts`: its kpt_shape and its (scale, shift) form (None for a head
    without keypoints)."""
    if not isinstance(head, Pose):
        return {"kpt_shape": None}
    return {"kpt_shape": tuple(head.kpt_shape), "kpt_form": POSE26_FORM if isinstance(head, Pose26) else POSE_FORM}


def task_outputs(student_head: nn.Module, teacher_head: nn.Module, losses: list | None = None) -> str:
    """What the logit loss distils beyond scores and boxes for this pair of heads ('' for nothing): keypoints of
    the same kpt_shape, rotated boxes, instance masks; with `losses`, only those whose weight is on in one of them."""
    kinds = [("keypoints", Pose, lambda s, t: head_keypoint_shape(s) == head_keypoint_shape(t), "kpt_weight"),
             ("rotated boxes (1 - ProbIoU)", OBB, None, "rbox_weight"),
             ("instance masks", Segment, None, "mask_weight")]
    return ", ".join(name for name, head, same, weight in kinds if isinstance(student_head, head)
                     and isinstance(teacher_head, head) and (same is None or same(student_head, teacher_head))
                     and (losses is None or any(getattr(loss, weight, 0) > 0 for loss in losses)))


class Distiller:
    """Owns the frozen teacher(s), the hooks and the losses; the trainable parts live in the student."""

    def __init__(self, teachers: list[Teacher] | nn.Module, settings: DistillSettings,
                 class_map: ClassMap | None = None) -> None:
        """teachers: Teacher records, or one frozen model (with its `class_map`)."""
        if isinstance(teachers, nn.Module):
            teachers = [Teacher(teachers, str(settings.teacher), 1.0, class_map)]
        self.teachers = list(teachers)
        self.settings = settings
        self.losses = {name: build_loss(name, settings.loss_params.get(name)) for name in settings.losses}
        kinds = {loss.kind for loss in self.losses.values()}
        self.needs_features = bool(kinds & {"feature", "cross"})
        self.needs_logits = bool(kinds & {"logit", "cross"})  # cross: the teacher's own head outputs
        self.ensemble = settings.ensemble and len(self.teachers) > 1
        if self.ensemble and len({covered_classes(t.class_map) for t in self.teachers}) > 1:
            raise ValueError("distill_ensemble needs teachers that teach the same dataset classes, but their class "
                             "lists cover different ones; set distill_ensemble=False (one term per teacher).")
        self.student_layers: list[int] = []
        for t in self.teachers:  # without a logit loss a teacher's head is never needed: stop at its last hooked layer
            t.recorder = FeatureRecorder(stop_when_complete=not self.needs_logits)
        self._student_rec = FeatureRecorder()
        self._teacher_out: list[tuple[list[torch.Tensor], Any]] | None = None  # per teacher: (maps, raw head or None)
        self._student: nn.Module | None = None
        self.factor = 1.0
        self.balancer = (Balancer(settings.balance, settings.balance_steps, list(self.losses), settings.balance_scales,
                                  fallback={n: loss.weight for n, loss in self.losses.items()})
                         if settings.balance > 0 else None)
        self._said: set[str] = set()

    def _say(self, text: str) -> None:
        """Log `text` once: attach() runs twice in every set-up (get_model, then set_model_attributes)."""
        if text not in self._said:
            self._said.add(text)
            LOGGER.info(text)

    @property
    def teacher(self) -> nn.Module:
        """The first teacher's model (the only one, usually)."""
        return self.teachers[0].model

    @property
    def teacher_layers(self) -> list[int]:
        """The first teacher's layers paired with the student's."""
        return self.teachers[0].layers

    # ---- set-up -------------------------------------------------------------------------------------------------
    def to(self, device: torch.device) -> "Distiller":
        """Put the teachers on `device`, the student's training device."""
        for t in self.teachers:
            t.model.to(device)
        return self

    def attach(self, student: nn.Module, weights: nn.Module | None = None) -> None:
        """Resolve layers, probe shapes, check compatibility, and give `student` its trainable modules,
        keeping those it already has or `weights` carries (resume) when they fit. Idempotent."""
        s, n = self.settings, len(self.teachers)
        for i, t in enumerate(self.teachers):
            who = f"the teacher ({model_name(t.model)})" if n == 1 else f"teacher {i + 1} ({model_name(t.model)})"
            student_layers, t.layers = pair_layers(student, t.model, s.student_layers, s.layers_of(i))
            if len(student_layers) != len(t.layers):
                raise ValueError(
                    f"the student ({model_name(student)}) distils {len(student_layers)} levels (layers "
                    f"{student_layers}) but {who} {len(t.layers)} (layers {t.layers}), e.g. a P2 model against a "
                    "P3-P5 one. Pair them explicitly with distill_layers and distill_teacher_layers of equal length."
                )
            if i and student_layers != self.student_layers:
                raise ValueError(f"the teachers pair different student layers ({self.student_layers} for teacher 1, "
                                 f"{student_layers} for {who}); set distill_layers.")
            self.student_layers = student_layers
            if any(loss.kind == "logit" for loss in self.losses.values()):
                self._check_heads(student, t, who)
            cross = [name for name, loss in self.losses.items() if loss.kind == "cross"]
            if cross and (self.student_layers != detect_inputs(student) or t.layers != detect_inputs(t.model)):
                raise ValueError(
                    f"{'+'.join(cross)} runs the teacher's head on the student's Detect inputs, so it needs those "
                    f"layers: student {detect_inputs(student)}, {who} {detect_inputs(t.model)} (got "
                    f"{self.student_layers} and {t.layers}). Leave distill_layers / distill_teacher_layers unset."
                )
        if not self.needs_features:
            return
        s_shapes = probe_shapes(student, self.student_layers, "student")
        s_channels = [c for c, _, _ in s_shapes]
        # Connectors only where a loss compares channels one to one; the others see the student's own maps.
        projected = any(loss.kind in ("feature", "cross") and loss.aligns_channels for loss in self.losses.values())
        per_teacher, described = [], []
        for t in self.teachers:
            t_channels = [c for c, _, _ in probe_shapes(t.model, t.layers, "teacher")]
            own = nn.ModuleDict({"connectors": build_connectors(s_channels, t_channels if projected else s_channels)})
            for name, loss in self.losses.items():
                if (extra := loss.build(t_channels)) is not None:
                    own[name] = extra
            per_teacher.append(own)
            described.append(f"teacher layers {t.layers} {t_channels}")
        modules = per_teacher[0] if n == 1 else nn.ModuleDict({f"teacher{i}": m for i, m in enumerate(per_teacher)})
        fresh = modules.state_dict()
        # Keep trained connectors: the student's own (a DDP worker receives the built student) or the
        # checkpoint's (resume), when they fit these losses and layers.
        saved = [m for m in (getattr(student, MODULES_ATTR, None), getattr(weights, MODULES_ATTR, None))
                 if isinstance(m, nn.ModuleDict)]
        if saved:
            state = saved[0].float().state_dict()
            if state.keys() == fresh.keys() and all(state[k].shape == fresh[k].shape for k in state):
                modules.load_state_dict(state)
            else:
                LOGGER.warning("Distillation: saved connectors do not fit these losses/layers/teachers; starting fresh.")
        setattr(student, MODULES_ATTR, modules.to(next(student.parameters()).device))
        self._say(f"Distillation: losses {'+'.join(self.losses)} (distill_weight {self.settings.weight:g}), student "
                  f"layers {self.student_layers} {s_channels} -> {'; '.join(described)}")

    def _check_heads(self, student: nn.Module, teacher: Teacher, who: str) -> None:
        sh, th = student.model[-1], teacher.head
        if teacher.class_map is None and sh.nc != th.nc:
            raise ValueError(
                f"logit distillation needs the same classes, but the student has {sh.nc} and {who} {th.nc}. "
                f"Use a teacher trained on this dataset, or a loss that needs no shared classes ({', '.join(class_free_losses())})."
            )
        if list(student.stride) != list(teacher.model.stride):
            raise ValueError(
                f"logit distillation needs the same head strides: student {student.stride.tolist()}, "
                f"{who} {teacher.model.stride.tolist()}."
            )
        if (getattr(sh, "one2one_cv2", None) is None) != (getattr(th, "one2one_cv2", None) is None):
            self._say(f"Distillation: only one of the student and {who} has an end-to-end (one-to-one) head "
                      "branch; the logit loss distils the dense branch they share and skips the one-to-one branch.")
        elif getattr(sh, "one2one_cv2", None) is not None and not (  # an ensemble distils what every teacher has
                self.ensemble and any(getattr(t.head, "one2one_cv2", None) is None for t in self.teachers)):
            self._say(f"Distillation: the student and {who} both have end-to-end heads; the logit loss distils the "
                      "one-to-one branch (NMS-free prediction) as well as the dense one, summed in its column.")
        own = task_outputs(sh, th, [loss for loss in self.losses.values() if loss.kind == "logit"])
        if own:
            dropped = " (not under distill_ensemble: no single target holds several teachers' masks or rotated " \
                      "boxes)" if self.ensemble and "keypoints" not in own else ""
            self._say(f"Distillation: the logit loss also distils the student's {own} (task head outputs){dropped}.")
        if isinstance(sh, OBB) and not isinstance(th, OBB):
            self._say(f"Distillation: {who} predicts axis-aligned boxes and the student rotated ones: the logit loss "
                      "distils class scores only.")
        if isinstance(sh, Pose) and isinstance(th, Pose) and head_keypoint_shape(sh) != head_keypoint_shape(th):
            self._say(f"Distillation: student kpt_shape {head_keypoint_shape(sh)}, {who} {head_keypoint_shape(th)}: "
                      "keypoints are not distilled (only class scores and boxes).")
        elif not own and not isinstance(sh, OBB) and type(sh) is not type(th) and not isinstance(th, type(sh)):
            self._say(f"Distillation: {who} has a {type(th).__name__} head and the student a {type(sh).__name__} "
                      "head: the logit loss distils the class scores and boxes they share.")
        if sh.reg_max != th.reg_max and not isinstance(sh, OBB):
            self._say(
                f"Distillation: student reg_max {sh.reg_max}, {who} reg_max {th.reg_max}: boxes are distilled as "
                "decoded side distances (L1 + GIoU), not as distributions."
            )

    # ---- per step -----------------------------------------------------------------------------------------------
    def before_forward(self, student: nn.Module, img: torch.Tensor, epoch: int, epochs: int) -> None:
        """Run the teachers on `img` (no graph), arm the student's hooks, make sure the criterion distils."""
        if not isinstance(getattr(student, "criterion", None), DistillationCriterion):
            student.criterion = DistillationCriterion(getattr(student, "criterion", None) or student.init_criterion(), self)
        self.factor = self.settings.factor(epoch, epochs)
        self._student = student
        if self.factor == 0:  # e.g. the distillation-free tail: the terms are 0, so the teachers need not run
            self._student_rec.disarm()
            self._teacher_out = OFF
            return
        outputs = []
        for t in self.teachers:
            with torch.no_grad(), t.recorder.armed([t.model.model[i] for i in t.layers]):
                out = t.recorder.run(t.model, img)
                outputs.append((t.recorder.take(), out if self.needs_logits else None))
        self._teacher_out = outputs
        self._student_rec.arm([student.model[i] for i in self.student_layers])

    def release(self) -> None:
        """Drop hooks and teacher outputs (after a failed step, or before the model is copied)."""
        self._student_rec.disarm()
        self._teacher_out = None

    @property
    def pending(self) -> bool:
        """True between before_forward and terms(): a training step is in flight."""
        return self._teacher_out is not None

    def terms(self, preds: Any, detection: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted distillation terms, shape (n_losses,), per image (not yet scaled by batch size), fp32. With several
        teachers each term is the share-weighted sum of the teachers' terms (or, for a logit loss under
        distill_ensemble, one term against their mean). detection: this batch's detection loss per image
        (scalar), which self-balancing calibrates against."""
        if self._teacher_out is OFF:  # same columns and loss vector length as every other step, all zero
            self._teacher_out = None
            zeros = torch.zeros(len(self.losses), device=next(self._student.parameters()).device)
            return zeros, {f"{name}_loss": zeros[i] for i, name in enumerate(self.losses)}
        s_feats = self._student_rec.take()
        outputs, self._teacher_out = self._teacher_out, None
        values, raws, items = [], [], {}
        with torch.autocast(s_feats[0].device.type, enabled=False):  # losses in fp32 whatever the AMP setting
            views = [self._view(i, s_feats, t_feats) for i, (t_feats, _) in enumerate(outputs)]
            heads = [self._head_pairs(preds, t, t_head) for t, (_, t_head) in zip(self.teachers, outputs)]
            for name, loss in self.losses.items():
                if loss.kind == "logit" and self.ensemble:
                    value = self._ensemble_term(loss, heads)
                else:
                    value = sum(t.share * self._term(name, loss, t, view, pairs, t_head)
                                for t, view, pairs, (_, t_head) in zip(self.teachers, views, heads, outputs))
                raws.append(value)
                weight = loss.weight if self.balancer is None else self.balancer.scale(name)
                value = value * (weight * self.settings.weight * self.factor)
                values.append(value)
                items[f"{name}_loss"] = value.detach()
        if self.balancer is not None and not self.balancer.calibrated:
            if detection is None:
                raise ValueError("self-balancing needs the detection loss of the batch")
            if self.settings.balance_by == "gradient":  # what each term pushes into the distilled layers
                self.balancer.observe(grad_norm(detection, s_feats), torch.stack([grad_norm(r, s_feats) for r in raws]))
            else:
                self.balancer.observe(detection.detach(), torch.stack([r.detach() for r in raws]))
        return torch.stack(values), items

    def _view(self, index: int, s_feats: list[torch.Tensor], t_feats: list[torch.Tensor]) -> dict | None:
        """What teacher `index`'s feature and cross losses see: its fp32 maps, the student's maps through its
        connectors (`aligned`) and unprojected on its grid (`own`), and its loss layers."""
        if not self.needs_features:
            return None
        modules = modules_of(getattr(self._student, MODULES_ATTR), index, len(self.teachers))
        t32 = [t.float() for t in t_feats]
        aligned = [align(c, s.float(), t.shape[-2:]) for c, s, t in zip(modules["connectors"], s_feats, t32)]
        own = ([align(nn.Identity(), s.float(), t.shape[-2:]) for s, t in zip(s_feats, t32)]
               if any(not loss.aligns_channels for loss in self.losses.values() if loss.kind == "feature") else None)
        return {"teacher": t32, "aligned": aligned, "own": own, "modules": modules}

    def _head_pairs(self, preds: Any, teacher: Teacher, t_head: Any) -> list[tuple[dict, dict]] | None:
        """(student, teacher) raw head dicts for the logit losses, cut to the teacher's class map."""
        if t_head is None or not any(loss.kind == "logit" for loss in self.losses.values()):
            return None
        pairs = head_pairs(preds, t_head)  # end-to-end heads: both branches
        if isinstance(self._student.model[-1], Pose):  # pose: how to read `kpts`
            s_read, t_read = keypoint_reading(self._student.model[-1]), keypoint_reading(teacher.head)
            pairs = [({**s, **s_read}, {**t, **t_read}) for s, t in pairs]
        return [teacher.class_map.select(s, t) for s, t in pairs] if teacher.class_map is not None else pairs

    def _term(self, name: str, loss: Any, teacher: Teacher, view: dict | None, pairs: list | None,
              t_head: Any) -> torch.Tensor:
        """One loss against one teacher."""
        if loss.kind == "feature":
            modules = view["modules"]
            return loss(view["aligned"] if loss.aligns_channels else view["own"], view["teacher"],
                        modules[name] if name in modules else None)
        if loss.kind == "cross":  # the teacher's head on the student's aligned maps, against its own output
            head, own_out = teacher.head, raw_head(t_head)
            return loss(head.forward_head(view["aligned"], **head.one2many), own_out.get("one2many", own_out))
        return sum(loss(s, t) for s, t in pairs)

    def _ensemble_term(self, loss: Any, heads: list[list[tuple[dict, dict]]]) -> torch.Tensor:
        """A logit loss against the teachers' mean, branch by branch (the one-to-one branch only when every teacher
        has one)."""
        shares = [t.share for t in self.teachers]
        branches = min(len(pairs) for pairs in heads)
        return sum(loss(heads[0][b][0], loss.ensemble(heads[0][b][0], [pairs[b][1] for pairs in heads], shares))
                   for b in range(branches))


def grad_norm(value: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of d value / d inputs over all inputs (0 where value does not depend on them); the graph is kept
    for the step's own backward, and no parameter's .grad is touched."""
    inputs = [x for x in inputs if x.requires_grad]  # a frozen layer's map (Ultralytics' freeze=) has none
    if not value.requires_grad or not inputs:
        return torch.zeros((), device=value.device)
    grads = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
    return torch.sqrt(sum((g.float().pow(2).sum() for g in grads if g is not None), torch.zeros((), device=value.device)))


class DistillationCriterion:
    """Wraps the student's detection criterion: returns detection + distillation terms and items.

    Ultralytics scales its detection loss by batch size (`loss * B`); the distillation terms get the
    same scale so their weight does not drift with the batch size.
    """

    def __init__(self, detection: Any, distiller: Distiller) -> None:
        self.detection = detection
        self.distiller = distiller

    def __call__(self, preds: Any, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, items = self.detection(preds, batch)
        if not self.distiller.pending:  # e.g. a loss evaluated outside a training step
            return loss, items
        terms, extra = self.distiller.terms(preds, loss.float().sum() / batch["img"].shape[0])
        return torch.cat([loss.float(), terms * batch["img"].shape[0]]), {**items, **extra}

    def update(self) -> None:
        """Epoch-end hook of end-to-end criteria (YOLO26), forwarded."""
        if hasattr(self.detection, "update"):
            self.detection.update()

    def __getattr__(self, name: str) -> Any:
        if name in {"detection", "distiller", "__setstate__"}:
            raise AttributeError(name)
        return getattr(self.detection, name)

    def __deepcopy__(self, memo: dict) -> None:
        # Copies of the student (EMA, NaN recovery, checkpoints) must not drag the teacher along;
        # they rebuild a plain detection criterion on first use.
        return None
