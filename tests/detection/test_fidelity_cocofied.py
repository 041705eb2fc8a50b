"""The cocofied LVIS file (COCO classes' LVIS annotations under COCO ids) and the config that evaluates a COCO
detector on it, as the authors' ``cascade_mask_rcnn_vitdet_eva_1536_lvis_annotation.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eva_transfer_projects.detection.data.cocofied import cocofy_lvis, write_cocofied_lvis
from eva_transfer_projects.detection.engine import load_det_config

REPO = Path(__file__).resolve().parents[2]


def _lvis():
    cats = [
        dict(id=1, name="fireplug", synset="fireplug.n.01", frequency="c", image_count=3),
        dict(id=2, name="aerosol_can", synset="aerosol.n.02", frequency="r", image_count=1),
        dict(id=3, name="person", synset="person.n.01", frequency="f", image_count=9),
    ]
    images = [
        dict(id=10, width=64, height=48, neg_category_ids=[2, 3], not_exhaustive_category_ids=[1]),
        dict(id=11, width=64, height=48, neg_category_ids=[], not_exhaustive_category_ids=[2]),
    ]
    box = dict(bbox=[1, 2, 10, 12], area=120, segmentation=[[1, 2, 11, 2, 11, 14, 1, 14]])
    anns = [
        dict(id=5, image_id=10, category_id=1, **box),
        dict(id=6, image_id=10, category_id=2, **box),
        dict(id=7, image_id=11, category_id=3, **box),
    ]
    return dict(info={"v": 1}, images=images, annotations=anns, categories=cats)


def test_cocofied_file(tmp_path):
    src, dst = tmp_path / "lvis_v1_val.json", tmp_path / "out" / "lvis_v1_val_cocofied.json"
    src.write_text(json.dumps(_lvis()))
    returned, original = write_cocofied_lvis(src, dst)
    out = json.loads(dst.read_text())
    assert out == returned and original == _lvis()
    assert [(c["id"], c["name"], c["frequency"]) for c in out["categories"]] == [
        (1, "person", "f"),
        (11, "fire hydrant", "c"),
    ]
    assert [(a["id"], a["image_id"], a["category_id"]) for a in out["annotations"]] == [
        (1, 10, 11),
        (2, 11, 1),
    ]
    assert [(i["neg_category_ids"], i["not_exhaustive_category_ids"]) for i in out["images"]] == [
        ([1], [11]),
        ([], []),
    ]
    assert out["info"] == {"v": 1}
    # the command line writes the same file and says what it kept
    again = tmp_path / "tool" / "cocofied.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "tools/make_cocofied_lvis.py"), str(src), str(again)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert f"wrote {again}: 2 of 3 annotations, 2 COCO classes, 2 images" in run.stdout
    assert json.loads(again.read_text()) == out


def test_cocofied_input_errors(tmp_path):
    bad = _lvis()
    del bad["categories"][0]["synset"]
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"lvis\.json: categories \[1\] have no 'synset'"):
        write_cocofied_lvis(path, tmp_path / "o.json")
    assert not (tmp_path / "o.json").exists()
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"lvis\.json: not a JSON file"):
        write_cocofied_lvis(path, tmp_path / "o.json")
    with pytest.raises(ValueError, match="no 'images'"):
        cocofy_lvis({"annotations": [], "categories": []}, "x.json")
    no_neg = _lvis()
    del no_neg["images"][1]["neg_category_ids"]
    with pytest.raises(ValueError, match="image 11 has no 'neg_category_ids'"):
        cocofy_lvis(no_neg, "x.json")


def test_cocofied_config_is_the_authors():
    cfg = load_det_config(str(REPO / "configs/detection/eva_g_coco_1536_lvis_annotation.py"))
    assert cfg.dataloader.test.dataset.names == "lvis_v1_val_cocofied"
    assert [d["name"] for d in cfg.dataloader.datasets] == ["lvis_v1_val_cocofied"]
    assert cfg.dataloader.datasets[0]["fmt"] == "lvis" and cfg.dataloader.evaluator.max_dets_per_image == 300
    assert cfg.dataloader.image_size == 1536 and cfg.train.checkpoint_load.rel_pos_resize == "beit"
    assert cfg.model.roi_heads.num_classes == 80 and cfg.model.roi_heads.soft_nms is None
