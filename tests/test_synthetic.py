"""The embedded synthetic dataset: deterministic, varied, cached, atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.synthetic import CLASSES, SyntheticSpec, render_image, synthetic_dataset


def _labels(data_yaml: Path, split: str) -> list[np.ndarray]:
    files = sorted((data_yaml.parent / "labels" / split).glob("*.txt"))
    return [np.loadtxt(f, ndmin=2) for f in files]


def _rows(data_yaml: Path, split: str) -> list[list[np.ndarray]]:
    """Per image, one array per label line (segment lines have as many numbers as their polygon needs)."""
    files = sorted((data_yaml.parent / "labels" / split).glob("*.txt"))
    return [[np.array(line.split(), dtype=float) for line in f.read_text().splitlines()] for f in files]


def test_deterministic_by_seed():
    spec = SyntheticSpec(imgsz=96)
    a, la = render_image(spec, np.random.default_rng([3, 7]))
    b, lb = render_image(spec, np.random.default_rng([3, 7]))
    c, _ = render_image(spec, np.random.default_rng([4, 7]))
    assert np.array_equal(a, b) and la == lb
    assert not np.array_equal(a, c)


def test_dataset_layout_classes_scales_overlap(tmp_path):
    spec = SyntheticSpec(n_train=40, n_val=10, imgsz=128, seed=5)
    data = synthetic_dataset(spec, root=tmp_path)
    text = data.read_text()
    assert f"path: {data.parent.resolve()}" in text and "train: images/train" in text and "val: images/val" in text
    assert len(list((data.parent / "images" / "train").glob("*.jpg"))) == 40
    assert len(list((data.parent / "images" / "val").glob("*.jpg"))) == 10
    labels = np.concatenate([l for l in _labels(data, "train") if l.size])
    assert set(labels[:, 0].astype(int)) == set(range(len(CLASSES)))
    assert ((labels[:, 1:] >= 0) & (labels[:, 1:] <= 1)).all()
    side = np.maximum(labels[:, 3], labels[:, 4]) * spec.imgsz
    assert (side < 10).sum() > 10 and (side > 0.3 * spec.imgsz).sum() > 5  # small and large objects
    overlapping = 0
    for lab in _labels(data, "train"):
        boxes = np.c_[lab[:, 1] - lab[:, 3] / 2, lab[:, 2] - lab[:, 4] / 2, lab[:, 1] + lab[:, 3] / 2, lab[:, 2] + lab[:, 4] / 2]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                ix = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                iy = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                overlapping += ix > 0 and iy > 0
    assert overlapping > 5


def test_generated_once_and_cached(tmp_path):
    spec = SyntheticSpec(n_train=4, n_val=2, imgsz=64)
    first = synthetic_dataset(spec, root=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert synthetic_dataset(spec, root=tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.parent.name]  # no temp folders left behind


def test_detection_folders_keep_their_names():
    """Adding tasks did not rename the detection datasets (and with them every cached teacher trained on them)."""
    assert SyntheticSpec(n_train=256, n_val=64, imgsz=160, seed=0).key == "c148ec2f0c"  # the demo's, since v1
    assert len({SyntheticSpec(task=t).key for t in ("detect", "segment", "pose", "obb")}) == 4


def test_every_task_labels_the_same_images_and_ultralytics_loads_them(tmp_path):
    """segment/pose/obb sets share the detection set's images; their labels agree with its boxes (polygon extent,
    extreme-point keypoints on the box edges, rotated rectangle around the box), and Ultralytics' loader reads every
    instance of each (none dropped as corrupt)."""
    from dataclasses import replace

    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    spec = SyntheticSpec(n_train=12, n_val=4, imgsz=96, seed=3)
    paths = {t: synthetic_dataset(replace(spec, task=t), root=tmp_path) for t in ("detect", "segment", "pose", "obb")}
    images = {t: [f.read_bytes() for f in sorted((p.parent / "images" / "train").glob("*.jpg"))] for t, p in paths.items()}
    assert all(images[t] == images["detect"] for t in images) and len(images["detect"]) == 12
    boxes = _labels(paths["detect"], "train")
    total, rectangles = sum(len(b) for b in boxes), 0
    for box, poly, pose, obb in zip(boxes, *(_rows(paths[t], "train") for t in ("segment", "pose", "obb"))):
        assert len(box) == len(poly) == len(pose) == len(obb)
        for b, s, k, o in zip(box, poly, pose, obb):
            x1, y1, x2, y2 = b[1] - b[3] / 2, b[2] - b[4] / 2, b[1] + b[3] / 2, b[2] + b[4] / 2
            xy = s[1:].reshape(-1, 2)
            assert b[0] == s[0] == k[0] == o[0]
            assert np.allclose([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()], [x1, y1, x2, y2], atol=2e-6)
            assert np.allclose(k[1:5], b[1:5])
            kp = k[5:].reshape(4, 3)
            seen = kp[:, 2] == 2  # leftmost, topmost, rightmost, bottommost: on the box's left, top, right, bottom edge
            assert np.allclose(np.array([kp[0, 0], kp[1, 1], kp[2, 0], kp[3, 1]])[seen], np.array([x1, y1, x2, y2])[seen], atol=2e-6)
            corners = o[1:].reshape(4, 2)  # the rotated rectangle encloses the box's outline (up to clipping)
            assert corners[:, 0].min() <= x1 + 1e-3 and corners[:, 0].max() >= x2 - 1e-3
            assert corners[:, 1].min() <= y1 + 1e-3 and corners[:, 1].max() >= y2 - 1e-3
            if (corners > 1e-6).all() and (corners < 95 / 96 - 1e-6).all():  # unclipped: a minimum-area rectangle
                area = 0.5 * abs(np.dot(corners[:, 0], np.roll(corners[:, 1], 1)) - np.dot(corners[:, 1], np.roll(corners[:, 0], 1)))
                assert area <= (x2 - x1) * (y2 - y1) + 1e-5
                sides = np.linalg.norm(corners - np.roll(corners, 1, 0), axis=1)
                assert np.allclose(sides[0], sides[2], atol=1e-5) and np.allclose(sides[1], sides[3], atol=1e-5)
                rectangles += 1
    assert rectangles > 10
    assert "kpt_shape: [4, 3]" in paths["pose"].read_text() and "flip_idx: [2, 1, 0, 3]" in paths["pose"].read_text()
    for task in ("segment", "pose", "obb"):
        data = check_det_dataset(str(paths[task]))
        dataset = YOLODataset(img_path=data["train"], data=data, task=task, imgsz=96, augment=False)
        assert sum(len(lb["cls"]) for lb in dataset.labels) == total
        key = {"segment": "segments", "pose": "keypoints", "obb": "segments"}[task]
        assert all(len(lb[key]) == len(lb["cls"]) for lb in dataset.labels)
