"""Self-balancing weights (distill_balance): calibration on real steps, the held scales, resume, DDP ranks."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from conftest import ROOT, TRAIN
from distill import YOLO, DistillationTrainer
from distill.balance import Balancer
from distill.config import DistillSettings
from distill.distiller import DistillationCriterion
from distill.losses.base import FeatureLoss
from distill.losses.kl import KLLoss


def _spy(monkeypatch) -> dict[str, list]:
    """Record what the balancer observed, every raw (unweighted) term the losses returned in training steps,
    and every weighted term that entered the loss vector."""
    seen = {"observed": [], "raw": [], "terms": []}
    real_observe, real_feature, real_kl, real_call = (Balancer.observe, FeatureLoss.__call__, KLLoss.__call__,
                                                      DistillationCriterion.__call__)

    def observe(self, detection, raw):
        seen["observed"].append((float(detection), raw.double().tolist()))
        return real_observe(self, detection, raw)

    def feature(self, *a, **k):
        out = real_feature(self, *a, **k)
        seen["raw"].append((self.name, float(out.detach())))
        return out

    def kl(self, *a, **k):
        out = real_kl(self, *a, **k)
        seen["raw"].append((self.name, float(out.detach())))
        return out

    def call(self, preds, batch):
        step = self.distiller.pending
        loss, items = real_call(self, preds, batch)
        if step:
            seen["terms"].append({n: float(items[f"{n}_loss"]) for n in self.distiller.losses})
            seen.setdefault("detection", []).append(sum(float(items[k]) for k in ("box_loss", "cls_loss", "dfl_loss")))
        return loss, items

    monkeypatch.setattr(Balancer, "observe", observe)
    monkeypatch.setattr(FeatureLoss, "__call__", feature)
    monkeypatch.setattr(KLLoss, "__call__", kl)
    monkeypatch.setattr(DistillationCriterion, "__call__", call)
    return seen


def test_terms_carry_no_weight_while_calibrating_then_the_share_of_the_detection_loss(data_yaml, teacher_pt, project,
                                                                                     monkeypatch):
    seen = _spy(monkeypatch)
    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, Distillation=teacher_pt, loss_type="cwd+kl", distill_balance=0.5,
                distill_balance_steps=2, project=project, name="bal", **{**TRAIN, "epochs": 2})
    trainer = model.trainer
    scales = trainer.distiller.balancer.scales
    assert len(seen["observed"]) == 2 and len(seen["terms"]) == 4  # 2 batches per epoch, 2 epochs
    raw = [dict(seen["raw"][2 * k:2 * k + 2]) for k in range(4)]  # the losses' own values, step by step
    for step, (detection, observed) in enumerate(seen["observed"]):  # fed the per-image detection loss and raw terms
        assert detection == pytest.approx(seen["detection"][step], rel=1e-5)
        assert observed == pytest.approx([raw[step]["cwd"], raw[step]["kl"]], rel=1e-6)
    det = sum(d for d, _ in seen["observed"]) / 2
    for i, name in enumerate(["cwd", "kl"]):
        mean = sum(raw[i] for _, raw in seen["observed"]) / 2
        assert scales[name] == pytest.approx(0.5 * det / mean, rel=1e-12)
    assert all(t == {"cwd": 0.0, "kl": 0.0} for t in seen["terms"][:2])  # calibration batches: detection only
    for step in (2, 3):  # after calibration: scale x raw term (distill_weight 1, constant schedule)
        for name in ("cwd", "kl"):
            assert seen["terms"][step][name] == pytest.approx(scales[name] * raw[step][name], rel=1e-5)
            assert seen["terms"][step][name] > 0
    for f in (trainer.last, trainer.best):  # the record, and the args that resume rebuilds from
        ckpt = torch.load(f, map_location="cpu", weights_only=False)
        assert ckpt["train_args"]["distill_balance_scales"] == scales
        assert ckpt["distill"]["balance_scales"] == scales and ckpt["distill"]["balance"] == 0.5


def test_gradient_share_is_measured_at_the_distilled_maps(data_yaml, teacher_pt, project, monkeypatch):
    """distill_balance_by=gradient: the detection quantity observed on the calibration batch is the norm of the
    detection loss's gradient at the student's distilled maps, as the trainer's own backward delivers it there
    (captured by tensor hooks; the terms carry no weight on that batch, so that backward is detection alone)."""
    import distill.distiller

    seen = _spy(monkeypatch)
    grads: list[torch.Tensor] = []
    inside = []  # non-empty while the balancer's own gradient probes run: those are not the trainer's backward
    real_norm = distill.distiller.grad_norm

    def probe(*args):
        inside.append(1)
        try:
            return real_norm(*args)
        finally:
            inside.clear()

    monkeypatch.setattr(distill.distiller, "grad_norm", probe)

    def hook_maps(trainer):
        def record(module, args, output):
            if module.training and output.requires_grad:
                output.register_hook(lambda g: None if inside else grads.append(g.detach().clone()))
        for i in trainer.distiller.student_layers:
            trainer.model.model[i].register_forward_hook(record)

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_pretrain_routine_end", hook_maps)
    model.train(data=data_yaml, Distillation=teacher_pt, loss_type="cwd+kl", distill_balance=0.5,
                distill_balance_by="gradient", distill_balance_steps=1, project=project, name="grad",
                **{**TRAIN, "epochs": 2})
    (detection, raw), = seen["observed"]
    first = grads[:3]  # the first training step's backward, one gradient per distilled map
    total = float(torch.sqrt(sum(g.double().pow(2).sum() for g in first)))
    assert detection == pytest.approx(total / 8, rel=1e-4)  # the step's backward is of loss * batch size (8)
    scales = model.trainer.distiller.balancer.scales
    assert all(r > 0 for r in raw)
    assert [scales["cwd"], scales["kl"]] == pytest.approx([0.5 * detection / r for r in raw], rel=1e-9)
    record = torch.load(model.trainer.last, map_location="cpu", weights_only=False)["distill"]
    assert record["balance_by"] == "gradient" and record["balance_scales"] == scales


KILLED_RUN = r"""
import os, sys
sys.path.insert(0, {root!r})
from distill import YOLO, DistillationTrainer
model = YOLO("yolov8n.yaml")
model.add_callback("on_fit_epoch_end", lambda tr: os._exit(3) if tr.epoch == 0 else None)  # die after epoch 1
model.train(data={data!r}, Distillation={teacher!r}, loss_type="cwd+mgd", project={project!r}, name="run",
            distill_balance=0.3, distill_balance_steps=1, epochs=3, imgsz=64, batch=8, workers=0, plots=False, seed=0)
"""


def test_resume_keeps_the_calibrated_scales_bitwise(data_yaml, teacher_pt, project, monkeypatch):
    code = KILLED_RUN.format(root=str(ROOT), data=data_yaml, teacher=teacher_pt, project=project)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr[-2000:]
    last = Path(project) / "run" / "weights" / "last.pt"
    saved = torch.load(last, map_location="cpu", weights_only=False)["train_args"]["distill_balance_scales"]
    assert set(saved) == {"cwd", "mgd"} and all(v > 0 for v in saved.values())
    seen = _spy(monkeypatch)
    model = YOLO(str(last))
    model.train(resume=True)
    assert seen["observed"] == [] and len(seen["terms"]) == 4  # two resumed epochs of 2 batches, no recalibration
    assert model.trainer.distiller.balancer.scales == saved  # the same floats, bitwise
    assert all(t["cwd"] > 0 and t["mgd"] > 0 for t in seen["terms"])  # weighted from the first resumed step


def test_calibration_is_capped_at_one_epoch_and_needs_batches_left_to_distil(data_yaml, teacher_pt, project):
    """More calibration batches than an epoch has are capped at the epoch (so epoch 1's checkpoint holds the scales);
    a 1-epoch run would then have nothing left to distil: refused before the first step, no run folder left."""
    with pytest.raises(ValueError, match="calibrates over 2 batches, which leaves none of this run's 2 distilled batches"):
        YOLO("yolov8n.yaml").train(data=data_yaml, Distillation=teacher_pt, loss_type="cwd", distill_balance=0.5,
                                   distill_balance_steps=50, project=project, name="long", **{**TRAIN, "plots": True})
    assert not (Path(project) / "long").exists()


def test_given_scales_weigh_the_first_step_without_calibrating(data_yaml, teacher_pt, project, monkeypatch):
    """Another run's scales (distill_balance_scales) apply from the first training step."""
    seen = _spy(monkeypatch)
    trainer = DistillationTrainer(overrides=dict(
        model="yolov8n.yaml", data=data_yaml, Distillation=teacher_pt, loss_type="cwd+kl", distill_balance=0.5,
        distill_balance_scales={"kl": 2.0, "cwd": 0.25}, project=project, name="given", **TRAIN))
    trainer._setup_train()
    trainer.model.train()
    trainer.model(trainer.preprocess_batch(next(iter(trainer.train_loader))))
    raw = dict(seen["raw"])
    assert seen["observed"] == [] and trainer.distiller.balancer.scales == {"kl": 2.0, "cwd": 0.25}
    assert seen["terms"][0]["cwd"] == pytest.approx(0.25 * raw["cwd"], rel=1e-6)
    assert seen["terms"][0]["kl"] == pytest.approx(2.0 * raw["kl"], rel=1e-6) and raw["kl"] > 0


def test_non_finite_batches_are_left_out_and_no_detection_loss_keeps_the_weights():
    b = Balancer(1.0, 3, ["a", "b"])
    for det, raw in ((2.0, [1.0, float("nan")]), (float("inf"), [3.0, 4.0]), (4.0, [float("inf"), 8.0])):
        b.observe(torch.tensor(det), torch.tensor(raw))
    # detection (2 + 4) / 2 = 3; a: 1 + 3 over 2 batches; b: 4 + 8 over 2
    assert b.scales == pytest.approx({"a": 3.0 / 2.0, "b": 3.0 / 6.0}, rel=1e-12)
    b = Balancer(1.0, 1, ["a"], fallback={"a": 0.5})
    b.observe(torch.tensor(0.0), torch.tensor([1.0]))
    assert b.scales == {"a": 0.5}


@pytest.mark.parametrize("args,match", [
    ({"distill_balance": -0.1}, "distill_balance must be >= 0"),
    ({"distill_balance": 0.5, "distill_balance_steps": 0}, "distill_balance_steps must be a whole number"),
    ({"distill_balance": 0.5, "distill_balance_by": "loss"}, "distill_balance_by must be one of value, gradient"),
    ({"distill_balance": 0.5, "distill_balance_scales": {"kl": 1.0, "cwd": 2.0}}, "one scale per loss in use"),
    ({"distill_balance": 0.5, "distill_balance_scales": {"kl": -1.0}}, "must be >= 0"),
])
def test_bad_balance_settings_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        DistillSettings.from_args({"loss_type": "kl", **args})


def test_settings_that_other_settings_override_are_reported():
    assert DistillSettings.from_args({"loss_type": "kl", "distill_balance_scales": {"kl": 1.0}}).ignored == [
        "distill_balance_scales is set but distill_balance is 0, so the losses' own weights apply"]
    ignored = DistillSettings.from_args({"loss_type": "cwd+kl", "distill_balance": 0.5, "kl_weight": 2.0}).ignored
    assert len(ignored) == 1 and ignored[0].startswith("kl_weight set, but distill_balance > 0")
    assert DistillSettings.from_args({"loss_type": "cwd+kl", "distill_balance": 0.5}).ignored == []


def _rank(rank: int, port: int, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    balancer = Balancer(0.5, 2, ["a", "b"])
    # each rank sees different batches: detection per image, then the raw terms
    batches = {0: [(4.0, [1.0, 10.0]), (6.0, [3.0, 30.0])], 1: [(2.0, [2.0, 5.0]), (8.0, [2.0, 15.0])]}[rank]
    for det, raw in batches:
        balancer.observe(torch.tensor(det), torch.tensor(raw))
    out.put((rank, balancer.scales))
    dist.destroy_process_group()


def test_ddp_ranks_calibrate_the_same_scales_from_all_batches():
    """Two real gloo ranks, each with its own batches: both end with the scales of the pooled means."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    det, a, b = 20.0 / 4, 8.0 / 4, 60.0 / 4  # means over the four batches of both ranks
    expected = {"a": 0.5 * det / a, "b": 0.5 * det / b}
    assert results[0] == results[1] == pytest.approx(expected, rel=1e-12)
