"""LVIS evaluation equals lvis-api on its edge rules: zero-area results and ground truth left out, ``ignore``
honoured and ``iscrowd`` not, images without the federated fields refused."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from eva_transfer_projects import compat

compat.apply()

from lvis import LVIS, LVISEval, LVISResults  # noqa: E402
from pycocotools import mask as mask_util  # noqa: E402

from eva_transfer_projects.detection.evaluation.fast_eval import evaluate_results  # noqa: E402

logging.getLogger("lvis").setLevel(logging.WARNING)


def _box_ann(i, image_id, cat, x, y, w, h, **extra):
    poly = [x, y, x + w, y, x + w, y + h, x, y + h]
    return dict(
        id=i, image_id=image_id, category_id=cat, bbox=[x, y, w, h], area=w * h, segmentation=[poly], **extra
    )


def _gt(annotations, **image_fields):
    image = dict(id=1, width=100, height=80, neg_category_ids=[2], not_exhaustive_category_ids=[])
    image.update(image_fields)
    return dict(
        images=[image],
        categories=[dict(id=1, name="a", frequency="f"), dict(id=2, name="b", frequency="c")],
        annotations=annotations,
    )


def _mask_rle(x, y, w, h):
    import numpy as np

    m = np.zeros((80, 100), np.uint8, order="F")
    m[y : y + h, x : x + w] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    return rle


def _lvis_api(path, results, iou_type):
    gt = LVIS(str(path))
    ev = LVISEval(gt, LVISResults(gt, copy.deepcopy(results), max_dets=300), iou_type)
    ev.run()
    return dict(ev.get_results())


def _write(tmp_path, gt, name="gt.json"):
    path = tmp_path / name
    path.write_text(json.dumps(gt))
    return path


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_zero_area_results_are_left_out(tmp_path, iou_type):
    path = _write(tmp_path, _gt([_box_ann(1, 1, 1, 10, 10, 30, 20)]))
    if iou_type == "bbox":
        results = [
            dict(image_id=1, category_id=1, score=0.95, bbox=[50.0, 50.0, 0.0, 10.0]),  # degenerate box
            dict(image_id=1, category_id=1, score=0.9, bbox=[10.0, 10.0, 30.0, 20.0]),
        ]
    else:
        results = [
            dict(image_id=1, category_id=1, score=0.95, segmentation=_mask_rle(0, 0, 0, 0)),  # empty mask
            dict(image_id=1, category_id=1, score=0.9, segmentation=_mask_rle(10, 10, 30, 20)),
        ]
    ref = _lvis_api(path, results, iou_type)
    ours = evaluate_results(path, results, iou_type, "lvis")
    assert ref["AP"] == pytest.approx(1.0)
    assert ours["AP"] == pytest.approx(ref["AP"], abs=1e-6)


def test_ignore_is_honoured_and_iscrowd_is_not(tmp_path):
    anns = [
        _box_ann(1, 1, 1, 5, 5, 20, 20),
        _box_ann(2, 1, 1, 40, 10, 20, 30, ignore=1),
        _box_ann(3, 1, 1, 70, 40, 25, 30, iscrowd=1),
        _box_ann(4, 1, 2, 10, 50, 20, 20, ignore=1, iscrowd=1),
    ]
    path = _write(tmp_path, _gt(anns, neg_category_ids=[]))
    results = [
        dict(image_id=1, category_id=1, score=0.9, bbox=[41.0, 11.0, 20.0, 30.0]),  # on the ignored object
        dict(image_id=1, category_id=1, score=0.8, bbox=[70.0, 40.0, 25.0, 30.0]),  # on the crowd-flagged one
        dict(
            image_id=1, category_id=1, score=0.7, bbox=[75.0, 45.0, 10.0, 10.0]
        ),  # inside it: no crowd match
        dict(image_id=1, category_id=1, score=0.6, bbox=[5.0, 5.0, 20.0, 20.0]),
        dict(image_id=1, category_id=2, score=0.5, bbox=[10.0, 50.0, 20.0, 20.0]),
    ]
    ref = _lvis_api(path, results, "bbox")
    ours = evaluate_results(path, results, "bbox", "lvis")
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APf", "APc"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), (key, ours[key], ref[key])
    assert 0 < ref["AP"] < 1


@pytest.mark.parametrize("field", ["neg_category_ids", "not_exhaustive_category_ids"])
def test_missing_federated_field_is_an_error(tmp_path, field):
    gt = _gt([_box_ann(1, 1, 1, 10, 10, 30, 20)])
    del gt["images"][0][field]
    path = _write(tmp_path, gt)
    results = [dict(image_id=1, category_id=1, score=0.9, bbox=[10.0, 10.0, 30.0, 20.0])]
    with pytest.raises(KeyError):
        _lvis_api(path, results, "bbox")  # lvis-api refuses the file too
    with pytest.raises(ValueError, match=rf"gt\.json: image 1 has no '{field}'"):
        evaluate_results(path, results, "bbox", "lvis")
    assert evaluate_results(path, results, "bbox", "coco")["AP"] == pytest.approx(1.0)  # fine as COCO
