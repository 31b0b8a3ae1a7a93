"""Logit distillation from a teacher trained on other classes: scores matched by name, on real training steps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TRAIN
from distill import YOLO
from distill.classmap import match_classes
from distill.distiller import Distiller
from distill.losses.kl import KLLoss
from distill.synthetic import CLASSES


def _subset(data_yaml: str, root: Path, keep: dict[int, str]) -> str:
    """A copy of the tiny dataset with only the teacher classes in `keep` ({teacher index: dataset name}), renumbered
    in `keep`'s order; labels of other classes dropped."""
    src = Path(data_yaml).parent
    new = {t: i for i, t in enumerate(keep)}
    for split in ("train", "val"):
        shutil.copytree(src / "images" / split, root / "images" / split)
        (root / "labels" / split).mkdir(parents=True)
        for f in (src / "labels" / split).glob("*.txt"):
            rows = [line.split() for line in f.read_text().splitlines() if line.strip()]
            kept = [" ".join([str(new[int(r[0])]), *r[1:]]) for r in rows if int(r[0]) in new]
            (root / "labels" / split / f.name).write_text("\n".join(kept) + ("\n" if kept else ""))
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                                    "names": dict(enumerate(keep.values()))}))
    return str(root / "data.yaml")


def _spy_scores(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seen, real = [], KLLoss.__call__

    def spy(self, s, t, modules=None):
        seen.append((s["scores"].detach(), t["scores"].detach()))
        return real(self, s, t, modules)

    monkeypatch.setattr(KLLoss, "__call__", spy)
    return seen


def _teacher_scores(monkeypatch) -> list[torch.Tensor]:
    """The teacher's full raw class scores of every distilled step, as the distiller received them."""
    full, real = [], Distiller.terms

    def terms(self, preds, *rest):
        head = self._teacher_out[0][1]
        if head is not None:
            raw = head[1] if isinstance(head, (tuple, list)) else head
            full.append(raw.get("one2many", raw)["scores"].detach())
        return real(self, preds, *rest)

    monkeypatch.setattr(Distiller, "terms", terms)
    return full


def test_a_superset_teacher_teaches_the_dataset_classes_by_name(data_yaml, teacher_pt, project, tmp_path, monkeypatch,
                                                               caplog):
    """A 6-class teacher, a 2-class dataset (ring, circle: teacher classes 4 and 0, in that order): kl compares
    the student's 2 score rows with the teacher's rows 4 and 0, and training runs to a checkpoint."""
    data = _subset(data_yaml, tmp_path / "sub", {4: "ring", 0: "circle"})
    seen, full = _spy_scores(monkeypatch), _teacher_scores(monkeypatch)
    model = YOLO("yolov8n.yaml")
    model.train(data=data, Distillation=teacher_pt, loss_type="kl", project=project, name="sub", **TRAIN)
    assert seen and len(seen) == len(full)
    for (s, t), whole in zip(seen, full):
        assert s.shape[1] == 2 and whole.shape[1] == len(CLASSES)
        assert torch.equal(t, whole[:, [4, 0]])
    last = Path(model.trainer.save_dir) / "weights" / "last.pt"
    assert torch.load(last, weights_only=False)["distill"]["class_map"] == {0: 4, 1: 0}
    assert model.trainer.model.model[-1].nc == 2


def test_partial_overlap_distils_the_shared_classes_and_warns(data_yaml, teacher_pt, project, tmp_path, monkeypatch):
    """Dataset classes circle, comet: only circle has a teacher class; comet is named in a warning."""
    import distill.trainer as trainer_module

    warnings = []
    monkeypatch.setattr(trainer_module.LOGGER, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    data = _subset(data_yaml, tmp_path / "part", {0: "circle", 2: "comet"})
    seen, full = _spy_scores(monkeypatch), _teacher_scores(monkeypatch)
    YOLO("yolov8n.yaml").train(data=data, Distillation=teacher_pt, loss_type="kl", project=project, name="part",
                               **TRAIN)
    assert any("no class named comet" in w for w in warnings), warnings
    assert seen and len(seen) == len(full)
    for (s, t), whole in zip(seen, full):
        assert s.shape[1] == 1 and torch.equal(t, whole[:, [0]])


def test_no_shared_name_is_refused_before_training(data_yaml, teacher_pt, project, tmp_path):
    data = _subset(data_yaml, tmp_path / "none", {0: "comet", 1: "planet"})
    refusal = r"shares no class name with the dataset; the logit loss 'kl' \(of loss_type 'kl'\) needs classes"
    with pytest.raises(ValueError, match=refusal):
        YOLO("yolov8n.yaml").train(data=data, Distillation=teacher_pt, loss_type="kl", project=project, name="none",
                                   **TRAIN)
    assert not Path(project).exists() or not any(Path(project).iterdir())


def test_the_cli_does_not_score_a_teacher_of_other_classes(data_yaml, teacher_pt, tmp_path, capsys):
    """Its mAP on the dataset would score its class indices against other classes: the report says n/a instead."""
    from distill.cli import main

    data = _subset(data_yaml, tmp_path / "cli", {4: "ring", 0: "circle"})
    assert main(["--teacher", teacher_pt, "--student", "yolov8n.yaml", "--data", data, "--epochs", "1", "--imgsz", "64",
                 "--batch", "8", "--project", str(tmp_path / "runs"), "workers=0", "plots=False"]) == 0
    out = capsys.readouterr().out
    assert "teacher mAP50-95: n/a" in out and "classes differ from the dataset's" in out
    assert list((tmp_path / "runs").rglob("best.pt")) and not list((tmp_path / "runs").rglob("teacher_val"))


def test_matching_rules():
    assert match_classes(["a", "b"], ["a", "b"]) is None
    m = match_classes(["Traffic  Light", "dog", "yeti"], ["person", "dog", "traffic_light"])
    assert (m.student, m.teacher, m.missing) == ((0, 1), (2, 1), ("yeti",))
    assert m.unmatched(["person", "dog", "traffic_light"]) == ["person"]
    with pytest.raises(ValueError, match="no class names"):
        match_classes(["a"], None)
    with pytest.raises(ValueError, match="shares no class name"):
        match_classes(["a"], ["b"])
