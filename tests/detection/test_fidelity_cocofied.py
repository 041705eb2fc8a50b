"""The cocofied LVIS file (COCO classes' LVIS annotations under COCO ids) and the config that evaluates a COCO
detector on it, as the authors' ``cascade_mask_rcnn_vitdet_eva_1536_lvis_annotation.py``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from eva_transfer_projects.detection.engine import load_det_config

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("make_cocofied_lvis", REPO / "tools/make_cocofied_lvis.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


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


def test_cocofied_file(tmp_path, capsys):
    src, dst = tmp_path / "lvis_v1_val.json", tmp_path / "out" / "lvis_v1_val_cocofied.json"
    src.write_text(json.dumps(_lvis()))
    assert tool.main([str(src), str(dst)]) == 0
    assert "2 of 3 annotations, 2 COCO classes" in capsys.readouterr().out
    out = json.loads(dst.read_text())
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


def test_cocofied_input_errors(tmp_path, capsys):
    bad = _lvis()
    del bad["categories"][0]["synset"]
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(bad))
    assert tool.main([str(path), str(tmp_path / "o.json")]) == 2
    assert "lvis.json: categories [1] have no 'synset'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no 'images'"):
        tool.cocofy_lvis({"annotations": [], "categories": []}, "x.json")


def test_cocofied_config_is_the_authors():
    cfg = load_det_config(str(REPO / "configs/detection/eva_g_coco_1536_lvis_annotation.py"))
    assert cfg.dataloader.test.dataset.names == "lvis_v1_val_cocofied"
    assert [d["name"] for d in cfg.dataloader.datasets] == ["lvis_v1_val_cocofied"]
    assert cfg.dataloader.datasets[0]["fmt"] == "lvis" and cfg.dataloader.evaluator.max_dets_per_image == 300
    assert cfg.dataloader.image_size == 1536 and cfg.train.checkpoint_load.rel_pos_resize == "beit"
    assert cfg.model.roi_heads.num_classes == 80 and cfg.model.roi_heads.soft_nms is None
