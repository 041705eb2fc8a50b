"""The config tree: every recipe loads and saves (no lambdas), the published settings (the authors' `EVA-01/det`
configs) are what the recipes build, overrides of unknown keys fail with a suggestion, and yacs users can build the
backbone.

The published detection configs hold the authors' recipes: absolute lr schedules (against the authors' own
scheduler construction, built here from fvcore / Detectron2 with their values), frozen patch embedding, weight
decay on every parameter, the evaluator's detection limit.
"""

from __future__ import annotations

import glob
import math
import os
import re
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_backbone
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from eva_transfer_projects.detection.backbone import add_eva_config
from eva_transfer_projects.detection.engine import ConfigKeyError, load_det_config

from .conftest import REPO, TINY_COCO

CONFIGS = sorted(glob.glob(str(REPO / "configs/detection/*.py")))


def cfg_of(name, *overrides):
    return load_det_config(str(REPO / f"configs/detection/{name}.py"), list(overrides))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_loads_and_saves(path, tmp_path):
    cfg = LazyConfig.load(path)
    assert set(cfg) == {"model", "dataloader", "optimizer", "lr_multiplier", "train"}
    LazyConfig.save(cfg, str(tmp_path / "cfg.yaml"))  # fails on lambdas and other unsavable objects
    again = LazyConfig.load(str(tmp_path / "cfg.yaml"))
    assert (
        again.train.max_iter == cfg.train.max_iter
        and again.model.backbone.net.preset == cfg.model.backbone.net.preset
    )


def test_coco_recipe_is_the_published_one():
    cfg = cfg_of("eva_g_coco_1280")
    with torch.device("meta"):
        model = instantiate(cfg.model)
    net = model.backbone.net
    assert (net.depth, net.embed_dim, net.num_heads, net.patch_size, net.window_size) == (
        40,
        1408,
        16,
        16,
        16,
    )
    assert net.global_block_indexes == tuple(range(3, 40, 4)) and net.use_act_checkpoint
    assert math.isclose(net.blocks[-1].drop_path.drop_prob, 0.6)
    assert model.backbone.padding_constraints["square_size"] == 1280
    rh = model.roi_heads
    assert rh.num_cascade_stages == 3 and rh.num_classes == 80
    assert [p.box2box_transform.weights for p in rh.box_predictor] == [
        (10, 10, 5, 5),
        (20, 20, 10, 10),
        (30, 30, 15, 15),
    ]
    assert [m.thresholds[1] for m in rh.proposal_matchers] == [0.5, 0.6, 0.7]
    assert all(p.bbox_pred.out_features == 4 for p in rh.box_predictor)  # class-agnostic
    head = rh.box_head[0]
    assert [type(c.norm).__name__ for c in head.conv_norm_relus] == ["LayerNorm"] * 4 and len(head.fcs) == 1
    assert (
        len(rh.mask_head.conv_norm_relus) == 4
        and rh.batch_size_per_image == 512
        and rh.positive_fraction == 0.25
    )
    assert rh.soft_nms is None and not rh.maskness_rescoring  # the authors' training config: hard NMS
    rpn = model.proposal_generator
    assert [list(a) for a in rpn.anchor_generator.cell_anchors][0].__len__() == 3
    aug = instantiate(cfg.dataloader.train.mapper.augmentations)
    assert [type(a).__name__ for a in aug] == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    assert (aug[1].min_scale, aug[1].max_scale, aug[2].crop_size) == (0.1, 2.0, (1280, 1280))
    assert cfg.dataloader.train.total_batch_size == 64
    o = cfg.optimizer
    assert (o.lr, tuple(o.betas), o.weight_decay, o.params.decay_rate) == (2.5e-5, (0.9, 0.999), 0.1, 0.9)
    assert cfg.train.max_iter == 45000 and list(cfg.lr_multiplier.steps) == [40000, 44999]
    assert cfg.lr_multiplier.warmup_iters == 500 and cfg.train.amp.enabled
    sched = instantiate(cfg.lr_multiplier)
    assert (
        sched(0.5 / 45000) < 0.5 and sched(39999 / 45000) == 1.0 and math.isclose(sched(40001 / 45000), 0.1)
    )
    assert cfg_of("eva_g_coco_1536_test").dataloader.image_size == 1536


def test_lvis_and_o365_recipes():
    cfg = cfg_of("eva_g_lvis_1280")
    assert cfg.model.roi_heads.num_classes == 1203 and cfg.train.max_iter == 75001
    for p in cfg.model.roi_heads.box_predictors:
        assert p.use_sigmoid_ce and p.use_fed_loss and p.fed_loss_num_classes == 50
        assert p.get_fed_loss_cls_weights.freq_weight_power == 0.5
        assert (p.test_score_thresh, p.test_topk_per_image) == (0.02, 300)
    assert cfg.dataloader.train.sampler.repeat_factors.repeat_thresh == 0.001
    assert cfg.model.roi_heads.soft_nms is None and cfg.optimizer.lr == 2e-4
    cfg = cfg_of("eva_g_lvis_1536_test")
    assert [(p.test_score_thresh, p.test_topk_per_image) for p in cfg.model.roi_heads.box_predictors] == [
        (0.001, 1000)
    ] * 3
    assert cfg.train.checkpoint_load.rel_pos_resize == "beit" and cfg.dataloader.image_size == 1536
    assert cfg.dataloader.evaluator.max_dets_per_image == 1000
    o365 = cfg_of("eva_g_o365_1024")
    assert (o365.optimizer.lr, o365.dataloader.train.total_batch_size, o365.model.roi_heads.num_classes) == (
        1e-4,
        128,
        365,
    )
    assert (o365.dataloader.image_size, o365.train.stop_iter, o365.train.max_iter) == (1024, 320000, 380000)
    stage2 = cfg_of("eva_g_o365_1280")
    assert (stage2.dataloader.image_size, stage2.train.stop_iter, stage2.train.max_iter) == (
        1280,
        None,
        380000,
    )
    assert cfg_of("vit_b_coco").model.backbone.net.preset == "eva_b_det"
    assert cfg_of("vit_l_coco").model.backbone.net.preset == "eva_l_det"


def test_published_values_appear_once_in_the_tree():
    def code(path):  # without docstrings and comments, which quote the values
        return re.sub(r"#.*", "", re.sub(r'""".*?"""', "", open(path).read(), flags=re.S))

    # the EVA-01 tree; the EVA-02 recipes state their own values (tests/detection/test_configs_eva02.py)
    paths = glob.glob(str(REPO / "configs/detection/**/*.py"), recursive=True)
    text = {p: code(p) for p in paths if not os.path.basename(p).startswith("eva02_")}
    for literal in [
        "2.5e-5",
        "45000",
        "40000",
        "75000",
        "380000",
        "320000",
        "repeat_thresh=0.001",
        "freq_weight_power=0.5",
        "fed_loss_num_classes = 50",
        "(0.9, 0.999)",
        "weight_decay=0.1",
        "decay_rate=0.9",
        "warmup_iters=500",
        "iou_threshold=0.6",
        "min_scale=0.1, max_scale=2.0",
    ]:
        hits = [(os.path.basename(p), t.count(literal)) for p, t in text.items() if literal in t]
        assert len(hits) == 1 and hits[0][1] == 1, (literal, hits)


def test_override_typo_is_a_clear_error():
    with pytest.raises(ConfigKeyError, match=r"'train\.max_iters'.*did you mean 'train\.max_iter'"):
        load_det_config(TINY_COCO, ["train.max_iters=10"])
    with pytest.raises(ConfigKeyError, match="optimizer.lrr"):
        load_det_config(TINY_COCO, ["optimizer.lrr=1"])
    # new arguments of a called target are fine (checked by the target itself), as is +key
    cfg = load_det_config(
        TINY_COCO, ["model.backbone.net.drop_path_rate=0.2", "+train.note=x", "train.max_iter=7"]
    )
    assert cfg.train.max_iter == 7 and cfg.model.backbone.net.drop_path_rate == 0.2
    with pytest.raises(TypeError, match="did you mean 'drop_path_rate'"):
        instantiate(load_det_config(TINY_COCO, ["model.backbone.net.drop_path_rat=0.2"]).model.backbone)


def test_yacs_backbone():
    cfg = get_cfg()
    add_eva_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_eva_backbone"
    cfg.MODEL.EVA.PRESET = "eva_tiny_det"
    cfg.MODEL.EVA.SQUARE_PAD = 128
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    bb = build_backbone(cfg)
    assert [s.stride for s in bb.output_shape().values()] == [4, 8, 16, 32, 64]
    assert bb.padding_constraints["square_size"] == 128 and bb.net.embed_dim == 64


def test_yacs_trains_the_tiny_recipe(tmp_path, registered):
    """The yacs path end to end: a Mask R-CNN with MODEL.BACKBONE.NAME "build_eva_backbone" on the tiny preset
    trains a few iterations on synthetic data (finite losses, backbone and pyramid weights updated)."""
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    from eva_transfer_projects.detection.data import make_synthetic_dataset, register_dataset

    json_file = make_synthetic_dataset(tmp_path, "train", 8, fmt="coco", num_classes=3, seed=0)
    register_dataset("yacs_tiny_train", json_file, tmp_path / "train")
    registered.append("yacs_tiny_train")

    cfg = get_cfg()
    add_eva_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_eva_backbone"
    cfg.MODEL.EVA.PRESET = "eva_tiny_det"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 100
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.DATASETS.TRAIN = ("yacs_tiny_train",)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.OUTPUT_DIR = str(tmp_path / "out")

    model = build_model(cfg)
    assert type(model.backbone).__name__ == "EVADetectionBackbone"
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")}
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), build_optimizer(cfg, model))
    losses = []
    trainer.register_hooks([])
    with EventStorage(0) as storage:
        trainer.storage = storage
        for trainer.iter in range(cfg.SOLVER.MAX_ITER):
            trainer.run_step()
            losses.append(storage.history("total_loss").latest())
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    after = model.state_dict()
    for k in ["backbone.net.blocks.0.attn.qkv.weight", "backbone.simfp_2.0.weight", "backbone.net.pos_embed"]:
        assert not torch.equal(before[k], after[k]), k


# -------------------- fidelity_configs
# The published detection configs hold the authors' recipes: absolute lr schedules (against the authors' own
REPO = Path(__file__).resolve().parents[2]


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
