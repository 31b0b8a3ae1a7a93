"""The distillation glue (a mixin over any Ultralytics detection-family trainer) and the detection trainer.

`DistillationMixin` holds everything distillation adds to a trainer: the frozen teachers, the set-up checks, the
connectors, the per-step hook into preprocess_batch and the final checkpoint. Combined with DetectionTrainer here
and with the segment, pose and OBB trainers in `distill.tasks`, each in one line.
"""

from __future__ import annotations

import shutil
from copy import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.data.utils import check_det_dataset
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.modules import Detect
from ultralytics.nn.tasks import yaml_model_load
from ultralytics.utils import DEFAULT_CFG, LOCAL_RANK, LOGGER, RANK, YAML
from ultralytics.utils.checks import check_model_file_from_stem
from ultralytics.utils.torch_utils import torch_distributed_zero_first, unwrap_model

from distill.amp_check import OfflineAMPCheck
from distill.classmap import check_classes, class_map, covered_classes, dataset_names
from distill.checkpoints import read_checkpoint
from distill.config import AUTO_LOSSES, CORE_KEYS, IN_MEMORY_TEACHER, DistillSettings, is_auto, teacher_sources
from distill.distiller import MODULES_ATTR, Distiller
from distill.losses import get_loss_class
from distill.teacher import (atomic_save, check_task, fingerprint, freeze, is_teacher_file, load_teacher,
                             needs_teacher_file, save_teacher, teacher_save_path)
from distill.teachers import Teacher


class PlainDetectionTrainer(OfflineAMPCheck, DetectionTrainer):
    """Ultralytics' DetectionTrainer, except that offline its AMP check never reaches for the network."""


class DistillationMixin:
    """Trains the student with its task's loss plus distillation terms from frozen teachers. Goes before an
    Ultralytics DetectionTrainer (or a subclass: segment, pose, OBB) in the bases; `student_task` names the task.

    The teacher is held here, never inside the student: Ultralytics' freeze loop, EMA and
    checkpoints only ever see the student (plus its connectors in `student.distill_modules`).
    """

    student_task = "detect"

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        overrides = dict(overrides or {})
        sources = teacher_sources(overrides.get("Distillation"))
        loaded: list[nn.Module | None] = [None] * len(sources)
        for i, source in enumerate(sources):
            if not isinstance(source, (str, Path)):  # YOLO object or nn.Module
                loaded[i], sources[i] = load_teacher(source), IN_MEMORY_TEACHER
        if sources:  # one teacher is a value, several a list (a list of one is one teacher)
            overrides["Distillation"] = sources if len(sources) > 1 else sources[0]
        if not overrides.get("resume"):
            loaded = preflight(cfg, overrides, loaded, self.student_task)  # fails before Ultralytics creates the run folder
        super().__init__(cfg, overrides, _callbacks)
        try:
            settings = DistillSettings.from_args(self.args)
            sources = settings.teachers
            if len(loaded) != len(sources):  # resume: rebuilt from the paths recorded in the checkpoint's args
                loaded = [None] * len(sources)
            teachers = [m if m is not None else load_teacher(src, nc=self.data["nc"], kpt_shape=self.data.get("kpt_shape"))
                        for m, src in zip(loaded, sources)]
            # A resumed run and a DDP worker must find the teachers the run started with.
            check_fingerprint(teachers, self.args, verify=bool(self.resume) or RANK != -1)
            several = len(sources) > 1
            for i, (teacher, source) in enumerate(zip(teachers, sources)):
                if needs_teacher_file(source) and RANK in {-1, 0}:
                    # DDP workers and resume rebuild the trainer from args alone: give the teacher a file, so that
                    # every rank and every resume gets these weights (a .yaml would be re-randomised each time).
                    sources[i] = str(save_teacher(teacher, teacher_save_path(self.save_dir, self.ddp, i if several else None)))
            self.args.Distillation = settings.teacher = list(sources) if several else sources[0]
            self.args.distill_weight = settings.weight  # 'auto' resolved: resume keeps this number
            if RANK in {-1, 0}:
                YAML.save(self.save_dir / "args.yaml", vars(self.args))
            names = dataset_names(self.data)
            cmaps = [class_map(t, names, settings) for t in teachers]  # resume: checked here, not in preflight
        except Exception:
            self._discard_run()
            raise
        if self.args.compile:
            LOGGER.warning("Distillation: 'compile' is disabled because feature hooks need eager mode.")
            self.args.compile = False
        # On the CPU until _setup_train: a DDP worker learns its own GPU only there (_setup_ddp).
        self.distiller = Distiller([Teacher(freeze(t), str(src), share, cmap) for t, src, share, cmap
                                    in zip(teachers, sources, settings.shares, cmaps)], settings)

    def _setup_train(self):
        """Ultralytics' set-up, with the teacher first moved to this rank's device (final by now)."""
        self.distiller.to(self.device)
        out = super()._setup_train()
        balancer, nb = self.distiller.balancer, len(self.train_loader)
        if balancer is not None and not balancer.calibrated:
            if balancer.steps > nb:  # end within epoch 1, so that every checkpoint holds the scales
                LOGGER.warning(f"Distillation: distill_balance_steps={balancer.steps} is more than one epoch's {nb} "
                               f"batches; calibrating over {nb}.")
                balancer.steps = nb
            distilled = nb * (self.epochs - self.start_epoch - self.distiller.settings.off_epochs)
            if balancer.steps >= distilled:
                self._discard_run()
                raise ValueError(f"distill_balance calibrates over {balancer.steps} batches, which leaves none of this "
                                 f"run's {distilled} distilled batches to distil. Train 2+ epochs or lower "
                                 "distill_balance_steps.")
        return out

    def get_model(self, cfg=None, weights: nn.Module | None = None, verbose: bool = True):
        """Student from Ultralytics, with connectors and loss layers attached before the optimizer is built."""
        model = super().get_model(cfg, weights, verbose)
        try:
            self.distiller.attach(model, weights if isinstance(weights, nn.Module) else None)
        except Exception:
            self._discard_run()  # e.g. incompatible detection levels: leave no half-made run behind
            raise
        return model

    def set_model_attributes(self):
        """Runs in every set-up path before the optimizer is built, also in DDP workers, which receive the
        built student and never call get_model()."""
        super().set_model_attributes()
        self.distiller.attach(unwrap_model(self.model))

    def _discard_run(self) -> None:
        """Remove the run folder this trainer created, if it still holds nothing but its set-up files."""
        run, weights = self.save_dir, self.save_dir / "weights"
        if not run.is_dir() or self.resume:
            return
        setup = {"args.yaml", "weights", "labels.jpg"}
        if all(p.name in setup or is_teacher_file(p) for p in run.iterdir()) and not (
            weights.is_dir() and any(weights.iterdir())
        ):
            shutil.rmtree(run, ignore_errors=True)

    def preprocess_batch(self, batch: dict) -> dict:
        """Runs inside autocast right before the student's forward: the teacher goes first."""
        batch = super().preprocess_batch(batch)
        epoch = getattr(self, "epoch", self.start_epoch)  # set by the training loop; absent before it starts
        self.distiller.before_forward(unwrap_model(self.model), batch["img"], epoch, self.epochs)
        return batch

    def label_loss_items(self, loss_items=None, prefix="train"):
        """Column names or values of loss items. Validation runs the plain student without its teacher, so the
        distillation terms get train/ columns only (no always-zero val/ columns in results.csv and results.png)."""
        if prefix == "val":
            own = {f"{name}_loss" for name in self.distiller.losses}
            if loss_items is None:
                return [f"val/{x}" for x in self.loss_names if x not in own]
            loss_items = {k: v for k, v in loss_items.items() if k not in own}
        return super().label_loss_items(loss_items, prefix)

    def save_model(self):
        self.distiller.release()  # hooks must never be copied into a checkpoint
        self.record_balance()
        return super().save_model()

    def record_balance(self) -> None:
        """Put calibrated scales into the args, which every checkpoint saves (train_args) and resume restores."""
        balancer = self.distiller.balancer
        if balancer is not None and balancer.calibrated and self.args.distill_balance_scales != balancer.scales:
            self.args.distill_balance_scales = dict(balancer.scales)
            self.distiller.settings.balance_scales = dict(balancer.scales)
            if RANK in {-1, 0}:  # args.yaml too, so that cfg=args.yaml reuses them
                YAML.save(self.save_dir / "args.yaml", vars(self.args))

    def final_eval(self):
        """Strip distillation-only layers from the final checkpoints (keeping the trained connectors in
        weights/distill_modules.pt), then Ultralytics' own final step. Under DDP only rank 0 writes, while
        the other ranks wait, as in Ultralytics' own final_eval."""
        with torch_distributed_zero_first(LOCAL_RANK):
            if RANK in {-1, 0}:
                for f in (self.last, self.best):
                    if f.exists():
                        modules = finalize_checkpoint(f, self.distill_record())
                        if f == self.last and modules is not None:
                            atomic_save(modules.state_dict(), self.wdir / "distill_modules.pt")
        return super().final_eval()

    def distill_record(self) -> dict[str, Any]:
        """Plain-typed summary of how the student was distilled, stored as ckpt['distill']. The per-teacher entries
        (teacher, teacher_fingerprint, teacher_layers, class_map) are values for one teacher, lists for several."""
        s, d = self.distiller.settings, self.distiller
        one = len(d.teachers) == 1

        def per_teacher(values: list) -> Any:
            return values[0] if one else values

        return {
            "task": self.student_task,
            "teacher": per_teacher([t.source for t in d.teachers]),
            "teacher_fingerprint": self.args.distill_teacher_fingerprint,
            "teacher_shares": [t.share for t in d.teachers],  # distill_teacher_weights over their sum
            "ensemble": d.ensemble,
            "losses": list(s.losses),
            "params": copy(s.loss_params),
            "weight": s.weight,
            "schedule": s.schedule,
            "final": s.final,
            "off_epochs": s.off_epochs,
            "balance": s.balance,
            "balance_by": s.balance_by,
            "balance_scales": dict(s.balance_scales) if s.balance_scales else None,
            "student_layers": list(d.student_layers),
            "teacher_layers": per_teacher([list(t.layers) for t in d.teachers]),
            # logit losses: dataset class index -> the teacher class index whose score taught it (None: the same)
            "class_map": per_teacher([dict(zip(t.class_map.student, t.class_map.teacher)) if t.class_map else None
                                      for t in d.teachers]),
        }


class DistillationTrainer(DistillationMixin, OfflineAMPCheck, DetectionTrainer):
    """Distils a detection student (DetectionTrainer with the distillation glue)."""


def check_fingerprint(teachers: list[nn.Module], args: Any, verify: bool) -> None:
    """Record the teachers' fingerprints in `args` (saved with every checkpoint: a string for one teacher, a list for
    several); with `verify` (resume, DDP workers), first refuse a teacher whose weights differ from the recorded ones."""
    prints = [fingerprint(t) for t in teachers]
    recorded = getattr(args, "distill_teacher_fingerprint", None)
    if verify and recorded:
        recorded = teacher_sources(recorded)
        sources = teacher_sources(args.Distillation)
        for i, (now, then) in enumerate(zip(prints, recorded)):
            if now != then:
                raise ValueError(f"the teacher at {sources[i]} is not the one this run started with (weights "
                                 f"fingerprint {now}, recorded {then}): it was changed or replaced. Restore that "
                                 "file, or start a new run instead of resuming.")
        if len(recorded) != len(prints):
            raise ValueError(f"this run started with {len(recorded)} teacher(s), but {len(prints)} are given now; "
                             "resume with the teachers it started with.")
    args.distill_teacher_fingerprint = prints[0] if len(prints) == 1 else prints


def preflight(cfg: Any, overrides: dict, loaded: list[nn.Module | None], task: str = "detect") -> list[nn.Module]:
    """Check arguments, dataset and teachers before any file is written; returns the loaded teachers. loaded: the
    teachers given as objects (None where a path is given), in the order of `Distillation`; task: the student's."""
    args = get_cfg(cfg, overrides)
    settings = DistillSettings.from_args(args)  # every value checked before a model is read
    sources = settings.teachers
    if not sources:
        raise ValueError("no teacher given: pass Distillation=<teacher .pt | .yaml | YOLO | nn.Module> or a list of "
                         "them (CLI: --teacher).")
    data = check_det_dataset(args.data) if args.data else None  # what the trainer loads next anyway
    teachers = []
    for i, (model, source) in enumerate(zip(loaded, sources)):
        try:
            teacher = model if model is not None else load_teacher(source, nc=data["nc"] if data else None,
                                                                   kpt_shape=(data or {}).get("kpt_shape"))
            check_task(teacher, task, _teacher_name(sources, i))
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{_teacher_who(sources, i)}{e}") from None
        if Path(str(source)).suffix in {".yaml", ".yml"}:
            LOGGER.warning(f"Distillation: {_teacher_who(sources, i)}the teacher is built from {source}, so its weights "
                           "are random: it teaches nothing (only useful to test a set-up). Pass a trained .pt checkpoint.")
        teachers.append(teacher)
    if is_auto(args.loss_type):  # the trainer, resume and DDP workers then read the chosen name from args
        overrides["loss_type"] = args.loss_type = auto_loss(args.model, teachers, task, settings)
        settings = DistillSettings.from_args(args)
    if settings.unused:
        LOGGER.warning(f"Distillation: {', '.join(settings.unused)} set, but loss_type is "
                       f"'{'+'.join(settings.losses)}', so they have no effect.")
    for sentence in settings.ignored:
        LOGGER.warning(f"Distillation: {sentence}.")
    maps = []
    for i, teacher in enumerate(teachers) if data is not None else ():
        try:
            maps.append(check_classes(teacher, dataset_names(data), settings, _teacher_name(sources, i)))
        except ValueError as e:
            raise ValueError(f"{_teacher_who(sources, i)}{e}") from None
    files = [str(src) for src in sources if isinstance(src, (str, Path))]
    if len(set(files)) < len(files):
        LOGGER.warning("Distillation: the same teacher file is given more than once; each copy runs (and costs) "
                       "separately. Use distill_teacher_weights to weight a teacher instead.")
    if settings.ensemble and len(maps) > 1 and len({covered_classes(m) for m in maps}) > 1:
        raise ValueError("distill_ensemble needs teachers that teach the same dataset classes, but their class lists "
                         "cover different ones; set distill_ensemble=False (one term per teacher).")
    return teachers


def _teacher_name(sources: list[Any], i: int) -> str:
    return "the teacher" if len(sources) == 1 else f"teacher {i + 1} ({sources[i]})"


def _teacher_who(sources: list[Any], i: int) -> str:
    """The prefix naming teacher i in an error: none for a single teacher."""
    return "" if len(sources) == 1 else f"{_teacher_name(sources, i)}: "


def auto_loss(student: Any, teachers: list[nn.Module], task: str, settings: DistillSettings) -> str:
    """loss_type 'auto' for this pair, logged with its reason: AUTO_LOSSES['dfl_free'] (crosskd) when a detection
    student and every teacher have DFL-free heads (reg_max 1, YOLO26) and the default layers (the Detect inputs,
    which crosskd needs) are distilled; AUTO_LOSSES['dfl'] (cwd+kl) otherwise. student: args.model (.pt / .yaml)."""
    kind, why = "dfl", "DFL heads"
    if task != "detect":
        why = f"a {task} student"
    elif settings.student_layers is not None or any(settings.layers_of(i) is not None for i in range(len(teachers))):
        why = "explicit layers"
    elif any(int(t.model[-1].reg_max) != 1 for t in teachers):
        why = "a teacher with a DFL head"
    elif student_reg_max(student) != 1:  # the student's file is read last, only where it decides
        why = "a student with a DFL head"
    else:
        kind, why = "dfl_free", "DFL-free heads on both sides, as YOLO26's"
    LOGGER.info(f"Distillation: loss_type 'auto' is '{AUTO_LOSSES[kind]}' here ({why}).")
    return AUTO_LOSSES[kind]


def student_reg_max(source: Any) -> int | None:
    """reg_max of the head the student `source` (args.model: a .pt or model .yaml path, or a stem like 'yolo26n')
    has, without building it from a YAML; None where there is no local file to read (e.g. a 'ul://' model)."""
    if not isinstance(source, (str, Path)) or not str(source) or "://" in str(source):
        return None
    path = check_model_file_from_stem(str(source))  # Ultralytics' own reading: 'yolo26n' -> 'yolo26n.pt'
    if Path(path).suffix in {".yaml", ".yml"}:
        return int(yaml_model_load(path).get("reg_max", 16))  # parse_model's default for YAMLs without it
    if Path(path).suffix != ".pt":
        return None
    head = read_checkpoint(path, "student").model[-1]
    return int(head.reg_max) if isinstance(head, Detect) else None


def distill_arg_keys() -> set[str]:
    """Every train argument that belongs to distillation (core keys and all registered loss params)."""
    from distill.losses import available_losses

    keys = set(CORE_KEYS)
    for name in available_losses():
        keys |= {f"{name}_{p}" for p in get_loss_class(name).params}
    return keys


def finalize_checkpoint(path: Path, record: dict[str, Any]) -> nn.Module | None:
    """Make `path` a plain student checkpoint: drop connectors/generators (returned, from the EMA),
    drop our keys from the model's args and keep the record as ckpt['distill']."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    keys = distill_arg_keys()
    removed = None
    for name in ("ema", "model"):
        model = ckpt.get(name)
        if isinstance(model, nn.Module):
            if hasattr(model, MODULES_ATTR):
                removed = removed or getattr(model, MODULES_ATTR)
                delattr(model, MODULES_ATTR)
            args = getattr(model, "args", None)
            if isinstance(args, dict):
                model.args = {k: v for k, v in args.items() if k not in keys}
            elif args is not None:
                model.args = {k: v for k, v in vars(args).items() if k not in keys}
    ckpt["distill"] = record
    atomic_save(ckpt, path)
    return removed
