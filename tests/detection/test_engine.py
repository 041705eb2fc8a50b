"""--eval-only never scores weights that were not loaded; --eval-only --resume evaluates the output folder's last
checkpoint; resuming falls back to the previous intact checkpoint when the newest is damaged."""

from __future__ import annotations

import logging

import pytest
import torch

from eva_transfer.checkpoint_io import save_checkpoint
from eva_transfer_projects.detection import engine
from eva_transfer_projects.detection.checkpoint import EVADetectionCheckpointer

from .conftest import TINY_COCO


@pytest.fixture
def cfg(synthetic_root, tmp_path):
    cfg = engine.load_det_config(
        TINY_COCO, [f"dataloader.synthetic_root={synthetic_root}", f"train.output_dir={tmp_path / 'run'}"]
    )
    cfg.dataloader.datasets = [cfg.dataloader.datasets[1]]  # the 60 validation images only
    cfg.dataloader.train.dataset.names = cfg.dataloader.test.dataset.names
    engine.setup_datasets(cfg)
    return cfg


@pytest.fixture
def evaluated(monkeypatch):
    """Replaces the evaluation loop: records the weights the model was evaluated with."""
    seen = []
    monkeypatch.setattr(engine, "do_test", lambda cfg, model: seen.append(model.state_dict()) or {"bbox": {}})
    return seen


def _trained_state(cfg, value: float) -> dict:
    model = engine.build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model.state_dict()


def _save_two_checkpoints(cfg) -> None:
    """``model_0000004.pth`` (every weight 0.03) and ``model_0000009.pth`` (0.05) in ``train.output_dir``."""
    model = engine.build_model(cfg)
    ckpt = EVADetectionCheckpointer(
        model, cfg.train.output_dir, thing_classes=engine.thing_classes(cfg, "test")
    )
    for iteration, value in ((4, 0.03), (9, 0.05)):
        model.load_state_dict(_trained_state(cfg, value))
        ckpt.save(f"model_{iteration:07d}", iteration=iteration)


def test_eval_only_refuses_a_backbone_only_checkpoint(cfg, evaluated, tmp_path):
    backbone = {
        k[len("backbone.net.") :]: v
        for k, v in _trained_state(cfg, 0.01).items()
        if k.startswith("backbone.net.")
    }
    path = tmp_path / "backbone_only.pth"
    save_checkpoint({"model": backbone}, path)
    cfg.train.init_checkpoint = str(path)
    with pytest.raises(
        engine.WeightsNotLoadedError, match=r"backbone_only\.pth.* does not set \d+ of the model's"
    ):
        engine.do_eval_only(cfg)
    assert not evaluated
    engine.do_eval_only(cfg, allow_missing_weights=True)  # the explicit flag evaluates anyway
    assert len(evaluated) == 1


def test_eval_only_refuses_no_checkpoint_and_a_foreign_one(cfg, evaluated, tmp_path):
    cfg.train.init_checkpoint = ""
    with pytest.raises(engine.WeightsNotLoadedError, match="train.init_checkpoint=''"):
        engine.do_eval_only(cfg)
    foreign = _trained_state(cfg, 0.02)
    foreign = {
        k: v for k, v in foreign.items() if not k.startswith("roi_heads.")
    }  # a detector without our heads
    path = tmp_path / "other_detector.pth"
    save_checkpoint({"model": foreign}, path)
    cfg.train.init_checkpoint = str(path)
    with pytest.raises(engine.WeightsNotLoadedError, match=r"roi_heads\."):
        engine.do_eval_only(cfg)
    assert not evaluated


def test_eval_only_resume_evaluates_the_last_checkpoint(cfg, evaluated):
    with pytest.raises(FileNotFoundError, match="no checkpoint in train.output_dir"):
        engine.do_eval_only(cfg, resume=True)
    _save_two_checkpoints(cfg)
    cfg.train.init_checkpoint = ""  # --resume must not fall back to it
    engine.do_eval_only(cfg, resume=True)
    weights = evaluated[-1]
    assert all(torch.all(v == 0.05) for k, v in weights.items() if v.is_floating_point() and "norm" not in k)


def test_resume_falls_back_to_the_previous_intact_checkpoint(cfg, evaluated, caplog):
    out = cfg.train.output_dir
    _save_two_checkpoints(cfg)
    newest = f"{out}/model_0000009.pth"
    with open(newest, "rb") as f:
        data = f.read()
    with open(newest, "wb") as f:
        f.write(data[: len(data) // 3])  # a truncated newest checkpoint
    fresh = engine.build_model(cfg)
    with caplog.at_level(logging.WARNING):
        extra = EVADetectionCheckpointer(fresh, out).resume_or_load("", resume=True)
    assert extra["iteration"] == 4
    assert torch.all(fresh.roi_heads.box_predictor[0].cls_score.weight == 0.03)
    assert any("model_0000009.pth" in r.getMessage() and "previous" in r.getMessage() for r in caplog.records)
    engine.do_eval_only(cfg, resume=True)  # evaluation takes the same fallback
    assert torch.all(evaluated[-1]["roi_heads.box_predictor.0.cls_score.weight"] == 0.03)


def test_eval_only_refuses_class_rows_it_had_to_reinitialise(cfg, evaluated, tmp_path):
    """A detector checkpoint without class names, for classes that cannot be matched: its class rows would be
    rebuilt at random."""
    path = tmp_path / "no_class_names.pth"
    save_checkpoint({"model": _trained_state(cfg, 0.04)}, path)
    cfg.train.init_checkpoint = str(path)
    cfg.train.source_classes = [f"class_{i}" for i in range(6)]
    with pytest.raises(engine.WeightsNotLoadedError, match=r"cls_score\.weight \(rows of 6 classes"):
        engine.do_eval_only(cfg)
    assert not evaluated


def test_detection_checkpoints_have_normal_permissions_and_clean_up_temporaries(cfg, tmp_path):
    import os
    import stat

    out = tmp_path / "perm"
    out.mkdir()
    stale = out / ".last_checkpoint.ab12cd34.tmp"
    stale.write_text("model_0000001.pth")
    os.utime(stale, (0, 0))  # left long ago by a killed write
    old = os.umask(0o022)
    try:
        EVADetectionCheckpointer(engine.build_model(cfg), str(out)).save("model_0000002", iteration=2)
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == ["last_checkpoint", "model_0000002.pth"]
    for name in ("last_checkpoint", "model_0000002.pth"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644
