"""A shortened detection run scales its lr steps and warm-up; published configs run at their length keep theirs."""

from __future__ import annotations

import logging

import pytest
from detectron2.config import instantiate

from eva_transfer_projects.detection.engine import load_det_config

from .conftest import REPO, TINY_COCO


def _lr(cfg, it):
    return instantiate(cfg.lr_multiplier)(it / cfg.train.max_iter)


def _reference_lr(it, max_iter, steps, warmup, factor=0.001, gamma=0.1):
    # linear warm-up (Detectron2's WarmupParamScheduler: factor -> 1 over warmup iterations) times the step value
    value = gamma ** sum(it >= s for s in steps)
    if it < warmup:
        alpha = it / warmup
        value *= factor * (1 - alpha) + alpha
    return value


def test_published_length_keeps_absolute_values():
    cfg = load_det_config(TINY_COCO)
    assert cfg.train.max_iter == 350 and list(cfg.lr_multiplier.steps) == [300]
    assert cfg.lr_multiplier.warmup_iters == 50
    longer = load_det_config(TINY_COCO, ["train.max_iter=700"])  # a longer run keeps the absolute steps
    assert list(longer.lr_multiplier.steps) == [300] and longer.lr_multiplier.warmup_iters == 50


@pytest.mark.parametrize("config", [TINY_COCO, str(REPO / "configs/detection/eva_g_coco_1280.py")])
def test_shortened_run_scales_steps_and_warmup(config, caplog):
    full = load_det_config(config)
    planned, steps, warmup = (
        full.train.max_iter,
        list(full.lr_multiplier.steps),
        full.lr_multiplier.warmup_iters,
    )
    from eva_transfer_projects.detection import schedule

    schedule._NOTED.clear()  # the note is logged once per process
    with caplog.at_level(logging.WARNING, logger="eva_transfer_projects.detection"):
        cfg = load_det_config(config, ["train.max_iter=40"])
        load_det_config(config, ["train.max_iter=40"])
    assert caplog.text.count("shorter than the config's") == 1
    assert "shorter than the config's" in caplog.text and "train.max_iter=40" in caplog.text
    want_steps = [max(1, min(39, round(s * 40 / planned))) for s in steps]
    want_warmup = round(warmup * 40 / planned)
    assert list(cfg.lr_multiplier.steps) == want_steps
    assert cfg.lr_multiplier.warmup_iters == want_warmup
    assert all(s < 40 for s in cfg.lr_multiplier.steps)
    for it in range(40):
        assert _lr(cfg, it) == pytest.approx(_reference_lr(it, 40, want_steps, want_warmup), rel=1e-6)


def test_explicit_schedule_overrides_are_kept():
    cfg = load_det_config(
        TINY_COCO, ["train.max_iter=40", "lr_multiplier.steps=[30]", "lr_multiplier.warmup_iters=2"]
    )
    assert list(cfg.lr_multiplier.steps) == [30] and cfg.lr_multiplier.warmup_iters == 2
    with pytest.raises(ValueError, match=r"lr steps \[50\] must be below max_iter 40"):
        instantiate(
            load_det_config(TINY_COCO, ["train.max_iter=40", "lr_multiplier.steps=[50]"]).lr_multiplier
        )
