#!/usr/bin/env python
"""Has a recipe converged? Trains one model without a teacher for several epoch budgets and seeds, on a
benchmark task, and reports what doubling the budget gains.

A recipe counts as converged at E epochs when E -> 2E raises mean mAP50-95 by less than 5 % (relative),
judged across seeds, each run with its own full learning-rate schedule (the end of a single run flattens
anyway as the rate decays, so one curve proves nothing). Writes <out>.json, <out>.md and <out>.png (the
mAP curves of every run, and the final mAP against the budget).

    python benchmarks/convergence.py --epochs 30,60,120 --seeds 2                  # the synthetic task, yolov8n
    python benchmarks/convergence.py --model yolov8s.yaml --epochs 35,70,140       # the teacher's plateau
    python benchmarks/convergence.py --data ../shared/data/bccd/data.yaml --imgsz 160 --epochs 30,60
    python benchmarks/convergence.py --task long --teacher --epochs 160,320     # the task's teacher, cached
    python benchmarks/convergence.py --task long --teacher --model yolov8m.yaml --epochs 160   # a bigger one
    python benchmarks/convergence.py --task bccd --data bccd/data.yaml --epochs 50,100,200    # the student on BCCD
    python benchmarks/convergence.py --task bccd --teacher --data bccd/data.yaml --epochs 200  # its teacher (mosaic on)
    python benchmarks/convergence.py --merge a.json b.json --out c     # pool --first-seed slices
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from gain import differences, sample_sd, train_once, validate  # noqa: I001  (gain sets sys.path and offline defaults)
from common import (Method, code_version, command_line, finite, git_commit, machine_label, machine_record,
                    other_machine, output_file, overrides_tag, train_overrides)
from recipes import STUDENT, TASKS, select_task

from distill.checkpoints import read_checkpoint
from distill.demo import DEMO_TEACHER, teacher_history
from distill.teacher import fingerprint

import torch
import ultralytics

CONVERGED_BELOW = 0.05  # relative mAP50-95 gain of 2E over E


def budget_steps(epochs: list[int], runs: dict[int, list[dict]]) -> list[dict]:
    """For each budget E whose double 2E also ran: the relative gain of the means, the paired per-seed
    gains, and whether E counts as converged."""
    out = []
    for e in epochs:
        if 2 * e not in runs:
            continue
        short = {r["seed"]: r["map50_95"] for r in runs[e]}
        long = {r["seed"]: r["map50_95"] for r in runs[2 * e]}
        seeds = sorted(set(short) & set(long))
        m_short, m_long = statistics.mean(short[s] for s in seeds), statistics.mean(long[s] for s in seeds)
        relative = (m_long - m_short) / m_short if m_short > 0 else float("inf")
        paired = differences([long[s] - short[s] for s in seeds])
        out.append({"epochs": e, "doubled": 2 * e, "seeds": seeds, "map_mean": m_short, "doubled_map_mean": m_long,
                    "relative_gain": relative, "gain": paired["mean"], "gain_se": paired["se"],
                    "converged": relative < CONVERGED_BELOW})
    return out


SAME_RUN = ("task", "model", "model_weights", "teacher_cache", "n_train", "n_val", "imgsz", "recipe", "code_version", "ultralytics", "torch")


def pool(results: list[dict], sources: list[str]) -> dict:
    """One result from several seed slices of the same recipe, model and code; SystemExit when they differ,
    or when a seed and budget that two slices both ran gave different mAPs (training is deterministic)."""
    first = results[0]["meta"]
    runs: dict[int, dict[int, dict]] = {}
    for result, source in zip(results, sources):
        differ = [k for k in SAME_RUN if result["meta"].get(k) != first.get(k)]
        if differ:
            raise SystemExit(f"{source} is not the same run as {sources[0]} ({', '.join(differ)} differ).")
        if other_machine(result["meta"], first):  # a seed trains to other weights there
            raise SystemExit(f"{source} ran on another machine than {sources[0]} ({machine_label(result['meta'])} vs "
                             f"{machine_label(first)}).")
        for e, rows in result["runs"].items():
            for row in rows:
                known = runs.setdefault(int(e), {}).setdefault(row["seed"], row)
                if abs(known["map50_95"] - row["map50_95"]) > 1e-9:
                    raise SystemExit(f"{e} epochs, seed {row['seed']}: {known['map50_95']} in one file, "
                                     f"{row['map50_95']} in {source}.")
    epochs = sorted(runs)
    merged = {e: [runs[e][s] for s in sorted(runs[e])] for e in epochs}
    meta = {**first, "seed_list": sorted({s for by_seed in runs.values() for s in by_seed}),
            "command": "python benchmarks/convergence.py --merge " + " ".join(sources),
            "sources": [r["meta"]["command"] for r in results], "commits": [r["meta"].get("commit") for r in results]}
    meta.pop("commit", None)
    return {"meta": meta, "runs": {str(e): rows for e, rows in merged.items()}, "steps": budget_steps(epochs, merged)}


def write_outputs(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    output_file(out, ".json").write_text(json.dumps(finite(result), indent=2))
    meta = result["meta"]
    md = [f"# Convergence of {meta['model']} ({meta['task']} task)", "",
          f"{meta['n_train']} train / {meta['n_val']} val images, imgsz {meta['imgsz']}, recipe {meta['recipe']}; "
          f"seeds {meta['seed_list']}; machine {machine_label(meta)}, code {meta['code_version']}. "
          f"Command: `{meta['command']}`.", "",
          "| epochs | mAP50-95 (mean ± sd) | wall s (mean) |", "|---|---|---|"]
    for e, rows in result["runs"].items():
        m, secs = [r["map50_95"] for r in rows], [r["seconds"] for r in rows if r["seconds"] is not None]
        md.append(f"| {e} | {statistics.mean(m):.4f} ± {sample_sd(m):.4f} | "
                  f"{f'{statistics.mean(secs):.0f}' if secs else '— (trained before times were kept)'} |")
    md += ["", "| E -> 2E | mAP50-95 at E | at 2E | relative gain | paired gain (mean ± SE) | converged at E (< 5 %) |",
           "|---|---|---|---|---|---|"]
    md += [f"| {s['epochs']} -> {s['doubled']} | {s['map_mean']:.4f} | {s['doubled_map_mean']:.4f} | "
           f"{s['relative_gain']:+.1%} | {s['gain']:+.4f} ± {s['gain_se'] if s['gain_se'] is not None else float('nan'):.4f} | "
           f"{'yes' if s['converged'] else 'no'} |" for s in result["steps"]]
    output_file(out, ".md").write_text("\n".join(md) + "\n")
    plot(result, output_file(out, ".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, finals) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (e, rows) in enumerate(result["runs"].items()):
        for j, r in enumerate(rows):
            curves.plot(range(1, len(r["curve"]) + 1), r["curve"], color=colours[i % len(colours)], alpha=0.8,
                        label=f"{e} epochs" if j == 0 else None)
    curves.set_xlabel("epoch")
    curves.set_ylabel("mAP50-95 (val)")
    curves.set_title("every run (one line per seed)")
    curves.legend()
    budgets = [int(e) for e in result["runs"]]
    means = [statistics.mean(r["map50_95"] for r in rows) for rows in result["runs"].values()]
    sds = [sample_sd([r["map50_95"] for r in rows]) for rows in result["runs"].values()]
    finals.errorbar(budgets, means, yerr=sds, marker="o", capsize=4)
    finals.set_xscale("log", base=2)
    finals.set_xticks(budgets, [str(b) for b in budgets])
    finals.set_xlabel("epoch budget (own full schedule)")
    finals.set_ylabel("final mAP50-95 (mean ± sd)")
    finals.set_title(f"{result['meta']['model']}, {result['meta']['task']} task")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# train arguments this script sets itself, from its own options
OWN_OPTIONS = {"imgsz": "--imgsz", "epochs": "--epochs", "teacher_epochs": "--epochs with --teacher",
               "seed": "--seeds / --first-seed", "data": "--data", "model": "--model", "device": "--device"}


def teacher_run(task, epochs: int, device: str | None, model: str = DEMO_TEACHER) -> dict:
    """The task's teacher (`model`) trained for `epochs` (or found in the cache), as a run row: its final mAPs on
    the val split, and the curve and wall seconds recorded when it was trained."""
    path = replace(task, teacher_epochs=epochs).teacher(device, model)
    metrics = validate(path, task, device)
    history = teacher_history(path)
    return {"seed": task.recipe["seed"], "epochs": epochs, "map50_95": float(metrics.box.map),
            "map50": float(metrics.box.map50), "seconds": history.get("seconds"), "curve": history.get("curve", []),
            "weights": str(path)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model YAML trained without a teacher, or a checkpoint (.pt) "
                   "fine-tuned from its weights (default: the student; with --teacher, the task's teacher model)")
    p.add_argument("--teacher", action="store_true",
                   help="the task's teacher instead, one run per budget with the recipe's seed, trained through the "
                   "teacher cache: each run is the teacher gain.py uses with that many teacher epochs")
    p.add_argument("--epochs", help="comma-separated epoch budgets, e.g. 30,60,120")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="pool these results (seed slices) instead of training")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--task", default="short", choices=list(TASKS), help="the recipe (benchmarks/recipes.py)")
    p.add_argument("--quick", action="store_true", help="same as --task quick")
    p.add_argument("--data", default=None, help="a data.yaml instead of the synthetic data, with the --task recipe")
    p.add_argument("--imgsz", type=int, default=None, help="with --data: image size")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="with --data: train arguments that replace the recipe's, e.g. mosaic=1.0 for a teacher")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="output prefix (default benchmarks/results/convergence_<task>_<model>)")
    a = p.parse_args(argv)
    if a.merge:
        if not a.out:
            p.error("--merge needs --out")
        result = pool([json.loads(Path(f).read_text()) for f in a.merge], a.merge)
        write_outputs(result, Path(a.out))
        print(output_file(Path(a.out), ".md").read_text())
        return result
    if not a.epochs:
        p.error("--epochs is required (or --merge)")
    try:
        epochs = sorted({int(e) for e in a.epochs.split(",") if e.strip()})
    except ValueError:
        p.error(f"--epochs must be comma-separated integers, got {a.epochs!r}")
    try:
        replaced = train_overrides(a.set, OWN_OPTIONS)
        task = select_task("quick" if a.quick else a.task, a.data, imgsz=a.imgsz, **replaced)
    except ValueError as e:
        p.error(str(e))
    if a.teacher:
        a.model, a.first_seed, a.seeds = a.model or DEMO_TEACHER, task.recipe["seed"], 1
    a.model = a.model or STUDENT
    if task.from_checkpoints and Path(a.model).suffix.lower() != ".pt":
        p.error(f"--task {task.name} fine-tunes pre-trained models: give --model <pre-trained>.pt.")
    weights = None  # a checkpoint's weights fingerprint: results of other weights under the same path never pool
    if Path(a.model).suffix.lower() == ".pt":
        try:
            model = read_checkpoint(a.model, "--model")
        except (FileNotFoundError, ValueError) as e:
            p.error(str(e))
        if model.task != task.yolo_task:
            p.error(f"--model {a.model} is a {model.task} model; the {task.name} task trains {task.yolo_task} models.")
        weights = fingerprint(model)
    # A recipe changed by --set, or a teacher's own settings, never overwrite the recipe's own results.
    changed = overrides_tag(replaced) + (task.teacher_tag() if a.teacher else "")
    name = Path(a.model).stem + (f"-{weights[:8]}" if weights else "")
    out = Path(a.out or f"benchmarks/results/convergence_{task.name}_{name}{changed}")
    n_train, n_val = task.split_sizes()
    meta = {"task": task.name, "model": a.model, "model_weights": weights, "teacher_cache": a.teacher, "n_train": n_train, "n_val": n_val, "imgsz": task.recipe["imgsz"],
            "recipe": {k: v for k, v in (task.teacher_train_args() if a.teacher else task.recipe).items()
                       if k not in {"imgsz", "seed"}}, "seed_list": [],
            **machine_record(a.device), "code_version": code_version(), "commit": git_commit(),
            "ultralytics": ultralytics.__version__, "torch": torch.__version__,
            "command": command_line("convergence.py", argv)}
    runs: dict[int, list[dict]] = {e: [] for e in epochs}
    with tempfile.TemporaryDirectory() as project:
        for seed in range(a.first_seed, a.first_seed + a.seeds):  # outputs after every seed
            for e in epochs:
                row = (teacher_run(task, e, a.device, a.model) if a.teacher else
                       train_once(Method("baseline"), task, None, seed, project, a.device, epochs=e, model=a.model))
                runs[e].append(row)
                print(f"[convergence] {a.model} {e} epochs, seed {seed}: {row['map50_95']:.4f} in {row['seconds']}s"
                      + (f", weights {row['weights']}" if "weights" in row else ""), flush=True)
            meta["seed_list"].append(seed)
            result = {"meta": meta, "runs": {str(e): rows for e, rows in runs.items()},
                      "steps": budget_steps(epochs, runs)}
            write_outputs(result, out)
    print(output_file(out, ".md").read_text())
    return result


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
