"""Distillation settings: Ultralytics train arguments of our own, registered as defaults.

Ultralytics validates every train argument against `DEFAULT_CFG_DICT` and rebuilds trainers
(resume, DDP workers, validators) from `vars(args)` alone. Registering our keys there makes them
ordinary arguments: they survive `args.yaml`, checkpoints, resume and DDP, and a typo still
gets Ultralytics' "did you mean" error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from distill.losses import available_losses, get_loss_class, parse_loss_spec
from distill.train_args import register_key

# Marker stored in args while an in-memory teacher waits to be written into the run folder.
IN_MEMORY_TEACHER = "<in-memory teacher>"

SCHEDULES = ("constant", "linear", "cosine")
BALANCE_BY = ("value", "gradient")

# key: (default, help)
CORE_KEYS: dict[str, tuple[Any, str]] = {
    "Distillation": (None, "teacher: .pt checkpoint, model .yaml, YOLO object or nn.Module; or a list of them "
                     "(several teachers)"),
    # 'auto': the loss that led at convergence for the kind of pair, AUTO_LOSSES below.
    "loss_type": ("auto", "distillation loss name(s) from the registry, '+'-joined, e.g. 'cwd+kl'; 'auto': crosskd "
                  "when the student and every teacher are detection models with DFL-free heads (YOLO26) and the "
                  "default layers are distilled, else cwd+kl"),
    "distill_weight": ("auto", "global multiplier on every distillation term; 'auto': the weight measured best for the "
                       "loss combination (4 for cwd+kl), else 1, and 1 under distill_balance"),
    "distill_schedule": ("constant", f"epoch-level weight schedule: {', '.join(SCHEDULES)}"),
    "distill_final": (0.1, "weight ratio reached at the last epoch by 'linear' and 'cosine'"),
    "distill_off_epochs": (0, "the last N epochs train without distillation (the teacher does not run), as in "
                           "RTMDet's recipe; linear/cosine schedules reach distill_final at the last distilled epoch"),
    "distill_balance": (0.0, "0: each loss's own weight. > 0: calibrate each term's scale over the first "
                        "distill_balance_steps batches so that it equals this share of the detection loss, then hold it"),
    "distill_balance_by": ("value", "what distill_balance matches: 'value' (the terms' values per image) or "
                           "'gradient' (their gradient norms at the distilled student layers)"),
    "distill_balance_steps": (20, "batches the calibration of distill_balance averages over (the terms carry no "
                              "weight meanwhile)"),
    "distill_balance_scales": (None, "the calibrated scales, {loss: scale}; written by training (resume keeps them), "
                               "or given to reuse another run's"),
    "distill_teacher_weights": (None, "several teachers: their relative weights, e.g. '2,1' (default: equal). Each "
                                "teacher's terms count with its weight over the sum, so the terms keep one teacher's scale"),
    "distill_ensemble": (False, "several teachers: logit losses compare the student with the teachers' weighted mean "
                         "probabilities (one target) instead of with each teacher in turn (one term each)"),
    "distill_teacher_fingerprint": (None, "written by training: a hash of the teacher's weights (a list for several "
                                    "teachers), checked on resume and in DDP workers"),
    "distill_layers": (None, "student layer indices to distil, e.g. '15,18,21'; negative ones count back from the "
                       "head (-1: the layer feeding it). Default: the Detect head inputs"),
    "distill_teacher_layers": (None, "teacher layer indices paired with distill_layers (several teachers: one list "
                               "each, ';'-separated, e.g. '15,18,21;16,19,22', or one list for all). Default: the teacher's "
                               "Detect inputs, position for position; other layers keep their index where both "
                               "models share a layout"),
}


# loss_type 'auto' per kind of pair, resolved by the trainer from the heads before anything else reads it.
# "dfl" (any pair with a DFL head; also segment, pose and OBB students): highest mean gain at convergence on BCCD,
# benchmarks/results/gain_bccd-long-cpu.md (6 seeds, each loss at its own weights: cwd+kl +0.024 mAP50-95 over the
# baseline, +0.011 over kl alone, t 3.8; cwd alone +0.020, not distinguishable); on the synthetic task's short schedule
# kl alone led and cwd alone gained nothing, so the combination is the one positive on both. Its weight: TUNED_WEIGHTS.
# "dfl_free" (YOLO26 student and teachers, detection, the default layers): yolo26s -> yolo26n on BCCD at yolo26n's
# converged 200 epochs. crosskd chosen on seeds 0-4 (benchmarks/results/gain_bccd-long200-yolo26.md: +0.0253 over the
# baseline, 55 % of the gap; +0.0113 +- 0.0037 over cwd+kl at weight 4) and confirmed on fresh seeds 5-9
# (gain_bccd-long200-yolo26-fresh.md): +0.0116 +- 0.0026 over cwd+kl at weight 4, t 4.4, 5/5; over the baseline
# +0.0142 +- 0.0048 there (38 % of the gap). Measured at weight 1 with one teacher: weight 4 led it on seeds 0-4 and
# fell behind it on fresh seeds 10-11 (gain_bccd-long200-yolo26-crosskd-weight*), so it has no tuned weight. At 100
# epochs crosskd was even with cwd+kl at weight 1 (gain_bccd-long-yolo26.md).
AUTO_LOSSES = {"dfl": "cwd+kl", "dfl_free": "crosskd"}


def is_auto(value: Any) -> bool:
    """Whether a setting with an 'auto' value (loss_type, distill_weight) asks for it: unset, '' or 'auto'."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto"))


for _key, (_default, _help) in CORE_KEYS.items():
    register_key(_key, _default)


def parse_layers(value: Any) -> list[int] | None:
    """'15,18,21' | [15, 18, 21] | None -> list of ints or None."""
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"distill layers must be integers like '15,18,21', got {value!r}.") from None


@dataclass
class DistillSettings:
    """Validated distillation options read from a trainer's args."""

    teacher: Any
    losses: list[str]
    loss_params: dict[str, dict[str, float]] = field(default_factory=dict)
    weight: float = 1.0
    schedule: str = "constant"
    final: float = 0.1
    student_layers: list[int] | None = None
    teacher_layers: list[int] | list[list[int] | None] | None = None  # several teachers: may be one list each
    off_epochs: int = 0
    balance: float = 0.0
    balance_steps: int = 20
    balance_scales: dict[str, float] | None = None
    balance_by: str = "value"
    teacher_weights: list[float] | None = None  # as given; None: equal
    ensemble: bool = False
    unused: list[str] = field(default_factory=list)  # `<loss>_<param>` changed from default, loss not in use
    ignored: list[str] = field(default_factory=list)  # sentences: settings that the other settings override

    @classmethod
    def from_args(cls, args: Any) -> "DistillSettings":
        """Read and validate settings from an Ultralytics args namespace; raises ValueError with a fix."""
        get = (lambda k: args.get(k)) if isinstance(args, dict) else (lambda k: getattr(args, k, None))
        # An 'auto' not yet resolved (argument checks before any model is read) validates as the DFL pairs' loss.
        spec = get("loss_type")
        losses = parse_loss_spec(AUTO_LOSSES["dfl"] if is_auto(spec) else spec)
        params = {name: get_loss_class(name).read_params(get) for name in losses}
        unused = []  # changed from their defaults although their loss is not in use
        for name in (n for n in available_losses() if n not in losses):
            loss_cls = get_loss_class(name)
            values = loss_cls.read_params(get)  # a bad value is an error even where it has no effect
            unused += [f"{name}_{k}" for k, v in values.items() if v != loss_cls.params[k][0]]
        schedule = str(get("distill_schedule") or "constant").lower()
        if schedule not in SCHEDULES:
            raise ValueError(f"distill_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}.")
        final = _number(get("distill_final"), "distill_final", CORE_KEYS["distill_final"][0])
        if not 0 <= final <= 1:
            raise ValueError(f"distill_final must be in [0, 1], got {final}.")
        n_teachers = len(teacher_sources(get("Distillation")))
        s_layers, t_layers = parse_layers(get("distill_layers")), parse_teacher_layers(get("distill_teacher_layers"),
                                                                                      n_teachers)
        off = _number(get("distill_off_epochs"), "distill_off_epochs", CORE_KEYS["distill_off_epochs"][0])
        if off < 0 or off != int(off):
            raise ValueError(f"distill_off_epochs must be a whole number >= 0, got {get('distill_off_epochs')!r}.")
        epochs = get("epochs")
        if isinstance(epochs, (int, float)) and off >= epochs:
            raise ValueError(f"distill_off_epochs={int(off)} leaves none of the {epochs} epochs to distil: set it below "
                             "epochs.")
        balance = _number(get("distill_balance"), "distill_balance", CORE_KEYS["distill_balance"][0])
        if balance < 0:
            raise ValueError(f"distill_balance must be >= 0 (0 turns it off), got {balance}.")
        steps = _number(get("distill_balance_steps"), "distill_balance_steps", CORE_KEYS["distill_balance_steps"][0])
        if steps < 1 or steps != int(steps):
            raise ValueError(f"distill_balance_steps must be a whole number >= 1, got {get('distill_balance_steps')!r}.")
        scales = parse_scales(get("distill_balance_scales"), losses) if balance else None
        weight = resolve_weight(get("distill_weight"), losses, balance)
        balance_by = str(get("distill_balance_by") or "value").lower()
        if balance_by not in BALANCE_BY:
            raise ValueError(f"distill_balance_by must be one of {', '.join(BALANCE_BY)}, got {balance_by!r}.")
        teacher_weights = parse_teacher_weights(get("distill_teacher_weights"), n_teachers)
        ensemble = _flag(get("distill_ensemble"), "distill_ensemble")
        ignored = []
        if n_teachers == 1 and (teacher_weights is not None or ensemble):
            ignored.append("distill_teacher_weights / distill_ensemble are set, but there is one teacher")
        if ensemble and n_teachers > 1 and not any(get_loss_class(n).kind == "logit" for n in losses):
            ignored.append(f"distill_ensemble is set, but loss_type '{'+'.join(losses)}' has no logit loss to ensemble")
        if ensemble and n_teachers > 1:
            if lacking := [n for n in losses if get_loss_class(n).kind == "logit" and not get_loss_class(n).ensembles]:
                raise ValueError(f"distill_ensemble: the logit loss(es) {', '.join(lacking)} have no ensemble target; "
                                 "set distill_ensemble=False (one term per teacher).")
        if not balance and get("distill_balance_scales") not in (None, ""):
            ignored.append("distill_balance_scales is set but distill_balance is 0, so the losses' own weights apply")
        changed = [f"{n}_weight" for n in losses if params[n]["weight"] != get_loss_class(n).params["weight"][0]]
        if balance and changed:
            ignored.append(f"{', '.join(changed)} set, but distill_balance > 0 replaces the losses' weights by "
                           "calibrated scales")
        return cls(get("Distillation"), losses, params, weight, schedule, final, s_layers, t_layers,
                   int(off), balance, int(steps), scales, balance_by, teacher_weights, ensemble, unused, ignored)

    @property
    def teachers(self) -> list[Any]:
        """The teacher sources, one per teacher (a list of one for a single teacher)."""
        return teacher_sources(self.teacher)

    def layers_of(self, index: int) -> list[int] | None:
        """The explicit teacher layers for teacher `index` (None: derived from the student's / its Detect inputs)."""
        if self.teacher_layers and isinstance(self.teacher_layers[0], (list, type(None))):
            return self.teacher_layers[index]
        return self.teacher_layers

    @property
    def shares(self) -> list[float]:
        """Each teacher's share of the distillation terms: its weight over the sum (equal shares by default)."""
        n = len(self.teachers)
        weights = self.teacher_weights or [1.0] * n
        return [w / sum(weights) for w in weights]

    def factor(self, epoch: int, epochs: int) -> float:
        """Schedule multiplier for 0-based `epoch` of `epochs`: 1 at the start, `final` at the last distilled epoch,
        0 in the last `off_epochs` epochs."""
        distilled = epochs - self.off_epochs
        if epoch >= distilled:
            return 0.0
        if self.schedule == "constant" or distilled <= 1:
            return 1.0
        p = min(max(epoch / (distilled - 1), 0.0), 1.0)
        if self.schedule == "linear":
            return 1.0 - (1.0 - self.final) * p
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * p))


def teacher_sources(value: Any) -> list[Any]:
    """`Distillation` as a list of teacher sources: [] for none, [x] for one, the items of a list or tuple."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def parse_teacher_layers(value: Any, n_teachers: int) -> list[int] | list[list[int] | None] | None:
    """distill_teacher_layers: one list for every teacher ('15,18,21'), or with several teachers one per teacher,
    ';'-separated ('15,18,21;16,19,22'; an empty item: that teacher's default)."""
    if not (isinstance(value, str) and ";" in value):
        return parse_layers(value)
    items = value.split(";")
    if len(items) != n_teachers:
        raise ValueError(f"distill_teacher_layers gives {len(items)} ';'-separated lists for {n_teachers} teacher(s): "
                         "give one per teacher, in the order of the teachers, or one list for all.")
    return [parse_layers(item.strip()) for item in items]


def parse_teacher_weights(value: Any, n_teachers: int) -> list[float] | None:
    """distill_teacher_weights ("2,1", [2, 1] or None) as one number > 0 per teacher; None: equal weights."""
    if value is None or value == "":
        return None
    items = value.replace("[", "").replace("]", "").split(",") if isinstance(value, str) else (
        list(value) if isinstance(value, (list, tuple)) else [value])
    weights = [_number(v, "distill_teacher_weights", 1.0) for v in items if str(v).strip()]
    if n_teachers and len(weights) != n_teachers:
        raise ValueError(f"distill_teacher_weights gives {len(weights)} weight(s) for {n_teachers} teacher(s): give one "
                         "per teacher, in the order of the teachers.")
    if any(w <= 0 for w in weights):  # a teacher of weight 0 would still run (and a NaN term would still poison)
        raise ValueError(f"distill_teacher_weights must all be > 0 (leave out a teacher instead of weighting it 0), "
                         f"got {value!r}.")
    return weights


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in {"true", "1", "yes"}:
            return True
        if value.strip().lower() in {"false", "0", "no", "", "none"}:
            return False
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def parse_scales(value: Any, losses: list[str]) -> dict[str, float] | None:
    """distill_balance_scales as {loss: scale} for exactly `losses`, or None (not calibrated yet)."""
    if value is None or value == "":
        return None
    if not isinstance(value, dict) or set(value) != set(losses):
        raise ValueError(f"distill_balance_scales must give one scale per loss in use ({', '.join(losses)}), got "
                         f"{value!r}. Leave it unset to calibrate.")
    scales = {name: _number(value[name], f"distill_balance_scales[{name}]", 0.0) for name in losses}
    if any(v < 0 for v in scales.values()):
        raise ValueError(f"distill_balance_scales must be >= 0, got {value!r}.")
    return scales


# distill_weight 'auto' per loss combination: the weight that led at convergence on the seeds that chose it and
# held on fresh ones. cwd+kl: BCCD yolov8s -> yolov8n, 100 epochs, chosen on seeds 0-1 (1, 2, 4 tried); fresh seeds
# 6-11: weight 4 +0.0373 +- 0.0034 over the baseline (64 % of the gap), +0.0120 +- 0.0026 over weight 1 (6/6); over
# fresh seeds 6-17 +0.0330 +- 0.0027 (60 %, benchmarks/results/gain_bccd-long-cpu_fresh.md); weight 8 fell below 4
# on seeds 0-1. From pre-trained weights 4 and 1 are even: BCCD pair -0.0018 +- 0.0005 at best.pt but +0.0015 at
# the last epoch (gain_bccd-long-pretrained.md), synthetic fine-tune -0.0011 +- 0.0018 (gain_finetune.md); one rule
# for both starts keeps 'auto' simple.
TUNED_WEIGHTS: dict[frozenset[str], float] = {frozenset({"cwd", "kl"}): 4.0}


def resolve_weight(value: Any, losses: list[str], balance: float = 0.0) -> float:
    """distill_weight as a number: 'auto' (or None) -> TUNED_WEIGHTS for `losses` (1 if untuned, or under
    distill_balance, whose shares of the detection loss are the weights then); a number is checked, >= 0."""
    if is_auto(value):
        return 1.0 if balance else TUNED_WEIGHTS.get(frozenset(losses), 1.0)
    try:
        weight = _number(value, "distill_weight", 1.0)
    except ValueError:
        raise ValueError(f"distill_weight must be a number >= 0 or 'auto', got {value!r}.") from None
    if weight < 0:
        raise ValueError(f"distill_weight must be >= 0 or 'auto', got {weight}.")
    return weight


def _number(value: Any, name: str, default: float) -> float:
    if value is None:
        return float(default)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return out
