"""Loading backbone-only checkpoints through the core converter, refusing another backbone's checkpoint, and
atomic saves."""

import pytest
import torch
from detectron2.config import instantiate

from eva_transfer.checkpoint_io import CheckpointError
from eva_transfer.presets import build_eva_vit
from eva_transfer_projects.detection.checkpoint import EVADetectionCheckpointer
from eva_transfer_projects.detection.engine import load_det_config

from .conftest import TINY_COCO


def _model(*overrides):
    return instantiate(load_det_config(TINY_COCO, list(overrides)).model)


def test_eva_mim_backbone_checkpoint(tmp_path, logged):
    # an EVA MIM-style file: {"model": {cls_token, mask_token, pos_embed, patch_embed, blocks, norm, lm_head}}
    mim = build_eva_vit("eva_tiny", use_mask_token=True)
    sd = dict(mim.state_dict())
    sd["lm_head.weight"] = torch.randn(32, 64)
    torch.save({"model": sd, "epoch": 3}, tmp_path / "eva_mim.pth")
    model = _model()
    head_before = model.roi_heads.box_predictor[0].cls_score.weight.clone()
    log = logged("eva_transfer_projects.detection.checkpoint")
    EVADetectionCheckpointer(model).load(str(tmp_path / "eva_mim.pth"))
    out = log()
    assert "loaded" in out.lower() and "mask_token" in out  # the converter's report, with what it dropped
    net = model.backbone.net
    torch.testing.assert_close(net.blocks[2].mlp.fc1.weight, sd["blocks.2.mlp.fc1.weight"])
    torch.testing.assert_close(net.patch_embed.proj.weight, sd["patch_embed.proj.weight"])
    torch.testing.assert_close(model.roi_heads.box_predictor[0].cls_score.weight, head_before)


def test_checkpoint_of_another_backbone_is_a_clear_error(tmp_path):
    EVADetectionCheckpointer(_model(), str(tmp_path)).save("tiny64")
    wider = _model("model.backbone.net.embed_dim=96")
    with pytest.raises(CheckpointError, match=r"tiny64\.pth.*(shape|width)"):
        EVADetectionCheckpointer(wider).load(str(tmp_path / "tiny64.pth"))
    deeper = _model("model.backbone.net.depth=6")
    with pytest.raises(CheckpointError, match="blocks"):
        EVADetectionCheckpointer(deeper).load(str(tmp_path / "tiny64.pth"))


def test_save_is_atomic_and_roundtrips(tmp_path):
    model = _model()
    ck = EVADetectionCheckpointer(model, str(tmp_path), thing_classes=["a"] * 6)
    ck.save("model_0000009", iteration=9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    other = _model()
    extra = EVADetectionCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_load_report_is_logged_once_by_the_main_process(tmp_path, logged, monkeypatch):
    import eva_transfer_projects.detection.checkpoint as det_checkpoint

    path = tmp_path / "eva_mim.pth"
    torch.save({"model": build_eva_vit("eva_tiny").state_dict()}, path)
    core, det = logged("eva_transfer.convert"), logged("eva_transfer_projects.detection.checkpoint")
    EVADetectionCheckpointer(_model()).load(str(path))
    assert det().startswith(f"checkpoint {path}") and det().count("  loaded: ") == 1
    assert "  loaded: " not in core()  # the core logs it at DEBUG only here: one report, not two
    monkeypatch.setattr(det_checkpoint.comm, "is_main_process", lambda: False)
    EVADetectionCheckpointer(_model()).load(str(path))
    assert det().count("  loaded: ") == 1  # other processes load silently
