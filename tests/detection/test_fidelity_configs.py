"""The published detection configs hold the authors' recipes: absolute lr schedules (against the authors' own
scheduler construction, built here from fvcore / Detectron2 with their values), frozen patch embedding, weight
decay on every parameter, the evaluator's detection limit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from detectron2.config import instantiate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from eva_transfer_projects.detection.engine import load_det_config

REPO = Path(__file__).resolve().parents[2]


def cfg_of(name, *overrides):
    return load_det_config(str(REPO / f"configs/detection/{name}.py"), list(overrides))


# the authors' values: config, lr, max_iter (num_updates), milestones, warm-up iterations
AUTHORS_SCHEDULES = [
    ("eva_g_coco_1280", 2.5e-5, 45000, [40000, 44999], 500),  # COCO/cascade_mask_rcnn_vitdet_eva.py
    ("eva_g_lvis_1280", 2e-4, 75001, [70000, 75000], 250),  # LVIS/cascade_mask_rcnn_vitdet_eva.py
    ("eva_g_coco_1536_test", 2.5e-5, 45000, [40000, 44999], 500),  # COCO/..._eva_1536.py
    ("eva_g_coco_1536_mask_test", 2.5e-5, 45000, [40000, 44999], 500),
    ("eva_g_coco_1536_lvis_annotation", 2.5e-5, 45000, [40000, 44999], 500),
    ("eva_g_lvis_1536_test", 2e-4, 75001, [70000, 75000], 250),  # LVIS/..._eva_1536.py
]


@pytest.mark.parametrize("name,lr,max_iter,milestones,warmup", AUTHORS_SCHEDULES)
def test_absolute_schedule_is_the_authors(name, lr, max_iter, milestones, warmup):
    cfg = cfg_of(name)
    assert cfg.optimizer.lr == lr and cfg.train.max_iter == max_iter
    ours = instantiate(cfg.lr_multiplier)
    theirs = WarmupParamScheduler(
        MultiStepParamScheduler(values=[1.0, 0.1, 0.01], milestones=milestones, num_updates=max_iter),
        warmup_factor=0.001,
        warmup_length=warmup / max_iter,
    )
    probes = sorted(
        {0, 1, warmup // 2, warmup - 1, warmup, warmup + 1, max_iter - 1}
        | {m + d for m in milestones for d in (-1, 0, 1) if m + d < max_iter}
    )
    for it in probes:
        got, want = ours(it / max_iter), theirs(it / max_iter)
        assert math.isclose(got, want, rel_tol=1e-9), (
            f"{name}: iteration {it}: lr x{got}, the authors' x{want}"
        )
    # absolute values at the pinned points
    assert math.isclose(lr * ours((warmup + 1) / max_iter), lr)
    assert math.isclose(lr * ours(milestones[0] / max_iter), lr * 0.1)
    assert math.isclose(lr * ours((max_iter - 1) / max_iter), lr * 0.01)


@pytest.mark.parametrize("name", ["eva_g_coco_1280", "eva_g_lvis_1280", "eva_g_o365_1024"])
def test_patch_embed_frozen_and_every_parameter_decays(name):
    cfg = cfg_of(
        name,
        "model.backbone.net.embed_dim=32",
        "model.backbone.net.depth=4",
        "model.backbone.net.num_heads=2",
        "model.backbone.net.mlp_dim=64",
    )
    model = instantiate(cfg.model)
    net = model.backbone.net
    assert not any(p.requires_grad for p in net.patch_embed.parameters())
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    names = [n for g in optimizer.param_groups for n in g["param_names"]]
    assert not any("patch_embed" in n for n in names)
    for key in (
        "backbone.net.pos_embed",
        "backbone.net.blocks.3.attn.rel_pos_h",
        "backbone.net.blocks.0.norm1.bias",
    ):
        assert key in names, key
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.1}
    # the former scope stays an option
    cfg.optimizer.params.weight_decay_scope = "standard"
    standard = instantiate(cfg.optimizer)
    zero = {n for g in standard.param_groups if g["weight_decay"] == 0 for n in g["param_names"]}
    assert "backbone.net.pos_embed" in zero and "backbone.net.blocks.0.norm1.bias" in zero


def test_lvis_1536_evaluator_scores_1000_per_image():
    cfg = cfg_of("eva_g_lvis_1536_test")
    assert cfg.dataloader.evaluator.max_dets_per_image == 1000
    assert [(p.test_score_thresh, p.test_topk_per_image) for p in cfg.model.roi_heads.box_predictors] == [
        (0.001, 1000)
    ] * 3
