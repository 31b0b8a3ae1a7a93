"""Public entry points end to end: the Python API and the CLI, and what they leave on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, TRAIN
from distill import YOLO, available_losses
from distill.cli import parse_extra
from distill.compare import results_columns
from distill.distiller import MODULES_ATTR

CLEAN_LOAD = r"""
import sys
sys.modules["distill"] = None  # any pickled reference to our package would fail to import
import numpy as np, torch
from ultralytics import YOLO
for path in sys.argv[1:]:
    globals_needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert not [g for g in globals_needed if "distill" in g.split(".")[0]], globals_needed
    model = YOLO(path)
    assert not hasattr(model.model, "distill_modules")
    model.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, verbose=False)
    out = model.export(format="torchscript", imgsz=64)
    print("EXPORTED", path, out)
"""


def test_python_api_with_in_memory_teacher(data_yaml, teacher_pt, project):
    model_t = YOLO(teacher_pt)
    flags = [(p.requires_grad, p.dtype) for p in model_t.model.parameters()], model_t.model.training
    model_s = YOLO("yolov8n.yaml")
    seen = {}
    model_s.add_callback("on_pretrain_routine_end", lambda tr: seen.update(
        initial={k: v.clone() for k, v in getattr(tr.model, MODULES_ATTR).state_dict().items()}))
    model_s.train(data=data_yaml, Distillation=model_t.model, loss_type="cwd", project=project, name="api", **TRAIN)
    # the caller's teacher object is left as it was (the trainer distils from a private frozen copy)
    assert ([(p.requires_grad, p.dtype) for p in model_t.model.parameters()], model_t.model.training) == flags
    run = Path(model_s.trainer.save_dir)
    # the in-memory teacher was given a path so DDP workers and resume can rebuild it
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["Distillation"] == str(run / "teacher.pt") and (run / "teacher.pt").exists()
    best = run / "weights" / "best.pt"
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    assert ckpt["distill"]["losses"] == ["cwd"] and ckpt["distill"]["student_layers"] == [15, 18, 21]
    assert not hasattr(ckpt["model"], "distill_modules")
    # the trained connectors are kept aside: exactly the EMA's (what last.pt held), and no longer at their init
    saved = torch.load(run / "weights" / "distill_modules.pt", map_location="cpu")
    trained = {k: v.half() for k, v in getattr(model_s.trainer.ema.ema, MODULES_ATTR).state_dict().items()}
    assert saved.keys() == trained.keys() and any(k.startswith("connectors.") for k in saved)
    assert all(torch.equal(saved[k], trained[k].cpu()) for k in saved)
    assert any(not torch.equal(saved[k], v.half()) for k, v in seen["initial"].items())
    last = run / "weights" / "last.pt"
    done = subprocess.run([sys.executable, "-c", CLEAN_LOAD, str(best), str(last)], capture_output=True, text=True, cwd=run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"EXPORTED {best}" in done.stdout and f"EXPORTED {last}" in done.stdout


def test_cli_end_to_end(data_yaml, teacher_pt, project):
    cmd = [
        sys.executable, str(ROOT / "train_distill.py"), "--teacher", teacher_pt, "--student", "yolov8n.yaml",
        "--loss", "mgd", "--data", data_yaml, "--epochs", "1", "--imgsz", "64", "--batch", "8", "--device", "cpu",
        "--mgd-alpha", "4e-5", "--lr0", "0.002", "warmup_epochs=0", "--project", project, "--name", "cli",
        "workers=0", "plots=False",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "teacher mAP50-95:" in done.stdout and "student mAP50-95:" in done.stdout
    run = Path(project) / "cli"
    assert (run / "weights" / "best.pt").exists()
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert (args["lr0"], args["warmup_epochs"], args["mgd_alpha"], args["loss_type"]) == (0.002, 0, 4e-5, "mgd")
    assert "train/mgd_loss" in results_columns(run)


def test_cli_yaml_teacher_negative_layers_and_passthrough_prefixes(data_yaml, project):
    """`--distill-layers -2,-1` is read as a value, `--conf` passes through to Ultralytics (not taken as an
    abbreviation of --config), and a .yaml teacher is reported from the file that actually taught."""
    cmd = [sys.executable, str(ROOT / "train_distill.py"), "--teacher", "yolov8s.yaml", "--loss", "cwd",
           "--distill-layers", "-2,-1", "--conf", "0.01", "--data", data_yaml, "--epochs", "1", "--imgsz", "64",
           "--batch", "8", "--project", project, "--name", "neg", "workers=0", "plots=False"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    run = Path(project) / "neg"
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert (args["conf"], args["distill_layers"], args["Distillation"]) == (0.01, "-2,-1", str(run / "teacher.pt"))
    record = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)["distill"]
    assert (record["student_layers"], record["teacher_layers"]) == ([20, 21], [20, 21])
    assert f"({run / 'teacher.pt'}, validated" in done.stdout
    assert "the teacher is built from yolov8s.yaml, so its weights are random" in done.stdout + done.stderr


def test_cli_errors_are_one_line(data_yaml, project):
    done = subprocess.run(
        [sys.executable, str(ROOT / "train_distill.py"), "--teacher", "missing.pt", "--data", data_yaml,
         "--loss", "cwd", "--project", project],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 2
    assert "teacher checkpoint 'missing.pt' does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert not Path(project).exists()  # nothing half-written


def test_cli_help_lists_every_distillation_option():
    done = subprocess.run([sys.executable, str(ROOT / "train_distill.py"), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for flag in ("--teacher", "--student", "--loss", "--distill-weight", "--distill-schedule", "--distill-layers",
                 "--cwd-tau", "--mgd-alpha", "--mgd-mask-ratio", "--kl-temperature", "--mimic-weight",
                 "--distill-balance", "--distill-balance-steps", "--pkd-weight", "--at-p", "--at-channel-beta",
                 "--distill-off-epochs", "--distill-balance-by", "--crosskd-weight", "--kl-decoded", "--kl-box-weight"):
        assert flag in done.stdout


def test_passthrough_argument_forms():
    assert parse_extra(["--lr0", "0.001", "cos_lr=True", "--close-mosaic=0", "--rect"]) == {
        "lr0": 0.001, "cos_lr": True, "close_mosaic": 0, "rect": True,
    }


def test_teacher_values_give_back_only_train_arguments(tmp_path):
    """argparse sweeps a `key=value` after `--teacher a.pt` into the teacher list: it goes back to the train
    arguments, while paths with '=' in them, existing or not, stay teachers."""
    from distill.cli import split_teacher_values

    odd = tmp_path / "lr=0.01.pt"
    odd.touch()
    values = ["a.pt", "lr0=0.01", "runs/lr=0.01/best.pt", str(odd), "close-mosaic=0"]
    assert split_teacher_values(values) == (["a.pt", "runs/lr=0.01/best.pt", str(odd)], ["lr0=0.01", "close-mosaic=0"])
    assert split_teacher_values(["epochs=3"]) == (None, ["epochs=3"])


PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


def _loss_columns(run: Path) -> set[str]:
    """Names of the distillation losses with a train/<name>_loss column in the run's results.csv."""
    return {name for name in available_losses() if f"train/{name}_loss" in results_columns(run)}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_each_preset_trains_its_own_losses(preset, data_yaml, teacher_pt, project):
    """`--config <preset>` trains the preset's losses with its values: in the trainer, args.yaml and results.csv."""
    from distill.cli import main

    values = yaml.safe_load(preset.read_text())
    code = main(["--config", str(preset), "--teacher", teacher_pt, "--data", data_yaml, "--epochs", "1",
                 "--imgsz", "64", "--batch", "8", "--project", project, "--name", preset.stem, "workers=0", "plots=False"])
    assert code == 0
    run = Path(project) / preset.stem
    record = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)["distill"]  # what trained
    expected = values["loss_type"].split("+")
    assert record["losses"] == expected
    for key, value in values.items():
        for name in expected:  # loss names may hold '_' themselves (at_channel_p): match the loss, not the first '_'
            if key.startswith(name + "_") and key[len(name) + 1:] in record["params"][name]:
                assert record["params"][name][key[len(name) + 1:]] == value, key
    assert yaml.safe_load((run / "args.yaml").read_text())["loss_type"] == values["loss_type"]
    assert _loss_columns(run) == set(expected)


def test_typed_flags_beat_the_preset(data_yaml, teacher_pt, project):
    """Typed flags win over the preset, even when they repeat the CLI's default value (--loss auto, which is cwd+kl
    for this yolov8 pair)."""
    from distill.cli import build_parser, parse_extra, train_args, typed_options
    from distill.config import CORE_KEYS

    default = CORE_KEYS["loss_type"][0]
    assert default == "auto"  # the case this test is about: the typed loss equals the flag's default
    preset = Path(project).parent / "preset.yaml"  # values that differ from every default
    preset.write_text("loss_type: kl\nkl_weight: 0.25\nkl_temperature: 2.0\ndistill_weight: 0.5\n")
    argv = ["--config", str(preset), "--loss", default, "--kl-weight", "0.5", "lr0=0.02"]
    parser = build_parser()
    ns, rest = parser.parse_known_args(argv)
    args = train_args(ns, parse_extra(rest), typed_options(argv, parser))
    # typed: loss (even though it is the CLI's default) and kl_weight; untyped: the preset's values stay
    assert (args["loss_type"], args["kl_weight"], args["lr0"]) == ("auto", 0.5, 0.02)
    assert (args["kl_temperature"], args["distill_weight"]) == (2.0, 0.5)
    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, Distillation=teacher_pt, name="typed", **{**args, "project": project}, **TRAIN)
    distiller = model.trainer.distiller
    assert sorted(distiller.losses) == ["cwd", "kl"]
    assert (distiller.losses["kl"].weight, distiller.losses["kl"].temperature, distiller.settings.weight) == (0.5, 2.0, 0.5)
    assert _loss_columns(Path(model.trainer.save_dir)) == {"cwd", "kl"}


def test_cli_new_losses_with_self_balancing(data_yaml, teacher_pt, project):
    """`--loss pkd+at_channel --distill-balance 0.5 --at-channel-p 3`: the flags reach training, the scales are
    calibrated in epoch 1 and recorded in the final checkpoint and args.yaml."""
    from distill.cli import main

    code = main(["--teacher", teacher_pt, "--data", data_yaml, "--loss", "pkd+at_channel", "--distill-balance", "0.5",
                 "--at-channel-p", "3", "--epochs", "2", "--imgsz", "64", "--batch", "8", "--project", project,
                 "--name", "bal", "workers=0", "plots=False"])
    assert code == 0
    run = Path(project) / "bal"
    record = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)["distill"]
    assert record["losses"] == ["pkd", "at_channel"] and record["params"]["at_channel"]["p"] == 3.0
    assert record["balance"] == 0.5 and set(record["balance_scales"]) == {"pkd", "at_channel"}
    assert all(v > 0 for v in record["balance_scales"].values())
    assert yaml.safe_load((run / "args.yaml").read_text())["distill_balance_scales"] == record["balance_scales"]
    columns = results_columns(run)
    assert _loss_columns(run) == {"pkd", "at_channel"} and columns["train/pkd_loss"][1] > 0


def test_subprocesses_are_network_guarded(tmp_path):
    """conftest's guard reaches every Python subprocess through the inherited environment, for connections,
    datagrams and name look-ups alike; local addresses stay usable."""
    log = tmp_path / "net.log"
    code = """
import socket
calls = [lambda: socket.create_connection(("example.com", 80), timeout=1),
         lambda: socket.gethostbyname("example.org"),
         lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 53)),
         lambda: socket.socket().connect_ex(("192.0.2.2", 80))]
for call in calls:
    try:
        print("RESULT", call())
    except OSError as e:
        print("BLOCKED", e)
print("LOCAL", socket.getaddrinfo(b"localhost", 80)[0][4][0])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "DISTILL_NET_LOG": str(log)})
    assert done.stdout.count("BLOCKED network disabled in tests") == 3, done.stdout + done.stderr
    assert "RESULT 111" in done.stdout and "LOCAL 127.0.0.1" in done.stdout  # connect_ex: refused
    attempts = log.read_text()
    for entry in ("resolve example.com", "resolve example.org", "sendto ('192.0.2.1', 53)", "connect ('192.0.2.2', 80)"):
        assert entry in attempts, attempts


def test_compare_report_end_to_end(data_yaml, teacher_pt, project):
    cmd = [sys.executable, str(ROOT / "train_distill.py"), "--teacher", teacher_pt, "--data", data_yaml, "--loss",
           "cwd", "--epochs", "2", "--imgsz", "64", "--batch", "8", "--project", project, "--name", "cmp",
           "--compare", "workers=0"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    run = Path(project) / "cmp"
    assert (Path(project) / "cmp-baseline" / "weights" / "best.pt").exists()
    baseline_args = yaml.safe_load((Path(project) / "cmp-baseline" / "args.yaml").read_text())
    distilled_args = yaml.safe_load((run / "args.yaml").read_text())
    for key in ("seed", "epochs", "imgsz", "batch", "mosaic", "lr0", "data"):  # same recipe
        assert baseline_args[key] == distilled_args[key]
    assert baseline_args["Distillation"] is None
    report = json.loads((run / "compare.json").read_text())
    assert set(report["cards"]) == {"teacher", "baseline student", "distilled student"}
    t, b, d = (report["cards"][k] for k in ("teacher", "baseline student", "distilled student"))
    assert t["params"] > d["params"] == b["params"] and t["gflops"] > d["gflops"] > 0
    assert report["gain_map50_95"] == pytest.approx(d["map50_95"] - b["map50_95"])
    assert len(report["curves"]["baseline student"]) == len(report["curves"]["distilled student"]) == 2
    assert (run / "compare.png").stat().st_size > 1000 and "| distilled student |" in (run / "compare.md").read_text()
    assert "| baseline student |" in done.stdout and "Gain over the same-recipe baseline" in done.stdout


@pytest.mark.parametrize("student,branches", [("yolo26n.yaml", ["one2many", "one2one"]), ("yolov8n.yaml", ["one2many"])])
def test_cli_yolo26_teacher_distils_the_branches_both_heads_have(student, branches, data_yaml, project, monkeypatch):
    """`train_distill.py --teacher yolo26s.yaml --student yolo26n.yaml --loss kl`: every step distils the end-to-end
    heads' one-to-one branch (what YOLO26 predicts with) besides the dense one; a YOLOv8 student of the same teacher
    distils the dense branch alone and trains through."""
    import distill.distiller as distiller
    from distill.cli import main

    from distill.losses.kl import KLLoss

    seen, one2one, fed, steps, real = [], [], [], [], distiller.head_pairs

    def spy(student_preds, teacher_preds):
        pairs = real(student_preds, teacher_preds)
        raw = distiller.raw_head(student_preds)
        seen.append([next(k for k in ("one2many", "one2one") if raw.get(k, raw) is s) for s, _ in pairs])
        one2one.extend(s for s, _ in pairs if s is raw.get("one2one"))
        return pairs

    real_kl, real_terms = KLLoss.__call__, distiller.Distiller.terms
    monkeypatch.setattr(distiller, "head_pairs", spy)
    monkeypatch.setattr(KLLoss, "__call__", lambda self, s, t, *a: fed.append(s) or real_kl(self, s, t, *a))
    monkeypatch.setattr(distiller.Distiller, "terms", lambda self, *a, **k: steps.append(1) or real_terms(self, *a, **k))
    said, real_info = [], distiller.LOGGER.info
    monkeypatch.setattr(distiller.LOGGER, "info", lambda msg, *a, **k: said.append(str(msg)) or real_info(msg, *a, **k))
    code = main(["--teacher", "yolo26s.yaml", "--student", student, "--loss", "kl", "--data", data_yaml, "--epochs",
                 "1", "--imgsz", "64", "--batch", "8", "--project", project, "--name", "e2e", "workers=0", "plots=False"])
    assert code == 0
    assert len(seen) == len(steps) >= 2 and all(s == branches for s in seen)  # every training step
    assert len(one2one) == (len(steps) if len(branches) == 2 else 0)
    assert all(any(s is f for f in fed) for s in one2one)  # the one-to-one pairs reach the loss
    note = "both have end-to-end heads" if len(branches) == 2 else "skips the one-to-one branch"
    assert sum(note in m for m in said) == 1  # said once, though the set-up attaches twice
    assert results_columns(Path(project) / "e2e")["train/kl_loss"][0] > 0


def test_the_default_loss_follows_the_heads(data_yaml, teacher_pt, project):
    """No --loss: a YOLO26 pair (both heads DFL-free) trains with crosskd, recorded in args.yaml and in the checkpoint's
    train_args (what resume rebuilds its args from). A student .pt is read for its head. A DFL head on either side,
    another task or explicit layers (student or teacher) keep cwd+kl."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from distill.cli import main
    from distill.config import DistillSettings
    from distill.trainer import auto_loss, student_reg_max

    code = main(["--teacher", "yolo26s.yaml", "--student", "yolo26n.yaml", "--data", data_yaml, "--epochs", "1",
                 "--imgsz", "64", "--batch", "8", "--project", project, "--name", "auto26", "workers=0", "plots=False"])
    assert code == 0
    run = Path(project) / "auto26"
    assert yaml.safe_load((run / "args.yaml").read_text())["loss_type"] == "crosskd"
    assert _loss_columns(run) == {"crosskd"} and results_columns(run)["train/crosskd_loss"][0] > 0
    ckpt = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["train_args"]["loss_type"] == "crosskd" and ckpt["distill"]["losses"] == ["crosskd"]
    assert ckpt["distill"]["weight"] == 1.0  # crosskd's weight was measured at 1: no tuned weight

    settings = DistillSettings.from_args(get_cfg(overrides={"Distillation": "t.pt"}))
    assert settings.losses == ["cwd", "kl"] and settings.weight == 4.0  # 'auto' unresolved validates as cwd+kl
    t26, t8 = (DetectionModel(f, nc=3, verbose=False) for f in ("yolo26s.yaml", "yolov8s.yaml"))
    last = str(run / "weights" / "last.pt")
    assert student_reg_max(last) == 1 and student_reg_max("yolov8n.yaml") == 16
    assert auto_loss(last, [t26], "detect", settings) == auto_loss("yolo26n.yaml", [t26, t26], "detect", settings) == "crosskd"
    assert {auto_loss("yolo26n.yaml", [t8], "detect", settings), auto_loss("yolov8n.yaml", [t26], "detect", settings),
            auto_loss("yolo26n.yaml", [t26, t8], "detect", settings), auto_loss(last, [t26], "segment", settings),
            auto_loss(last, [t26], "detect", DistillSettings.from_args({"distill_layers": "16,19,22"})),
            auto_loss(last, [t26], "detect", DistillSettings.from_args({"distill_teacher_layers": "16,19,22"}))} == {"cwd+kl"}


def test_the_demo_at_its_own_schedule_ends_with_what_it_cannot_show(project, monkeypatch, capsys):
    """No --data and no --epochs: the embedded demo at its own schedule (patched here to 1 epoch) prints the caveat that
    its short run shows the pipeline, not the gain, and where the measured gains are; given other epochs it does not."""
    import distill.demo
    from distill.cli import DEMO_CAVEAT, main

    monkeypatch.setattr(distill.demo, "DEMO_STUDENT_EPOCHS", 1)
    flags = ["--teacher", "yolov8n.yaml", "--imgsz", "64", "--fraction", "0.05", "--project", project, "workers=0"]
    assert main([*flags, "--name", "demo"]) == 0
    out = capsys.readouterr().out
    assert "Distillation finished." in out and out.rstrip().endswith(DEMO_CAVEAT.rstrip())  # its last words
    assert results_columns(Path(project) / "demo")["epoch"] == [1.0]  # the demo's own (patched) schedule
    data = yaml.safe_load((Path(project) / "demo" / "args.yaml").read_text())["data"]
    assert Path(data).resolve().is_relative_to(Path(os.environ["DISTILL_CACHE_DIR"]).resolve())  # the tests' cache
    assert main([*flags, "--epochs", "2", "--name", "longer"]) == 0
    out = capsys.readouterr().out
    assert "Distillation finished." in out and DEMO_CAVEAT not in out
