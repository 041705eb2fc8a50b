"""The cocofied LVIS file (COCO classes' LVIS annotations under COCO ids) and the config that evaluates a COCO
detector on it, as the authors' ``cascade_mask_rcnn_vitdet_eva_1536_lvis_annotation.py``: their
``builtin.py`` registers ``lvis_v1_val_cocofied`` as ``lvis/lvis_v1_val_5k_cocofied.json``, the LVIS v1 val
images that are COCO val2017 images."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eva_transfer_projects.detection.data.cocofied import (
    AUTHORS_SUBSET_FILE,
    coco_thing_names,
    cocofy_lvis,
    write_cocofied_lvis,
)
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
    returned, original = write_cocofied_lvis(src, dst, None)
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
        [sys.executable, str(REPO / "tools/make_cocofied_lvis.py"), str(src), str(again), "--all-val-images"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert (
        f"wrote {again}: 2 of 2 images (all, not the authors' 5k set), 2 of 3 annotations, 2 COCO classes"
        in run.stdout
    )
    assert json.loads(again.read_text()) == out


def test_cocofied_input_errors(tmp_path):
    bad = _lvis()
    del bad["categories"][0]["synset"]
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"lvis\.json: categories \[1\] have no 'synset'"):
        write_cocofied_lvis(path, tmp_path / "o.json", None)
    assert not (tmp_path / "o.json").exists()
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"lvis\.json: not a JSON file"):
        write_cocofied_lvis(path, tmp_path / "o.json", None)
    with pytest.raises(ValueError, match="no 'images'"):
        cocofy_lvis({"annotations": [], "categories": []}, "x.json")
    no_neg = _lvis()
    del no_neg["images"][1]["neg_category_ids"]
    with pytest.raises(ValueError, match="image 11 has no 'neg_category_ids'"):
        cocofy_lvis(no_neg, "x.json")


def test_cocofied_config_is_the_authors():
    cfg = load_det_config(str(REPO / "configs/detection/eva_g_coco_1536_lvis_annotation.py"))
    # the authors' name and their 5k file (builtin.py: "lvis_v1_val_cocofied": lvis/lvis_v1_val_5k_cocofied.json)
    assert cfg.dataloader.test.dataset.names == "lvis_v1_val_cocofied"
    assert [d["name"] for d in cfg.dataloader.datasets] == ["lvis_v1_val_cocofied"]
    assert AUTHORS_SUBSET_FILE == "lvis_v1_val_5k_cocofied.json"
    assert cfg.dataloader.datasets[0]["json_file"] == "datasets/lvis/lvis_v1_val_5k_cocofied.json"
    assert cfg.dataloader.datasets[0]["fmt"] == "lvis" and cfg.dataloader.evaluator.max_dets_per_image == 300
    assert cfg.dataloader.image_size == 1536 and cfg.train.checkpoint_load.rel_pos_resize == "beit"
    assert cfg.model.roi_heads.num_classes == 80 and cfg.model.roi_heads.soft_nms is None


# --- the authors' 5k set: the LVIS v1 val images that are COCO val2017 images -------------------------------------

_URL = "http://images.cocodataset.org/{}/{:012d}.jpg"


def _lvis_val():
    """LVIS v1 val in miniature: COCO train2017 images (101, 102) and val2017 images (201-203)."""
    cats = [
        dict(id=1, name="person", synset="person.n.01", frequency="f", image_count=9),
        dict(id=2, name="aerosol_can", synset="aerosol.n.02", frequency="r", image_count=1),
        dict(id=3, name="fireplug", synset="fireplug.n.01", frequency="c", image_count=3),
        dict(id=4, name="teddy_bear", synset="teddy.n.01", frequency="c", image_count=2),
        dict(id=5, name="toaster", synset="toaster.n.02", frequency="r", image_count=1),
    ]
    lists = {
        101: ([3], [5]),
        102: ([], []),
        201: ([2, 3], [4]),
        202: ([1], [2]),
        203: ([1, 2], []),
    }
    images = [
        dict(
            id=i,
            width=64,
            height=48,
            coco_url=_URL.format("train2017" if i < 200 else "val2017", i),
            neg_category_ids=neg,
            not_exhaustive_category_ids=not_exhaustive,
        )
        for i, (neg, not_exhaustive) in lists.items()
    ]
    box = dict(bbox=[1, 2, 10, 12], area=120, segmentation=[[1, 2, 11, 2, 11, 14, 1, 14]])
    placed = [(101, 5), (201, 1), (201, 2), (102, 1), (202, 3), (201, 4), (202, 2), (101, 1)]
    anns = [dict(id=10 + k, image_id=i, category_id=c, **box) for k, (i, c) in enumerate(placed)]
    return dict(info={"version": "1.0"}, licenses=[], images=images, annotations=anns, categories=cats)


def _coco_val2017(ids=(201, 202, 203, 204)):
    """COCO's instances_val2017.json in miniature (204: a val2017 image LVIS val does not have)."""
    images = [
        dict(id=i, file_name=f"{i:012d}.jpg", coco_url=_URL.format("val2017", i), width=64, height=48)
        for i in ids
    ]
    return dict(images=images, annotations=[], categories=[dict(id=1, name="person")])


#: the authors' synset -> COCO id entries for the synsets above (prepare_cocofied_lvis.py COCO_SYNSET_CATEGORIES)
_AUTHORS_COCO_ID = {"person.n.01": 1, "fireplug.n.01": 11, "teddy.n.01": 88, "toaster.n.02": 80}


def _authors_5k_reference(lvis, coco_val):
    """The authors' rules written out: the LVIS images that are COCO val2017 images (coco_url in val2017, id in
    COCO's val2017 file), then prepare_cocofied_lvis.py's cocofy_lvis on them: annotations of the COCO synsets,
    ids from 1 with COCO category ids; image category lists mapped; categories kept when some annotation or
    image list names them, with the LVIS fields and the COCO id."""
    val_ids = {im["id"] for im in coco_val["images"]}
    ref = copy.deepcopy(lvis)
    ref["images"] = [im for im in ref["images"] if "/val2017/" in im["coco_url"] and im["id"] in val_ids]
    kept_ids = {im["id"] for im in ref["images"]}
    synset = {c["id"]: c["synset"] for c in lvis["categories"]}
    used, annotations = set(), []
    for ann in ref["annotations"]:
        if ann["image_id"] in kept_ids and synset[ann["category_id"]] in _AUTHORS_COCO_ID:
            coco_id = _AUTHORS_COCO_ID[synset[ann["category_id"]]]
            annotations.append(dict(ann, id=len(annotations) + 1, category_id=coco_id))
            used.add(coco_id)
    ref["annotations"] = annotations
    for im in ref["images"]:
        for key in ("not_exhaustive_category_ids", "neg_category_ids"):
            im[key] = [_AUTHORS_COCO_ID[synset[c]] for c in im[key] if synset[c] in _AUTHORS_COCO_ID]
            used.update(im[key])
    ref["categories"] = [
        dict(c, id=_AUTHORS_COCO_ID[c["synset"]])
        for c in lvis["categories"]
        if c["synset"] in _AUTHORS_COCO_ID and _AUTHORS_COCO_ID[c["synset"]] in used
    ]
    return ref


def _write(tmp_path, lvis=None, coco=None):
    src, coco_file = tmp_path / "lvis_v1_val.json", tmp_path / "instances_val2017.json"
    src.write_text(json.dumps(_lvis_val() if lvis is None else lvis))
    coco_file.write_text(json.dumps(_coco_val2017() if coco is None else coco))
    return src, coco_file


def test_cocofied_5k_is_the_lvis_val_images_in_coco_val2017(tmp_path):
    src, coco_file = _write(tmp_path)
    dst = tmp_path / "out" / AUTHORS_SUBSET_FILE
    returned, original = write_cocofied_lvis(src, dst, coco_file)
    out = json.loads(dst.read_text())
    assert out == returned and original == _lvis_val()
    ref = _authors_5k_reference(_lvis_val(), _coco_val2017())
    # exactly the val2017 images, none of the train2017 ones
    assert [im["id"] for im in out["images"]] == [201, 202, 203]
    assert {k: v for k, v in out.items() if k != "categories"} == {
        k: v for k, v in ref.items() if k != "categories"
    }
    assert [(a["id"], a["image_id"], a["category_id"]) for a in out["annotations"]] == [
        (1, 201, 1),
        (2, 202, 11),
        (3, 201, 88),
    ]
    # categories: the reference's, with COCO names (the authors' Detectron2 names a cocofied set's classes with
    # COCO's metadata, lvis.py get_lvis_instances_meta); ours also keeps a COCO class that nothing in the subset
    # names (toaster: only in a train2017 image), which lvis-api does not evaluate (no positives, no negatives)
    names = coco_thing_names()
    by_id = {c["id"]: c for c in out["categories"]}
    assert [dict(c, name=names[c["id"]]) for c in ref["categories"]] == [
        by_id[c["id"]] for c in ref["categories"]
    ]
    assert sorted(set(by_id) - {c["id"] for c in ref["categories"]}) == [80]
    # the command line writes the same file and says what it kept
    again = tmp_path / "tool" / AUTHORS_SUBSET_FILE
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/make_cocofied_lvis.py"),
            str(src),
            str(again),
            "--coco-val2017",
            str(coco_file),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert (
        f"wrote {again}: 3 of 5 images (those in {coco_file}), 3 of 8 annotations, 4 COCO classes"
        in run.stdout
    )
    assert json.loads(again.read_text()) == out


def test_cocofied_5k_input_errors(tmp_path):
    src, coco_file = _write(tmp_path)
    out = tmp_path / "o.json"
    missing = tmp_path / "nowhere.json"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json: COCO val2017 annotation file not found"):
        write_cocofied_lvis(src, out, missing)
    coco_file.write_text("[1, 2")
    with pytest.raises(ValueError, match=r"instances_val2017\.json: not a JSON file"):
        write_cocofied_lvis(src, out, coco_file)
    bad = {
        r"instances_val2017\.json: no 'images' list": {"annotations": []},
        r"instances_val2017\.json: images\[1\] has no integer 'id'": dict(
            images=[{"id": 201}, {"id": "202"}]
        ),
        # COCO's train2017 file instead of val2017
        r"lvis_v1_val\.json: images \[101, 102\] \(2 in all\) are in .*instances_val2017\.json but their "
        r"'coco_url' is not in val2017": _coco_val2017(ids=(101, 102, 201, 202, 203)),
        r"instances_val2017\.json: lacks images \[202\] \(1 in all\)": _coco_val2017(ids=(201, 203)),
    }
    for message, coco in bad.items():
        coco_file.write_text(json.dumps(coco))
        with pytest.raises(ValueError, match=message):
            write_cocofied_lvis(src, out, coco_file)
    lvis = _lvis_val()
    lvis["images"][2]["coco_url"] = 7
    _write(tmp_path, lvis=lvis)
    with pytest.raises(ValueError, match=r"lvis_v1_val\.json: image 201: 'coco_url' is not a url, got 7"):
        write_cocofied_lvis(src, out, coco_file)
    assert not out.exists()
    # the command line names the file, and wants the image set said
    _write(tmp_path)
    tool = [sys.executable, str(REPO / "tools/make_cocofied_lvis.py"), str(src), str(out)]
    run = subprocess.run([*tool, "--coco-val2017", str(missing)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and f"error: {missing}: COCO val2017 annotation file not found" in run.stderr
    run = subprocess.run(tool, capture_output=True, text=True, timeout=300)
    assert (
        run.returncode == 2
        and "one of the arguments --coco-val2017 --all-val-images is required" in run.stderr
    )
    assert not out.exists()
