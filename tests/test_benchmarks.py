"""The benchmarks: their statistics, their outputs in --quick mode, and the pooling of results."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from gain import equal_time_epochs, paired, summarise  # noqa: E402

# A feature loss, a head loss, both, and the built-in: each loss of its own trains in test_training.
METHODS = "baseline;mgd;kl;cwd+kl;builtin"


def _run(script: str, *args: str, env: dict | None = None, rc: int = 0,
         fresh: bool = False) -> subprocess.CompletedProcess:
    """`python benchmarks/<script> args` from the repository root, its exit code checked. Pooling and refusals
    (exit 2, argparse's) run in this process unless `fresh`: a fresh interpreter spends seconds importing torch and
    Ultralytics, which over dozens of calls is minutes of the suite."""
    if not fresh and env is None and (script == "gain_merge.py" or rc == 2):
        done = _in_process(script, list(args))
    else:
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                              text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    assert done.returncode == rc, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _in_process(script: str, argv: list[str]) -> subprocess.CompletedProcess:
    """The script's main(argv) with its printed output and exit code as a subprocess would give them (a SystemExit
    message goes to stderr with code 1, as the interpreter does)."""
    main = importlib.import_module(Path(script).stem).main
    out, err, code = io.StringIO(), io.StringIO(), 0
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
        if isinstance(e.code, str):
            err.write(e.code + "\n")
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())


def _rows(values: dict[int, float]) -> list[dict]:
    return [{"seed": s, "map50_95": v, "map50": 2 * v} for s, v in values.items()]


def test_paired_statistics_by_hand():
    """Seeds differ a lot from each other but the method is ahead on every one: the paired test sees it,
    where an unpaired comparison of means against the seed spread would not."""
    base = _rows({0: 0.10, 1: 0.20, 2: 0.30})
    method = _rows({0: 0.12, 1: 0.21, 2: 0.33})
    d = paired(method, base)
    assert d["diffs"] == pytest.approx([0.02, 0.01, 0.03])
    assert d["mean"] == pytest.approx(0.02) and d["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert d["t"] == pytest.approx(0.02 / (0.01 / math.sqrt(3))) and d["significant"] and d["ahead"] == 3
    s = summarise(method, base, teacher_map=0.4)
    assert s["map50_95_std"] == pytest.approx(statistics.stdev([0.12, 0.21, 0.33]))  # sample, not population
    assert s["map50_95_std"] > statistics.pstdev([0.12, 0.21, 0.33])
    assert s["gain"] == pytest.approx(0.02) and s["gap_closed"] == pytest.approx(0.02 / (0.4 - 0.2))
    # pairs are formed by seed, not by position; a seed the baseline lacks is left out
    shuffled = paired(_rows({2: 0.33, 0: 0.12, 7: 0.9}), base)
    assert shuffled["n"] == 2 and sorted(shuffled["diffs"]) == pytest.approx([0.02, 0.03])
    one = paired(_rows({0: 0.5}), base)
    assert one["n"] == 1 and math.isnan(one["se"]) and not one["significant"]  # one seed proves nothing


def test_the_last_epoch_is_paired_beside_the_best_checkpoint():
    """best.pt's score is picked on the split it is scored on; the last epoch of each run's curve is not, and is
    paired seed for seed on its own (runs without a curve are left out of it, never paired as zero)."""
    base = _rows({0: 0.30, 1: 0.20, 2: 0.40})
    method = _rows({0: 0.33, 1: 0.22, 2: 0.41})
    assert "last_epoch" not in summarise(method, base, teacher_map=0.5)  # no curves recorded: nothing to pair
    for row, curve in zip(base, ([0.1, 0.30, 0.28], [0.1, 0.19, 0.20], [0.2, 0.40, 0.35])):
        row["curve"] = curve
    for row, curve in zip(method, ([0.1, 0.33, 0.33], [0.1, 0.22, 0.18], [0.2, 0.41, 0.39])):
        row["curve"] = curve
    for r in base + method:
        r["epochs"] = 3
    method[0] = {k: v for k, v in method[0].items() if k != "curve"}  # seed 0: the method recorded no curve
    s = summarise(method, base, teacher_map=0.5)
    last = s["last_epoch"]
    assert last["per_seed"] == {"1": pytest.approx(0.18 - 0.20), "2": pytest.approx(0.39 - 0.35)}
    assert last["gain"] == pytest.approx(0.01) and last["gain_se"] == pytest.approx(0.03)
    assert (last["paired_n"], last["seeds_ahead"], last["significant"]) == (2, 1, False)
    assert last["map50_95_mean"] == pytest.approx(0.285) and last["baseline_map50_95_mean"] == pytest.approx(0.275)
    assert s["gain"] == pytest.approx(0.02)  # the best-checkpoint gain is unchanged, over all three seeds
    # the baseline without a curve at seed 1, and a method run stopped early at seed 2: only complete pairs count
    base[1] = {k: v for k, v in base[1].items() if k != "curve"}
    method[2]["curve"] = method[2]["curve"][:2]
    assert "last_epoch" not in summarise(method, base, teacher_map=0.5)
    method[2]["curve"] = [0.2, 0.41, float("nan")]  # a last validation that failed
    assert "last_epoch" not in summarise(method, base, teacher_map=0.5)
    method[2]["curve"] = [0.2, 0.41, 0.39]
    assert summarise(method, base, teacher_map=0.5)["last_epoch"]["per_seed"] == {"2": pytest.approx(0.04)}


def test_code_version_follows_the_code_not_the_results(tmp_path):
    import shutil

    from common import code_version

    for part in ("distill", "benchmarks", "configs", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy
        copy(ROOT / part, tmp_path / part)
    version = code_version(tmp_path)
    assert version == code_version(ROOT) and re.fullmatch(r"code-[0-9a-f]{12}", version)
    (tmp_path / "benchmarks" / "results" / "new.json").write_text("{}")  # committing results, editing docs
    (tmp_path / "README.md").write_text("edited")
    assert code_version(tmp_path) == version
    (tmp_path / "distill" / "config.py").write_text((tmp_path / "distill" / "config.py").read_text() + "\n# edit\n")
    assert code_version(tmp_path) != version


def test_git_commit_marks_edited_code_not_new_results(tmp_path):
    """'+changes' when a tracked file differs from the commit; a benchmark's untracked output folder does not count
    (code_version covers new code files)."""
    from common import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "train.py").write_text("print(1)\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gain.json").write_text("{}")
    assert git_commit(tmp_path) == head
    (tmp_path / "train.py").write_text("print(2)\n")
    assert git_commit(tmp_path) == head + "+changes"


def test_command_line_is_quoted_for_a_shell(monkeypatch):
    """A recorded command pastes back into a shell as it ran: notes with spaces, method lists with ';'."""
    import shlex

    from common import command_line

    argv = ["--note", "converged BCCD, seeds 0-1", "--methods", "baseline;cwd+kl"]
    line = command_line("gain.py", argv)
    assert line == "python benchmarks/gain.py --note 'converged BCCD, seeds 0-1' --methods 'baseline;cwd+kl'"
    assert shlex.split(line)[2:] == argv and command_line("gain.py", []) == "python benchmarks/gain.py"
    monkeypatch.setattr(sys, "argv", ["gain_merge.py", "a b.json", "--versus", "kl"])  # main() without argv: its own
    assert command_line("gain_merge.py", None) == "python benchmarks/gain_merge.py 'a b.json' --versus kl"


def test_output_file_appends_the_extension():
    """--out is a prefix: a dot inside it (a weight, a versioned teacher) stays, a given extension is swapped."""
    from common import output_file

    assert output_file("r/gain_s0_cwd+kl:distill_balance=0.25", ".json") == Path("r/gain_s0_cwd+kl:distill_balance=0.25.json")
    assert output_file(Path("teacher-yolov8s-0.6"), ".png") == Path("teacher-yolov8s-0.6.png")
    assert output_file("x.json", ".md") == Path("x.md") and output_file("x", ".md") == Path("x.md")


def test_equal_time_arithmetic():
    """The equal-time baseline trains the task's epochs times the method's wall-time ratio (rounded, never fewer),
    and its gain is the mean of the per-seed differences to that baseline."""
    assert equal_time_epochs(30, 480.0, 300.0) == 48
    assert equal_time_epochs(30, 310.0, 300.0) == 31 and equal_time_epochs(30, 250.0, 300.0) == 30
    base = _rows({0: 0.05, 1: 0.06})
    method = _rows({0: 0.07, 1: 0.07})
    for row, longer in zip(method, (0.09, 0.06)):
        row["equal_time"] = {"time_ratio": 1.6, "epochs": 48, "map50_95": longer, "map50": 2 * longer, "seconds": 1.0}
    e = summarise(method, base, teacher_map=0.1)["equal_time"]
    assert e["gain"] == pytest.approx(statistics.mean([0.07 - 0.09, 0.07 - 0.06]))
    assert e["gain_se"] == pytest.approx(statistics.stdev([-0.02, 0.01]) / math.sqrt(2))
    assert (e["seeds_ahead"], e["paired_n"], e["epochs"], e["significant"]) == (1, 2, [48], False)
    assert e["baseline_map50_95_mean"] == pytest.approx(0.075) and e["time_ratio_mean"] == pytest.approx(1.6)


def test_convergence_rule():
    """E counts as converged when doubling the budget raises mean mAP50-95 by less than 5 %, paired by seed."""
    from convergence import budget_steps

    runs = {30: _rows({0: 0.10, 1: 0.12}), 60: _rows({0: 0.105, 1: 0.123}), 120: _rows({0: 0.2, 1: 0.2})}
    steps = budget_steps([30, 60, 120], runs)
    assert [(s["epochs"], s["doubled"]) for s in steps] == [(30, 60), (60, 120)]
    assert steps[0]["relative_gain"] == pytest.approx(0.114 / 0.110 - 1) and steps[0]["converged"]
    assert steps[0]["gain"] == pytest.approx(0.004) and steps[0]["gain_se"] == pytest.approx(0.001)
    assert not steps[1]["converged"] and steps[1]["relative_gain"] == pytest.approx(0.2 / 0.114 - 1)


def test_convergence_quick_in_seed_slices_pooled(tmp_path):
    """Two --first-seed slices pooled by --merge give the table one run of both seeds would; slices of another
    recipe, or a seed whose mAP differs between slices, are refused."""
    a, b, out = tmp_path / "s0", tmp_path / "s1", tmp_path / "conv"
    _run("convergence.py", "--quick", "--epochs", "1,2", "--seeds", "1", "--out", str(a))
    _run("convergence.py", "--quick", "--epochs", "1,2", "--seeds", "1", "--first-seed", "1", "--out", str(b))
    _run("convergence.py", "--merge", str(a.with_suffix(".json")), str(b.with_suffix(".json")), "--out", str(out))
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["meta"]["seed_list"] == [0, 1] and set(result["runs"]) == {"1", "2"}
    assert len(result["meta"]["sources"]) == 2
    for e, rows in result["runs"].items():
        assert [r["seed"] for r in rows] == [0, 1] and all(len(r["curve"]) == int(e) for r in rows)
    (step,) = result["steps"]
    assert (step["epochs"], step["doubled"], step["seeds"]) == (1, 2, [0, 1])
    maps = {e: [r["map50_95"] for r in rows] for e, rows in result["runs"].items()}
    assert step["gain"] == pytest.approx(statistics.mean(maps["2"]) - statistics.mean(maps["1"]))
    assert "| 1 -> 2 |" in out.with_suffix(".md").read_text() and out.with_suffix(".png").stat().st_size > 1000

    other = json.loads(b.with_suffix(".json").read_text())
    other["meta"]["recipe"]["nbs"] = 16
    (tmp_path / "other.json").write_text(json.dumps(other))
    done = _run("convergence.py", "--merge", str(a.with_suffix(".json")), str(tmp_path / "other.json"),
                "--out", str(tmp_path / "x"), rc=1)
    assert "recipe" in done.stderr and not (tmp_path / "x.json").exists()
    clash = json.loads(a.with_suffix(".json").read_text())
    clash["runs"]["2"][0]["map50_95"] += 0.01
    (tmp_path / "clash.json").write_text(json.dumps(clash))
    done = _run("convergence.py", "--merge", str(a.with_suffix(".json")), str(tmp_path / "clash.json"),
                "--out", str(tmp_path / "x"), rc=1)
    assert "seed 0" in done.stderr and not (tmp_path / "x.json").exists()
    elsewhere = json.loads(b.with_suffix(".json").read_text())
    assert elsewhere["meta"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    elsewhere["meta"]["cpu_capability"] = "AVX512" if elsewhere["meta"]["cpu_capability"] != "AVX512" else "AVX2"
    (tmp_path / "elsewhere.json").write_text(json.dumps(elsewhere))
    done = _run("convergence.py", "--merge", str(a.with_suffix(".json")), str(tmp_path / "elsewhere.json"),
                "--out", str(tmp_path / "x"), rc=1)
    assert "ran on another machine" in done.stderr and not (tmp_path / "x.json").exists()
    assert f"machine {elsewhere['meta']['machine']} ({torch.backends.cpu.get_cpu_capability()})," in \
        out.with_suffix(".md").read_text()


def test_convergence_of_the_teacher_fills_the_teacher_cache(tmp_path):
    """--teacher trains the task's teacher once per budget through the cache gain.py reads: a later run of either
    trains nothing, and each cached teacher keeps its curve and wall time."""
    env = {"DISTILL_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "teacher"
    _run("convergence.py", "--quick", "--teacher", "--epochs", "1,2", "--out", str(out), env=env)
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["meta"]["model"] == "yolov8s.yaml" and result["meta"]["teacher_cache"]
    rows = {e: rows[0] for e, rows in result["runs"].items()}
    cached = sorted((tmp_path / "cache" / "teachers").glob("*.pt"))
    assert sorted(r["weights"] for r in rows.values()) == [str(p) for p in cached] and len(cached) == 2
    for e, row in rows.items():
        assert len(row["curve"]) == int(e) and row["seconds"] > 0
    code = ("import sys; sys.path.insert(0, 'benchmarks'); from dataclasses import replace; from recipes import QUICK; "
            "print('PATH', replace(QUICK, teacher_epochs=2).teacher())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("PATH ")[1].strip() == rows["2"]["weights"] and "Epoch" not in done.stdout + done.stderr


def test_convergence_teacher_of_another_model_with_train_overrides(tmp_path, data_yaml):
    """--teacher --model trains that YAML through the teacher cache, and --set replaces recipe arguments (how the
    BCCD teacher got mosaic): both reach the checkpoint's train args and the results' recipe."""
    import torch

    env = {"DISTILL_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "t"
    _run("convergence.py", "--teacher", "--model", "yolov8n.yaml", "--data", data_yaml, "--imgsz", "64",
         "--set", "mosaic=1.0", "close_mosaic=0", "--epochs", "1", "--out", str(out), env=env)
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["meta"]["model"] == "yolov8n.yaml"
    assert result["meta"]["recipe"]["mosaic"] == 1.0 and result["meta"]["recipe"]["close_mosaic"] == 0
    (cached,) = (tmp_path / "cache" / "teachers").glob("*.pt")
    assert cached.name.startswith("yolov8n-") and result["runs"]["1"][0]["weights"] == str(cached)
    args = torch.load(cached, map_location="cpu", weights_only=False)["train_args"]
    assert (args["mosaic"], args["close_mosaic"], args["imgsz"]) == (1.0, 0, 64)
    done = _run("convergence.py", "--teacher", "--data", data_yaml, "--set", "mosaic", "--epochs", "1",
                "--out", str(tmp_path / "bad"), env=env, rc=2)
    assert "key=value" in done.stderr and not (tmp_path / "bad.json").exists()
    done = _run("convergence.py", "--quick", "--set", "mosaic=1.0", "--epochs", "1", "--out", str(tmp_path / "bad"),
                env=env, rc=2)
    assert "go with --data" in done.stderr and not (tmp_path / "bad.json").exists()
    done = _run("convergence.py", "--data", data_yaml, "--set", "imgsz=96", "--epochs", "1", "--out",
                str(tmp_path / "bad"), env=env, rc=2)
    assert "--set imgsz: use --imgsz instead" in done.stderr and not (tmp_path / "bad.json").exists()
    done = _run("convergence.py", "--data", data_yaml, "--set", "distill_weight=4", "--epochs", "1", "--out",
                str(tmp_path / "bad"), env=env, rc=2)
    assert "not an Ultralytics train argument" in done.stderr and not (tmp_path / "bad.json").exists()


def test_the_bccd_recipe_by_name_is_the_long_one_with_a_mosaic_teacher(tmp_path, data_yaml):
    """`--task bccd --data X` is the recipe the README's BCCD tables ran as `--task long --data X --imgsz 160
    --epochs 100` with a teacher from `--set mosaic=1.0 --epochs 200`: same name, student recipe and teacher train
    arguments (so its results pool with those and its teacher is the same cache entry). On real steps, its teacher
    trains with mosaic and its student without, and gain.py finds convergence.py's teacher in the cache."""
    import torch
    from recipes import select_task

    named, spelled = select_task("bccd", data_yaml), select_task("long", data_yaml, imgsz=160, epochs=100)
    teacher = select_task("long", data_yaml, imgsz=160, mosaic=1.0, teacher_epochs=200)
    assert named.name == spelled.name == f"{Path(data_yaml).parent.name}-long"
    assert (named.recipe, named.student_epochs) == (spelled.recipe, spelled.student_epochs)
    assert (named.teacher_train_args(), named.teacher_epochs) == (teacher.teacher_train_args(), teacher.teacher_epochs)
    assert named.recipe["mosaic"] == 0.0 and named.teacher_train_args()["mosaic"] == 1.0
    assert select_task("bccd", data_yaml, mosaic=0.5).teacher_train_args()["mosaic"] == 0.5  # the user's --set wins
    # default output names: the mosaic teacher's results never overwrite those of one on the student's recipe
    assert named.teacher_tag() == "_mosaic=1.0" and teacher.teacher_tag() == spelled.teacher_tag() == ""
    with pytest.raises(ValueError, match="add --data"):
        select_task("bccd")

    env = {"DISTILL_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "teacher"
    _run("convergence.py", "--task", "bccd", "--teacher", "--data", data_yaml, "--imgsz", "64", "--epochs", "1",
         "--out", str(out), env=env)
    meta = json.loads(out.with_suffix(".json").read_text())["meta"]
    assert meta["task"] == named.name and meta["recipe"]["mosaic"] == 1.0
    (cached,) = (tmp_path / "cache" / "teachers").glob("*.pt")
    assert torch.load(cached, map_location="cpu", weights_only=False)["train_args"]["mosaic"] == 1.0
    keep = tmp_path / "runs"
    _run("gain.py", "--task", "bccd", "--data", data_yaml, "--imgsz", "64", "--teacher-epochs", "1", "--epochs", "1",
         "--seeds", "1", "--methods", "baseline", "--keep", str(keep), "--out", str(tmp_path / "gain"), env=env)
    result = json.loads((tmp_path / "gain.json").read_text())
    assert result["meta"]["teacher"] == str(cached)  # the same cache entry: no second teacher trained
    assert list((tmp_path / "cache" / "teachers").glob("*.pt")) == [cached]
    (student,) = keep.rglob("last.pt")
    assert torch.load(student, map_location="cpu", weights_only=False)["train_args"]["mosaic"] == 0.0
    done = _run("gain.py", "--task", "bccd", "--out", str(tmp_path / "bad"), env=env, rc=2)
    assert "add --data" in done.stderr and not (tmp_path / "bad.json").exists()


def test_convergence_fine_tunes_a_checkpoint_through_the_teacher_cache(tmp_path, data_yaml, teacher_pt):
    """--model <ckpt.pt> (how a pre-trained teacher is fine-tuned on the target data): training starts from that
    checkpoint's weights, the cache is keyed by the file's bytes (changed weights at the same path train a new
    teacher, the same ones train nothing), and a missing file fails before training."""
    import torch

    env = {"DISTILL_CACHE_DIR": str(tmp_path / "cache")}
    ckpt = tmp_path / "pre-trained.pt"
    saved = torch.load(teacher_pt, map_location="cpu", weights_only=False)
    torch.save(saved, ckpt)
    common = ("--teacher", "--model", str(ckpt), "--data", data_yaml, "--imgsz", "64", "--epochs", "1")
    _run("convergence.py", *common, "--out", str(tmp_path / "a"), env=env)
    (first,) = (tmp_path / "cache" / "teachers").glob("*.pt")
    assert first.name.startswith("pre-trained-")
    tuned = torch.load(first, map_location="cpu", weights_only=False)
    assert tuned["train_args"]["model"] == str(ckpt)  # Ultralytics records where training started
    # and it started from those weights: one epoch at a small rate leaves them close (a fresh init is unrelated)
    start, end = (dict(m["model"].float().state_dict()) for m in (saved, tuned))
    key = next(k for k, v in start.items() if v.ndim == 4 and v.numel() > 1000)
    assert torch.nn.functional.cosine_similarity(start[key].flatten(), end[key].flatten(), dim=0) > 0.9
    os.utime(ckpt, (1e9, 1e9))  # the same bytes with another time stamp: the key is the bytes
    again = _run("convergence.py", *common, "--out", str(tmp_path / "b"), env=env)
    assert "Epoch" not in again.stdout + again.stderr and len(list((tmp_path / "cache" / "teachers").glob("*.pt"))) == 1
    with torch.no_grad():
        next(saved["model"].parameters()).add_(0.01)
    torch.save(saved, ckpt)
    _run("convergence.py", *common, "--out", str(tmp_path / "c"), env=env)
    assert len(list((tmp_path / "cache" / "teachers").glob("*.pt"))) == 2
    done = _run("convergence.py", *common[:2], str(tmp_path / "gone.pt"), *common[3:], "--out", str(tmp_path / "d"),
                env=env, rc=2)
    assert "gone.pt" in done.stderr and "Traceback" not in done.stderr and not (tmp_path / "d.json").exists()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    done = _run("convergence.py", *common[:2], str(tmp_path / "bad.pt"), *common[3:], "--out", str(tmp_path / "d"),
                env=env, rc=2)
    assert "could not be read" in done.stderr and "Traceback" not in done.stderr and not (tmp_path / "d.json").exists()
    assert len(list((tmp_path / "cache" / "teachers").glob("*.pt"))) == 2
    results = [json.loads((tmp_path / f"{x}.json").read_text())["meta"] for x in "ac"]
    assert results[0]["model_weights"] != results[1]["model_weights"]  # other weights at one path: never pooled
    done = _run("convergence.py", "--merge", str(tmp_path / "a.json"), str(tmp_path / "c.json"), "--out",
                str(tmp_path / "m"), rc=1)
    assert "model_weights" in done.stderr


def test_gain_quick(tmp_path):
    out = tmp_path / "gain"
    _run("gain.py", "--quick", "--seeds", "2", "--methods", METHODS, "--note", "smoke", "--versus", "kl",
         "--out", str(out))
    result = json.loads(out.with_suffix(".json").read_text())
    meta = result["meta"]
    assert meta["seed_list"] == [0, 1] and meta["note"] == "smoke" and meta["versus"] == "kl"
    assert re.fullmatch(r"code-[0-9a-f]{12}", meta["code_version"]), meta["code_version"]
    assert meta["ultralytics"] and meta["torch"] and meta["machine"]
    isa = torch.backends.cpu.get_cpu_capability()
    assert meta["cpu_capability"] == isa and f"machine {meta['machine']} ({isa})," in out.with_suffix(".md").read_text()
    assert list(result["methods"]) == METHODS.split(";")
    base = {r["seed"]: r["map50_95"] for r in result["methods"]["baseline"]["runs"]}
    for spec, summary in result["methods"].items():
        assert [r["seed"] for r in summary["runs"]] == [0, 1]
        if spec != "baseline":  # the gain is the mean of the per-seed differences
            diffs = [r["map50_95"] - base[r["seed"]] for r in summary["runs"]]
            assert summary["gain"] == pytest.approx(statistics.mean(diffs), abs=1e-12)
            assert summary["gain_se"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(2), abs=1e-12)
            assert summary["significant"] == (summary["gain"] > 2 * summary["gain_se"])
    kl = {r["seed"]: r["map50_95"] for r in result["methods"]["kl"]["runs"]}
    for spec, summary in result["methods"].items():  # --versus kl: every other method minus kl, seed for seed
        if spec in {"baseline", "kl"}:
            assert "versus" not in summary
            continue
        faced = summary["versus"]
        assert faced["spec"] == "kl" and faced["per_seed"] == {
            str(r["seed"]): pytest.approx(r["map50_95"] - kl[r["seed"]], abs=1e-12) for r in summary["runs"]}
        assert faced["gain"] == pytest.approx(statistics.mean(faced["per_seed"].values()), abs=1e-12)
    base_last = {r["seed"]: r["curve"][-1] for r in result["methods"]["baseline"]["runs"]}
    for spec, summary in result["methods"].items():  # and at the last epoch, from each run's per-epoch validation
        assert all(len(r["curve"]) == r["epochs"] == meta["epochs"] for r in summary["runs"])
        if spec != "baseline":
            assert summary["last_epoch"]["per_seed"] == {
                str(r["seed"]): pytest.approx(r["curve"][-1] - base_last[r["seed"]], abs=1e-12) for r in summary["runs"]}
    md = out.with_suffix(".md").read_text()
    assert "Against `kl`" in md and "| cwd+kl |" in md.split("Against `kl`")[1]
    last_table = md.split("Without picking an epoch")[1].split("Against `kl`")[0]
    assert all(f"| {spec} |" in last_table for spec in METHODS.split(";") if spec != "baseline")
    for versus, why in (("mgd:mgd_weight=2", "not one of the methods"), ("baseline", "paired against the baseline anyway")):
        done = _run("gain.py", "--quick", "--methods", "baseline;mgd", "--versus", versus, "--out",
                    str(tmp_path / "bad"), rc=2)
        assert why in done.stderr and "[gain]" not in done.stdout and not (tmp_path / "bad.json").exists()
    assert "| builtin |" in md and "paired gain mAP50-95 (mean ± SE)" in md and meta["code_version"] in md
    assert out.with_suffix(".png").stat().st_size > 1000


def test_gain_on_a_users_data_yaml(tmp_path, data_yaml):
    """--data trains a teacher on the given dataset (cached) with the --task recipe and records each term's size
    per run."""
    out = tmp_path / "gain"
    _run("gain.py", "--data", data_yaml, "--task", "long", "--imgsz", "64", "--epochs", "2", "--teacher-epochs", "1", "--seeds", "1",
         "--first-seed", "5", "--methods", "baseline;cwd+kl;builtin:dis=2;kl:distill_balance=0.5", "--equal-time", "--out", str(out),
         env={"DISTILL_CACHE_DIR": str(tmp_path / "cache")})
    result = json.loads(out.with_suffix(".json").read_text())
    base = result["methods"]["baseline"]["runs"][0]
    for spec in ("cwd+kl", "builtin:dis=2"):  # each method's own equal-time baseline, from its measured wall time
        run = result["methods"][spec]["runs"][0]
        eq = run["equal_time"]
        assert eq["time_ratio"] == pytest.approx(run["seconds"] / base["seconds"])
        assert eq["epochs"] == equal_time_epochs(2, run["seconds"], base["seconds"])
        assert result["methods"][spec]["equal_time"]["gain"] == pytest.approx(run["map50_95"] - eq["map50_95"])
    assert "Against a baseline given the same wall time" in out.with_suffix(".md").read_text()
    meta = result["meta"]
    assert (meta["n_train"], meta["n_val"], meta["imgsz"], meta["epochs"]) == (16, 8, 64, 2)
    assert meta["task"].endswith("-long") and meta["recipe"]["nbs"] == 16  # never pooled with the short recipe's
    assert list((tmp_path / "cache" / "teachers").glob("yolov8s-*.pt"))
    losses = result["methods"]["cwd+kl"]["runs"][0]["train_losses"]
    assert losses["cwd_loss"][0] > 0 and losses["kl_loss"][0] > 0 and losses["box_loss"][0] > 0
    assert "cwd_loss" not in result["methods"]["baseline"]["runs"][0]["train_losses"]
    assert [r["seed"] for r in result["methods"]["cwd+kl"]["runs"]] == [5]
    params = {spec: m["runs"][0]["params"] for spec, m in result["methods"].items()}
    assert params["baseline"] == {} and params["builtin:dis=2"] == {"dis": 2}
    assert params["cwd+kl"]["kl"]["weight"] == 0.5 and params["cwd+kl"]["cwd"]["tau"] == 1.0
    assert params["cwd+kl"]["distill_weight"] == 4.0  # 'auto', resolved
    # each run records what its terms were multiplied by: the calibrated scales, or None for the losses' own weights
    scales = result["methods"]["kl:distill_balance=0.5"]["runs"][0]["balance_scales"]
    assert list(scales) == ["kl"] and scales["kl"] > 0 and result["methods"]["cwd+kl"]["runs"][0]["balance_scales"] is None
    done = _run("gain.py", "--imgsz", "64", rc=2)
    assert "go with --data" in done.stderr


def test_gain_with_a_given_teacher(tmp_path, data_yaml, teacher_pt):
    """--teacher: that checkpoint teaches and is recorded; no teacher is trained."""
    out = tmp_path / "given"
    _run("gain.py", "--data", data_yaml, "--task", "quick", "--teacher", teacher_pt, "--epochs", "1", "--seeds", "1",
         "--methods", "baseline;kl", "--out", str(out), env={"DISTILL_CACHE_DIR": str(tmp_path / "cache")})
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["meta"]["teacher"] == str(Path(teacher_pt).resolve())
    assert 0 <= result["meta"]["teacher_map50_95"] <= 1
    assert result["methods"]["kl"]["runs"][0]["train_losses"]["kl_loss"][0] > 0
    assert "run" not in result["methods"]["kl"]["runs"][0]  # runs in a temporary folder, gone: nothing to point at
    assert not (tmp_path / "cache" / "teachers").exists()
    done = _run("gain.py", "--data", data_yaml, "--teacher", str(tmp_path / "gone.pt"), rc=2)
    assert "--teacher" in done.stderr and "not a .pt checkpoint on disk" in done.stderr
    from distill.teacher import fingerprint, load_teacher

    assert result["meta"]["teacher_fingerprints"] == [fingerprint(load_teacher(teacher_pt))]
    assert result["meta"]["teacher_fingerprints"][0] in out.with_suffix(".md").read_text()

    # The same seed of kl again as a slice without its baseline (e.g. on the other core), taught by a copy of the
    # teacher under another name: it reproduces the first file's kl run, its print is the same whatever the file
    # is called, and gain_merge pairs it with the first file's baseline.
    import shutil

    renamed = shutil.copyfile(teacher_pt, tmp_path / "renamed.pt")
    common = ("--data", data_yaml, "--task", "quick", "--teacher", str(renamed), "--epochs", "1", "--seeds", "1")
    env = {"DISTILL_CACHE_DIR": str(tmp_path / "cache")}
    _run("gain.py", *common, "--methods", "kl;kl", "--no-baseline", "--out", str(tmp_path / "slice_w0.5"), env=env)
    # The dot is part of the name (as in a method's weight): the files are slice_w0.5.*, not slice_w0.*.
    sliced = json.loads((tmp_path / "slice_w0.5.json").read_text())
    assert list(sliced["methods"]) == ["kl"] and "gain" not in sliced["methods"]["kl"]  # "kl;kl" runs once
    assert sliced["meta"]["teacher_fingerprints"] == result["meta"]["teacher_fingerprints"]
    assert sliced["methods"]["kl"]["runs"][0]["map50_95"] == result["methods"]["kl"]["runs"][0]["map50_95"]
    assert (tmp_path / "slice_w0.5.png").stat().st_size > 1000 and "| kl |" in (tmp_path / "slice_w0.5.md").read_text()
    _run("gain_merge.py", str(tmp_path / "slice_w0.5.json"), str(out.with_suffix(".json")), "--out", str(tmp_path / "pooled_0.5"))
    pooled = json.loads((tmp_path / "pooled_0.5.json").read_text())
    assert pooled["methods"]["kl"]["gain"] == pytest.approx(result["methods"]["kl"]["gain"], abs=1e-12)
    assert pooled["meta"]["teacher_fingerprints"] == result["meta"]["teacher_fingerprints"]
    assert not (tmp_path / "cache" / "teachers").exists()
    for flags, message in ((("--methods", "kl", "--no-baseline"), "name it with --out"),
                           (("--methods", "baseline;kl", "--no-baseline", "--out", "x"), "drop one of the two"),
                           (("--methods", "baseline:lr0=0.1;kl", "--out", "x"), "takes no options"),
                           (("--methods", "kl", "--no-baseline", "--equal-time", "--out", "x"), "drop --no-baseline")):
        assert message in _run("gain.py", *common, *flags, rc=2, env=env).stderr


def test_gain_with_train_overrides(tmp_path, data_yaml, teacher_pt):
    """--set replaces recipe arguments in every run, baseline and distilled alike (e.g. a mosaic student): each
    run's args.yaml has them, the results' recipe records them, and a slice without them never pools with them.
    Keys the script sets itself, and keys that are no Ultralytics train argument, fail before anything trains."""
    from ultralytics.utils import YAML

    common = ("--data", data_yaml, "--task", "quick", "--teacher", teacher_pt, "--epochs", "1", "--seeds", "1")
    out, kept = tmp_path / "mosaic", tmp_path / "kept"
    _run("gain.py", *common, "--set", "mosaic=1.0", "close_mosaic=0", "--methods", "baseline;kl", "--out", str(out),
         "--keep", str(kept))
    result = json.loads(out.with_suffix(".json").read_text())
    assert (result["meta"]["recipe"]["mosaic"], result["meta"]["recipe"]["close_mosaic"]) == (1.0, 0)
    for method in ("baseline", "kl"):
        args = YAML.load(Path(result["methods"][method]["runs"][0]["run"]) / "args.yaml")
        assert (args["mosaic"], args["close_mosaic"]) == (1.0, 0)
    assert result["methods"]["kl"]["runs"][0]["train_losses"]["kl_loss"][0] > 0
    plain = tmp_path / "plain"
    _run("gain.py", *common, "--methods", "kl", "--no-baseline", "--out", str(plain))
    done = _run("gain_merge.py", str(out.with_suffix(".json")), str(plain.with_suffix(".json")), "--out",
                str(tmp_path / "pooled"), rc=1)
    assert "recipe differ" in done.stderr and not (tmp_path / "pooled.json").exists()
    for pair, message in (("imgsz=96", "--set imgsz: use --imgsz instead"), ("seed=3", "use --seeds / --first-seed"),
                          ("dis=3", "use --methods builtin:dis=<weight>"), ("mosaic", "key=value"),
                          ("kl_weight=2", "not an Ultralytics train argument"),
                          ("mosiac=1.0", "not an Ultralytics train argument"),
                          ("plots=True", "the benchmark sets it"), ("time=0.1", "the benchmark sets it"),
                          ("mosaic=abc", "invalid type"), ("mosaic=1.0 mosaic=0.5", "given twice")):
        done = _run("gain.py", *common, "--set", *pair.split(), "--methods", "baseline;kl", "--out",
                    str(tmp_path / "bad"), rc=2)
        assert message in done.stderr and not list(tmp_path.glob("bad*"))
    done = _run("gain.py", *common, "--set", "lr0=0.01", "--methods", "baseline;kl:lr0=0.02", "--out",
                str(tmp_path / "bad"), rc=2)
    assert "lr0 also given with --set" in done.stderr and not list(tmp_path.glob("bad*"))
    assert "go with --data" in _run("gain.py", "--quick", "--set", "mosaic=1.0", rc=2).stderr
    from common import overrides_tag  # a default result name: the same mark in whatever order they are given

    assert overrides_tag({"mosaic": 1.0, "close_mosaic": 0}) == overrides_tag({"close_mosaic": 0, "mosaic": 1.0}) \
        == "_close_mosaic=0_mosaic=1.0"


def test_gain_from_a_pretrained_student(tmp_path, data_yaml, teacher_pt):
    """--student a.pt: every run (the baseline too) starts from that checkpoint's weights, and results carry its name;
    a missing file fails before training."""
    import torch

    out = tmp_path / "pre"
    student = tmp_path / "pre.pt"
    ckpt = torch.load(teacher_pt, map_location="cpu", weights_only=False)  # stands in for a pre-trained checkpoint
    torch.save(ckpt, student)
    _run("gain.py", "--data", data_yaml, "--task", "quick", "--teacher", teacher_pt, "--student", str(student),
         "--epochs", "1", "--seeds", "1", "--methods", "baseline;kl", "--out", str(out), "--keep", str(tmp_path / "kept"))
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["meta"]["student"] == str(student)
    # --keep: each run's folder stays, with its checkpoints, under the given folder
    runs = [Path(result["methods"][m]["runs"][0]["run"]) for m in ("baseline", "kl")]
    assert len(set(runs)) == 2 and all(r.parent == (tmp_path / "kept").resolve() and (r / "weights" / "best.pt").is_file() for r in runs)
    # a second run of the same name into the same folder gets a folder of its own: the first one's weights stay
    before = (runs[0] / "weights" / "best.pt").stat().st_mtime_ns
    _run("gain.py", "--data", data_yaml, "--task", "quick", "--student", str(student), "--epochs", "1", "--seeds", "1",
         "--methods", "baseline", "--out", str(tmp_path / "again"), "--keep", str(tmp_path / "kept"))
    again = Path(json.loads((tmp_path / "again.json").read_text())["methods"]["baseline"]["runs"][0]["run"])
    assert again != runs[0] and again.parent == runs[0].parent and (again / "weights" / "best.pt").is_file()
    assert (runs[0] / "weights" / "best.pt").stat().st_mtime_ns == before
    size = sum(p.numel() for p in ckpt["model"].parameters())  # a yolov8s: about 11 M, a yolov8n about 3 M
    assert [result["methods"][m]["runs"][0]["student_params"] for m in ("baseline", "kl")] == [size, size]
    done = _run("gain.py", "--data", data_yaml, "--task", "quick", "--student", str(tmp_path / "gone.pt"), rc=2)
    assert "--student" in done.stderr and "no such checkpoint" in done.stderr
    (tmp_path / "trunc.pt").write_bytes(student.read_bytes()[:4096])  # an interrupted copy: one line, nothing written
    done = _run("gain.py", "--data", data_yaml, "--task", "quick", "--student", str(tmp_path / "trunc.pt"), "--epochs", "1",
                "--seeds", "1", "--methods", "baseline", "--out", str(tmp_path / "cut"), rc=2)
    assert "--student" in done.stderr and "truncated, corrupt" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.glob("cut*"))
    done = _run("gain.py", "--data", data_yaml, "--task", "quick", "--student", str(teacher_pt)[:-3] + ".pth", rc=2)
    assert "neither a model .yaml nor a .pt" in done.stderr
    # the pre-trained regime's recipe never quietly trains from scratch under its name
    for flags in (["--student", str(student)], ["--teacher", teacher_pt], ["--teacher", teacher_pt, "--student", "yolov8n.yaml"]):
        assert "fine-tunes pre-trained models" in _run("gain.py", "--task", "finetune", *flags, rc=2).stderr
    assert "fine-tunes pre-trained models" in _run("convergence.py", "--task", "finetune", "--epochs", "1", rc=2).stderr


def test_gain_with_two_teachers(tmp_path, data_yaml, teacher_pt, teacher11_pt):
    """--teacher a.pt b.pt: methods use both unless their spec picks one; the gap is measured to the better teacher;
    each run records the teachers it had. A spec naming a teacher that is not given fails before any training."""
    out = tmp_path / "two"
    _run("gain.py", "--data", data_yaml, "--task", "quick", "--teacher", teacher_pt, teacher11_pt, "--epochs", "1",
         "--seeds", "1", "--methods", "baseline;kl:teachers=2;kl;kl:distill_ensemble=True", "--out", str(out),
         env={"DISTILL_CACHE_DIR": str(tmp_path / "cache")})
    result = json.loads(out.with_suffix(".json").read_text())
    meta, methods = result["meta"], result["methods"]
    given = [str(Path(teacher_pt).resolve()), str(Path(teacher11_pt).resolve())]
    assert meta["teacher"] == given and len(meta["teacher_maps"]) == 2
    assert meta["teacher_map50_95"] == max(meta["teacher_maps"])
    assert methods["kl:teachers=2"]["runs"][0]["teachers"] == given[1:]
    assert methods["kl"]["runs"][0]["teachers"] == methods["kl:distill_ensemble=True"]["runs"][0]["teachers"] == given
    assert [methods[m]["runs"][0]["ensemble"] for m in ("kl:teachers=2", "kl", "kl:distill_ensemble=True")] == [
        False, False, True]
    assert all(m["runs"][0]["train_losses"]["kl_loss"][0] > 0 for spec, m in methods.items() if spec != "baseline")
    assert "teachers 1: " in out.with_suffix(".md").read_text()
    done = _run("gain.py", "--data", data_yaml, "--task", "quick", "--teacher", teacher_pt, teacher11_pt,
                "--methods", "kl:teachers=3", "--out", str(tmp_path / "bad"), rc=2)
    assert "teachers=3, but 2 teacher(s) are given" in done.stderr and not (tmp_path / "bad.json").exists()


def test_overhead_with_two_teachers(tmp_path):
    out = tmp_path / "overhead2"
    _run("overhead.py", "--quick", "--steps", "1", "--teachers", "yolov8s.yaml", "yolo11n.yaml", "--methods",
         "baseline;kl:teachers=1;kl", "--out", str(out))
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["baseline", "kl:teachers=1", "kl"] and result["meta"]["teacher"] == "yolov8s, yolo11n"
    assert all("kl_loss" in rows[m]["loss_items"] for m in ("kl:teachers=1", "kl"))
    assert [rows[m]["teachers"] for m in rows] == [0, 1, 2]
    assert "teachers (1, 2, ...) yolov8s, yolo11n" in out.with_suffix(".md").read_text()


def test_overhead_quick(tmp_path):
    out = tmp_path / "overhead"
    _run("overhead.py", "--quick", "--methods", "baseline;cwd;mgd;mimic;kl;builtin", "--out", str(out))
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["baseline", "cwd", "mgd", "mimic", "kl", "builtin"]
    # every timed method really distilled (its term was in the loss), the plain one did not
    assert not any(k.endswith("_loss") and k[:-5] in {"cwd", "mgd", "mimic", "kl", "dis"} for k in rows["baseline"]["loss_items"])
    for name in ("cwd", "mgd", "mimic", "kl"):
        assert f"{name}_loss" in rows[name]["loss_items"], rows[name]["loss_items"]
    assert "dis_loss" in rows["builtin"]["loss_items"]
    # the lower-bound slot ran the whole teacher on every batch it timed (2 warm-up + 3 steps of 4 images)
    assert result["meta"]["lower_bound_teacher_images"] == 5 * 4
    assert all(r["step_s"] > 0 and r["peak_mb"] > 0 for r in rows.values())


def _result(runs: dict[str, dict[int, float]], version: str = "a" * 40, epochs: int = 30,
            prints: list[str] | None = None, note: str = "") -> dict:
    meta = {"task": "full", "student": "yolov8n.yaml", "teacher": "t.pt", "teacher_map50_95": 0.09, "n_train": 256,
            "n_val": 64, "imgsz": 128, "epochs": epochs, "seed_list": sorted(runs["baseline"]), "device": "cpu",
            "command": "gain", "code_version": version, "ultralytics": "8.4.190", "torch": "2.14.1",
            **({"teacher_fingerprints": prints} if prints else {}), **({"note": note} if note else {})}
    return {"meta": meta, "methods": {spec: {"runs": _rows(v)} for spec, v in runs.items()}}


def test_gain_merge_pools_seeds_and_methods_and_refuses_mixed_code(tmp_path):
    import shlex

    files = {
        "first": _result({"baseline": {0: 0.05, 1: 0.06}, "kl": {0: 0.07, 1: 0.07}}, note="converged"),
        "slice": _result({"baseline": {2: 0.04, 3: 0.05}, "kl": {2: 0.05, 3: 0.06}}, note="converged"),  # --first-seed 2
        "sweep": _result({"baseline": {0: 0.05, 1: 0.06}, "mgd": {0: 0.04, 1: 0.05}}, note="mgd sweep"),
        "other_code": _result({"baseline": {4: 0.05}, "kl": {4: 0.07}}, version="b" * 40),
        "unrecorded": {"meta": {k: v for k, v in _result({"baseline": {5: 0.05}})["meta"].items() if k != "code_version"},
                       "methods": {"baseline": {"runs": _rows({5: 0.05})}}},
        "clash": _result({"baseline": {1: 0.061}}),
        "epochs": _result({"baseline": {6: 0.05}}, epochs=3),
        "taught": _result({"baseline": {2: 0.04}, "kl": {2: 0.05}}, prints=["1" * 16]),
        "other_teacher": _result({"baseline": {7: 0.05}, "kl": {7: 0.06}}, prints=["2" * 16]),
        "taught_more": _result({"kl": {8: 0.06}, "baseline": {8: 0.05}}, prints=["1" * 16]),
    }
    paths = {}
    for name, res in files.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(res))
    out = tmp_path / "merged"
    _run("gain_merge.py", str(paths["first"]), str(paths["slice"]), str(paths["sweep"]), "--out", str(out),
         fresh=True)  # once as a user runs it: its own interpreter, its own imports
    merged = json.loads(out.with_suffix(".json").read_text())
    assert merged["meta"]["seed_list"] == [0, 1, 2, 3] and list(merged["methods"]) == ["baseline", "kl", "mgd"]
    kl = merged["methods"]["kl"]
    assert [r["seed"] for r in kl["runs"]] == [0, 1, 2, 3]
    assert kl["gain"] == pytest.approx(statistics.mean([0.02, 0.01, 0.01, 0.01]))  # recomputed over pooled seeds
    assert kl["paired_n"] == 4 and merged["methods"]["mgd"]["paired_n"] == 2
    assert "| mgd |" in out.with_suffix(".md").read_text()
    _run("gain_merge.py", str(paths["first"]), str(paths["slice"]), str(paths["sweep"]), "--versus", "kl",
         "--out", str(out))
    merged = json.loads(out.with_suffix(".json").read_text())
    assert merged["meta"]["versus"] == "kl" and "versus" not in merged["methods"]["kl"]
    assert shlex.split(merged["meta"]["command"])[-4:] == ["--versus", "kl", "--out", str(out)]
    faced = merged["methods"]["mgd"]["versus"]  # mgd 0.04, 0.05 against kl 0.07, 0.07 (seeds 0, 1)
    assert faced["per_seed"] == {"0": pytest.approx(-0.03), "1": pytest.approx(-0.02)}
    assert (faced["gain"], faced["gain_se"]) == (pytest.approx(-0.025), pytest.approx(0.005))
    assert faced["gain_t"] == pytest.approx(-5.0) and faced["seeds_ahead"] == 0 and not faced["significant"]
    assert "| mgd | -0.0250 ± 0.0050 | -5.0 | 0/2 | no | 0: -0.0300, 1: -0.0200 |" in out.with_suffix(".md").read_text()
    # a merge without --versus keeps the one its files were run with
    (tmp_path / "versed.json").write_text(out.with_suffix(".json").read_text())
    _run("gain_merge.py", str(tmp_path / "versed.json"), "--out", str(out))
    assert json.loads(out.with_suffix(".json").read_text())["methods"]["mgd"]["versus"]["spec"] == "kl"
    assert "not one of the methods" in _run("gain_merge.py", str(paths["first"]), "--versus", "mgd", "--out",
                                             str(tmp_path / "bad"), rc=1).stderr
    # notes: each file's own where they differ, once where the files are slices of one benchmark
    assert merged["meta"]["note"] == f"{paths['first']}: converged {paths['slice']}: converged {paths['sweep']}: mgd sweep"
    _run("gain_merge.py", str(paths["first"]), str(paths["slice"]), "--out", str(out))
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["note"] == "converged"

    def refused(*names: str, flag: tuple[str, ...] = ()) -> str:
        return _run("gain_merge.py", *[str(paths[n]) for n in names], "--out", str(out), *flag, rc=1).stderr

    assert "ran other code" in refused("first", "other_code")
    assert "does not record its code_version" in refused("first", "unrecorded")
    assert "ran other code" in refused("first", "unrecorded", flag=("--allow-unrecorded",))  # still not mixed
    assert "baseline seed 1 gave 0.06" in refused("first", "clash")
    assert "epochs differ" in refused("first", "epochs")
    # same task and teacher mAP, other teacher weights: refused; files that do not record their teacher's weights
    # (older results) pool with each other as before, with recorded ones only on request, and the pool is unrecorded
    assert "other teacher weights" in refused("taught", "other_teacher")
    assert "does not record its teacher's weights" in refused("taught", "first")
    assert "other teacher weights" in refused("first", "taught", "other_teacher", flag=("--allow-unrecorded",))
    _run("gain_merge.py", str(paths["first"]), str(paths["taught"]), "--out", str(out), "--allow-unrecorded")
    assert "teacher_fingerprints" not in json.loads(out.with_suffix(".json").read_text())["meta"]
    _run("gain_merge.py", str(paths["taught"]), str(paths["taught_more"]), "--out", str(out))
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["teacher_fingerprints"] == ["1" * 16]


def test_gain_merge_pairs_runs_of_one_kind_of_machine_only(tmp_path):
    """A seed trains to other weights on a CPU with other vector instructions (the same "AMD EPYC, 2 cores" gave
    other teachers and baselines with AVX2), so a --no-baseline slice from there must not pair with these
    baselines: refused, whether the instruction set or the CPU model differs, and whichever file comes first; files
    that do not record it (GPU runs, older results) are not compared, and the pool claims an instruction set only
    where every file records it."""
    def on(isa: str | None, machine: str, runs: dict, version: str = "a" * 40) -> dict:
        res = _result({"baseline": {0: 0.0, 1: 0.0}, **runs}, version=version)
        if "baseline" not in runs:  # a --no-baseline slice
            del res["methods"]["baseline"]
        res["meta"]["machine"] = machine
        if isa:
            res["meta"]["cpu_capability"] = isa
        return res

    files = {"base": on("AVX2", "AMD EPYC, 2 cores", {"baseline": {0: 0.50, 1: 0.52}}),
             "kl": on("AVX2", "AMD EPYC, 2 cores", {"kl": {0: 0.53, 1: 0.54}}),
             "kl_avx512": on("AVX512", "AMD EPYC, 2 cores", {"kl": {0: 0.53, 1: 0.54}}),
             "kl_intel": on("AVX2", "Intel Xeon, 2 cores", {"kl": {0: 0.53, 1: 0.54}}),
             "kl_gpu": on(None, "NVIDIA H200", {"kl": {0: 0.53, 1: 0.54}}),
             "kl_old": on(None, "AMD EPYC, 2 cores", {"kl": {0: 0.53, 1: 0.54}}, version="b" * 40),
             "base_old": on(None, "x86_64, 1 threads", {"baseline": {0: 0.50, 1: 0.52}}, version="b" * 40)}
    for name, res in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(res))
    out = tmp_path / "pool"

    def merged(*names: str, rc: int = 0, flag: tuple[str, ...] = ()):
        return _run("gain_merge.py", *[str(tmp_path / f"{n}.json") for n in names], "--out", str(out), *flag, rc=rc)

    merged("base", "kl")
    pool = json.loads(out.with_suffix(".json").read_text())
    assert pool["meta"]["cpu_capability"] == "AVX2" and pool["methods"]["kl"]["gain"] == pytest.approx(0.025)
    assert "machine AMD EPYC, 2 cores (AVX2)," in out.with_suffix(".md").read_text()
    out.with_suffix(".json").unlink()
    done = merged("base", "kl_avx512", rc=1)
    assert "ran on another machine" in done.stderr
    assert "AMD EPYC, 2 cores (AVX512) vs AMD EPYC, 2 cores (AVX2)" in done.stderr
    assert "(Intel Xeon, 2 cores (AVX2) vs AMD EPYC" in merged("base", "kl_intel", rc=1).stderr
    assert "kl_avx512.json ran on another machine" in merged("kl_gpu", "base", "kl_avx512", rc=1).stderr
    assert not out.with_suffix(".json").exists()
    merged("kl_gpu", "base")  # not recorded for a GPU run: the pool does not claim one
    assert "cpu_capability" not in json.loads(out.with_suffix(".json").read_text())["meta"]
    # an older file ran other code, refused as before, even on request
    assert "ran other code" in merged("base", "kl_old", rc=1, flag=("--allow-unrecorded",)).stderr
    merged("base_old", "kl_old")  # neither records it: the machine names never decided a pool before
    assert json.loads(out.with_suffix(".json").read_text())["methods"]["kl"]["paired_n"] == 2


def test_gain_for_a_segment_student(tmp_path):
    """--yolo-task segment: the synthetic set's polygons, yolov8n-seg students, a yolov8s-seg teacher, every run scored
    by mask mAP (the column its curve comes from), the built-in distillation through Ultralytics' seg trainer; a
    detection student for a seg task fails before training."""
    out = tmp_path / "seg"
    cache = {"DISTILL_CACHE_DIR": str(tmp_path / "cache")}
    _run("gain.py", "--quick", "--yolo-task", "segment", "--seeds", "1", "--methods", "baseline;kl;builtin",
         "--out", str(out), env=cache)
    result = json.loads(out.with_suffix(".json").read_text())
    meta = result["meta"]
    assert meta["task"] == "quick-segment" and meta["yolo_task"] == "segment" and meta["student"] == "yolov8n-seg.yaml"
    assert Path(meta["teacher"]).name.startswith("yolov8s-seg-")
    assert list((tmp_path / "cache" / "synthetic").glob("shapes-segment-*"))
    runs = {spec: m["runs"][0] for spec, m in result["methods"].items()}
    assert set(runs) == {"baseline", "kl", "builtin"}
    assert runs["kl"]["train_losses"]["kl_loss"][0] > 0 and "seg_loss" in runs["baseline"]["train_losses"]
    assert all(run["curve"] and run["curve"][-1] == pytest.approx(run["map50_95"], abs=0.05) for run in runs.values())
    done = _run("gain.py", "--quick", "--yolo-task", "segment", "--student", "yolov8n.yaml", rc=2, env=cache)
    assert "is a detect model; --yolo-task is segment" in done.stderr


def test_deploy_stages_quick(tmp_path, data_yaml, teacher_pt):
    """Every deployment stage trained and measured in one run: the teacher pruned (at 0.3: widths no standard model
    has), fine-tuned alone and distilled, both from the pruned weights (the distilled run's kl column non-zero); the
    student trained alone; the distilled model exported to ONNX (same outputs) and INT8 (a quarter of the file); the
    report lists them in order, each stage measuring its own file. Bad arguments are refused before anything is
    written."""
    import torch

    work, out = tmp_path / "work", tmp_path / "out"
    _run("deploy_stages.py", "--task", "quick", "--data", data_yaml, "--teacher", teacher_pt, "--ratio", "0.3",
         "--epochs", "1", "--student-epochs", "1", "--work", str(work), "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["teacher", "yolov8n, trained alone", "pruned 0.3, untrained", "pruned + fine-tune",
                            "pruned + kl", "pruned + kl, ONNX fp32", "pruned + kl, ONNX INT8"]
    runs = {k: Path(v["run"]) for k, v in report["training"].items() if isinstance(v, dict)}
    assert len(set(runs.values())) == 3 and all((r / "weights" / "best.pt").is_file() for r in runs.values())

    def load(path: str) -> dict:
        return torch.load(path, map_location="cpu", weights_only=False)

    pruned_file = stages["pruned 0.3, untrained"]["file"]
    assert Path(pruned_file).parent == work and load(pruned_file)["pruned"][-1]["ratio"] == 0.3
    shapes = [p.shape for p in load(pruned_file)["model"].parameters()]
    student = [p.shape for p in load(stages["yolov8n, trained alone"]["file"])["model"].parameters()]
    assert shapes != student  # at 0.3 the pruned widths are no yolov8n's, so a shape match below means pruned weights
    for name, key in (("pruned + fine-tune", "pruned_finetuned"), ("pruned + kl", "pruned_distilled")):
        ckpt = load(stages[name]["file"])
        assert Path(stages[name]["file"]).parent.parent == runs[key]
        assert ckpt["train_args"]["model"] == pruned_file and [p.shape for p in ckpt["model"].parameters()] == shapes
    assert stages["teacher"]["params_m"] > stages["pruned 0.3, untrained"]["params_m"] > stages["yolov8n, trained alone"]["params_m"]
    kl = report["training"]["pruned_distilled"]["train_losses"]["kl_loss"]
    assert kl and all(v > 0 for v in kl) and "kl_loss" not in report["training"]["pruned_finetuned"]["train_losses"]
    # the exports are of the distilled model, and each export stage measures its own file
    distilled_dir = runs["pruned_distilled"] / "weights"
    for name, key in (("pruned + kl, ONNX fp32", "onnx"), ("pruned + kl, ONNX INT8", "int8")):
        exported = report["parity"]["onnx"]["onnx"] if key == "onnx" else report["parity"]["int8"]["onnx"]
        assert stages[name]["file"] == exported and Path(exported).parent == distilled_dir
    assert report["parity"]["onnx"]["max_box_diff_px"] < 0.01 and report["parity"]["onnx"]["max_score_diff"] < 1e-4
    assert report["parity"]["onnx"]["score_std"] > 0  # the outputs compared are not all equal
    assert stages["pruned + kl, ONNX INT8"]["file_mb"] < 0.4 * stages["pruned + kl, ONNX fp32"]["file_mb"]
    md = (out / "report.md").read_text()
    assert "| pruned + kl |" in md and "rectangular batches" in md and (out / "report.png").stat().st_size > 0

    refusals = ((["--ratio", "1.5"], "--ratio 1.5"), (["--loss", "baseline"], "--loss baseline"),
                (["--loss", "kll"], "kll"), (["--loss", "kl:kl_weigth=2"], "kl_weigth"),
                (["--student", "yolov8n-seg.yaml"], "segment"), (["--student", teacher_pt], "give a model YAML"),
                (["--epochs", "0"], "at least 1 epoch"), (["--teacher", str(tmp_path / "gone.pt")], "not a .pt checkpoint"))
    for i, (args, message) in enumerate(refusals):
        fresh = tmp_path / f"refused{i}"
        done = _run("deploy_stages.py", "--task", "quick", "--data", data_yaml, "--teacher", teacher_pt, *args,
                    "--work", str(fresh / "work"), "--out", str(fresh / "out"), rc=2)
        assert message in done.stderr and not fresh.exists(), done.stderr[-500:]
