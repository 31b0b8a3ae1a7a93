#!/usr/bin/env python
"""mAP gain of distillation over a same-recipe baseline, per method, over several seeds.

On a recipe from recipes.py (default: the demo's short schedule) with a cached yolov8s teacher, trains a
yolov8n student per seed and method: baseline (no teacher), each method given, and Ultralytics' built-in
distillation (`distill_model`, weight `dis`). Every run uses the same data, epochs, augmentation and
seed list. Writes <out>.json, <out>.md and <out>.png.

    python benchmarks/gain.py                       # the short recipe, 3 seeds
    python benchmarks/gain.py --task long --methods "baseline;kl" --equal-time --seeds 5
    python benchmarks/gain.py --quick               # smoke-sized, a few minutes on a CPU
    python benchmarks/gain.py --methods "cwd;cwd:cwd_weight=10;builtin:dis=6"
    python benchmarks/gain.py --data ../shared/data/bccd/data.yaml --imgsz 160 --methods "cwd+kl"   # short, on BCCD
    python benchmarks/gain.py --task bccd --data ../shared/data/bccd/data.yaml --seeds 5   # BCCD's converged recipe
    python benchmarks/gain.py --yolo-task segment --methods "baseline;kl"   # yolov8n-seg from yolov8s-seg
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

# common before the rest: it sets sys.path and the offline defaults
from common import (Method, code_version, command_line, finite, git_commit, machine_label,  # noqa: I001
                    machine_record, output_file, overrides_tag, parse_methods, train_overrides)
from recipes import STUDENT, TASKS, YOLO_TASKS, checkpoint_task, select_task, task_model

import torch
import ultralytics
from ultralytics import YOLO as PlainYOLO

from distill import YOLO
from distill.compare import map_curve, results_columns, task_metric
from distill.demo import DEMO_TEACHER
from distill.tasks import PLAIN_TRAINERS
from distill.teacher import fingerprint, load_teacher

DEFAULT_METHODS = "baseline;cwd;mgd;mimic;kl;cwd+kl;builtin"


def train_once(method, task, teacher: Path | None, seed: int, project: str, device: str | None,
               epochs: int | None = None, model: str = STUDENT, keep: bool = False) -> dict:
    """One run of `model` (the task's student epochs unless `epochs`); returns its final mAPs (best.pt on the
    val split), its mAP50-95 per epoch and its wall seconds (training and per-epoch validation); with `keep`, also
    its run folder ("run": `project` is kept, not temporary)."""
    epochs = epochs or task.student_epochs
    # exist_ok only in a temporary project: a kept run folder is never overwritten, Ultralytics numbers a new one
    kwargs = {**task.recipe, "epochs": epochs, "seed": seed, "deterministic": True, "plots": False,
              "project": project, "name": f"{method.spec.replace(':', '_').replace(',', '_')}-e{epochs}-s{seed}",
              "exist_ok": not keep, "verbose": False, **({"device": device} if device else {})}
    yolo = (PlainYOLO if method.kind == "builtin" else YOLO)(model)
    t0 = time.time()
    # Ultralytics' own trainer for the task, AMP check offline
    plain = {"trainer": PLAIN_TRAINERS[task.yolo_task]} if method.kind == "builtin" else {}
    yolo.train(data=str(task.data()), **kwargs, **plain, **method.train_kwargs(teacher))
    run = Path(yolo.trainer.save_dir)
    score = task_metric(yolo.metrics)  # masks, keypoints or boxes: the student's own task
    return {"seed": seed, "epochs": epochs, **({"run": str(run)} if keep else {}), "map50_95": float(score.map),
            "map50": float(score.map50), "seconds": round(time.time() - t0, 1),
            "curve": [round(v, 5) for v in map_curve(run)], "train_losses": loss_scale(run),
            "params": effective_params(yolo.trainer),
            "student_params": sum(p.numel() for p in yolo.model.parameters()),  # what was trained (the final model)
            **({"teachers": [t.source for t in yolo.trainer.distiller.teachers],
                "ensemble": yolo.trainer.distiller.ensemble,
                # distill_balance's calibrated {loss: scale}, what the terms were multiplied by (None: own weights)
                "balance_scales": yolo.trainer.distiller.settings.balance_scales} if method.kind == "distill" else {})}


def validate(weights: Path, task, device: str | None):
    """Ultralytics' metrics of the checkpoint `weights` on the task's val split, at the task's image and batch size."""
    return PlainYOLO(str(weights)).val(data=str(task.data()), imgsz=task.recipe["imgsz"], batch=task.recipe["batch"],
                                       plots=False, verbose=False, **({"device": device} if device else {}))


def effective_params(trainer) -> dict:
    """The distillation hyperparameters a run used, defaults included (they may change between versions): each
    loss's own, and the global distill_weight ('auto' resolved)."""
    if hasattr(trainer, "distiller"):
        settings = trainer.distiller.settings
        return {**{name: dict(values) for name, values in settings.loss_params.items()}, "distill_weight": settings.weight}
    return {"dis": trainer.args.dis} if trainer.args.distill_model else {}


def loss_scale(run: Path) -> dict[str, list[float]]:
    """Per-image train loss items (`train/*` columns of results.csv) at the first and last epoch.

    Shows how big each distillation term is next to the detection terms, which is what a weight sets.
    """
    return {k[len("train/"):]: [round(v[0], 4), round(v[-1], 4)]
            for k, v in results_columns(run).items() if k.startswith("train/")}


def sample_sd(values: list[float]) -> float:
    """Sample (n - 1) standard deviation; 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def paired(rows: list[dict], baseline: list[dict], key: str = "map50_95") -> dict:
    """Per-seed differences method - baseline on the seeds both ran (see differences())."""
    base = {r["seed"]: r[key] for r in baseline}
    return differences([r[key] - base[r["seed"]] for r in rows if r["seed"] in base])


def differences(diffs: list[float]) -> dict:
    """Paired differences: mean, standard error, t, how many are > 0, and whether the mean exceeds twice
    its standard error (needs 2+ pairs)."""
    n = len(diffs)
    mean = statistics.mean(diffs) if diffs else float("nan")
    se = sample_sd(diffs) / math.sqrt(n) if n > 1 else float("nan")
    t = mean / se if n > 1 and se > 0 else (math.copysign(math.inf, mean) if n > 1 and mean else float("nan"))
    return {"n": n, "diffs": diffs, "mean": mean, "se": se, "t": t, "ahead": sum(d > 0 for d in diffs),
            "significant": bool(n > 1 and mean > 2 * se)}


def gain_fields(d: dict) -> dict:
    """A differences() result as the gain keys of a summary."""
    return {"gain": d["mean"], "gain_se": d["se"], "gain_t": d["t"], "seeds_ahead": d["ahead"], "paired_n": d["n"],
            "significant": d["significant"]}


def equal_time_epochs(epochs: int, method_seconds: float, baseline_seconds: float) -> int:
    """Epochs a baseline gets to spend the method's wall time: the task's epochs times the measured time
    ratio, rounded, and never fewer than the task's epochs."""
    return max(epochs, round(epochs * method_seconds / baseline_seconds))


def last_epoch_rows(rows: list[dict]) -> list[dict]:
    """Each run's mAP50-95 at its last epoch (the last point of its per-epoch validation curve: last.pt's EMA
    weights), as rows paired() takes; runs without a full curve (none recorded, stopped early, a non-finite last
    point) are left out."""
    return [{"seed": r["seed"], "map50_95": r["curve"][-1]} for r in rows
            if r.get("curve") and len(r["curve"]) == r.get("epochs") and isinstance(r["curve"][-1], (int, float))
            and math.isfinite(r["curve"][-1])]


def summarise(rows: list[dict], baseline: list[dict] | None, teacher_map: float) -> dict:
    """Mean and sample sd over seeds; against a baseline, the paired per-seed gain and the gap closed."""
    rows = sorted(rows, key=lambda r: r["seed"])
    m, m50 = [r["map50_95"] for r in rows], [r["map50"] for r in rows]
    out = {"runs": rows, "map50_95_mean": statistics.mean(m), "map50_95_std": sample_sd(m),
           "map50_mean": statistics.mean(m50), "map50_std": sample_sd(m50)}
    if baseline is not None:
        diff, diff50 = paired(rows, baseline), paired(rows, baseline, "map50")
        b_mean = statistics.mean(r["map50_95"] for r in baseline if r["seed"] in {x["seed"] for x in rows})
        gap = teacher_map - b_mean
        out.update(**gain_fields(diff), gain_map50=diff50["mean"], gain_map50_se=diff50["se"],
                   gap_closed=diff["mean"] / gap if gap > 0 else float("nan"))
        # best.pt is picked on the split it is scored on; the last epoch is picked by no one
        base_last = last_epoch_rows(baseline)
        last = [r for r in last_epoch_rows(rows) if r["seed"] in {b["seed"] for b in base_last}]
        if last:
            d, seeds = paired(last, base_last), {r["seed"] for r in last}
            out["last_epoch"] = {**gain_fields(d), "per_seed": {str(r["seed"]): x for r, x in zip(last, d["diffs"])},
                                 "map50_95_mean": statistics.mean(r["map50_95"] for r in last),
                                 "baseline_map50_95_mean": statistics.mean(r["map50_95"] for r in base_last
                                                                           if r["seed"] in seeds)}
    timed = [r for r in rows if "equal_time" in r]
    if timed:  # against the baseline given the same wall time, seed for seed
        d = differences([r["map50_95"] - r["equal_time"]["map50_95"] for r in timed])
        out["equal_time"] = {**gain_fields(d),
                             "time_ratio_mean": statistics.mean(r["equal_time"]["time_ratio"] for r in timed),
                             "epochs": sorted({r["equal_time"]["epochs"] for r in timed}),
                             "baseline_map50_95_mean": statistics.mean(r["equal_time"]["map50_95"] for r in timed)}
    return out


def summarise_all(runs: dict[str, list[dict]], teacher_map: float, versus: str | None = None) -> dict[str, dict]:
    """summarise() for every method, each against the 'baseline' runs (no gain where none ran: a slice of methods
    alone, pooled later with its baselines by gain_merge.py); with `versus`, every other method is also paired
    against that method's runs, seed for seed (mAP50-95 differences, under 'versus')."""
    out = {spec: summarise(rows, None if spec == "baseline" else runs.get("baseline"), teacher_map)
           for spec, rows in runs.items()}
    if versus not in runs:
        return out
    against = {r["seed"] for r in runs[versus]}
    for spec, rows in runs.items():
        shared = sorted((r for r in rows if r["seed"] in against), key=lambda r: r["seed"])
        if spec in {"baseline", versus} or not shared:  # no seed in common (slices not yet pooled): nothing to pair
            continue
        d = paired(shared, runs[versus])
        out[spec]["versus"] = {"spec": versus, **gain_fields(d),
                               "per_seed": {str(r["seed"]): x for r, x in zip(shared, d["diffs"])}}
    return out


def seed_label(seeds: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    seeds, parts, i = sorted(seeds), [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ", ".join(parts)


def per_seed_text(per_seed: dict[str, float]) -> str:
    """{'0': 0.012, '1': -0.003} -> '0: +0.0120, 1: -0.0030' (a table's per-seed column)."""
    return ", ".join(f"{seed}: {d:+.4f}" for seed, d in per_seed.items())


def write_outputs(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    output_file(out, ".json").write_text(json.dumps(finite(result), indent=2))
    meta, methods = result["meta"], result["methods"]
    md = [f"# Distillation gain ({meta['task']} task)", "",
          f"Student {meta['student']}, {describe_teachers(meta)}; "
          f"{meta['n_train']} train / {meta['n_val']} val images, imgsz {meta['imgsz']}, {meta['epochs']} epochs, "
          f"seeds {seed_label(meta['seed_list'])}, device {meta['device']}, machine {machine_label(meta)}, "
          f"code version {meta.get('code_version', 'unrecorded')}. Command: `{meta['command']}`.", "",
          *[f"- from `{source}`" for source in meta.get("sources", [])], *([""] if meta.get("sources") else []),
          *([meta["note"], ""] if meta.get("note") else []),
          "| method | mAP50-95 (mean ± sd) | mAP50 (mean ± sd) | paired gain mAP50-95 (mean ± SE) | t | "
          "seeds ahead | gain mAP50 (mean ± SE) | gap closed | gain > 2 SE |",
          "|---|---|---|---|---|---|---|---|---|"]
    for spec, s in methods.items():
        if "gain" in s:
            tail = (f"{s['gain']:+.4f} ± {s['gain_se']:.4f} | {s['gain_t']:+.1f} | {s['seeds_ahead']}/{s['paired_n']} | "
                    f"{s['gain_map50']:+.4f} ± {s['gain_map50_se']:.4f} | {s['gap_closed']:+.0%} | "
                    f"{'yes' if s['significant'] else 'no'} |")
        else:
            tail = "— | — | — | — | — | — |"
        md.append(f"| {spec} | {s['map50_95_mean']:.4f} ± {s['map50_95_std']:.4f} | "
                  f"{s['map50_mean']:.4f} ± {s['map50_std']:.4f} | {tail}")
    last = {spec: s["last_epoch"] for spec, s in methods.items() if "last_epoch" in s}
    if last:
        md += ["", "Without picking an epoch (per seed: the mAP50-95 of the last epoch's validation, method minus the "
               "baseline. The table above scores best.pt, the epoch Ultralytics keeps for its score on this same val split "
               "(mAP50-95; boxes plus masks or keypoints for those students), so that score is picked on the data it "
               "is measured on):", "",
               "| method | last epoch mAP50-95 (mean) | baseline's last epoch (mean) | paired gain mAP50-95 (mean ± SE) "
               "| t | seeds ahead | gain > 2 SE | per seed |", "|---|---|---|---|---|---|---|---|"]
        md += [f"| {spec} | {e['map50_95_mean']:.4f} | {e['baseline_map50_95_mean']:.4f} | {e['gain']:+.4f} ± "
               f"{e['gain_se']:.4f} | {e['gain_t']:+.1f} | {e['seeds_ahead']}/{e['paired_n']} | "
               f"{'yes' if e['significant'] else 'no'} | {per_seed_text(e['per_seed'])} |" for spec, e in last.items()]
    timed = {spec: s["equal_time"] for spec, s in methods.items() if "equal_time" in s}
    if timed:
        md += ["", "Against a baseline given the same wall time (per seed: the baseline trained for the task's "
               "epochs times the method's measured time ratio, same seed):", "",
               "| method | time ratio (mean) | equal-time baseline epochs | equal-time baseline mAP50-95 (mean) | "
               "paired gain mAP50-95 (mean ± SE) | t | seeds ahead | gain > 2 SE |", "|---|---|---|---|---|---|---|---|"]
        md += [f"| {spec} | {e['time_ratio_mean']:.2f} | {', '.join(map(str, e['epochs']))} | "
               f"{e['baseline_map50_95_mean']:.4f} | {e['gain']:+.4f} ± {e['gain_se']:.4f} | {e['gain_t']:+.1f} | "
               f"{e['seeds_ahead']}/{e['paired_n']} | {'yes' if e['significant'] else 'no'} |" for spec, e in timed.items()]
    faced = {spec: s["versus"] for spec, s in methods.items() if "versus" in s}
    if faced:
        rival = next(iter(faced.values()))["spec"]
        md += ["", f"Against `{rival}` (per seed: the method minus `{rival}` trained with the same seed):", "",
               "| method | paired difference mAP50-95 (mean ± SE) | t | seeds ahead | difference > 2 SE | per seed |",
               "|---|---|---|---|---|---|"]
        md += [f"| {spec} | {v['gain']:+.4f} ± {v['gain_se']:.4f} | {v['gain_t']:+.1f} | {v['seeds_ahead']}/{v['paired_n']} "
               f"| {'yes' if v['significant'] else 'no'} | {per_seed_text(v['per_seed'])} |" for spec, v in faced.items()]
    md += ["", "sd: sample standard deviation over seeds. Gains are paired: per seed, method minus the baseline "
           "trained with the same seed (same data order and initialisation); mean ± standard error of those "
           "differences, t = mean / SE. gap closed = gain / (teacher - baseline)."]
    output_file(out, ".md").write_text("\n".join(md) + "\n")
    plot(result, output_file(out, ".png"))


def describe_teachers(meta: dict) -> str:
    """'teacher t.pt (mAP50-95 0.3000)', or each of several, numbered as methods pick them (teachers=2)."""
    prints = meta.get("teacher_fingerprints") or []
    weights = [f", weights {p}" for p in prints] or [""] * len(meta.get("teacher_maps", [0]))
    if "teacher_maps" not in meta:
        return f"teacher {meta['teacher']} (mAP50-95 {meta['teacher_map50_95']:.4f}{weights[0]})"
    return "teachers " + ", ".join(f"{i + 1}: {t} (mAP50-95 {m:.4f}{w})" for i, (t, m, w)
                                   in enumerate(zip(meta["teacher"], meta["teacher_maps"], weights))) + \
        " (gap closed: to the best)"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["methods"])
    means = [result["methods"][n]["map50_95_mean"] for n in names]
    sds = [result["methods"][n]["map50_95_std"] for n in names]
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 4))
    ax.bar(names, means, yerr=sds, capsize=4, color=["#888" if n == "baseline" else "#3a7" for n in names])
    ax.axhline(result["meta"]["teacher_map50_95"], color="#c33", ls="--", label="teacher")
    ax.set_ylabel("mAP50-95 (mean ± sd over seeds)")
    ax.set_title(f"Distillation gain, {result['meta']['task']} task")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def versus_problem(versus: str, specs: list[str]) -> str | None:
    """Why `versus` cannot be the method every other is paired against, or None."""
    if versus == "baseline":
        return "name a method: every method is paired against the baseline anyway (the gain columns)."
    if versus not in specs:
        return f"not one of the methods ({', '.join(specs) or 'none'}); name it exactly as the methods are named."
    return None


def given_teacher_problem(path: str, task, teacher_epochs: int | None) -> str | None:
    """Why a --teacher checkpoint cannot stand in for the recipe's teacher, or None."""
    from distill.compare import scoring_problem
    from distill.teacher import load_teacher

    if teacher_epochs is not None:
        return "it replaces the trained teacher, so --teacher-epochs has no effect."
    if Path(path).suffix != ".pt" or not Path(path).is_file():
        return "not a .pt checkpoint on disk."
    from ultralytics.data.utils import check_det_dataset

    problem = scoring_problem(load_teacher(path), check_det_dataset(str(task.data())), task.yolo_task)
    return f"{problem}, so its mAP (and the gap closed) would mean nothing here." if problem else None


# train arguments this script sets itself, from its own options
OWN_OPTIONS = {"imgsz": "--imgsz", "epochs": "--epochs", "teacher_epochs": "--teacher-epochs",
               "seed": "--seeds / --first-seed", "data": "--data", "model": "--student", "device": "--device", "distill_model": "--methods builtin",
               "dis": "--methods builtin:dis=<weight>"}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="short", choices=list(TASKS), help="the recipe (benchmarks/recipes.py)")
    p.add_argument("--yolo-task", default="detect", choices=YOLO_TASKS, help="what the students learn: segment, pose "
                   "and obb use that task's synthetic labels (or --data's) and the -seg/-pose/-obb models")
    p.add_argument("--quick", action="store_true", help="same as --task quick (tiny data, 3 epochs)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (the spread needs 3 or more)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed + seeds - 1")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="';'-separated: baseline, builtin[:dis=6], <loss>[+<loss>][:arg=value,...]")
    p.add_argument("--data", default=None, help="a data.yaml of your own instead of the synthetic data, trained with "
                   "the --task recipe; the teacher is trained on it once and cached")
    p.add_argument("--imgsz", type=int, default=None, help="with --data: image size (default: the recipe's)")
    p.add_argument("--epochs", type=int, default=None, help="with --data: student epochs (default: the recipe's)")
    p.add_argument("--teacher-epochs", type=int, default=None, help="with --data: teacher epochs (default: the recipe's)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="with --data: Ultralytics train arguments that replace the recipe's in every run, baseline "
                   "and distilled alike, e.g. mosaic=1.0 (and in a teacher the recipe trains; a --teacher file is used "
                   "as it is)")
    p.add_argument("--teacher", nargs="+", default=None, help="trained teacher checkpoint(s) (.pt) instead of the "
                   "recipe's cached yolov8s: your own, a pre-trained one, or one trained elsewhere (e.g. on a GPU). "
                   "Several: every distilled method uses all, unless its spec picks some (kl:teachers=2)")
    p.add_argument("--student", default=None, help="the student every run starts from: a model YAML (from scratch) "
                   "or a .pt checkpoint (e.g. one pre-trained on a larger corpus, then fine-tuned here)")
    p.add_argument("--teacher-models", nargs="+", default=None, metavar="YAML",
                   help="the recipe's cached teachers of these models instead of its yolov8s (e.g. yolov8s.yaml "
                   "yolo11s.yaml: two teachers), each trained once on the task with the teacher recipe")
    p.add_argument("--equal-time", action="store_true",
                   help="also train, per seed and method, a baseline given the method's wall time (its epochs times "
                   "the measured time ratio) and report the paired difference to it")
    p.add_argument("--device", default=None)
    p.add_argument("--no-baseline", action="store_true", help="run only the methods named, not the baseline: a slice "
                   "(e.g. one method on one core) pooled by gain_merge.py with baselines run elsewhere, same code and seeds")
    p.add_argument("--versus", default=None, metavar="SPEC", type=str.strip,
                   help="also pair every other method against this one of --methods, seed for seed (e.g. kl: does "
                        "cwd+kl beat kl alone?)")
    p.add_argument("--note", default=None, help="what the run is for (e.g. 'confirmation seeds'), kept in the outputs")
    p.add_argument("--keep", default=None, metavar="DIR", help="keep every run's folder (weights, results.csv) under DIR "
                   "instead of a temporary folder, e.g. to export or report on the trained students afterwards")
    p.add_argument("--out", default=None, help="output prefix (default benchmarks/results/gain[_<task>])")
    a = p.parse_args(argv)
    try:
        replaced = train_overrides(a.set, OWN_OPTIONS)
        task = select_task("quick" if a.quick else a.task, a.data, a.yolo_task, imgsz=a.imgsz, epochs=a.epochs,
                           teacher_epochs=a.teacher_epochs, **replaced)
    except ValueError as e:
        p.error(str(e))
    if a.keep and Path(a.keep).exists() and not Path(a.keep).is_dir():
        p.error(f"--keep {a.keep}: a file is in the way; give a folder.")
    if a.teacher is not None and a.teacher_models is not None:
        p.error("--teacher and --teacher-models are two ways to name the teachers: give one.")
    try:
        methods = parse_methods(a.methods, baseline=not a.no_baseline)
    except ValueError as e:
        p.error(f"--methods {a.methods}: {e}")
    for m in methods:  # a train argument in both would reach Ultralytics twice, after the seed's baseline trained
        if both := sorted(set(replaced) & set(m.overrides)):
            p.error(f"--methods {m.spec}: {', '.join(both)} also given with --set; give it in one place.")
    if a.versus is not None and (problem := versus_problem(a.versus, [m.spec for m in methods])):
        p.error(f"--versus {a.versus}: {problem}")
    if a.no_baseline and not methods:
        p.error("--no-baseline leaves no method to run: name at least one in --methods.")
    if a.no_baseline and not a.out:
        p.error("--no-baseline writes a slice without its baselines: name it with --out, so that it never replaces "
                "a full result.")
    if a.no_baseline and a.equal_time:
        p.error("--equal-time measures each method's wall time against its seed's baseline, run beside it: "
                "drop --no-baseline.")
    given = None if a.student is None else Path(a.student).suffix.lower()  # the --student kind: .yaml, .yml or .pt
    if task.from_checkpoints and not (a.teacher and given == ".pt"):
        p.error(f"--task {task.name} fine-tunes pre-trained models: give --teacher <fine-tuned teacher>.pt and --student "
                "<pre-trained student>.pt (benchmarks/recipes.py says how each is made).")
    for path in a.teacher or []:
        if problem := given_teacher_problem(path, task, a.teacher_epochs):
            p.error(f"--teacher {path}: {problem}")
    if given is not None and given not in {".yaml", ".yml", ".pt"}:
        p.error(f"--student {a.student}: neither a model .yaml nor a .pt checkpoint. Give one of those.")
    if given == ".pt" and not Path(a.student).is_file():
        p.error(f"--student {a.student}: no such checkpoint. Give a model .yaml or a .pt file on disk.")
    # Given teachers' and students' results never overwrite the recipe's own.
    suffix = overrides_tag(replaced) + ("" if a.student is None else f"_student-{Path(a.student).stem}")
    a.student = a.student or task_model(STUDENT, task.yolo_task)
    try:  # a checkpoint is read once, for its task: a corrupt file is a one-line error, not a traceback
        student_task = checkpoint_task(a.student) if given == ".pt" else PlainYOLO(a.student).task
    except ValueError as e:
        p.error(f"--student: {e}")
    if student_task != task.yolo_task:
        p.error(f"--student {a.student} is a {student_task} model; --yolo-task is {task.yolo_task}. Give a student of "
                "that task, or the matching --yolo-task.")
    suffix += (f"_teacher-{'+'.join(Path(t).stem for t in a.teacher)}" if a.teacher else
              f"_teachers-{'+'.join(Path(t).stem for t in a.teacher_models)}" if a.teacher_models else "")
    suffix += f"_teacher{task.teacher_tag()}" if task.teacher_tag() and not a.teacher else ""
    out = Path(a.out or f"benchmarks/results/gain{'' if task.name == 'full' else '_' + task.name}{suffix}")
    teachers = ([Path(t).resolve() for t in a.teacher] if a.teacher else
                [task.teacher(a.device, model) for model in a.teacher_models or [DEMO_TEACHER]])
    try:
        for m in methods:
            m.train_kwargs(teachers)  # a spec naming a teacher that is not there fails now, not after hours
    except ValueError as e:
        p.error(str(e))
    teacher_maps = [float(task_metric(validate(t, task, a.device)).map) for t in teachers]
    teacher_map = max(teacher_maps)  # the gap closed is measured to the best teacher
    teacher = teachers[0] if len(teachers) == 1 else teachers
    n_train, n_val = task.split_sizes()
    meta = {"task": task.name, "yolo_task": task.yolo_task, "student": a.student, "teacher": str(teacher) if len(teachers) == 1 else
            [str(t) for t in teachers], "teacher_map50_95": teacher_map,
            **({"teacher_maps": teacher_maps} if len(teachers) > 1 else {}),
            # which weights taught, whatever the path: slices pool only when these match (gain_merge.py)
            "teacher_fingerprints": [fingerprint(load_teacher(t)) for t in teachers],
            "n_train": n_train, "n_val": n_val, "imgsz": task.recipe["imgsz"], "epochs": task.student_epochs,
            "recipe": {k: v for k, v in task.recipe.items() if k not in {"imgsz", "seed"}}, "seed_list": [],
            "device": a.device or "auto", **machine_record(a.device),
            "code_version": code_version(), "commit": git_commit(),  # before training: what ran
            "ultralytics": ultralytics.__version__, "torch": torch.__version__,
            "command": command_line("gain.py", argv),
            **({"note": a.note} if a.note else {}), **({"versus": a.versus} if a.versus else {})}
    runs: dict[str, list[dict]] = {m.spec: [] for m in methods}
    with (contextlib.nullcontext(str(Path(a.keep).resolve())) if a.keep else tempfile.TemporaryDirectory()) as project:
        for seed in range(a.first_seed, a.first_seed + a.seeds):  # seeds outermost, outputs after each seed:
            longer: dict[int, dict] = {}                           # an interrupted run keeps its finished seeds
            for m in methods:
                row = train_once(m, task, teacher, seed, project, a.device, model=a.student, keep=bool(a.keep))
                runs[m.spec].append(row)
                if a.equal_time and m.kind != "baseline":
                    base = runs["baseline"][-1]
                    epochs = equal_time_epochs(task.student_epochs, row["seconds"], base["seconds"])
                    if epochs not in longer:
                        longer[epochs] = base if epochs == base["epochs"] else train_once(
                            Method("baseline"), task, teacher, seed, project, a.device, epochs=epochs, model=a.student,
                            keep=bool(a.keep))
                    row["equal_time"] = {"time_ratio": row["seconds"] / base["seconds"],
                                         **{k: longer[epochs][k] for k in ("epochs", "map50_95", "map50", "seconds", "run")
                                            if k in longer[epochs]}}
                print(f"[gain] {m.spec} seed {seed}: {row}", flush=True)
            meta["seed_list"].append(seed)
            result = {"meta": meta, "methods": summarise_all(runs, teacher_map, a.versus)}
            write_outputs(result, out)
    print(output_file(out, ".md").read_text())
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
