"""Synthetic dataset maker and dataset registration: formats, metadata, bad input."""

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eva_transfer_projects import compat

compat.apply()

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts  # noqa: E402
from detectron2.data.detection_utils import get_fed_loss_cls_weights  # noqa: E402
from detectron2.data.samplers import RepeatFactorTrainingSampler  # noqa: E402
from lvis import LVIS  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from eva_transfer_projects.detection.data import (  # noqa: E402
    DatasetCheck,
    DatasetError,
    make_synthetic_dataset,
    register_dataset,
    validate_dataset,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def coco_json(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    return make_synthetic_dataset(root, "train", 16, image_size=(96, 112), fmt="coco", num_classes=5, seed=1)


@pytest.fixture(scope="module")
def lvis_json(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvis")
    return make_synthetic_dataset(root, "val", 40, image_size=(96, 96), fmt="lvis", num_classes=8, seed=2)


def test_coco_output_loads_with_pycocotools(coco_json):
    coco = COCO(str(coco_json))
    assert len(coco.getImgIds()) == 16 and sorted(coco.getCatIds()) == [1, 2, 3, 4, 5]
    per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert min(per_image) >= 1 and max(per_image) >= 3
    cats_per_image = [
        len({a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=i))}) for i in coco.getImgIds()
    ]
    assert max(cats_per_image) >= 3
    # every class appears; masks decode to the stated area and lie inside the stated box
    assert all(coco.getAnnIds(catIds=c) for c in coco.getCatIds())
    for ann in coco.loadAnns(coco.getAnnIds()):
        m = coco.annToMask(ann).astype(bool)
        assert m.sum() == ann["area"]
        ys, xs = np.nonzero(m)
        x, y, w, h = ann["bbox"]
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        assert ann["iscrowd"] == 0
    img = coco.loadImgs(1)[0]
    assert (coco_json.parent.parent / "train" / img["file_name"]).is_file()


def test_objects_overlap_and_sizes_vary(coco_json):
    data = json.loads(coco_json.read_text())
    areas = np.array([a["area"] for a in data["annotations"]])
    assert areas.min() < 32**2 <= areas.max()
    overlapping = 0
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    for boxes in by_image.values():
        for i in range(len(boxes)):
            for j in range(i):
                (x0, y0, w0, h0), (x1, y1, w1, h1) = boxes[i], boxes[j]
                overlapping += min(x0 + w0, x1 + w1) > max(x0, x1) and min(y0 + h0, y1 + h1) > max(y0, y1)
    assert overlapping >= 1


def test_same_arguments_same_files(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", "train", 3, fmt="coco", seed=5)
    b = make_synthetic_dataset(tmp_path / "b", "train", 3, fmt="coco", seed=5)
    assert a.read_text() == b.read_text()
    assert (tmp_path / "a/train/000002.png").read_bytes() == (tmp_path / "b/train/000002.png").read_bytes()


def test_lvis_output_loads_with_lvis_api(lvis_json):
    lvis = LVIS(str(lvis_json))
    cats = lvis.load_cats(None)
    assert {c["frequency"] for c in cats} == {"r", "c", "f"}
    for c in cats:
        assert c["synonyms"] and c["name"] == c["synonyms"][0]
        img_ids = set(lvis.cat_img_map[c["id"]])
        assert c["image_count"] == len(img_ids) >= 1
        assert c["instance_count"] == len(lvis.cat_img_map[c["id"]])
    counts = {c["frequency"]: [] for c in cats}
    for c in cats:
        counts[c["frequency"]].append(c["image_count"])
    assert max(counts["r"]) < min(counts["f"])  # rare classes are rare
    for img in lvis.load_imgs(None):
        present = {a["category_id"] for a in lvis.img_ann_map[img["id"]]}
        assert not set(img["neg_category_ids"]) & present
        assert set(img["not_exhaustive_category_ids"]) <= present
        split, name = img["coco_url"].split("/")[-2:]
        assert split == "val" and (lvis_json.parent.parent / split / name).is_file()
        assert "file_name" not in img
    assert any(img["neg_category_ids"] for img in lvis.load_imgs(None))
    assert any("iscrowd" in a for a in lvis.load_anns(None)) is False


def test_cli_writes_both_splits(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/make_synthetic_dataset.py"),
            "--out",
            str(tmp_path),
            "--format",
            "lvis",
            "--train",
            "3",
            "--val",
            "2",
            "--size",
            "64",
            "80",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "lvis_train.json" in out and "lvis_val.json" in out
    val = json.loads((tmp_path / "annotations/lvis_val.json").read_text())
    assert len(val["images"]) == 2 and (val["images"][0]["height"], val["images"][0]["width"]) == (64, 80)


def test_register_coco(coco_json, registered):
    registered.append("syn_coco_train")
    root = coco_json.parent.parent / "train"
    meta = register_dataset("syn_coco_train", coco_json, root, fmt="coco")
    md = MetadataCatalog.get("syn_coco_train")
    assert md.evaluator_type == "coco" and md.json_file == str(coco_json) and md.image_root == str(root)
    assert md.thing_classes == meta["thing_classes"] and len(md.thing_classes) == 5
    assert md.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}
    dicts = DatasetCatalog.get("syn_coco_train")
    assert len(dicts) == 16 and Path(dicts[0]["file_name"]).is_file()
    # COCO categories carry no image_count: counted from the annotations, as fed loss reads them
    data = json.loads(coco_json.read_text())
    expected = [
        len({a["image_id"] for a in data["annotations"] if a["category_id"] == c}) for c in range(1, 6)
    ]
    assert md.class_image_count_source == "annotations"
    assert get_fed_loss_cls_weights("syn_coco_train", 0.5).tolist() == pytest.approx(
        np.sqrt(expected).tolist()
    )


def test_register_lvis_metadata_feeds_fed_loss_and_repeat_factors(lvis_json, registered):
    registered.append("syn_lvis_val")
    register_dataset("syn_lvis_val", lvis_json, lvis_json.parent.parent, fmt="lvis")
    md = MetadataCatalog.get("syn_lvis_val")
    data = json.loads(lvis_json.read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    assert md.evaluator_type == "lvis" and md.class_image_count_source == "categories"
    assert md.class_frequency == [c["frequency"] for c in cats]
    assert get_fed_loss_cls_weights("syn_lvis_val", 1.0).tolist() == [c["image_count"] for c in cats]
    dicts = DatasetCatalog.get("syn_lvis_val")
    assert all("neg_category_ids" in d and "not_exhaustive_category_ids" in d for d in dicts)
    assert all(Path(d["file_name"]).is_file() for d in dicts)
    # repeat factors: rare classes' images are repeated, frequent-only images are not
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.3)
    rare = {i for i, c in enumerate(cats) if c["frequency"] == "r"}
    has_rare = np.array([any(a["category_id"] in rare for a in d["annotations"]) for d in dicts])
    assert factors[has_rare].min() > 1.0 and factors[has_rare].mean() > factors[~has_rare].mean()


def _write(tmp_path, data, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _corrupt(coco_json, change):
    data = json.loads(coco_json.read_text())
    change(data)
    return data


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d["annotations"][3].update(image_id=999),
            "annotation id 4: image_id 999 is not in 'images'",
        ),
        (lambda d: d["images"][2].update(file_name="missing.png"), "image id 3: file not found"),
        (lambda d: d["annotations"][5].update(bbox=[3, 4, -2, 5]), "annotation id 6: bbox has negative size"),
        (lambda d: d["annotations"][7].update(category_id=77), "annotation id 8: unknown category_id 77"),
        (lambda d: d.update(images=[], annotations=[]), "'images' is empty"),
        (
            lambda d: d["annotations"][1].update(segmentation=[[1, 2, 3, 4]]),
            "annotation id 2: a polygon needs",
        ),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), "annotation id 1 appears twice"),
        (lambda d: d.pop("categories"), "missing or non-list key 'categories'"),
    ],
    ids=[
        "missing-image",
        "missing-file",
        "negative-box",
        "unknown-category",
        "empty",
        "polygon",
        "dup-id",
        "no-cats",
    ],
)
def test_bad_input_names_file_and_entry(coco_json, tmp_path, registered, change, message):
    path = _write(tmp_path, _corrupt(coco_json, change))
    with pytest.raises(DatasetError) as err:
        register_dataset("bad", path, coco_json.parent.parent / "train")
    assert str(path) in str(err.value) and message in str(err.value)
    assert "bad" not in DatasetCatalog.list()


@pytest.mark.parametrize(
    "bad, shown",
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (True, "True"),
        ("3", "'3'"),
        (None, "None"),
    ],
)
def test_polygon_coordinates_must_be_finite_numbers(coco_json, tmp_path, registered, bad, shown):
    def change(d):
        d["annotations"][1]["segmentation"][0][3] = bad

    path = _write(tmp_path, _corrupt(coco_json, change))
    with pytest.raises(DatasetError) as err:
        register_dataset("bad", path, coco_json.parent.parent / "train")
    assert f"annotation id 2: polygon coordinate {shown} is not a finite number" in str(err.value)


def test_polygons_of_large_finite_coordinates_are_accepted(coco_json, tmp_path, registered):
    # coordinates at the float limit are finite numbers (the check is per value, not on a sum)
    def change(d):
        d["annotations"][1]["segmentation"][0][:4] = [1e308, 1e308, 1e308, 1e308]

    registered.append("big")
    register_dataset("big", _write(tmp_path, _corrupt(coco_json, change)), coco_json.parent.parent / "train")
    assert "big" in DatasetCatalog.list()


def test_bad_lvis_negative_category(lvis_json, tmp_path):
    data = json.loads(lvis_json.read_text())
    data["images"][0]["neg_category_ids"] = [1, 404]
    path = _write(tmp_path, data)
    with pytest.raises(DatasetError, match=r"image id 1: neg_category_ids has unknown category ids \[404\]"):
        register_dataset("bad_lvis", path, lvis_json.parent.parent, fmt="lvis")


def test_images_without_annotations_are_counted_and_skipped_for_training(
    coco_json, tmp_path, registered, caplog
):
    data = json.loads(coco_json.read_text())
    empty = {2, 5, 9}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in empty]
    for i, a in enumerate(data["annotations"]):
        a["id"] = i + 1
    # one image whose only annotation is a crowd region: Detectron2 also skips it for training
    crowd = copy.deepcopy(data["annotations"][0])
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != crowd["image_id"]] + [
        dict(crowd, iscrowd=1, id=10_000)
    ]
    path = _write(tmp_path, data)
    registered.append("syn_partly_empty")
    with caplog.at_level(logging.INFO):
        meta = register_dataset("syn_partly_empty", path, coco_json.parent.parent / "train")
    assert meta["num_images_without_annotations"] == 3
    assert "3 of 16 images have no annotations" in caplog.text
    assert len(DatasetCatalog.get("syn_partly_empty")) == 16  # evaluation keeps them
    with caplog.at_level(logging.INFO):
        train = get_detection_dataset_dicts(["syn_partly_empty"], filter_empty=True)
    assert len(train) == 12 and "Removed 4 images with no usable annotations" in caplog.text


def test_register_twice_is_an_error(coco_json, registered):
    registered.append("syn_twice")
    register_dataset("syn_twice", coco_json, coco_json.parent.parent / "train")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("syn_twice", coco_json, coco_json.parent.parent / "train")


def test_boxes_outside_the_image_or_empty_are_counted_and_reported_once(
    coco_json, tmp_path, registered, caplog
):
    data = json.loads(coco_json.read_text())
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    w, h = sizes[data["annotations"][0]["image_id"]]
    data["annotations"][0]["bbox"] = [w - 5, 2, 20, 10]  # right edge beyond the image
    data["annotations"][1]["bbox"] = [-3, 4, 10, 10]  # left edge before it
    data["annotations"][2]["bbox"] = [4, 5, 0, 7]  # zero width
    ids = [a["id"] for a in data["annotations"][:3]]
    path = _write(tmp_path, data)
    registered.append("syn_boxes")
    with caplog.at_level(logging.WARNING, logger="eva_transfer_projects.detection.data.datasets"):
        register_dataset("syn_boxes", path, coco_json.parent.parent / "train")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert str(path) in text
    assert f"2 box(es) reach outside their image (annotation ids {ids[0]}, {ids[1]})" in text
    assert f"1 box(es) have zero width or height (annotation ids {ids[2]})" in text
    caplog.clear()  # a clean file warns nothing
    registered.append("syn_clean")
    with caplog.at_level(logging.WARNING, logger="eva_transfer_projects.detection.data.datasets"):
        register_dataset("syn_clean", coco_json, coco_json.parent.parent / "train")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_validation_returns_the_ids_and_the_noted_boxes(coco_json):
    data = json.loads(coco_json.read_text())
    data["annotations"][1]["bbox"] = [-3, 4, 10, 10]  # outside
    data["annotations"][4]["bbox"] = [4, 5, 6, 0]  # zero height
    data["annotations"][3]["bbox"] = [1, 1, 0, 1e6]  # both
    check = validate_dataset(data, coco_json, coco_json.parent.parent / "train", "coco")
    ids = [a["id"] for a in data["annotations"]]
    assert isinstance(check, DatasetCheck)
    assert check.outside == [ids[1], ids[3]] and check.empty == [ids[3], ids[4]]
    assert check.image_ids == {img["id"] for img in data["images"]} and len(check.image_ids) == 16
    assert check.category_ids == {1, 2, 3, 4, 5}


def _mapper(image_size=128, scale=(0.1, 2.0)):
    from eva_transfer_projects.detection.data import CheckedDatasetMapper
    from eva_transfer_projects.detection.data.augmentations import lsj_train_augmentations

    return CheckedDatasetMapper(
        is_train=True,
        augmentations=lsj_train_augmentations(image_size, *scale),
        image_format="RGB",
        use_instance_mask=True,
        recompute_boxes=True,
    )


def test_truncated_or_unresizable_image_stops_with_the_file_name(tmp_path):
    from PIL import Image

    from eva_transfer_projects.detection.data import ImageFileError

    rng = np.random.default_rng(0)
    good = tmp_path / "good.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(good, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    strip = tmp_path / "strip.png"
    Image.fromarray(rng.integers(0, 255, (16, 4000, 3), dtype=np.uint8)).save(strip)

    def record(path, w, h):
        box = [2.0, 2.0, min(w, 30) - 4.0, min(h, 30) - 4.0]
        poly = [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2], box[1] + box[3]]]
        ann = {"bbox": box, "bbox_mode": 1, "category_id": 0, "iscrowd": 0, "segmentation": poly}
        return {"file_name": str(path), "width": w, "height": h, "image_id": 1, "annotations": [ann]}

    out = _mapper(scale=(1.0, 1.0))(record(good, 80, 64))  # a good image maps as in DatasetMapper
    assert tuple(out["image"].shape) == (3, 102, 128) and len(out["instances"]) == 1
    with pytest.raises(ImageFileError, match=r"truncated\.jpg: .*(truncated|broken)"):
        _mapper()(record(truncated, 80, 64))
    # 16 rows scaled by 128 / 4000 * 0.1 round to zero rows
    with pytest.raises(ImageFileError, match=r"strip\.png: .*4000x16.*"):
        _mapper(scale=(0.1, 0.1))(record(strip, 4000, 16))


def test_image_error_in_a_loader_worker_reaches_the_main_process_with_the_file_name(tmp_path):
    import torch
    from PIL import Image

    from eva_transfer_projects.detection.data import ImageFileError

    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((64, 80, 3), 100, np.uint8)).save(good)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    records = [{"file_name": str(truncated), "width": 80, "height": 64, "image_id": 1, "annotations": []}]
    loader = torch.utils.data.DataLoader(
        records, batch_size=1, num_workers=1, collate_fn=lambda batch: [_mapper()(r) for r in batch]
    )
    with pytest.raises(ImageFileError, match=r"cut\.jpg: cannot use this image \(size 80x64"):
        next(iter(loader))
