"""Synthetic detection datasets: images of coloured shapes with boxes and polygon masks, in COCO or LVIS v1 format.

Each class is a distinct (shape, colour) pair, so a tiny detector can learn them in minutes. Objects have several
sizes (COCO small / medium / large at the default 128 x 128 image size) and objects of different classes may
overlap: a later object occludes an earlier one, and the earlier one's mask and box are those of its visible part,
as in COCO. Objects of one class never touch, so each instance is visibly separate.

Layout written by ``make_synthetic_dataset(root, split, ...)``::

    root/<split>/000001.png ...            images
    root/annotations/<fmt>_<split>.json    COCO: file_name relative to root/<split>
                                           LVIS: coco_url ".../<split>/<file>", images found under root

In LVIS format the classes are split into frequent / common / rare groups (``frequency`` "f"/"c"/"r") that are
sampled with decreasing probability, so rare classes appear in few images and APr is defined. Every class appears in
at least one image of every split that has enough images.

The class mix differs between the formats (uniform for COCO, skewed for LVIS), so give each format its own root.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from eva_transfer.checkpoint_io import write_bytes_atomic

SHAPES = ("rectangle", "ellipse", "triangle", "diamond", "hexagon", "cross", "star", "trapezoid")
# well separated hues (RGB); classes beyond len(SHAPES) * len(COLOURS) reuse pairs
COLOURS = {
    "red": (230, 25, 75),
    "green": (60, 180, 75),
    "yellow": (255, 225, 25),
    "blue": (0, 130, 200),
    "orange": (245, 130, 48),
    "purple": (145, 30, 180),
    "cyan": (70, 240, 240),
    "magenta": (240, 50, 230),
    "white": (250, 250, 250),
    "olive": (128, 128, 0),
}
# relative sampling weight of a class in each LVIS frequency group
GROUP_WEIGHT = {"f": 1.0, "c": 0.3, "r": 0.06}


def class_style(index: int) -> tuple[str, str]:
    """(shape, colour name) of class ``index``; both change from one class to the next (40 distinct pairs)."""
    return SHAPES[index % len(SHAPES)], list(COLOURS)[index % len(COLOURS)]


def class_names(num_classes: int) -> list[str]:
    """Class names such as "ellipse_green"; classes past the 40 distinct pairs get their index appended."""
    lcm = len(SHAPES) * len(COLOURS) // math.gcd(len(SHAPES), len(COLOURS))
    names = []
    for k in range(num_classes):
        shape, colour = class_style(k)
        names.append(f"{colour}_{shape}" if k < lcm else f"{colour}_{shape}_{k // lcm}")
    return names


def frequency_groups(num_classes: int) -> list[str]:
    """LVIS frequency tag of each class: the first half frequent, then a quarter common, the last quarter rare."""
    num_rare = max(1, num_classes // 4) if num_classes >= 3 else 0
    num_common = max(1, num_classes // 4) if num_classes >= 2 else 0
    num_freq = num_classes - num_rare - num_common
    return ["f"] * num_freq + ["c"] * num_common + ["r"] * num_rare


def shape_polygon(shape: str, cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    """Vertices (K, 2) in pixels (x, y) of ``shape`` centred at (cx, cy) with extent (w, h), rotated by ``angle``."""
    if shape == "rectangle":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif shape == "ellipse":
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape == "triangle":
        pts = [(0, -1), (1, 1), (-1, 1)]
    elif shape == "diamond":
        pts = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    elif shape == "hexagon":
        t = np.arange(6) * math.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape == "cross":
        a = 0.35
        pts = [
            (-a, -1),
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
        ]
    elif shape == "star":
        t = np.arange(10) * math.pi / 5 - math.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    elif shape == "trapezoid":
        pts = [(-0.5, -1), (0.5, -1), (1, 1), (-1, 1)]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    pts = np.asarray(pts, dtype=np.float64) * np.array([w / 2, h / 2])
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]])
    return pts + np.array([cx, cy])


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons [[x0, y0, x1, y1, ...], ...] of the outer contours of a binary (H, W) mask.

    Coordinates are pixel-corner based (a pixel (x, y) spans [x, x+1]), which is what COCO's rasteriser expects.
    """
    up = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for c in contours:
        c = c.reshape(-1, 2).astype(np.float64)
        if len(c) < 3:
            continue
        # contour points of the 2x mask lie on pixel centres; map them to the corners of the original pixels
        c = (c + 0.5) / 2.0
        polygons.append([round(float(v), 2) for v in c.reshape(-1)])
    return polygons


def _fill(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Binary (H, W) mask of a polygon (K, 2) given in pixel coordinates."""
    m = np.zeros((height, width), np.uint8)
    cv2.fillPoly(m, [np.round(poly * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
    return m.astype(bool)


def _visible_masks(full_masks: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each mask when they are painted in order (later ones on top)."""
    visible = [m.copy() for m in full_masks]
    for i in range(len(visible)):
        for later in full_masks[i + 1 :]:
            visible[i] &= ~later
    return visible


def _draw_image(
    rng: np.random.Generator, height: int, width: int, classes: list[int], masks: list[np.ndarray]
):
    """RGB (H, W, 3) uint8 image: a noisy background with each class's colour painted over its mask, in order."""
    image = np.empty((height, width, 3), np.float32)
    image[:] = rng.integers(20, 90, size=3)
    image += rng.normal(0, 6, size=image.shape)
    for cls, m in zip(classes, masks):
        image[m] = np.asarray(COLOURS[class_style(cls)[1]], np.float32) + rng.normal(0, 4, size=3)
    return np.clip(image, 0, 255).astype(np.uint8)


@dataclass
class _Spec:
    """The settings of one :func:`make_synthetic_dataset` call and where its files go."""

    root: Path
    split: str
    num_images: int
    height: int
    width: int
    fmt: str
    num_classes: int
    objects_per_image: tuple[int, int]
    size_range: tuple[float, float]
    image_format: str
    min_visible: float
    groups: list[str] = field(default_factory=list)  # LVIS frequency tag of each class
    weights: np.ndarray = None  # sampling probability of each class

    @property
    def image_dir(self) -> Path:
        return self.root / self.split

    @property
    def json_path(self) -> Path:
        return self.root / "annotations" / f"{self.fmt}_{self.split}.json"


def make_synthetic_dataset(
    root: str | Path,
    split: str,
    num_images: int,
    image_size: Sequence[int] = (128, 128),
    fmt: str = "coco",
    seed: int = 0,
    num_classes: int = 6,
    objects_per_image: tuple[int, int] = (2, 5),
    size_range: tuple[float, float] = (0.12, 0.8),
    image_format: str = "png",
    min_visible: float = 0.5,
) -> Path:
    """Writes ``num_images`` images of coloured shapes and their annotations; returns the annotation json path.

    Args:
        root: dataset folder; images go to ``root/<split>/``, annotations to ``root/annotations/``.
        split: split name, e.g. "train" or "val" (also the image sub-folder).
        image_size: (H, W) in pixels.
        fmt: "coco" (COCO instances json) or "lvis" (LVIS v1 json: frequency tags, image/instance counts,
            synonyms, per-image ``neg_category_ids`` / ``not_exhaustive_category_ids``, ``coco_url``).
        seed: random seed; the same arguments give the same files.
        num_classes: number of classes (category ids 1..num_classes).
        objects_per_image: inclusive range of objects drawn per image.
        size_range: object extent range as a fraction of the shorter image side.
        image_format: "png" (lossless) or "jpg".
        min_visible: an object occluded to below this fraction of its area is not placed.
    """
    if fmt not in ("coco", "lvis"):
        raise ValueError(f"fmt must be 'coco' or 'lvis', got {fmt!r}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if num_images < 1 or num_classes < 1:
        raise ValueError(f"num_images and num_classes must be >= 1, got {num_images} and {num_classes}")
    spec = _Spec(
        Path(root), split, num_images, int(image_size[0]), int(image_size[1]), fmt, num_classes,
        objects_per_image, size_range, image_format, min_visible,
    )  # fmt: skip
    spec.image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    spec.groups = frequency_groups(num_classes)
    weights = np.array([GROUP_WEIGHT[g] for g in spec.groups]) if fmt == "lvis" else np.ones(num_classes)
    spec.weights = weights / weights.sum()

    images, annotations = [], []
    for i in range(num_images):
        record, objects = _write_image(rng, spec, i)
        images.append(record)
        annotations += _annotations(objects, record["id"], spec.fmt, first_id=len(annotations) + 1)
    dataset = {
        "info": {
            "description": f"eva-transfer synthetic shapes ({fmt}, {split})",
            "version": "1.0",
            "year": 2026,
        },
        "licenses": [{"id": 1, "name": "CC0", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": _categories(spec, annotations),
    }
    write_bytes_atomic(json.dumps(dataset).encode(), spec.json_path)
    return spec.json_path


def _write_image(rng: np.random.Generator, spec: _Spec, i: int) -> tuple[dict, list[tuple[int, np.ndarray]]]:
    """Draws and saves image ``i``; returns its image record and its objects as (class index, visible mask)."""
    image_id = i + 1
    count = int(rng.integers(spec.objects_per_image[0], spec.objects_per_image[1] + 1))
    classes = list(rng.choice(spec.num_classes, size=count, p=spec.weights))
    if i < spec.num_classes and spec.num_images >= spec.num_classes:
        classes[0] = i  # every class appears at least once per split
    placed: list[int] = []
    full_masks: list[np.ndarray] = []
    for cls in classes:
        mask = _place_object(rng, spec, int(cls), placed, full_masks)
        if mask is not None:
            placed.append(int(cls))
            full_masks.append(mask)
    masks = _visible_masks(full_masks)
    image = _draw_image(rng, spec.height, spec.width, placed, masks)
    file_name = f"{image_id:06d}.{spec.image_format}"
    Image.fromarray(image).save(
        spec.image_dir / file_name, **({"quality": 95} if spec.image_format == "jpg" else {})
    )
    return _image_record(rng, spec, image_id, file_name, placed), list(zip(placed, masks))


def _place_object(
    rng: np.random.Generator, spec: _Spec, cls: int, placed: list[int], full_masks: list[np.ndarray]
) -> np.ndarray | None:
    """The full mask of an object of class ``cls`` that touches no object of its class and leaves every object at
    least ``min_visible`` visible; None after 20 tries."""
    short = min(spec.height, spec.width)
    lo, hi = spec.size_range
    for _ in range(20):
        # log-uniform extent, so small, medium and large objects all occur
        side = short * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        aspect = math.exp(rng.uniform(-0.4, 0.4))
        w, h = side * aspect, side / aspect
        cx = rng.uniform(w / 2, spec.width - w / 2) if w < spec.width else spec.width / 2
        cy = rng.uniform(h / 2, spec.height - h / 2) if h < spec.height else spec.height / 2
        polygon = shape_polygon(class_style(cls)[0], cx, cy, w, h, rng.uniform(-0.3, 0.3))
        mask = _fill(polygon, spec.height, spec.width)
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        if any(c == cls and (grown & m).any() for c, m in zip(placed, full_masks)):
            continue  # touching objects of one class would read as one instance
        trial = full_masks + [mask]
        if mask.any() and all(
            v.sum() >= spec.min_visible * f.sum() for v, f in zip(_visible_masks(trial), trial)
        ):
            return mask
    return None


def _image_record(
    rng: np.random.Generator, spec: _Spec, image_id: int, file_name: str, placed: list[int]
) -> dict:
    """The image entry: COCO ``file_name``; LVIS ``coco_url`` and the negative / not-exhaustive category lists."""
    present = sorted({c + 1 for c in placed})
    record = {"id": image_id, "height": spec.height, "width": spec.width, "license": 1}
    if spec.fmt == "coco":
        record["file_name"] = file_name
        return record
    record["coco_url"] = f"http://images.cocodataset.org/{spec.split}/{file_name}"
    record["flickr_url"] = record["coco_url"]
    record["date_captured"] = "2026-01-01 00:00:00"
    absent = [c for c in range(1, spec.num_classes + 1) if c not in present]
    k = min(len(absent), int(rng.integers(0, 4)))
    record["neg_category_ids"] = (
        sorted(int(c) for c in rng.choice(absent, size=k, replace=False)) if k else []
    )
    record["not_exhaustive_category_ids"] = (
        [int(rng.choice(present))] if present and rng.random() < 0.1 else []
    )
    return record


def _annotations(objects: list[tuple[int, np.ndarray]], image_id: int, fmt: str, first_id: int) -> list[dict]:
    """One annotation per object with a visible polygon: polygons, area and box of its visible mask."""
    annotations = []
    for cls, mask in objects:
        polygons = mask_to_polygons(mask)
        if not polygons:
            continue
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        ann = {
            "id": first_id + len(annotations),
            "image_id": image_id,
            "category_id": cls + 1,
            "segmentation": polygons,
            "area": float(mask.sum()),
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        }
        if fmt == "coco":
            ann["iscrowd"] = 0
        annotations.append(ann)
    return annotations


def _categories(spec: _Spec, annotations: list[dict]) -> list[dict]:
    """The category entries; LVIS ones with synonyms, synset, frequency, image and instance counts, definition."""
    names = class_names(spec.num_classes)
    categories = []
    for k in range(spec.num_classes):
        cat = {"id": k + 1, "name": names[k], "supercategory": class_style(k)[0]}
        if spec.fmt == "lvis":
            img_ids = {a["image_id"] for a in annotations if a["category_id"] == k + 1}
            cat.update(
                synonyms=[names[k]],
                synset=f"{names[k]}.n.01",
                frequency=spec.groups[k],
                image_count=len(img_ids),
                instance_count=sum(a["category_id"] == k + 1 for a in annotations),
                **{"def": f"a {class_style(k)[0]} of colour {class_style(k)[1]}"},
            )
        categories.append(cat)
    return categories
