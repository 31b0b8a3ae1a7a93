"""The embedded synthetic dataset: deterministic, varied, cached, atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.synthetic import CLASSES, SyntheticSpec, render_image, synthetic_dataset


def _labels(data_yaml: Path, split: str) -> list[np.ndarray]:
    files = sorted((data_yaml.parent / "labels" / split).glob("*.txt"))
    return [np.loadtxt(f, ndmin=2) for f in files]


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
