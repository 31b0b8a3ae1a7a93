"""Real training steps: every loss distils, connectors learn, the teacher never changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TRAIN
from distill import YOLO, DistillationTrainer
from distill.compare import results_columns
from distill.distiller import MODULES_ATTR, DistillationCriterion

LOSSES = ["cwd", "mgd", "mimic", "kl"]


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_teacher_untouched(trainer, before: dict[str, torch.Tensor]) -> None:
    teacher = trainer.distiller.teacher
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # weights and BatchNorm buffers, bitwise
        assert torch.equal(v, after[k].to(v.device)), f"teacher tensor {k} changed"
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_ids for g in trainer.optimizer.param_groups for p in g["params"])


def _results(run_dir: Path) -> list[dict[str, float]]:
    """results.csv as one dict per epoch."""
    columns = results_columns(run_dir)
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


@pytest.mark.parametrize("loss", LOSSES)
def test_optimizer_steps_lower_the_distillation_term(loss, data_yaml, teacher_pt, project):
    """Eight real optimizer steps on one batch, through the trainer's own hooks, shrink the term.
    Detection gains are zeroed so that the distillation term alone drives the steps."""
    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=data_yaml, Distillation=teacher_pt, loss_type=loss,
                       project=project, name=loss, optimizer="AdamW", lr0=0.001, warmup_epochs=0,
                       box=0.0, cls=0.0, dfl=0.0, **TRAIN)
    )
    trainer._setup_train()
    teacher_before = _snapshot(trainer.distiller.teacher)
    modules = getattr(trainer.model, MODULES_ATTR, None)
    modules_before = _snapshot(modules) if modules is not None else {}
    batch = next(iter(trainer.train_loader))
    values = []
    trainer.model.train()
    for _ in range(8):
        torch.manual_seed(0)  # same MGD mask every step: the change is the optimizer's doing
        step = trainer.preprocess_batch({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
        total, items = trainer.model(step)
        assert isinstance(trainer.model.criterion, DistillationCriterion)
        # scaled by batch size like Ultralytics' detection loss (box, cls, dfl come first)
        assert float(total[3].detach()) == pytest.approx(float(items[f"{loss}_loss"]) * step["img"].shape[0], rel=1e-5)
        values.append(float(items[f"{loss}_loss"]))
        trainer.scaler.scale(total.sum()).backward()
        trainer.optimizer_step()
    assert values[0] > 0
    assert values[-1] < values[0], values
    if modules is not None:  # connectors / generators are trained
        after = getattr(trainer.model, MODULES_ATTR).state_dict()
        assert any(not torch.equal(v, after[k]) for k, v in modules_before.items())
    _assert_teacher_untouched(trainer, teacher_before)


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_end_to_end(loss, data_yaml, teacher_pt, project):
    model = YOLO("yolov8n.yaml")
    seen = {}
    model.add_callback("on_pretrain_routine_end", lambda tr: seen.update(teacher=_snapshot(tr.distiller.teacher)))
    model.train(data=data_yaml, Distillation=teacher_pt, loss_type=loss, project=project, name=loss, **{**TRAIN, "epochs": 2})
    trainer = model.trainer
    _assert_teacher_untouched(trainer, seen["teacher"])
    rows = _results(trainer.save_dir)
    assert len(rows) == 2
    assert all(float(r[f"train/{loss}_loss"]) > 0 for r in rows)
    assert all(float(r[f"val/{loss}_loss"]) == 0 for r in rows)  # validation runs the plain EMA
    ema = trainer.ema.ema
    assert not isinstance(getattr(ema, "criterion", None), DistillationCriterion)
    assert all(not m._forward_hooks for m in ema.modules())
    assert all(not m._forward_hooks for m in trainer.model.modules())


@pytest.mark.parametrize("teacher,student", [("yolov8s.yaml", "yolov8n.yaml"), ("yolo11s.yaml", "yolov8n.yaml")])
def test_channel_mismatched_pairs_need_no_configuration(teacher, student, data_yaml, project):
    model = YOLO(student)
    model.train(data=data_yaml, Distillation=teacher, loss_type="cwd+mgd", project=project, name="pair", **TRAIN)
    trainer = model.trainer
    connectors = getattr(trainer.model, MODULES_ATTR)["connectors"]
    s_ch = [c.in_channels for c in connectors]
    t_ch = [c.out_channels for c in connectors]
    assert s_ch == [64, 128, 256] and t_ch == [128, 256, 512]
    assert float(_results(trainer.save_dir)[-1]["train/cwd_loss"]) > 0


def test_logit_loss_rejects_different_class_counts(data_yaml, project):
    from ultralytics.nn.tasks import DetectionModel

    teacher = DetectionModel("yolov8s.yaml", nc=80, verbose=False)  # 80 classes vs the data's 6
    with pytest.raises(ValueError, match="same classes"):
        YOLO("yolov8n.yaml").train(data=data_yaml, Distillation=teacher, loss_type="kl", project=project, name="nc", **TRAIN)


def test_without_teacher_it_is_plain_ultralytics(data_yaml, project):
    from ultralytics.models.yolo.detect import DetectionTrainer

    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, project=project, name="plain", **TRAIN)
    assert type(model.trainer) is DetectionTrainer
    assert not any("cwd" in k for k in _results(model.trainer.save_dir)[0])
    with pytest.raises(ValueError, match="need\\(s\\) a teacher"):
        YOLO("yolov8n.yaml").train(data=data_yaml, loss_type="cwd", project=project, name="x", **TRAIN)


def test_losses_are_fp32_under_autocast(data_yaml, teacher_pt, project):
    trainer = DistillationTrainer(
        overrides=dict(model="yolov8n.yaml", data=data_yaml, Distillation=teacher_pt, loss_type="cwd+mgd+kl",
                       project=project, name="amp", **TRAIN)
    )
    trainer._setup_train()
    trainer.model.train()
    batch = next(iter(trainer.train_loader))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = trainer.preprocess_batch(batch)
        total, items = trainer.model(step)
    assert total.dtype == torch.float32
    assert all(items[f"{n}_loss"].dtype == torch.float32 for n in ("cwd", "mgd", "kl"))
    trainer.distiller.release()


PLUGIN = """
import torch
from distill.losses import register_loss
from distill.losses.base import FeatureLoss

@register_loss("l1test")
class L1Loss(FeatureLoss):
    params = {"weight": (1.0, "loss weight"), "scale": (2.0, "multiplier")}

    def level(self, s, t, module):
        return (s - t).abs().mean() * self.scale
"""


def test_a_new_loss_is_one_file(tmp_path, data_yaml, teacher_pt, project):
    import importlib.util

    from distill.cli import build_parser
    from distill.losses import _REGISTRY

    path = tmp_path / "my_loss.py"
    path.write_text(PLUGIN)
    spec = importlib.util.spec_from_file_location("my_loss", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert "--l1test-scale" in build_parser().format_help()
    model = YOLO("yolov8n.yaml")
    try:
        model.train(data=data_yaml, Distillation=teacher_pt, loss_type="cwd+l1test", l1test_scale=3.0,
                    distill_schedule="linear", distill_final=0.25, project=project, name="plugin",
                    **{**TRAIN, "epochs": 2})
    finally:
        _REGISTRY.pop("l1test", None)  # keep the registry as other tests expect it
    rows = _results(model.trainer.save_dir)
    assert float(rows[-1]["train/l1test_loss"]) > 0
    assert model.trainer.distiller.losses["l1test"].scale == 3.0
    assert model.trainer.distiller.factor == pytest.approx(0.25)  # linear schedule reached its final ratio
