"""Objects365 -> COCO/LVIS transfer: class-agnostic parts load unchanged, class-specific rows follow the class
names (case/separator/synonym-insensitive), unmatched classes and the background logit keep their fresh
initialisation. A file with the model's class count and no names (a released detector) is no transfer: it loads
by key and shape."""

import pytest
import torch
from detectron2.config import instantiate

from eva_transfer_projects.detection.checkpoint import EVADetectionCheckpointer
from eva_transfer_projects.detection.class_transfer import class_aliases, match_classes, normalize_class_name
from eva_transfer_projects.detection.engine import load_det_config

from .conftest import TINY_COCO

SOURCE = ["Person", "Monitor/TV", "Sofa", "Hair Dryer", "Street_Lights"]
TARGET = ["couch", "person", "zebra", "tv", "hair drier"]


def test_name_matching():
    assert normalize_class_name("Street_Lights") == "street lights"
    assert normalize_class_name("Hot-dog") == "hot dog"
    assert "tv" in class_aliases("Monitor/TV") and "monitor" in class_aliases("Monitor/TV")
    assert match_classes(SOURCE, TARGET) == {0: 2, 1: 0, 3: 1, 4: 3}
    # extra synonyms (LVIS categories carry them)
    assert match_classes(SOURCE, ["lamppost"], {"lamppost": ["street lights"]}) == {0: 4}


def _model(num_classes):
    cfg = load_det_config(TINY_COCO, [f"model.roi_heads.num_classes={num_classes}"])
    return instantiate(cfg.model).eval()


def test_o365_to_coco_rows(tmp_path, logged):
    source = _model(len(SOURCE))
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    EVADetectionCheckpointer(source, str(tmp_path), thing_classes=SOURCE).save("o365")

    torch.manual_seed(1)
    target = _model(len(TARGET))
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    log = logged("eva_transfer_projects.detection.checkpoint")
    EVADetectionCheckpointer(target, thing_classes=TARGET).load(str(tmp_path / "o365.pth"))
    out = log()
    assert "4 classes initialised from the source model by name" in out
    assert "1 classes re-initialised (no match): zebra" in out

    src, got = source.state_dict(), target.state_dict()
    pairs = {0: 2, 1: 0, 3: 1, 4: 3}  # target row <- source row
    for k in got:
        if k.endswith(("cls_score.weight", "cls_score.bias")):  # K + 1 rows, background last
            for j, i in pairs.items():
                torch.testing.assert_close(got[k][j], src[k][i])
            torch.testing.assert_close(got[k][2], fresh[k][2])  # zebra: fresh
            torch.testing.assert_close(got[k][-1], fresh[k][-1])  # background: fresh, as Detectron2 leaves it
        elif k.startswith("roi_heads.mask_head.predictor."):  # K rows
            for j, i in pairs.items():
                torch.testing.assert_close(got[k][j], src[k][i])
            torch.testing.assert_close(got[k][2], fresh[k][2])
        else:  # backbone, pyramid, RPN, box/mask head convs, class-agnostic box deltas
            torch.testing.assert_close(got[k], src[k], msg=k)


def test_unknown_source_classes_reinitialise(tmp_path, logged):
    source = _model(3)
    torch.save({"model": source.state_dict()}, tmp_path / "plain.pth")  # no class names in the file
    target = _model(4)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    log = logged("eva_transfer_projects.detection.checkpoint")
    EVADetectionCheckpointer(target, thing_classes=["a", "b", "c", "d"]).load(str(tmp_path / "plain.pth"))
    assert "4 classes re-initialised" in log()
    k = "roi_heads.box_predictor.2.cls_score.weight"
    torch.testing.assert_close(target.state_dict()[k][:4], fresh[k][:4])
    torch.testing.assert_close(target.state_dict()[k][4], fresh[k][4])  # background: fresh


def test_same_class_count_without_names_loads_as_stored(tmp_path, logged):
    source = _model(4)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    torch.save({"model": source.state_dict()}, tmp_path / "released.pth")  # no class names, as released files
    target = _model(4)
    log = logged("eva_transfer_projects.detection.checkpoint")
    checkpointer = EVADetectionCheckpointer(target, thing_classes=["a", "b", "c", "d"])
    checkpointer.load(str(tmp_path / "released.pth"))
    assert "class transfer" not in log()
    assert checkpointer.unloaded_keys() == []
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_source_class_names_must_fit_the_file(tmp_path):
    source = _model(3)
    torch.save({"model": source.state_dict()}, tmp_path / "plain.pth")
    target = _model(4)
    checkpointer = EVADetectionCheckpointer(target, thing_classes=list("abcd"), source_classes=list("abcde"))
    with pytest.raises(
        ValueError, match="source_classes names 5 classes but the checkpoint's class-specific"
    ):
        checkpointer.load(str(tmp_path / "plain.pth"))
