"""Property-based fuzzing of the dataset loaders with malformed COCO / LVIS annotation files and ADE-layout folders.

Rules, for every generated case (each under its own time limit):

- the only exceptions are the documented ones (``DatasetError`` for annotation files, ``DatasetFileError`` for
  segmentation folders), and their message names the file and the field;
- no silent acceptance: a case that an independent check (written here from the documented rules, importing
  nothing from the loaders) calls bad must be rejected, and a good one must load;
- nothing hangs.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/fuzz_harness.py (import-mode=importlib)
hypothesis = pytest.importorskip("hypothesis")
from fuzz_harness import time_limit  # noqa: E402  (the one per-case time limit of the fuzz tests)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

CASE_SECONDS = 20
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)


# ----------------------------------------------------------------------------------------- COCO / LVIS files
def _base_dataset(root: Path, fmt: str) -> dict:
    """A small valid dataset: 3 images on disk, 3 categories, 5 annotations."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(1, 4):
        name = f"img{i}.png"
        if not (root / "imgs" / name).exists():
            Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(root / "imgs" / name)
        images.append({"id": i, "file_name": name, "height": 20, "width": 30})
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 5)]
    if fmt == "lvis":
        for img in images:
            img.update(neg_category_ids=[2], not_exhaustive_category_ids=[])
        for c, f in zip(cats, "rcf"):
            c["frequency"] = f
    anns = []
    for k, (img, cat) in enumerate([(1, 1), (1, 2), (2, 5), (3, 1), (3, 5)], 1):
        ann = {"id": k, "image_id": img, "category_id": cat, "bbox": [2.0, 3.0, 10.0, 8.0], "iscrowd": 0}
        ann["area"] = 80.0
        ann["segmentation"] = [[2.0, 3.0, 12.0, 3.0, 12.0, 11.0, 2.0, 11.0]]
        anns.append(ann)
    return {"images": images, "annotations": anns, "categories": cats}


BAD_VALUES = [None, "x", -1, 0, 1.5, True, [], {}, [1, 2], float("nan"), float("inf"), 10**12]


def _paths(data, prefix=()):
    """Every (path, value) in the JSON tree below the top level."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield prefix + (k,), v
            yield from _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield prefix + (i,), v
            yield from _paths(v, prefix + (i,))


def _set(data, path, value):
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def _delete(data, path):
    node = data
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]


@st.composite
def coco_cases(draw):
    fmt = draw(st.sampled_from(["coco", "lvis"]))
    data = _base_dataset(Path("/nonexistent"), fmt)  # layout only; files are written by the test
    mutations = []
    for _ in range(draw(st.integers(1, 3))):
        paths = sorted(_paths(data), key=repr)
        if not paths:
            break
        path, _ = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["set", "delete", "duplicate", "top"]))
        if kind == "set":
            _set(data, path, copy.deepcopy(draw(st.sampled_from(BAD_VALUES))))
        elif kind == "delete":
            _delete(data, path)
        elif kind == "duplicate" and isinstance(data.get(path[0]), list) and len(path) >= 2:
            node = data[path[0]]
            if isinstance(path[1], int) and path[1] < len(node):
                node.append(copy.deepcopy(node[path[1]]))
        elif kind == "top":
            data = draw(st.sampled_from([[], "text", {"images": []}, 3]))
            mutations.append(("top", repr(data)))
            break
        mutations.append((kind, path))
    return fmt, data, mutations


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _hashable_id(v) -> bool:
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def expected_problem(data, fmt: str, root: Path):
    """The documented rules, checked independently: returns a description of the first problem, or None."""
    if not isinstance(data, dict):
        return "not an object"
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            return f"'{key}' missing"
    if not data["images"] or not data["categories"]:
        return "empty"
    cat_ids = set()
    for c in data["categories"]:
        if not isinstance(c, dict) or not _hashable_id(c.get("id")) or not isinstance(c.get("name"), str):
            return "category"
        if c["id"] in cat_ids:
            return "dup category"
        cat_ids.add(c["id"])
        if fmt == "lvis" and c.get("frequency", "f") not in ("r", "c", "f"):
            return "frequency"
        if "image_count" in c and not (isinstance(c["image_count"], int) and not isinstance(c["image_count"], bool)
                                       and c["image_count"] >= 0):  # fmt: skip
            return "image_count"
    img_ids, sizes = set(), {}
    for img in data["images"]:
        if not isinstance(img, dict) or not _hashable_id(img.get("id")):
            return "image id"
        if img["id"] in img_ids:
            return "dup image"
        img_ids.add(img["id"])
        for key in ("height", "width"):
            v = img.get(key)
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                return f"image {key}"
        sizes[img["id"]] = (img["width"], img["height"])
        name = img.get("file_name")
        if not isinstance(name, str) or not name or not (root / name).is_file():
            return "file_name"
        if fmt == "lvis":
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                v = img.get(key, [])
                if not isinstance(v, list) or not all(_hashable_id(x) and x in cat_ids for x in v):
                    return key
    ann_ids = set()
    for a in data["annotations"]:
        if not isinstance(a, dict) or not _hashable_id(a.get("id")):
            return "annotation id"
        if a["id"] in ann_ids:
            return "dup annotation"
        ann_ids.add(a["id"])
        if not _hashable_id(a.get("image_id")) or a["image_id"] not in img_ids:
            return "image_id"
        if not _hashable_id(a.get("category_id")) or a["category_id"] not in cat_ids:
            return "category_id"
        box = a.get("bbox")
        if not (
            isinstance(box, list) and len(box) == 4 and all(_number(v) and math.isfinite(v) for v in box)
        ):
            return "bbox"
        if box[2] < 0 or box[3] < 0:
            return "bbox size"
        if "iscrowd" in a and a["iscrowd"] not in (0, 1) or isinstance(a.get("iscrowd"), (bool, float)):
            return "iscrowd"
        if "area" in a and not (_number(a["area"]) and math.isfinite(a["area"]) and a["area"] >= 0):
            return "area"
        if "segmentation" in a:
            s = a["segmentation"]
            if isinstance(s, list):
                for poly in s:
                    if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                            and all(_number(v) and math.isfinite(v) for v in poly)):  # fmt: skip
                        return "polygon"
            elif isinstance(s, dict):
                if "counts" not in s or "size" not in s:
                    return "rle"
                size = s["size"]
                if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(
                        v, bool) and v > 0 for v in size)):  # fmt: skip
                    return "rle size"
                if not isinstance(s["counts"], (str, list)) or (
                    isinstance(s["counts"], list)
                    and not all(isinstance(v, int) and v >= 0 for v in s["counts"])
                ):
                    return "rle counts"
            else:
                return "segmentation"
    return None


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_coco")
    _base_dataset(root, "coco")
    return root


def test_valid_base_datasets_load(coco_root, tmp_path):
    from eva_transfer_projects.detection.data import load_dataset_dicts

    for fmt in ("coco", "lvis"):
        data = _base_dataset(coco_root, fmt)
        assert expected_problem(data, fmt, coco_root / "imgs") is None
        path = tmp_path / f"{fmt}.json"
        path.write_text(json.dumps(data))
        assert len(load_dataset_dicts(path, coco_root / "imgs", fmt)) == 3


@SETTINGS
@given(case=coco_cases())
def test_malformed_annotation_files(coco_root, tmp_path_factory, case):
    from eva_transfer_projects.detection.data import DatasetError, load_dataset_dicts

    fmt, data, mutations = case
    path = tmp_path_factory.mktemp("case") / "annotations.json"
    path.write_text(json.dumps(data, allow_nan=True))
    problem = expected_problem(data, fmt, coco_root / "imgs")
    with time_limit(CASE_SECONDS):
        try:
            dicts = load_dataset_dicts(path, coco_root / "imgs", fmt)
        except DatasetError as e:
            assert str(path) in str(e), f"{mutations}: message does not name the file: {e}"
            assert problem is not None, f"{mutations}: a valid file was rejected: {e}"
            return
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{mutations}: undocumented {type(e).__name__}: {e} (expected problem: {problem})")
    assert problem is None, f"{mutations}: accepted silently although {problem}"
    assert len(dicts) == len(data["images"])


# ------------------------------------------------------------------------------------------ ADE-layout folders
NUM_CLASSES = 5  # the synthetic classes; stored labels 1..5 (0 = unlabelled, reduce_zero_label)

#: mutation -> whether the folder stays usable
ADE_MUTATIONS = {
    "label_colour": False,
    "label_grey_rgb": True,
    "label_16bit_high": False,
    "label_16bit_ok": True,
    "label_value_high": False,
    "label_other_size": False,
    "label_missing": False,
    "label_garbage": False,
    "label_empty": False,
    "image_garbage": False,
    "image_empty": False,
    "image_tiny": True,
    "extra_file": True,
    "no_images": False,
}


def _ade_mutate(root: Path, kind: str, index: int, rng: np.random.Generator) -> Path:
    """Applies ``kind`` to sample ``index`` of the training split; returns the file it touched."""
    img = root / "images/training" / f"synthetic_training_{index:05d}.jpg"
    lab = root / "annotations/training" / f"synthetic_training_{index:05d}.png"
    label = np.asarray(Image.open(lab)) if lab.exists() else np.ones((32, 32), np.uint8)
    if kind == "label_colour":
        Image.fromarray(np.stack([label, label, (label % NUM_CLASSES) + 1], 2).astype(np.uint8)).save(lab)
    elif kind == "label_grey_rgb":
        Image.fromarray(np.stack([label] * 3, 2)).save(lab)
    elif kind in ("label_16bit_high", "label_16bit_ok"):
        wide = label.astype(np.uint16)
        if kind == "label_16bit_high":
            wide[rng.integers(0, wide.shape[0]), rng.integers(0, wide.shape[1])] = int(
                rng.integers(256, 65536)
            )
        Image.fromarray(wide).save(lab)
    elif kind == "label_value_high":
        label = label.copy()
        label[rng.integers(0, label.shape[0]), rng.integers(0, label.shape[1])] = int(
            rng.integers(NUM_CLASSES + 1, 256)
        )
        Image.fromarray(label).save(lab)
    elif kind == "label_other_size":
        Image.fromarray(label[: label.shape[0] // 2]).save(lab)
    elif kind == "label_missing":
        lab.unlink(missing_ok=True)
    elif kind == "label_garbage":
        lab.write_bytes(rng.bytes(int(rng.integers(1, 200))))
    elif kind == "label_empty":
        lab.write_bytes(b"")
    elif kind == "image_garbage":
        img.write_bytes(rng.bytes(int(rng.integers(1, 200))))
        return img
    elif kind == "image_empty":
        img.write_bytes(b"")
        return img
    elif kind == "image_tiny":
        Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(img)
        Image.fromarray(np.full((1, 1), 2, np.uint8)).save(lab)
    elif kind == "extra_file":
        (root / "images/training" / "notes.txt").write_text("not an image")
        return root / "images/training" / "notes.txt"
    elif kind == "no_images":
        for p in (root / "images/training").glob("*.jpg"):
            p.unlink()
        return root / "images/training"
    return lab


@settings(SETTINGS, max_examples=40)
@given(
    mutations=st.lists(
        st.tuples(st.sampled_from(sorted(ADE_MUTATIONS)), st.integers(0, 2)),
        min_size=1,
        max_size=2,
        unique_by=lambda m: m[1],
    ),
    seed=st.integers(0, 2**16),
)
def test_malformed_ade_folders(tmp_path_factory, mutations, seed):
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    import eva_transfer_projects.segmentation  # noqa: F401
    from eva_transfer_projects.segmentation.datasets import DatasetFileError
    from eva_transfer_projects.segmentation.synthetic import write_synthetic_ade

    root = write_synthetic_ade(tmp_path_factory.mktemp("ade"), num_train=3, num_val=1, size=32, seed=1)
    rng = np.random.default_rng(seed)
    mutations = sorted(mutations, key=lambda m: m[0] == "no_images")  # removing every image comes last
    touched = [_ade_mutate(root, kind, index, rng) for kind, index in mutations]
    usable = all(ADE_MUTATIONS[kind] for kind, _ in mutations)
    cfg = dict(
        type="SyntheticADEDataset",
        data_root=str(root),
        data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
        pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadCheckedAnnotations")],
    )
    with time_limit(CASE_SECONDS), DefaultScope.overwrite_default_scope("mmseg"):
        try:
            ds = DATASETS.build(cfg)
            samples = [ds[i] for i in range(len(ds))]
        except DatasetFileError as e:
            names = [p.name for p in touched]
            assert any(n in str(e) for n in names), f"{mutations}: message names none of {names}: {e}"
            assert not usable, f"{mutations}: a usable folder was rejected: {e}"
            return
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{mutations}: undocumented {type(e).__name__}: {e}")
    assert usable, f"{mutations}: accepted silently"
    for s in samples:
        seg = s["gt_seg_map"]
        assert seg.ndim == 2 and seg.shape == s["img"].shape[:2]
        assert set(np.unique(seg).tolist()) <= set(range(NUM_CLASSES)) | {255}
