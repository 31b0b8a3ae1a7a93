"""Command line: `train_distill.py --teacher T.pt --student S.pt --loss mgd --data data.yaml ...`.

Any other Ultralytics train argument passes through as `--lr0 0.001`, `--lr0=0.001` or `lr0=0.001`.
With no `--data`, runs the embedded demo on synthetic data (and trains/caches a teacher if none is given).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from distill.config import CORE_KEYS, teacher_sources
from distill.losses import available_losses, get_loss_class

# CLI flag -> train argument, for the options whose names differ
RENAMED = {"loss": "loss_type"}
# CLI options that are not train arguments (the CLI consumes them itself)
NOT_TRAIN_ARGS = {"config", "student", "teacher", "resume", "compare"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_distill.py",
        description="Distil a YOLO student from a YOLO teacher with Ultralytics. Any other Ultralytics train "
        "argument passes through: --lr0 0.001, --lr0=0.001 or lr0=0.001.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # '--conf 0.01' is Ultralytics' conf, not an abbreviation of --config
    )
    g = p.add_argument_group("models and data")
    g.add_argument("--teacher", nargs="+", help="teacher .pt or .yaml; several teachers: --teacher a.pt b.pt (default "
                   "without --data: a cached yolov8s trained on the demo data)")
    g.add_argument("--student", default=None, help="student .pt or .yaml (default: yolov8n.yaml)")
    g.add_argument("--data", help="dataset YAML (default: the embedded synthetic dataset)")
    g.add_argument("--config", help="YAML preset of train/distillation arguments (see configs/); flags override it")
    g.add_argument("--epochs", type=int, help="epochs (default: Ultralytics', or 30 for the demo)")
    g.add_argument("--imgsz", type=int, help="image size (default: Ultralytics', or 128 for the demo)")
    g.add_argument("--batch", type=_batch, help="batch size, -1 or a memory fraction like 0.7 for AutoBatch (default: Ultralytics', or 16 for the demo)")
    g.add_argument("--device", help="device, e.g. cpu, 0, 0,1")
    g.add_argument("--resume", help="path to last.pt of an interrupted distillation run")
    g.add_argument("--project", default=str(Path.cwd() / "runs" / "distill"), help="folder for runs")
    g.add_argument("--compare", action="store_true",
                   help="also train the same student without a teacher (same data, seed, epochs, augmentation) "
                   "and write a comparison report into the run folder")
    d = p.add_argument_group("distillation")
    d.add_argument("--loss", default=CORE_KEYS["loss_type"][0], help=f"loss name(s), '+'-joined, or 'auto': crosskd for YOLO26 (DFL-free) detection pairs on the default layers, else cwd+kl; registered: {', '.join(available_losses())}")
    for key in ("distill_weight", "distill_schedule", "distill_final", "distill_off_epochs", "distill_balance", "distill_balance_by", "distill_balance_steps",
                "distill_layers", "distill_teacher_layers", "distill_teacher_weights", "distill_ensemble"):
        default, text = CORE_KEYS[key]
        d.add_argument("--" + key.replace("_", "-"), default=default, help=text)
    for name in available_losses():
        group = p.add_argument_group(f"loss '{name}'")
        for param, (default, text) in get_loss_class(name).params.items():
            group.add_argument(f"--{name}-{param}".replace("_", "-"), dest=f"{name}_{param}", type=float, default=default, help=text)
    return p


def _batch(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def parse_extra(tokens: list[str]) -> dict[str, Any]:
    """['--lr0', '0.001', 'cos_lr=True', '--close-mosaic=0'] -> {'lr0': 0.001, 'cos_lr': True, 'close_mosaic': 0}."""
    from ultralytics.cfg import smart_value

    out, i = {}, 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--"):
            key, eq, value = tok[2:].partition("=")
            if not eq:
                if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") and "=" not in tokens[i + 1]:
                    value, i = tokens[i + 1], i + 1
                else:
                    value = "True"  # bare flag, e.g. --cos-lr
        elif "=" in tok:
            key, _, value = tok.partition("=")
        else:
            raise SystemExit(f"train_distill.py: cannot read argument {tok!r}; use --key value or key=value.")
        out[key.replace("-", "_")] = smart_value(value)
        i += 1
    return out


def split_teacher_values(values: list[str]) -> tuple[list[str] | None, list[str]]:
    """`--teacher` values -> (teachers, train arguments). A `key=value` whose key is a plain name and which is
    not a file is a train argument argparse swept up (`--teacher a.pt lr0=0.01`); a path with '=' in it
    (`runs/lr=0.01/best.pt`) stays a teacher, so a missing one is reported as a missing teacher."""
    def is_argument(value: str) -> bool:
        key, eq, _ = value.partition("=")
        return bool(eq) and key.replace("-", "_").isidentifier() and not Path(value).exists()

    teachers = [v for v in values if not is_argument(v)]
    return teachers or None, [v for v in values if is_argument(v)]


LAYER_FLAGS = ("--distill-layers", "--distill-teacher-layers")


def attach_layer_values(argv: list[str]) -> list[str]:
    """['--distill-layers', '-2,-1'] -> ['--distill-layers=-2,-1']: argparse would take a value starting with
    '-' for an option."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in LAYER_FLAGS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def typed_options(argv: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options the user actually typed (dest -> value), whatever their value: a typed flag beats a
    preset even when it repeats the flag's default (`--config kl.yaml --loss cwd+kl` trains cwd+kl)."""
    bare = copy.deepcopy(parser)
    for action in bare._actions:
        action.default = argparse.SUPPRESS
    ns, _ = bare.parse_known_args(argv)
    return vars(ns)


def train_args(ns: argparse.Namespace, extra: dict[str, Any], typed: dict[str, Any]) -> dict[str, Any]:
    """Train kwargs: untyped defaults < preset < flags the user typed < passthrough arguments."""
    args: dict[str, Any] = {"project": ns.project}
    if ns.config:
        preset = yaml.safe_load(Path(ns.config).read_text()) or {}
        if not isinstance(preset, dict):
            raise ValueError(f"--config {ns.config}: expected a YAML mapping of train arguments, got {type(preset).__name__}.")
        args.update(preset)
    for key, value in typed.items():
        if key not in NOT_TRAIN_ARGS:
            args[RENAMED.get(key, key)] = value
    args.update(extra)
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = attach_layer_values(sys.argv[1:] if argv is None else list(argv))
    ns, rest = parser.parse_known_args(argv)
    if ns.teacher:  # --teacher takes one or more values: give back a key=value passthrough that follows it
        ns.teacher, passthrough = split_teacher_values(ns.teacher)
        rest = passthrough + rest
    extra = parse_extra(rest)
    try:
        return run(ns, train_args(ns, extra, typed_options(argv, parser)))
    except (ValueError, FileNotFoundError, TypeError, SyntaxError) as e:
        print(f"train_distill.py: error: {e}", file=sys.stderr)
        return 2


def run(ns: argparse.Namespace, args: dict[str, Any]) -> int:
    from distill.demo import (DEMO_RECIPE, DEMO_STUDENT, DEMO_STUDENT_EPOCHS, DEMO_TEACHER, DEMO_TEACHER_EPOCHS,
                              cached_teacher, demo_data, task_model)
    from distill.checkpoints import read_checkpoint
    from distill.model import YOLO

    if ns.resume:
        read_checkpoint(ns.resume, "resume")
        model = YOLO(ns.resume)
        model.train(resume=True, **{k: v for k, v in args.items() if k in {"device", "batch", "workers"}})
        return report(model, teacher_sources(model.trainer.args.Distillation), unscored_teachers(model.trainer))
    demo = "data" not in args
    if demo:
        for key, value in {**DEMO_RECIPE, "epochs": DEMO_STUDENT_EPOCHS}.items():
            args.setdefault(key, value)
    preset_teacher = args.pop("Distillation", None)  # a preset may name the teacher(s); --teacher replaces them
    teacher = ns.teacher or preset_teacher
    if isinstance(teacher, list) and len(teacher) == 1:
        teacher = teacher[0]
    # Checked before the demo's data and teacher are made (minutes on a CPU), not after.
    check_args({**args, **({"Distillation": teacher} if teacher else {})})
    student_path = ns.student or DEMO_STUDENT
    if student_path.endswith(".pt"):
        read_checkpoint(student_path, "student")
    student = YOLO(student_path)
    if demo:  # the synthetic data with the student's task's labels (a -seg student gets polygons)
        args["data"] = str(demo_data(student.task))
    if teacher is None:
        if not demo:
            raise ValueError("--teacher is required with --data (the default teacher exists only for the synthetic demo).")
        model = task_model(DEMO_TEACHER, student.task)
        print(f"Preparing the demo teacher ({model}, trained once on the synthetic data, then cached)...")
        recipe = {**DEMO_RECIPE, "imgsz": args["imgsz"], **({"device": args["device"]} if "device" in args else {})}
        teacher = str(cached_teacher(model, args["data"], DEMO_TEACHER_EPOCHS, **recipe))
    args["Distillation"] = teacher
    student.train(**args)
    teachers = teacher_sources(student.trainer.args.Distillation)  # the files that taught (a .yaml was written to one)
    unscored = unscored_teachers(student.trainer)
    code = report(student, teachers, unscored)
    if demo and args["epochs"] == DEMO_STUDENT_EPOCHS:
        print(DEMO_CAVEAT if student.task == "detect" else DEMO_CAVEAT_OTHER_TASKS)
    if ns.compare:
        compare_with_baseline(student_path, teachers, args, Path(student.trainer.save_dir), [u is None for u in unscored])
    return code


def check_args(args: dict[str, Any]) -> None:
    """ValueError/TypeError for train arguments Ultralytics or the distillation settings would refuse later."""
    from ultralytics.cfg import get_cfg

    from distill.config import DistillSettings

    DistillSettings.from_args(get_cfg(overrides=args))


# The demo's run is short enough for a first try on 2 CPU cores, too short to show what distillation is
# worth: say so rather than let its numbers read as a result.
DEMO_CAVEAT = (
    "\nThis demo is a short schedule (30 student epochs): neither model has converged, and on this task a student\n"
    "trained alone for the distilled run's wall time does better than the distilled one. It shows that the\n"
    "pipeline works, not the gain. Measured gains, at equal epochs and at equal time: README.md, 'Benchmarks'.\n"
    "To measure the gain on your own data: add --compare (trains the same student without the teacher).")


DEMO_CAVEAT_OTHER_TASKS = (
    "\nThis demo is a short schedule (30 student epochs): neither model has converged. It shows that the pipeline\n"
    "works, not the gain (README.md, 'Benchmarks'). Add --compare to train the same student without the teacher.")


def unscored_teachers(trainer: Any) -> list[str | None]:
    """Per teacher, why its mAP on the dataset would mean nothing (None: it is scored). A teacher of other classes
    (matched by name, or used for features only) would be scored by class index against other classes; a detection
    teacher of a seg or pose student has no mask or keypoint mAP to set beside the student's."""
    from distill.compare import scoring_problem

    return [scoring_problem(t.model, trainer.data, trainer.student_task) for t in trainer.distiller.teachers]


def compare_with_baseline(student_path: str, teachers: list[str], args: dict[str, Any], distilled_run: Path,
                          teacher_scored: list[bool]) -> None:
    """Train the same student without the teacher, same recipe, then report both side by side."""
    from distill.compare import compare, format_report
    from distill.model import YOLO
    from distill.trainer import distill_arg_keys

    plain = {k: v for k, v in args.items() if k not in distill_arg_keys()}
    plain["name"] = f"{distilled_run.name}-baseline"
    baseline = YOLO(student_path)
    baseline.train(**plain)
    trainer = baseline.trainer
    result = compare(teachers, Path(trainer.save_dir), distilled_run, str(trainer.args.data), trainer.args.imgsz,
                     trainer.args.batch, trainer.args.device, teacher_scored)
    print(f"\nComparison (also in {distilled_run / 'compare.md'}):\n" + format_report(result))


def report(student: Any, teachers: list[str], unscored: list[str | None]) -> int:
    """Print each teacher's and the student's mAP50-95 (same data, image size and device) and where the student
    checkpoint is."""
    from ultralytics import YOLO as PlainYOLO

    from distill.compare import task_metric

    trainer = student.trainer
    best = Path(trainer.best if trainer.best.exists() else trainer.last)
    s_map = float(task_metric(student.metrics).map) if getattr(student, "metrics", None) is not None else float("nan")
    lines = ["", "Distillation finished."]
    for i, (teacher, problem) in enumerate(zip(teachers, unscored)):
        label = "teacher" if len(teachers) == 1 else f"teacher {i + 1}"
        if problem:
            lines.append(f"  {label} mAP50-95: n/a  ({teacher}: {problem})")
            continue
        t0 = time.time()
        metrics = PlainYOLO(teacher).val(
            data=trainer.args.data, imgsz=trainer.args.imgsz, batch=trainer.args.batch, device=trainer.args.device,
            plots=False, verbose=False, project=str(trainer.save_dir), name=f"{label.replace(' ', '')}_val",
            exist_ok=True,
        )
        lines.append(f"  {label} mAP50-95: {task_metric(metrics).map:.4f}  ({teacher}, validated in {time.time() - t0:.1f}s)")
    lines += [f"  student mAP50-95: {s_map:.4f}", f"  student checkpoint: {best}"]
    print("\n".join(lines))
    return 0
