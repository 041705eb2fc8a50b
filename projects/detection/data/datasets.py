"""Your own COCO- or LVIS-format dataset in Detectron2: validation, loading and registration.

``register_dataset(name, json_file, image_root, fmt)`` is the one call a user makes. It reads and checks the
annotation file once (errors name the file and the entry), then registers a loader in ``DatasetCatalog`` and the
metadata Detectron2's components read in ``MetadataCatalog``:

- ``thing_classes``, ``thing_dataset_id_to_contiguous_id`` (contiguous ids follow sorted dataset ids),
- ``evaluator_type`` ("coco" / "lvis"), ``json_file``, ``image_root``,
- ``class_image_count``: ``[{"id": dataset_id, "image_count": n}, ...]`` as ``get_fed_loss_cls_weights`` reads it
  (from the categories' ``image_count`` when every category has one, else counted from the annotations),
- ``class_frequency`` (LVIS "r"/"c"/"f", or derived from the image counts), ``num_images``,
  ``num_images_without_annotations``.

Image paths: COCO ``file_name`` is relative to ``image_root``; LVIS images without ``file_name`` are found from
``coco_url`` as ``image_root/<split folder>/<file>`` (the last two parts of the url), like Detectron2's LVIS loader.

Images without annotations stay in the loaded list (evaluation needs them); training drops them through
Detectron2's ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``, and registration logs how many there are.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from eva_transfer_projects import compat

compat.apply_detectron2()

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

logger = logging.getLogger(__name__)

FORMATS = ("coco", "lvis")


class DatasetError(ValueError):
    """An annotation file that cannot be used; the message names the file and the entry."""


def _fail(json_file, what: str):
    raise DatasetError(f"{json_file}: {what}")


def read_annotation_json(json_file: str | os.PathLike) -> dict:
    """Parses a COCO/LVIS annotation file and checks its top-level layout."""
    path = Path(json_file)
    if not path.is_file():
        raise DatasetError(f"{json_file}: annotation file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{json_file}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        _fail(
            json_file,
            f"expected a JSON object with 'images', 'annotations', 'categories', got {type(data).__name__}",
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            _fail(json_file, f"missing or non-list key '{key}' (expected a COCO/LVIS instances file)")
    if not data["images"]:
        _fail(json_file, "'images' is empty: a dataset needs at least one image")
    if not data["categories"]:
        _fail(json_file, "'categories' is empty: a dataset needs at least one category")
    return data


def image_path(img: dict, image_root: str | os.PathLike, fmt: str) -> str:
    """Where the file of image record ``img`` lies (see the module docstring for the conventions)."""
    if img.get("file_name"):
        return os.path.join(image_root, img["file_name"])
    if fmt == "lvis" and img.get("coco_url"):
        split_folder, name = str(img["coco_url"]).rstrip("/").split("/")[-2:]
        return os.path.join(image_root, split_folder, name)
    raise KeyError("file_name" if fmt == "coco" else "file_name' or 'coco_url")


def _is_id(value) -> bool:
    """Ids are integers (or strings); not booleans, floats, lists or null."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_polygons(json_file, ann, segm):
    if isinstance(segm, list):
        for poly in segm:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
                _fail(
                    json_file,
                    f"annotation id {ann['id']}: a polygon needs an even number >= 6 of coordinates, "
                    f"got {len(poly) if isinstance(poly, list) else type(poly).__name__}",
                )
            if not all(_is_number(v) for v in poly):
                bad = next(v for v in poly if not _is_number(v))
                _fail(
                    json_file, f"annotation id {ann['id']}: polygon coordinate {bad!r} is not a finite number"
                )
    elif isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            _fail(json_file, f"annotation id {ann['id']}: an RLE segmentation needs 'counts' and 'size'")
        size, counts = segm["size"], segm["counts"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_count(v, 1) for v in size)):
            _fail(json_file, f"annotation id {ann['id']}: RLE 'size' must be [height, width], got {size!r}")
        if not (isinstance(counts, str) or (isinstance(counts, list) and all(_is_count(v) for v in counts))):
            _fail(
                json_file,
                f"annotation id {ann['id']}: RLE 'counts' must be a string or a list of counts >= 0, got "
                f"{type(counts).__name__}",
            )
    else:
        _fail(json_file, f"annotation id {ann['id']}: segmentation must be polygons (list) or RLE (dict)")


@dataclass
class DatasetCheck:
    """What :func:`validate_dataset` found in a valid file: the ids of the categories and images, and the
    annotations (by id) whose boxes reach outside their image or have zero width or height (warned once, kept)."""

    category_ids: set = field(default_factory=set)
    image_ids: set = field(default_factory=set)
    outside: list = field(default_factory=list)
    empty: list = field(default_factory=list)


def validate_dataset(data: dict, json_file, image_root, fmt: str, check_files: bool = True) -> DatasetCheck:
    """Checks ids, references, boxes, polygons and (optionally) that every image file exists.

    Returns:
        a :class:`DatasetCheck`; the boxes outside their image or without area are logged once.
    Raises:
        DatasetError: naming ``json_file`` and the offending image / annotation / category.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    check = DatasetCheck()
    for i, cat in enumerate(data["categories"]):
        _check_category(json_file, i, cat, fmt, check.category_ids)
    for i, img in enumerate(data["images"]):
        _check_image(json_file, i, img, image_root, fmt, check_files, check)
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    ann_ids: set = set()
    for i, ann in enumerate(data["annotations"]):
        _check_annotation(json_file, i, ann, ann_ids, check)
        _note_box(ann, sizes[ann["image_id"]], check)
        if "segmentation" in ann:
            _check_polygons(json_file, ann, ann["segmentation"])
    report_boxes(json_file, check.outside, check.empty)
    return check


def _check_category(json_file, i: int, cat, fmt: str, cat_ids: set) -> None:
    """``categories[i]``: id and name, image_count, LVIS frequency; a new id (added to ``cat_ids``)."""
    if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
        _fail(json_file, f"categories[{i}] needs 'id' and 'name'")
    if not _is_id(cat["id"]) or not isinstance(cat["name"], str):
        _fail(
            json_file,
            f"categories[{i}]: 'id' must be an integer and 'name' a string, got {cat['id']!r}, {cat['name']!r}",
        )
    if "image_count" in cat and not _is_count(cat["image_count"]):
        _fail(
            json_file,
            f"category id {cat['id']}: image_count must be an integer >= 0, got {cat['image_count']!r}",
        )
    if cat["id"] in cat_ids:
        _fail(json_file, f"category id {cat['id']} appears twice in 'categories'")
    cat_ids.add(cat["id"])
    if fmt == "lvis" and cat.get("frequency", "f") not in ("r", "c", "f"):
        _fail(
            json_file,
            f"category id {cat['id']}: frequency must be 'r', 'c' or 'f', got {cat['frequency']!r}",
        )


def _check_image(
    json_file, i: int, img, image_root, fmt: str, check_files: bool, check: DatasetCheck
) -> None:
    """``images[i]``: a new id, its size, its file's location (and existence), LVIS category lists."""
    if not isinstance(img, dict) or "id" not in img:
        _fail(json_file, f"images[{i}] has no 'id'")
    if not _is_id(img["id"]):
        _fail(json_file, f"images[{i}]: 'id' must be an integer, got {img['id']!r}")
    if img["id"] in check.image_ids:
        _fail(json_file, f"image id {img['id']} appears twice in 'images'")
    check.image_ids.add(img["id"])
    for key in ("height", "width"):
        if not _is_count(img.get(key), 1):
            _fail(
                json_file,
                f"image id {img['id']}: '{key}' must be a positive integer, got {img.get(key)!r}",
            )
    for key in ("file_name", "coco_url"):
        if img.get(key) is not None and not isinstance(img[key], str):
            _fail(json_file, f"image id {img['id']}: '{key}' must be a string, got {img[key]!r}")
    try:
        path = image_path(img, image_root, fmt)
    except KeyError as e:
        _fail(json_file, f"image id {img['id']} has no '{e.args[0]}' to locate its file")
    if check_files and not os.path.isfile(path):
        _fail(json_file, f"image id {img['id']}: file not found: {path}")
    if fmt == "lvis":
        _check_lvis_image_lists(json_file, img, check.category_ids)


def _check_lvis_image_lists(json_file, img: dict, cat_ids: set) -> None:
    for key in ("neg_category_ids", "not_exhaustive_category_ids"):
        if not isinstance(img.get(key, []), list) or not all(_is_id(c) for c in img.get(key, [])):
            _fail(
                json_file,
                f"image id {img['id']}: {key} must be a list of category ids, got {img[key]!r}",
            )
        unknown = set(img.get(key, [])) - cat_ids
        if unknown:
            _fail(json_file, f"image id {img['id']}: {key} has unknown category ids {sorted(unknown)}")


def _check_annotation(json_file, i: int, ann, ann_ids: set, check: DatasetCheck) -> None:
    """``annotations[i]``: a new id (added to ``ann_ids``) referring to a known image and category; bbox,
    iscrowd, area."""
    if not isinstance(ann, dict) or "id" not in ann:
        _fail(json_file, f"annotations[{i}] has no 'id'")
    if not _is_id(ann["id"]):
        _fail(json_file, f"annotations[{i}]: 'id' must be an integer, got {ann['id']!r}")
    for key in ("image_id", "category_id"):
        if not _is_id(ann.get(key)):
            _fail(
                json_file,
                f"annotation id {ann['id']}: '{key}' must be an integer id, got {ann.get(key)!r}",
            )
    if ann["id"] in ann_ids:
        _fail(json_file, f"annotation id {ann['id']} appears twice in 'annotations'")
    ann_ids.add(ann["id"])
    if ann.get("image_id") not in check.image_ids:
        _fail(json_file, f"annotation id {ann['id']}: image_id {ann.get('image_id')!r} is not in 'images'")
    if ann.get("category_id") not in check.category_ids:
        _fail(
            json_file,
            f"annotation id {ann['id']}: unknown category_id {ann.get('category_id')!r} "
            f"(not in 'categories', which has {len(check.category_ids)} ids)",
        )
    _check_box(json_file, ann)
    if "iscrowd" in ann and (not _is_count(ann["iscrowd"]) or ann["iscrowd"] > 1):
        _fail(json_file, f"annotation id {ann['id']}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
    if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
        _fail(
            json_file,
            f"annotation id {ann['id']}: area must be a finite number >= 0, got {ann['area']!r}",
        )


def _check_box(json_file, ann: dict) -> None:
    """The annotation's ``bbox`` is ``[x, y, w, h]`` of finite numbers, w, h >= 0."""
    box = ann.get("bbox")
    if (
        not isinstance(box, (list, tuple))
        or len(box) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
    ):
        _fail(json_file, f"annotation id {ann['id']}: bbox must be [x, y, width, height], got {box!r}")
    if not all(math.isfinite(v) for v in box):
        _fail(json_file, f"annotation id {ann['id']}: bbox has a non-finite value: {box}")
    if box[2] < 0 or box[3] < 0:
        _fail(
            json_file,
            f"annotation id {ann['id']}: bbox has negative size (width {box[2]}, height {box[3]})",
        )


def _note_box(ann: dict, image_size: tuple, check: DatasetCheck) -> None:
    """A checked box of zero area, or one reaching outside its ``(width, height)`` image, is noted in ``check``."""
    box = ann["bbox"]
    if box[2] == 0 or box[3] == 0:
        check.empty.append(ann["id"])
    width, height = image_size
    if box[0] < 0 or box[1] < 0 or box[0] + box[2] > width or box[1] + box[3] > height:
        check.outside.append(ann["id"])


def report_boxes(json_file, outside: list, empty: list) -> None:
    """One warning for the boxes that reach outside their image and the boxes of zero width or height (by
    annotation id). Detectron2 clips the first to the image and drops the second during training."""
    parts = []
    for ids, what in ((outside, "reach outside their image"), (empty, "have zero width or height")):
        if ids:
            first = ", ".join(str(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
            parts.append(f"{len(ids)} box(es) {what} (annotation ids {first})")
    if parts:
        logger.warning(
            "%s: %s; training clips boxes to the image and drops empty ones", json_file, "; ".join(parts)
        )


def image_counts_from_annotations(data: dict) -> dict:
    """{category id: number of images with at least one annotation of it}, counted from the annotations of a loaded
    COCO / LVIS json dict (:func:`~eva_transfer_projects.detection.class_frequency.class_image_counts` counts
    registered Detectron2 datasets)."""
    images_per_cat: dict = {c["id"]: set() for c in data["categories"]}
    for ann in data["annotations"]:
        images_per_cat[ann["category_id"]].add(ann["image_id"])
    return {k: len(v) for k, v in images_per_cat.items()}


def frequency_from_image_count(count: int) -> str:
    """LVIS's frequency groups: rare in 1-10 training images, common in 11-100, frequent in more."""
    return "r" if count <= 10 else "c" if count <= 100 else "f"


def dataset_metadata(data: dict, json_file, image_root, fmt: str) -> dict:
    """Metadata Detectron2 reads (see the module docstring)."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if all(isinstance(c.get("image_count"), int) for c in cats):
        image_counts = {c["id"]: c["image_count"] for c in cats}
        count_source = "categories"
    else:
        image_counts = image_counts_from_annotations(data)
        count_source = "annotations"
    annotated = {a["image_id"] for a in data["annotations"]}
    return {
        "thing_classes": [c["name"] for c in cats],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(cats)},
        "evaluator_type": fmt,
        "json_file": str(json_file),
        "image_root": str(image_root),
        "class_image_count": [{"id": c["id"], "image_count": image_counts[c["id"]]} for c in cats],
        "class_image_count_source": count_source,
        "class_frequency": [
            c.get("frequency") or frequency_from_image_count(image_counts[c["id"]]) for c in cats
        ],
        "num_images": len(data["images"]),
        "num_images_without_annotations": sum(img["id"] not in annotated for img in data["images"]),
    }


def _segmentation_for_detectron2(segm):
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        from pycocotools import mask as mask_util

        # uncompressed RLE: Detectron2's mappers expect the compressed form
        return mask_util.frPyObjects(segm, *segm["size"])
    return segm


def dataset_dicts_from_json(data: dict, image_root, fmt: str, id_map: dict | None = None) -> list[dict]:
    """Detectron2's standard dataset dicts (boxes XYWH_ABS, contiguous category ids), one per image, sorted by id.

    LVIS records also carry ``neg_category_ids`` / ``not_exhaustive_category_ids`` (dataset ids, as Detectron2's
    LVIS loader keeps them).
    """
    if id_map is None:
        id_map = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    anns_per_image: dict = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        anns_per_image[ann["image_id"]].append(ann)
    records = []
    for img in sorted(data["images"], key=lambda x: x["id"]):
        record = {
            "file_name": image_path(img, image_root, fmt),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
        }
        if fmt == "lvis":
            record["neg_category_ids"] = list(img.get("neg_category_ids", []))
            record["not_exhaustive_category_ids"] = list(img.get("not_exhaustive_category_ids", []))
        objs = []
        for ann in anns_per_image[img["id"]]:
            obj = {
                "bbox": list(ann["bbox"]),
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[ann["category_id"]],
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
            if "segmentation" in ann:
                obj["segmentation"] = _segmentation_for_detectron2(ann["segmentation"])
            objs.append(obj)
        record["annotations"] = objs
        records.append(record)
    return records


def load_dataset_dicts(json_file, image_root, fmt: str = "coco", check_files: bool = True) -> list[dict]:
    """Reads, validates and converts an annotation file to Detectron2 dataset dicts (all images kept)."""
    data = read_annotation_json(json_file)
    validate_dataset(data, json_file, image_root, fmt, check_files=check_files)
    return dataset_dicts_from_json(data, image_root, fmt)


def register_dataset(name: str, json_file, image_root, fmt: str = "coco", check_files: bool = True) -> dict:
    """Registers a COCO- or LVIS-format dataset under ``name`` in Detectron2's catalogs; returns its metadata.

    Args:
        name: dataset name used in configs (``DATASETS.TRAIN`` / ``dataloader.train.dataset.names``).
        json_file: COCO instances json or LVIS v1 json.
        image_root: folder the image paths are relative to (see the module docstring for LVIS).
        fmt: "coco" or "lvis"; picks the evaluator and the image-path convention.
        check_files: check that every image file exists (one ``stat`` per image).

    Raises:
        DatasetError: the file is unusable (message names the file and the entry).
        ValueError: ``name`` is already registered or ``fmt`` is unknown.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if name in DatasetCatalog.list():
        raise ValueError(
            f"dataset {name!r} is already registered; call DatasetCatalog.remove({name!r}) first"
        )
    json_file, image_root = str(json_file), str(image_root)
    data = read_annotation_json(json_file)
    validate_dataset(data, json_file, image_root, fmt, check_files=check_files)
    meta = dataset_metadata(data, json_file, image_root, fmt)
    DatasetCatalog.register(
        name, functools.partial(load_dataset_dicts, json_file, image_root, fmt, check_files=False)
    )
    MetadataCatalog.get(name).set(**meta)
    logger.info(
        "Registered %s dataset %r: %d images, %d annotations, %d classes (image counts from %s), from %s",
        fmt.upper(),
        name,
        meta["num_images"],
        len(data["annotations"]),
        len(meta["thing_classes"]),
        meta["class_image_count_source"],
        json_file,
    )
    if meta["num_images_without_annotations"]:
        logger.info(
            "%r: %d of %d images have no annotations; evaluation keeps them, training skips them "
            "(DATALOADER.FILTER_EMPTY_ANNOTATIONS)",
            name,
            meta["num_images_without_annotations"],
            meta["num_images"],
        )
    return meta


def unregister_dataset(name: str) -> None:
    """Removes ``name`` from both catalogs (tests and notebooks re-register under the same name)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


class ImageFileError(RuntimeError):
    """An image that cannot be read or transformed; the message names the file."""


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` whose errors name the image file: a truncated or unreadable image, or one
    whose size the resize cannot handle (a 4000x16 strip scaled to zero rows), stops the run with the file's
    path, its size in the dataset and the reason, instead of a bare message from a data-loader worker."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except Exception as e:
            name = dataset_dict.get("file_name", "<no file_name>")
            size = f"{dataset_dict.get('width', '?')}x{dataset_dict.get('height', '?')}"
            raise ImageFileError(
                f"{name}: cannot use this image (size {size} (WxH) in the dataset): {type(e).__name__}: {e}"
            ) from e
