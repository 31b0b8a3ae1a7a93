"""A synthetic dataset for tests and the default demo: shapes on cluttered backgrounds.

YOLO format, deterministic by seed, six classes, objects from a few pixels to half the image,
overlapping and partly occluded, with unlabeled clutter (lines, blobs, noise). Generated once into a
cache folder (atomically: a folder is either complete or absent) and reused.

One set of images serves every task (the same seed draws the same pictures); only the labels differ:
  detect   boxes
  segment  the shape's outline as a polygon (a ring's outer circle)
  pose     a box plus 4 keypoints, the outline's extreme points (leftmost, topmost, rightmost, bottommost)
  obb      the outline's minimum-area rotated rectangle, as 4 corners
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from distill._offline import CACHE_DIR

CLASSES = ("circle", "square", "triangle", "cross", "ring", "diamond")
TASKS = ("detect", "segment", "pose", "obb")
KEYPOINTS = ("leftmost", "topmost", "rightmost", "bottommost")
FLIP_IDX = (2, 1, 0, 3)  # a left-right flip swaps leftmost and rightmost


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Sizes in pixels."""

    n_train: int = 256
    n_val: int = 64
    imgsz: int = 160
    seed: int = 0
    min_objects: int = 2
    max_objects: int = 10
    min_size: int = 5
    max_size_frac: float = 0.5
    task: str = "detect"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"synthetic task must be one of {', '.join(TASKS)}, got {self.task!r}.")

    @property
    def key(self) -> str:
        fields = asdict(self)
        if self.task == "detect":  # detection folders keep the names they had before tasks existed
            del fields["task"]
        if self.task == "pose":  # labels v2: a keypoint is visible only inside the box's clip range
            fields["labels"] = 2
        blob = json.dumps({**fields, "classes": CLASSES, "v": 1}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def synthetic_dataset(spec: SyntheticSpec = SyntheticSpec(), root: str | Path | None = None) -> Path:
    """Path of `data.yaml` for `spec`, generating the dataset under `root` (default: the cache) if needed."""
    root = Path(root) if root is not None else CACHE_DIR / "synthetic"
    folder = root / f"shapes-{spec.key}" if spec.task == "detect" else root / f"shapes-{spec.task}-{spec.key}"
    data_yaml = folder / "data.yaml"
    if data_yaml.exists():
        return data_yaml
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".shapes-", dir=root))
    try:
        for split, count, offset in (("train", spec.n_train, 0), ("val", spec.n_val, 1_000_000)):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            for i in range(count):
                image, objects = render_objects(spec, np.random.default_rng([spec.seed, offset + i]))
                cv2.imwrite(str(tmp / "images" / split / f"{i:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
                lines = [label_line(spec.task, cls, outline, spec.imgsz) for cls, outline in objects]
                (tmp / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
        (tmp / "data.yaml").write_text(
            f"# yolo-distill synthetic shapes, spec {json.dumps(asdict(spec))}\n"
            f"path: {folder.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
            + (f"kpt_shape: [{len(KEYPOINTS)}, 3]\nflip_idx: {list(FLIP_IDX)}\n" if spec.task == "pose" else "")
        )
        try:
            os.replace(tmp, folder)  # atomic publish; a concurrent generator may have won the race
        except OSError:
            if not data_yaml.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data_yaml


def render_image(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple]]:
    """One (H, W, 3) uint8 BGR image and its box labels [(cls, xc, yc, w, h) normalised]."""
    image, objects = render_objects(spec, rng)
    return image, [(cls, *_box(outline, spec.imgsz)) for cls, outline in objects]


def render_objects(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One (H, W, 3) uint8 BGR image and its objects [(cls, outline (N, 2) in pixels, unclipped)]."""
    s = spec.imgsz
    image = _background(s, rng)
    boxes: list[tuple[float, float, float, float]] = []
    objects = []
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        for _attempt in range(10):
            size = math.exp(rng.uniform(math.log(spec.min_size), math.log(spec.max_size_frac * s)))
            cx, cy = rng.uniform(0.05 * s, 0.95 * s, size=2)
            cls = int(rng.integers(len(CLASSES)))
            points = _shape_points(cls, cx, cy, size, rng.uniform(0, 2 * math.pi))
            x1, y1 = np.clip(points.min(0), 0, s - 1)
            x2, y2 = np.clip(points.max(0), 0, s - 1)
            if x2 - x1 < 3 or y2 - y1 < 3 or any(_iou((x1, y1, x2, y2), b) > 0.5 for b in boxes):
                continue
            _draw(image, cls, points, cx, cy, size, _contrasting_colour(image, cx, cy, rng))
            boxes.append((x1, y1, x2, y2))
            objects.append((cls, points))
            break
    _clutter(image, rng, foreground=True)
    noise = rng.normal(0, 8, image.shape)
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8), objects


def _box(outline: np.ndarray, s: int) -> tuple[float, float, float, float]:
    """(xc, yc, w, h) normalised of the outline's box, clipped to the image."""
    x1, y1 = np.clip(outline.min(0), 0, s - 1)
    x2, y2 = np.clip(outline.max(0), 0, s - 1)
    return (x1 + x2) / 2 / s, (y1 + y2) / 2 / s, (x2 - x1) / s, (y2 - y1) / s


def extreme_points(outline: np.ndarray) -> np.ndarray:
    """(4, 2) pixels: the outline's leftmost, topmost, rightmost and bottommost points (KEYPOINTS order)."""
    return outline[[outline[:, 0].argmin(), outline[:, 1].argmin(), outline[:, 0].argmax(), outline[:, 1].argmax()]]


def label_line(task: str, cls: int, outline: np.ndarray, s: int) -> str:
    """One YOLO label line for `task` (normalised coordinates, kept inside the image)."""
    box = " ".join(f"{v:.6f}" for v in _box(outline, s))
    if task == "segment":
        xy = np.clip(outline, 0, s - 1) / s
        return f"{cls} " + " ".join(f"{v:.6f}" for v in xy.reshape(-1))
    if task == "pose":  # visibility 2 (labelled, visible) inside the box's clip range, 0 (absent) outside
        kpts = [f"{x / s:.6f} {y / s:.6f} 2" if 0 <= x <= s - 1 and 0 <= y <= s - 1 else "0 0 0"
                for x, y in extreme_points(outline)]
        return f"{cls} {box} " + " ".join(kpts)
    if task == "obb":  # clipped corners: Ultralytics fits the rotated rectangle again when it loads them
        corners = np.clip(cv2.boxPoints(cv2.minAreaRect(outline.astype(np.float32))), 0, s - 1) / s
        return f"{cls} " + " ".join(f"{v:.6f}" for v in corners.reshape(-1))
    return f"{cls} {box}"


def _background(s: int, rng: np.random.Generator) -> np.ndarray:
    a, b = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0, 1, s)[None, :, None]
    grad = a[None, None] * (1 - t) + b[None, None] * t
    image = np.ascontiguousarray(np.broadcast_to(grad, (s, s, 3)).astype(np.uint8))
    if rng.random() < 0.5:
        image = np.ascontiguousarray(np.rot90(image))
    _clutter(image, rng, foreground=False)
    return image


def _clutter(image: np.ndarray, rng: np.random.Generator, foreground: bool) -> None:
    """Unlabeled distractors: lines and soft blobs (fewer and thinner over the objects)."""
    s = image.shape[0]
    for _ in range(int(rng.integers(0, 3 if foreground else 8))):
        p1, p2 = rng.integers(0, s, size=(2, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.line(image, tuple(int(v) for v in p1), tuple(int(v) for v in p2), colour, 1, cv2.LINE_AA)
    if not foreground:
        for _ in range(int(rng.integers(2, 7))):
            centre = tuple(int(v) for v in rng.integers(0, s, 2))
            axes = tuple(int(v) for v in rng.integers(3, max(4, s // 5), 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        image[:] = cv2.GaussianBlur(image, (0, 0), 2.0)


def _shape_points(cls: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Outline points (N, 2) in pixels, used for the box and (for polygons) for drawing."""
    r = size / 2
    name = CLASSES[cls]
    if name in ("circle", "ring"):
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if name == "square":
        t = angle + np.arange(4) * math.pi / 2 + math.pi / 4
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if name == "triangle":
        t = angle + np.arange(3) * 2 * math.pi / 3
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if name == "diamond":
        t = angle + np.arange(4) * math.pi / 2
        radii = np.array([r, 0.55 * r, r, 0.55 * r])
        return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], 1)
    # cross: a 12-point plus sign with arm half-width r/3
    w = r / 3
    base = np.array([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)])
    c, s = math.cos(angle), math.sin(angle)
    return base @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])


def _draw(image: np.ndarray, cls: int, points: np.ndarray, cx: float, cy: float, size: float, colour) -> None:
    name = CLASSES[cls]
    if name == "circle":
        cv2.circle(image, (int(round(cx)), int(round(cy))), max(1, int(round(size / 2))), colour, -1, cv2.LINE_AA)
    elif name == "ring":
        thickness = max(1, int(round(size / 8)))
        radius = max(1, int(round(size / 2 - thickness / 2)))
        cv2.circle(image, (int(round(cx)), int(round(cy))), radius, colour, thickness, cv2.LINE_AA)
    else:
        cv2.fillPoly(image, [np.round(points).astype(np.int32)], colour, cv2.LINE_AA)


def _contrasting_colour(image: np.ndarray, cx: float, cy: float, rng: np.random.Generator) -> tuple[int, int, int]:
    s = image.shape[0]
    local = image[int(np.clip(cy, 0, s - 1)), int(np.clip(cx, 0, s - 1))].astype(int)
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - local).sum() > 120:
            break
    return tuple(int(c) for c in colour)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
