"""The fast evaluator equals pycocotools / lvis-api on the same results; boundary AP against an OpenCV reference."""

import copy
import json
import logging

import cv2
import numpy as np
import pytest
import torch

from eva_transfer_projects import compat

compat.apply()

from detectron2.structures import Boxes, Instances  # noqa: E402
from lvis import LVIS, LVISEval, LVISResults  # noqa: E402
from pycocotools import mask as mask_util  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from eva_transfer_bench.synthetic_predictions import make_predictions  # noqa: E402
from eva_transfer_projects.detection.data import make_synthetic_dataset, register_dataset  # noqa: E402
from eva_transfer_projects.detection.evaluation import COCOEvaluator, LVISEvaluator, build_evaluator  # noqa: E402
from eva_transfer_projects.detection.evaluation.fast_eval import evaluate_results, limit_detections_per_image  # noqa: E402

logging.getLogger("lvis").setLevel(logging.WARNING)
TOL = 1e-6


def _for_iou_type(results, iou_type):
    """What Detectron2 hands the official tools: boxes for "bbox", masks (area and box from the mask) otherwise."""
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    return [{k: v for k, v in r.items() if k != drop} for r in copy.deepcopy(results)]


@pytest.fixture(scope="module")
def coco_case(tmp_path_factory):
    """COCO ground truth with crowd regions, an 'ignore' flag, an image without objects; noisy results."""
    root = tmp_path_factory.mktemp("coco_eval")
    path = make_synthetic_dataset(root, "val", 24, image_size=(96, 128), fmt="coco", num_classes=5, seed=3)
    gt = json.loads(path.read_text())
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] != 7]  # an image with no objects
    for a in gt["annotations"][::9]:  # crowd regions, as uncompressed RLE like COCO's
        h, w = 96, 128
        m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w)))
        counts, prev, run = [], 0, 0
        for v in m.reshape(-1, order="F"):
            if v != prev:
                counts.append(run)
                prev, run = v, 0
            run += 1
        counts.append(run)
        a.update(iscrowd=1, segmentation={"counts": counts, "size": [h, w]})
    gt["annotations"][4]["ignore"] = 1  # pycocotools lets iscrowd decide; so must we
    path.write_text(json.dumps(gt))
    results = make_predictions(gt, dets_per_image=40, seed=4)
    assert any(a["iscrowd"] for a in gt["annotations"])
    return path, gt, results


@pytest.fixture(scope="module")
def lvis_case(tmp_path_factory):
    """LVIS ground truth with negative and not-exhaustive categories; more than 300 results on some images."""
    root = tmp_path_factory.mktemp("lvis_eval")
    path = make_synthetic_dataset(root, "val", 30, image_size=(112, 96), fmt="lvis", num_classes=8, seed=5)
    gt = json.loads(path.read_text())
    rng = np.random.default_rng(0)
    for img in gt["images"]:
        present = sorted({a["category_id"] for a in gt["annotations"] if a["image_id"] == img["id"]})
        if present and rng.random() < 0.4:
            img["not_exhaustive_category_ids"] = [int(rng.choice(present))]
    path.write_text(json.dumps(gt))
    results = make_predictions(gt, dets_per_image=25, seed=6)
    # 300 confident false positives on three images push their true detections past the 300 cap
    extra = make_predictions({**gt, "images": gt["images"][:3]}, dets_per_image=300, seed=7, miss_rate=1.0)
    results += [dict(r, score=0.99) for r in extra]
    assert any(img["neg_category_ids"] for img in gt["images"])
    return path, gt, results


def _pycocotools(path, results, iou_type):
    coco_gt = COCO(str(path))
    coco_dt = coco_gt.loadRes(_for_iou_type(results, iou_type))
    ev = COCOeval(coco_gt, coco_dt, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ev.stats[:6]))


def _lvis_api(path, results, iou_type, evaluator_class=LVISEval):
    lvis_gt = LVIS(str(path))
    lvis_dt = LVISResults(
        lvis_gt, _for_iou_type(results, "bbox" if iou_type == "bbox" else "segm"), max_dets=300
    )
    ev = evaluator_class(lvis_gt, lvis_dt, "bbox" if iou_type == "bbox" else "segm")
    ev.run()
    return dict(ev.get_results())


def _assert_equal(fast, ref, keys):
    for k in keys:
        assert fast[k] == pytest.approx(ref[k], abs=TOL), (k, fast[k], ref[k])


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_equals_pycocotools(coco_case, iou_type):
    path, _, results = coco_case
    fast = evaluate_results(path, results, iou_type, "coco")
    ref = _pycocotools(path, results, iou_type)
    _assert_equal(fast, ref, ref)
    assert 0.05 < fast["AP"] < 0.95  # neither trivial nor broken: the comparison means something


def test_crowd_regions_matter(coco_case):
    """Without its crowd flags the ground truth scores differently, and the fast evaluator follows pycocotools."""
    path, gt, results = coco_case
    plain = copy.deepcopy(gt)
    for a in plain["annotations"]:
        a["iscrowd"] = 0
    plain_path = path.with_name("no_crowd.json")
    plain_path.write_text(json.dumps(plain))
    fast_crowd = evaluate_results(path, results, "segm", "coco")
    fast_plain = evaluate_results(plain_path, results, "segm", "coco")
    assert abs(fast_crowd["AP"] - fast_plain["AP"]) > 1e-3
    _assert_equal(fast_plain, _pycocotools(plain_path, results, "segm"), ("AP", "AP50", "APs"))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_lvis_equals_lvis_api(lvis_case, iou_type):
    path, _, results = lvis_case
    fast = evaluate_results(path, results, iou_type, "lvis")
    ref = _lvis_api(path, results, iou_type)
    _assert_equal(fast, ref, ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"))
    assert all(fast[k] > 0 for k in ("APr", "APc", "APf"))


def test_lvis_rules_change_the_numbers(lvis_case):
    """Negative / not-exhaustive categories and the 300 cap each change AP; the comparison above covers them."""
    path, gt, results = lvis_case
    base = evaluate_results(path, results, "bbox", "lvis")["AP"]
    no_neg = copy.deepcopy(gt)
    for img in no_neg["images"]:
        img["neg_category_ids"] = []
    no_nel = copy.deepcopy(gt)
    for img in no_nel["images"]:
        img["not_exhaustive_category_ids"] = []
    assert evaluate_results(no_neg, results, "bbox", "lvis")["AP"] != pytest.approx(base, abs=1e-4)
    assert evaluate_results(no_nel, results, "bbox", "lvis")["AP"] != pytest.approx(base, abs=1e-4)
    assert evaluate_results(path, results, "bbox", "lvis", max_dets_per_image=1000)["AP"] != pytest.approx(
        base, abs=1e-6
    )
    kept = limit_detections_per_image(results, 300)
    assert max(np.unique([r["image_id"] for r in kept], return_counts=True)[1]) == 300


def _boundary(mask, ratio=0.02):
    """The Boundary IoU paper's boundary: the mask minus its erosion by ratio x diagonal pixels (OpenCV)."""
    h, w = mask.shape
    d = max(1, int(round(ratio * np.sqrt(h * h + w * w))))
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return mask - eroded


def _iou_matrix(a, b):
    a = np.stack([m.reshape(-1) for m in a]).astype(np.float64)
    b = np.stack([m.reshape(-1) for m in b]).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


class _BoundaryLVISEval(LVISEval):
    """lvis-api with the LVIS 2021 challenge IoU: min(mask IoU, boundary IoU)."""

    def compute_iou(self, img_id, cat_id):
        gt, dt = self._get_gt_dt(img_id, cat_id)
        if len(gt) == 0 or len(dt) == 0:
            return []
        dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")]
        g = [mask_util.decode(x["segmentation"]) for x in gt]
        d = [mask_util.decode(x["segmentation"]) for x in dt]
        mask_iou = _iou_matrix(d, g)
        boundary_iou = _iou_matrix([_boundary(m) for m in d], [_boundary(m) for m in g])
        return np.minimum(mask_iou, boundary_iou)


def test_lvis_boundary_ap_equals_reference(lvis_case):
    path, _, results = lvis_case
    few = [r for r in results if r["image_id"] <= 12]  # the reference is slow Python
    fast = evaluate_results(path, few, "boundary", "lvis", img_ids=range(1, 13))
    lvis_gt = LVIS(str(path))
    lvis_dt = LVISResults(lvis_gt, _for_iou_type(few, "segm"), max_dets=300)
    ev = _BoundaryLVISEval(lvis_gt, lvis_dt, "segm")
    ev.params.img_ids = list(range(1, 13))
    ev.run()
    ref = ev.get_results()
    _assert_equal(fast, ref, ("AP", "AP50", "AP75", "APs", "APm", "APr", "APc", "APf"))
    # boundary IoU is stricter than mask IoU
    assert fast["AP"] < evaluate_results(path, few, "segm", "lvis", img_ids=range(1, 13))["AP"]


def _instances(gt, image, results):
    """Detectron2 ``Instances`` carrying the given COCO-format results of one image (contiguous class ids)."""
    h, w = image["height"], image["width"]
    mine = [r for r in results if r["image_id"] == image["id"]]
    inst = Instances((h, w))
    boxes = torch.tensor([r["bbox"] for r in mine], dtype=torch.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    inst.pred_boxes = Boxes(boxes.float())
    inst.scores = torch.tensor([r["score"] for r in mine], dtype=torch.float32)
    inst.pred_classes = torch.tensor([r["category_id"] - 1 for r in mine], dtype=torch.int64)
    masks = [mask_util.decode(r["segmentation"]) for r in mine]
    inst.pred_masks = (
        torch.from_numpy(np.stack(masks).astype(bool)) if masks else torch.zeros(0, h, w, dtype=bool)
    )
    return inst


def test_detectron2_evaluator_perfect_and_noisy(coco_case, registered, tmp_path):
    path, gt, results = coco_case
    registered.append("eval_coco")
    register_dataset("eval_coco", path, path.parent.parent / "val")
    evaluator = build_evaluator("eval_coco", output_dir=str(tmp_path))
    assert isinstance(evaluator, COCOEvaluator)

    # the ground truth itself, as predictions: 100 AP for boxes and masks
    perfect = []
    for a in gt["annotations"]:
        if a["iscrowd"]:
            continue
        rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], 96, 128))
        perfect.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": a["bbox"],
                "score": 1.0,
                "segmentation": rle,
            }
        )
    evaluator.reset()
    for img in gt["images"]:
        evaluator.process([{"image_id": img["id"]}], [{"instances": _instances(gt, img, perfect)}])
    out = evaluator.evaluate()
    assert out["bbox"]["AP"] == pytest.approx(100.0) and out["segm"]["AP"] == pytest.approx(100.0)
    assert "boundary" not in out and np.isnan(out["bbox"]["APl"])

    # noisy predictions through process(): equal to evaluate_results on the same json the evaluator saved
    evaluator.reset()
    for img in gt["images"]:
        evaluator.process([{"image_id": img["id"]}], [{"instances": _instances(gt, img, results)}])
    out = evaluator.evaluate()
    saved = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(saved) == len(results)
    for task in ("bbox", "segm"):
        ref = _pycocotools(path, saved, task)
        for k in ("AP", "AP50", "AP75", "APs", "APm"):
            assert out[task][k] == pytest.approx(100 * ref[k], abs=1e-4)
    assert sum(k.startswith("AP-") for k in out["bbox"]) == 5


def test_lvis_evaluator_reports_boundary(lvis_case, registered):
    path, gt, results = lvis_case
    registered.append("eval_lvis")
    register_dataset("eval_lvis", path, path.parent.parent, fmt="lvis")
    evaluator = build_evaluator("eval_lvis")
    assert isinstance(evaluator, LVISEvaluator) and evaluator.max_dets_per_image == 300
    few = [r for r in results if r["image_id"] <= 6]
    for img in gt["images"][:6]:
        evaluator.process([{"image_id": img["id"]}], [{"instances": _instances(gt, img, few)}])
    out = evaluator.evaluate(img_ids=range(1, 7))
    assert set(out) == {"bbox", "segm", "boundary"}
    # one cached ground truth serves the three tasks: each equals a fresh evaluation
    for task in ("bbox", "segm", "boundary"):
        fresh = evaluate_results(path, few, task, "lvis", img_ids=range(1, 7))
        for k in ("AP", "APr", "APc", "APf"):
            expected = 100 * fresh[k] if fresh[k] >= 0 else np.nan
            np.testing.assert_allclose(out[task][k], expected, atol=1e-4, err_msg=f"{task} {k}")


def test_evaluator_needs_a_registered_json():
    with pytest.raises(ValueError, match="json_file"):
        COCOEvaluator("never_registered_dataset")


def test_empty_results_score_zero(coco_case):
    path, _, _ = coco_case
    metrics = evaluate_results(path, [], "bbox", "coco")
    assert metrics["AP"] == 0.0


def test_results_for_unknown_images_are_an_error(coco_case):
    path, _, results = coco_case
    with pytest.raises(ValueError, match=r"image ids not in the ground truth: \[4242\]"):
        evaluate_results(path, results[:5] + [dict(results[0], image_id=4242)], "bbox", "coco")


def test_lvis_metadata_without_id_map_uses_one_based_ids():
    """Detectron2's built-in LVIS metadata has no id map; its category ids are contiguous ids + 1."""
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("lvis_like_builtin").set(
        json_file="unused.json", thing_classes=["a", "b", "c"], evaluator_type="lvis"
    )
    try:
        assert build_evaluator("lvis_like_builtin").contiguous_to_dataset_id == {0: 1, 1: 2, 2: 3}
    finally:
        MetadataCatalog.remove("lvis_like_builtin")


def test_evaluator_without_predictions_reports_zeros_and_the_table(coco_case, registered, caplog):
    import logging

    from detectron2.data import MetadataCatalog
    from detectron2.structures import Boxes, Instances

    path, gt, _ = coco_case
    registered.append("eval_coco_empty")
    register_dataset("eval_coco_empty", path, path.parent.parent / "val")
    evaluator = build_evaluator("eval_coco_empty")
    for img in gt["images"]:
        empty = Instances((96, 128), pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0))
        empty.pred_classes = torch.zeros(0, dtype=torch.int64)
        empty.pred_masks = torch.zeros(0, 96, 128, dtype=torch.bool)
        evaluator.process([{"image_id": img["id"]}], [{"instances": empty}])
    with caplog.at_level(logging.INFO, logger="eva_transfer_projects.detection.evaluation.evaluators"):
        out = evaluator.evaluate()
    assert set(out) == {"bbox", "segm"}
    names = MetadataCatalog.get("eval_coco_empty").thing_classes
    with_gt = {c["category_id"] for c in gt["annotations"]}
    for task in ("bbox", "segm"):
        assert out[task]["AP"] == 0.0 and out[task]["AP50"] == 0.0
        per_class = {k[3:]: v for k, v in out[task].items() if k.startswith("AP-")}
        assert set(per_class) == set(names)
        assert all(v == 0.0 for v in per_class.values()) and len(with_gt) == len(names)
    assert "no predictions; every AP is 0" in caplog.text
    assert caplog.text.count("Per-category bbox AP of eval_coco_empty") == 1
    table = caplog.text.split("Per-category bbox AP of eval_coco_empty:\n", 1)[1]
    assert all(name in table for name in names) and "0.000" in table


def test_ground_truth_reader_equals_the_json_module(lvis_case, tmp_path):
    """The evaluators read ground truth with orjson; what they get is what the json module gives, including the
    files orjson refuses (NaN literals) and the json module's error for a malformed file."""
    from eva_transfer_projects.detection.evaluation.fast_eval import read_json

    gt_file = lvis_case[0]
    with open(gt_file) as f:
        assert read_json(gt_file) == json.load(f)
    tricky = {
        "floats": [0.1, 1e-320, 2.5e308, -0.0, 123456789.123456789, 1 / 3],
        "ints": [0, -1, 2**63 - 1],
        "text": 'caf\u00e9 \u2603 \\ "quoted"',
        "nested": [{"a": [], "b": {}}],
    }
    path = tmp_path / "tricky.json"
    path.write_text(json.dumps(tricky))
    got = read_json(path)
    assert got == json.loads(path.read_text()) == tricky
    assert [float(x).hex() for x in got["floats"]] == [float(x).hex() for x in tricky["floats"]]
    nan_file = tmp_path / "nan.json"
    nan_file.write_text('{"area": NaN, "x": Infinity}')  # the json module accepts these; orjson does not
    got = read_json(nan_file)
    assert np.isnan(got["area"]) and got["x"] == float("inf")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [1, 2,}')
    with pytest.raises(json.JSONDecodeError):
        read_json(bad)


@pytest.mark.parametrize("style", ["coco", "lvis"])
def test_a_result_without_a_needed_field_is_named(lvis_case, style):
    gt_file, _, results = lvis_case
    broken = copy.deepcopy(results[:50])
    del broken[17]["score"]
    with pytest.raises(KeyError, match=r"result 17 \(image_id \d+\) has no \['score'\], needed for bbox"):
        evaluate_results(gt_file, broken, "bbox", style)
    with pytest.raises(KeyError, match=r"result 0 .* has no \['segmentation'\], needed for segm"):
        evaluate_results(
            gt_file, [{k: v for k, v in r.items() if k != "segmentation"} for r in broken], "segm", style
        )
    assert evaluate_results(gt_file, [], "segm", style)["AP"] in (0.0, -1.0)


# -------------------- LVIS evaluation equals lvis-api on its edge rules (zero-area results and ground truth left out, ``ignore``
# honoured and ``iscrowd`` not, images without the federated fields refused)
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


def _lvis_api_as_given(path, results, iou_type):
    """lvis-api on ``results`` as they are (both fields kept, whatever ``iou_type``)."""
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
    ref = _lvis_api_as_given(path, results, iou_type)
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
    ref = _lvis_api_as_given(path, results, "bbox")
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
        _lvis_api_as_given(path, results, "bbox")  # lvis-api refuses the file too
    with pytest.raises(ValueError, match=rf"gt\.json: image 1 has no '{field}'"):
        evaluate_results(path, results, "bbox", "lvis")
    assert evaluate_results(path, results, "bbox", "coco")["AP"] == pytest.approx(1.0)  # fine as COCO
