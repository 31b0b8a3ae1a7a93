"""Structured pruning into a plain Ultralytics checkpoint, and distilling the pruned student from the unpruned model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TRAIN
from distill import YOLO
from distill.compare import results_columns

pytest.importorskip("torch_pruning")

from distill.deploy.prune import main, prune_checkpoint, prune_model  # noqa: E402

# What plain Ultralytics does with a checkpoint it is asked to train: rebuild the model from the checkpoint's YAML
# and copy over the weights whose shapes fit. In a process where this package cannot be imported.
PLAIN_RETRAIN = r"""
import sys
sys.modules["distill"] = None
import torch
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionTrainer
model = YOLO(sys.argv[1])
trainer = DetectionTrainer(overrides=dict(model=sys.argv[1], data=sys.argv[2], epochs=1, imgsz=64, workers=0,
                                          plots=False, project=sys.argv[3], name="plain"))
rebuilt = trainer.get_model(cfg=model.model.yaml, weights=model.model, verbose=False)
a, b = model.model.float().state_dict(), rebuilt.state_dict()
assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights lost in the rebuild"
metrics = model.val(data=sys.argv[2], imgsz=64, batch=8, plots=False, verbose=False, project=sys.argv[3], name="val")
assert 0 <= metrics.box.map <= 1
exported = model.export(format="torchscript", imgsz=64)
trainer.train()  # plain Ultralytics training of the pruned checkpoint, one epoch: it keeps the pruned widths
trained = torch.load(trainer.last, weights_only=False)["model"]
widths = lambda m: [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
assert widths(trained) == widths(model.model), "the trained model has other widths"
print("PLAIN OK", sum(p.numel() for p in model.model.parameters()), exported)
"""


@pytest.mark.parametrize("source", ["teacher_pt", "teacher11_pt"])  # a yolov8s and a yolo11n, trained one epoch
def test_a_pruned_checkpoint_is_a_plain_ultralytics_one(source, data_yaml, tmp_path, request):
    """Half the channels of each group go (about a quarter of the parameters stay); the result loads, validates,
    exports, is rebuilt from its own YAML with every weight and trains with its pruned widths, all by plain
    Ultralytics."""
    teacher_pt = request.getfixturevalue(source)
    out = prune_checkpoint(teacher_pt, 0.5, tmp_path / "pruned.pt", imgsz=64)
    before = sum(p.numel() for p in YOLO(teacher_pt).model.parameters())
    ckpt = torch.load(out, map_location="cpu", weights_only=False)
    model = ckpt["model"].float()
    after = sum(p.numel() for p in model.parameters())
    assert 0.15 * before < after < (0.4 if source == "teacher_pt" else 0.5) * before  # yolo11's C2PSA stays whole
    head, original = model.model[-1], YOLO(teacher_pt).model.model[-1]
    assert [head.cv2[i][0].conv.in_channels * 2 for i in range(head.nl)] == [original.cv2[i][0].conv.in_channels
                                                                          for i in range(head.nl)]  # the neck halved
    assert ckpt["pruned"] == [{"from": teacher_pt, "ratio": 0.5}] and model.yaml["width_multiple"] == 1.0
    assert not any(p.requires_grad for p in model.parameters())
    done = subprocess.run([sys.executable, "-c", PLAIN_RETRAIN, str(out), data_yaml, str(tmp_path / "runs")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "PLAIN OK" in done.stdout, done.stderr[-3000:]
    assert int(done.stdout.split("PLAIN OK ")[1].split()[0]) == after
    again = prune_checkpoint(out, 0.5, tmp_path / "again.pt", imgsz=64)  # a pruned checkpoint prunes again
    assert [step["ratio"] for step in torch.load(again, weights_only=False)["pruned"]] == [0.5, 0.5]


@pytest.mark.parametrize(("yaml_file", "nc", "activation", "ratios"), [
    ("yolov8n.yaml", 80, None, (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
    ("yolov8n.yaml", 3, "nn.ReLU()", (0.3, 0.6)),  # 3 classes: the head's class width follows its input
    ("yolo11n.yaml", 80, None, (0.2, 0.5, 0.7)),  # C3k2 of bottlenecks and of C3k, C2PSA, the depthwise class branch
])
def test_every_ratio_gives_a_model_its_yaml_rebuilds(yaml_file, nc, activation, ratios):
    """Over the ratios: the derived widths follow the ones they derive from (inside C2f/C3k2, SPPF, Detect), the
    blocks' halves stay multiples of 8, the head's inputs shrink, the model shrinks with the ratio, and the rebuild
    from the written YAML (strict load, every layer's output compared inside prune_model) succeeds; the YAML's
    activation is kept."""
    from ultralytics.nn.modules import SPPF, C2f, Conv
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    cfg = yaml_model_load(yaml_file)
    if activation:
        cfg["activation"] = activation
    model = DetectionModel(cfg, nc=nc, verbose=False)
    sizes = []
    for ratio in ratios:
        pruned = prune_model(model, ratio, imgsz=64)
        sppf = next(m for m in pruned.model if isinstance(m, SPPF))
        assert sppf.cv1.conv.out_channels == sppf.cv1.conv.in_channels // 2
        blocks = [m for m in pruned.model if isinstance(m, C2f)]
        assert all(block.cv1.conv.out_channels % 16 == 0 for block in blocks), ratio  # two halves of multiples of 8
        assert all(all(m.cv2.conv.out_channels == block.c for m in block.m) if not hasattr(block.m[0], "cv3") else
                   all(m.cv3.conv.out_channels == block.c for m in block.m) for block in blocks)  # as wide as the half
        head, before = pruned.model[-1], model.model[-1]
        last = lambda stage: (stage[-1] if isinstance(stage, torch.nn.Sequential) else stage).conv  # noqa: E731
        ch0 = head.cv2[0][0].conv.in_channels
        # the head's first input shrinks, except where its group would keep fewer than 8 (left whole, at 0.9)
        assert (ch0 < before.cv2[0][0].conv.in_channels) if ratio <= 0.8 else (ch0 <= before.cv2[0][0].conv.in_channels)
        assert last(head.cv3[0][0]).out_channels == max(ch0, min(nc, 100))
        assert head.cv2[0][0].conv.out_channels == max(16, ch0 // 4, 64)
        if activation:
            assert all(isinstance(m.act, torch.nn.ReLU) for m in pruned.modules() if isinstance(m, Conv))
        sizes.append(sum(p.numel() for p in pruned.parameters()))
    assert sizes[:7] == sorted(sizes[:7], reverse=True) and sizes[0] < sum(p.numel() for p in model.parameters())
    assert len(sizes) < 3 or sizes[-1] < 0.6 * sizes[0]


def test_distil_the_pruned_student_from_the_unpruned_model(teacher_pt, data_yaml, project, tmp_path):
    """The pruned yolov8s trains as a student of the unpruned one: its own widths are kept (not rebuilt from the
    original YAML), connectors map them to the teacher's, and the distillation terms train."""
    out = prune_checkpoint(teacher_pt, 0.5, tmp_path / "pruned.pt", imgsz=64)
    pruned_widths = [m.out_channels for m in torch.load(out, weights_only=False)["model"].modules()
                     if isinstance(m, torch.nn.Conv2d)]
    student = YOLO(str(out))
    student.train(data=data_yaml, Distillation=teacher_pt, loss_type="cwd+kl", project=project, name="pruned", **TRAIN)
    trained = torch.load(Path(project) / "pruned" / "weights" / "last.pt", weights_only=False)["model"]
    assert [m.out_channels for m in trained.modules() if isinstance(m, torch.nn.Conv2d)] == pruned_widths
    columns = results_columns(Path(project) / "pruned")
    assert columns["train/cwd_loss"][0] > 0 and columns["train/kl_loss"][0] > 0


def test_models_the_pruner_cannot_write_back_are_refused(tmp_path, capsys):
    from ultralytics.nn.tasks import DetectionModel

    with pytest.raises(ValueError, match="Detect heads without an end-to-end"):
        prune_model(DetectionModel("yolo26n.yaml", nc=3, verbose=False), 0.5)
    from ultralytics.nn.tasks import yaml_model_load

    dense = {**yaml_model_load("yolo26n.yaml"), "end2end": False}  # YOLO26 without the one-to-one branch
    with pytest.raises(ValueError, match="not the attention form"):
        prune_model(DetectionModel(dense, nc=3, verbose=False), 0.5)
    with pytest.raises(ValueError, match="this one has Segment"):
        prune_model(DetectionModel("yolov8n-seg.yaml", nc=3, verbose=False), 0.5)
    for ratio in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="--ratio must be between 0 and 1"):
            prune_model(DetectionModel("yolov8n.yaml", nc=3, verbose=False), ratio)
    with pytest.raises(ValueError, match="must be a multiple of the model's largest stride"):
        prune_model(DetectionModel("yolov8n.yaml", nc=3, verbose=False), 0.5, imgsz=100)
    assert main([str(tmp_path / "missing.pt"), "--ratio", "0.5"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_command_reports_sizes(teacher_pt, tmp_path, capsys):
    assert main([teacher_pt, "--ratio", "0.5", "--imgsz", "64", "--out", str(tmp_path / "p.pt")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'p.pt'}:" in out and "M parameters" in out and (tmp_path / "p.pt").is_file()
