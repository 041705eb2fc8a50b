"""The "cocofied" LVIS annotations: the LVIS annotations of the 80 COCO classes under COCO category ids, to
evaluate a COCO detector with LVIS annotations (paper Table 8b; the authors'
``COCO/cascade_mask_rcnn_vitdet_eva_1536_lvis_annotation.py`` reads ``lvis_v1_val_cocofied``, which their
``detectron2/data/datasets/builtin.py`` registers as ``lvis/lvis_v1_val_5k_cocofied.json``).
``tools/make_cocofied_lvis.py`` writes the file with :func:`write_cocofied_lvis`.

Images: the authors' file is the 5k one, the LVIS v1 val images that are COCO val2017 images (LVIS image ids are
COCO image ids), so the file is built from the LVIS val file and COCO's val2017 file (:func:`val2017_subset`).
(The authors publish no script for that file, their ``datasets/prepare_cocofied_lvis.py`` writes the v0.5
files only; the image set follows from the name, COCO val2017 having 5k images.)
The other ~14.8k LVIS v1 val images are COCO train2017 images, which a COCO detector was trained on; the full
LVIS val is available on explicit request only and is not the authors' protocol.

Rules: an LVIS category maps to a COCO class through its WordNet synset (the LVIS project's official COCO-to-synset
table); annotations of other categories are dropped, the kept ones renumbered from 1 with COCO category ids;
each image's ``neg_category_ids`` / ``not_exhaustive_category_ids`` are mapped the same way (other ids dropped).
The categories are the COCO classes whose synset the file has, with COCO ids and names (so a COCO model's 80
classes match) and the LVIS category's other fields (frequency, image_count, synset).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from eva_transfer.checkpoint_io import write_bytes_atomic

__all__ = [
    "AUTHORS_SUBSET_FILE",
    "COCO_ID_OF_SYNSET",
    "coco_thing_names",
    "cocofy_lvis",
    "val2017_image_ids",
    "val2017_subset",
    "write_cocofied_lvis",
]

#: the file name the authors register ``lvis_v1_val_cocofied`` with (their ``builtin.py``)
AUTHORS_SUBSET_FILE = "lvis_v1_val_5k_cocofied.json"

#: LVIS synset -> COCO category id (the official mapping, lvis-api ``data/coco_to_synset.json``)
COCO_ID_OF_SYNSET = {
    "person.n.01": 1,
    "bicycle.n.01": 2,
    "car.n.01": 3,
    "motorcycle.n.01": 4,
    "airplane.n.01": 5,
    "bus.n.01": 6,
    "train.n.01": 7,
    "truck.n.01": 8,
    "boat.n.01": 9,
    "traffic_light.n.01": 10,
    "fireplug.n.01": 11,
    "stop_sign.n.01": 13,
    "parking_meter.n.01": 14,
    "bench.n.01": 15,
    "bird.n.01": 16,
    "cat.n.01": 17,
    "dog.n.01": 18,
    "horse.n.01": 19,
    "sheep.n.01": 20,
    "beef.n.01": 21,
    "elephant.n.01": 22,
    "bear.n.01": 23,
    "zebra.n.01": 24,
    "giraffe.n.01": 25,
    "backpack.n.01": 27,
    "umbrella.n.01": 28,
    "bag.n.04": 31,
    "necktie.n.01": 32,
    "bag.n.06": 33,
    "frisbee.n.01": 34,
    "ski.n.01": 35,
    "snowboard.n.01": 36,
    "ball.n.06": 37,
    "kite.n.03": 38,
    "baseball_bat.n.01": 39,
    "baseball_glove.n.01": 40,
    "skateboard.n.01": 41,
    "surfboard.n.01": 42,
    "tennis_racket.n.01": 43,
    "bottle.n.01": 44,
    "wineglass.n.01": 46,
    "cup.n.01": 47,
    "fork.n.01": 48,
    "knife.n.01": 49,
    "spoon.n.01": 50,
    "bowl.n.03": 51,
    "banana.n.02": 52,
    "apple.n.01": 53,
    "sandwich.n.01": 54,
    "orange.n.01": 55,
    "broccoli.n.01": 56,
    "carrot.n.01": 57,
    "frank.n.02": 58,
    "pizza.n.01": 59,
    "doughnut.n.02": 60,
    "cake.n.03": 61,
    "chair.n.01": 62,
    "sofa.n.01": 63,
    "pot.n.04": 64,
    "bed.n.01": 65,
    "dining_table.n.01": 67,
    "toilet.n.02": 70,
    "television_receiver.n.01": 72,
    "laptop.n.01": 73,
    "mouse.n.04": 74,
    "remote_control.n.01": 75,
    "computer_keyboard.n.01": 76,
    "cellular_telephone.n.01": 77,
    "microwave.n.02": 78,
    "oven.n.01": 79,
    "toaster.n.02": 80,
    "sink.n.01": 81,
    "electric_refrigerator.n.01": 82,
    "book.n.01": 84,
    "clock.n.01": 85,
    "vase.n.01": 86,
    "scissors.n.01": 87,
    "teddy.n.01": 88,
    "hand_blower.n.01": 89,
    "toothbrush.n.01": 90,
}


def coco_thing_names() -> dict[int, str]:
    """COCO category id -> name of the 80 thing classes (Detectron2's table)."""
    from eva_transfer_projects import compat

    compat.apply_detectron2()
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return {c["id"]: c["name"] for c in COCO_CATEGORIES if c.get("isthing", 1)}


def _check_lvis_lists(lvis: dict, source: str) -> None:
    for key in ("images", "annotations", "categories"):
        if not isinstance(lvis.get(key), list):
            raise ValueError(f"{source}: no '{key}' list; expected an LVIS annotation file")


def cocofy_lvis(lvis: dict, source: str = "<lvis json>") -> dict:
    """The cocofied version of an LVIS annotation dict (the input is not modified)."""
    _check_lvis_lists(lvis, source)
    missing = [c.get("id") for c in lvis["categories"] if "synset" not in c]
    if missing:
        raise ValueError(
            f"{source}: categories {missing[:5]} have no 'synset' field (LVIS categories carry one)"
        )
    to_coco = {
        c["id"]: COCO_ID_OF_SYNSET[c["synset"]]
        for c in lvis["categories"]
        if c["synset"] in COCO_ID_OF_SYNSET
    }
    names = coco_thing_names()
    out = {k: v for k, v in lvis.items() if k not in ("images", "annotations", "categories")}
    out["categories"] = sorted(
        (
            dict(c, id=to_coco[c["id"]], name=names[to_coco[c["id"]]])
            for c in lvis["categories"]
            if c["id"] in to_coco
        ),
        key=lambda c: c["id"],
    )
    anns = [a for a in lvis["annotations"] if a["category_id"] in to_coco]
    out["annotations"] = [dict(a, id=i, category_id=to_coco[a["category_id"]]) for i, a in enumerate(anns, 1)]
    images = []
    for img in lvis["images"]:
        img = dict(img)
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key not in img:
                raise ValueError(
                    f"{source}: image {img.get('id')} has no '{key}' field (LVIS images carry one)"
                )
            img[key] = [to_coco[c] for c in img[key] if c in to_coco]
        images.append(img)
    out["images"] = images
    return out


def _read_json(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in ``path``; ``FileNotFoundError`` / ``ValueError`` naming the file otherwise."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON file ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object ({what}), got {type(data).__name__}")
    return data


def val2017_image_ids(coco: dict, source: str = "<coco json>") -> set[int]:
    """The image ids of COCO's val2017 annotation file (``instances_val2017.json``, or any COCO file of the same
    images: only its ``images[*].id`` are read)."""
    images = coco.get("images")
    if not isinstance(images, list) or not images:
        raise ValueError(f"{source}: no 'images' list; expected COCO's instances_val2017.json")
    ids = set()
    for i, img in enumerate(images):
        if not isinstance(img, dict) or type(img.get("id")) is not int:
            raise ValueError(f"{source}: images[{i}] has no integer 'id'")
        ids.add(img["id"])
    return ids


def _url_folder(img: dict, source: str) -> str | None:
    """The folder of an LVIS image's ``coco_url`` (``train2017`` / ``val2017``), ``None`` without one."""
    url = img.get("coco_url")
    if url is None:
        return None
    if not isinstance(url, str) or url.count("/") < 1:
        raise ValueError(f"{source}: image {img.get('id')}: 'coco_url' is not a url, got {url!r}")
    return url.rstrip("/").split("/")[-2]


def val2017_subset(
    lvis: dict, val_ids: set[int], source: str = "<lvis json>", coco_source: str = "<coco json>"
):
    """The LVIS annotation dict restricted to the images whose id is in ``val_ids`` (COCO val2017's image ids) and
    their annotations; the other fields are kept. An image's ``coco_url`` must agree: a kept image outside
    ``val2017``, or a ``val2017`` image missing from ``val_ids``, means ``coco_source`` is not COCO's val2017 file
    (or the LVIS file is not LVIS's) and is an error."""
    _check_lvis_lists(lvis, source)
    for i, img in enumerate(lvis["images"]):
        if not isinstance(img, dict) or type(img.get("id")) is not int:
            raise ValueError(f"{source}: images[{i}] has no integer 'id'")
    kept = [img for img in lvis["images"] if img["id"] in val_ids]
    outside = [img["id"] for img in kept if _url_folder(img, source) not in (None, "val2017")]
    if outside:
        raise ValueError(
            f"{source}: images {outside[:5]} ({len(outside)} in all) are in {coco_source} but their 'coco_url' is "
            f"not in val2017; {coco_source} must be COCO's instances_val2017.json"
        )
    missing = [
        img["id"]
        for img in lvis["images"]
        if img["id"] not in val_ids and _url_folder(img, source) == "val2017"
    ]
    if missing:
        raise ValueError(
            f"{coco_source}: lacks images {missing[:5]} ({len(missing)} in all) that {source} has under val2017 "
            "('coco_url'); expected COCO's complete instances_val2017.json"
        )
    if not kept:
        raise ValueError(f"{source}: none of its images is in {coco_source} (COCO val2017)")
    for i, ann in enumerate(lvis["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise ValueError(f"{source}: annotations[{i}] has no 'image_id'")
    ids = {img["id"] for img in kept}
    return dict(lvis, images=kept, annotations=[a for a in lvis["annotations"] if a["image_id"] in ids])


def write_cocofied_lvis(
    lvis_json: str | os.PathLike, output: str | os.PathLike, coco_val2017_json: str | os.PathLike | None
) -> tuple[dict, dict]:
    """Reads the LVIS annotation file ``lvis_json``, writes its cocofied version to ``output`` (atomically; the
    folder is created) and returns ``(cocofied, original)``.

    ``coco_val2017_json``: COCO's ``instances_val2017.json``; the file then holds the LVIS images in it, the
    authors' 5k set (:data:`AUTHORS_SUBSET_FILE`). ``None`` keeps every LVIS image (for LVIS v1 val, ~14.8k COCO
    train2017 images among them: not the authors' protocol). Raises ``OSError`` for a missing or unreadable file
    and ``ValueError`` (naming the file and the field) for one that is not the file it should be."""
    lvis = _read_json(lvis_json, "LVIS annotation file")
    subset = lvis
    if coco_val2017_json is not None:
        coco = _read_json(coco_val2017_json, "COCO val2017 annotation file")
        val_ids = val2017_image_ids(coco, str(coco_val2017_json))
        subset = val2017_subset(lvis, val_ids, str(lvis_json), str(coco_val2017_json))
    out = cocofy_lvis(subset, str(lvis_json))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    write_bytes_atomic(json.dumps(out).encode(), output)
    return out, lvis
