"""The "cocofied" LVIS annotations: the LVIS annotations of the 80 COCO classes under COCO category ids, to
evaluate a COCO detector with LVIS annotations (paper Table 8b; the authors'
``COCO/cascade_mask_rcnn_vitdet_eva_1536_lvis_annotation.py`` reads ``lvis_v1_val_cocofied``).
``tools/make_cocofied_lvis.py`` writes the file with :func:`write_cocofied_lvis`.

Rules: an LVIS category maps to a COCO class through its WordNet synset (the LVIS project's official COCO-to-synset
table); annotations of other categories are dropped, the kept ones renumbered from 1 with COCO category ids;
each image's ``neg_category_ids`` / ``not_exhaustive_category_ids`` are mapped the same way (other ids dropped).
The categories are the COCO classes whose synset the file has, with COCO ids and names (so a COCO model's 80
classes match) and the LVIS category's other fields (frequency, image_count, synset).
"""

from __future__ import annotations

import json
import os

from eva_transfer.checkpoint import write_bytes_atomic

__all__ = ["COCO_ID_OF_SYNSET", "coco_thing_names", "cocofy_lvis", "write_cocofied_lvis"]

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


def cocofy_lvis(lvis: dict, source: str = "<lvis json>") -> dict:
    """The cocofied version of an LVIS annotation dict (the input is not modified)."""
    for key in ("images", "annotations", "categories"):
        if key not in lvis:
            raise ValueError(f"{source}: no '{key}' list; expected an LVIS annotation file")
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


def write_cocofied_lvis(lvis_json: str | os.PathLike, output: str | os.PathLike) -> tuple[dict, dict]:
    """Reads the LVIS annotation file ``lvis_json``, writes its cocofied version to ``output`` (atomically; the
    folder is created) and returns ``(cocofied, original)``. Raises ``OSError`` for an unreadable file and
    ``ValueError`` (naming the file) for one that is not an LVIS annotation file."""
    with open(lvis_json) as f:
        try:
            lvis = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{lvis_json}: not a JSON file ({e})") from e
    out = cocofy_lvis(lvis, str(lvis_json))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    write_bytes_atomic(json.dumps(out).encode(), output)
    return out, lvis
