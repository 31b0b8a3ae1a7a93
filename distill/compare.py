"""`--compare`: the distilled student against the same student trained without a teacher.

A gain only counts against a same-recipe baseline; this report puts teacher, baseline and
distilled student side by side, measured in one process on the same validation data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def model_card(weights: str | Path, data: str, imgsz: int, batch: int, device: Any, project: Path,
               scored: bool = True) -> dict[str, float | None]:
    """mAP50, mAP50-95, parameters, GFLOPs at `imgsz` and inference ms/image of one checkpoint; without `scored`
    (a model of other classes) no validation: mAPs and speed are None."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    model = YOLO(str(weights))
    params, gflops = get_num_params(model.model), get_flops(model.model, imgsz)
    if not scored:
        return {"map50": None, "map50_95": None, "params": int(params), "gflops": float(gflops), "ms_per_image": None}
    metrics = model.val(data=data, imgsz=imgsz, batch=batch, device=device, plots=False, verbose=False,
                        project=str(project), name=f"val-{Path(weights).stem}", exist_ok=True)
    part = task_metric(metrics)
    return {"map50": float(part.map50), "map50_95": float(part.map), "params": int(params),
            "gflops": float(gflops), "ms_per_image": float(metrics.speed["inference"])}


def scoring_problem(model: Any, data: dict, task: str) -> str | None:
    """Why `model`'s mAP on the dataset `data` (Ultralytics' dataset dict) would mean nothing beside a `task`
    student's, or None when it can be scored: a model of other classes would be scored by class index against other
    classes; one of another task (a detection teacher of a seg student) has no mask or keypoint mAP; a pose model of
    other keypoints cannot even be validated on the dataset."""
    from distill.classmap import dataset_names, same_classes
    from distill.teacher import keypoint_shape, model_task

    if not same_classes(model, dataset_names(data)):
        return "its classes differ from the dataset's"
    if model_task(model) != task:
        return f"a {model_task(model)} model, scored differently from the {task} student"
    if (shape := keypoint_shape(model)) is not None and shape != list(data.get("kpt_shape") or []):
        return f"its keypoints ({shape}) differ from the dataset's ({data.get('kpt_shape')})"
    return None


# The metric a task is judged by: masks (segment), keypoints (pose), boxes (detect, obb). Its results.csv suffix.
TASK_PARTS = (("seg", "M"), ("pose", "P"), ("box", "B"))


def task_metric(metrics: Any) -> Any:
    """The part of Ultralytics' validation metrics that scores the model's own task (`.seg`, `.pose` or `.box`),
    with `.map50` and `.map` (mAP50-95). Also reads the metrics dict a checkpoint carries (what a DDP launch's
    model holds after training). ValueError when neither form holds a known metric."""
    from types import SimpleNamespace

    if isinstance(metrics, dict):
        for _, suffix in TASK_PARTS:
            if f"metrics/mAP50-95({suffix})" in metrics:
                return SimpleNamespace(map=float(metrics[f"metrics/mAP50-95({suffix})"]),
                                       map50=float(metrics.get(f"metrics/mAP50({suffix})", float("nan"))))
    else:
        for name, _ in TASK_PARTS:
            if hasattr(metrics, name):
                return getattr(metrics, name)
    raise ValueError(f"no mask, keypoint or box mAP in these validation metrics ({type(metrics).__name__}).")


def results_columns(run: str | Path) -> dict[str, list[float]]:
    """A run's results.csv as column name -> one value per epoch (Ultralytics pads the names with spaces)."""
    with open(Path(run) / "results.csv") as f:
        rows = list(csv.DictReader(f))
    return {key.strip(): [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}


def map_curve(run: Path) -> list[float]:
    """mAP50-95 per epoch of the run's own task (masks, keypoints or boxes) from its results.csv."""
    columns = results_columns(run)
    return next(columns[f"metrics/mAP50-95({suffix})"] for _, suffix in TASK_PARTS
                if f"metrics/mAP50-95({suffix})" in columns)


def compare(teachers: str | Path | list, baseline_run: Path, distilled_run: Path, data: str, imgsz: int, batch: int,
            device: Any = None, teacher_scored: bool | list[bool] = True) -> dict[str, Any]:
    """Build the report and write compare.json / compare.md / compare.png into `distilled_run`. teachers: one or
    several; teacher_scored: per teacher, False for one of other classes, whose mAP would mean nothing here. The
    gap closed is measured against the best scored teacher."""
    teachers = list(teachers) if isinstance(teachers, (list, tuple)) else [teachers]
    scored = teacher_scored if isinstance(teacher_scored, (list, tuple)) else [teacher_scored] * len(teachers)
    work = distilled_run / "compare"
    names = ["teacher"] if len(teachers) == 1 else [f"teacher {i + 1}" for i in range(len(teachers))]
    cards = {name: model_card(t, data, imgsz, batch, device, work, ok) for name, t, ok in zip(names, teachers, scored)}
    cards["baseline student"] = model_card(baseline_run / "weights" / "best.pt", data, imgsz, batch, device, work)
    cards["distilled student"] = model_card(distilled_run / "weights" / "best.pt", data, imgsz, batch, device, work)
    b, d = cards["baseline student"]["map50_95"], cards["distilled student"]["map50_95"]
    t = max((cards[n]["map50_95"] for n in names if cards[n]["map50_95"] is not None), default=None)
    gap = t - b if t is not None else None
    report = {
        "cards": cards,
        "teachers": names,
        "gain_map50_95": d - b,
        "gain_map50": cards["distilled student"]["map50"] - cards["baseline student"]["map50"],
        "gap_closed": (d - b) / gap if gap is not None and gap > 0 else None,
        "curves": {"baseline student": map_curve(baseline_run), "distilled student": map_curve(distilled_run)},
        "runs": {"baseline": str(baseline_run), "distilled": str(distilled_run),
                 "teacher": str(teachers[0]) if len(teachers) == 1 else [str(x) for x in teachers]},
    }
    (distilled_run / "compare.json").write_text(json.dumps(report, indent=2))
    (distilled_run / "compare.md").write_text(format_report(report) + "\n")
    plot_curves(report, distilled_run / "compare.png")
    return report


def format_report(report: dict[str, Any]) -> str:
    rows = ["| model | mAP50 | mAP50-95 | params (M) | GFLOPs | inference ms/img |", "|---|---|---|---|---|---|"]
    def num(value, spec):
        return "n/a" if value is None else format(value, spec)

    for name, c in report["cards"].items():
        rows.append(f"| {name} | {num(c['map50'], '.4f')} | {num(c['map50_95'], '.4f')} | {c['params'] / 1e6:.2f} | "
                    f"{c['gflops']:.2f} | {num(c['ms_per_image'], '.1f')} |")
    teachers = report.get("teachers", ["teacher"])
    gap, scored = report["gap_closed"], any(report["cards"][n]["map50_95"] is not None for n in teachers)
    rows += ["", f"Gain over the same-recipe baseline: {report['gain_map50_95']:+.4f} mAP50-95, "
             f"{report['gain_map50']:+.4f} mAP50; teacher-student gap closed"
             f"{' (to the best teacher)' if len(teachers) > 1 else ''}: "
             + (f"{gap:.0%}." if gap is not None else "n/a (the teacher is not ahead of the baseline)." if scored
                else "n/a (no teacher is scored on this dataset and task: other classes, or another task)."),
             "One seed: a gain smaller than the seed-to-seed spread (benchmarks/gain.py measures it) is noise."]
    return "\n".join(rows)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in report["curves"].items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, label=name)
    for i, name in enumerate(report.get("teachers", ["teacher"])):
        if report["cards"][name]["map50_95"] is not None:
            ax.axhline(report["cards"][name]["map50_95"], color=("#c33", "#939", "#c73", "#3a3")[i % 4], ls="--", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mAP50-95 (val)")
    ax.set_title("Distilled vs same-recipe baseline")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
