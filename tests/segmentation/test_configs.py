"""Configs: published settings, every config builds from the registry, EVA-g on the meta device (no memory)."""

from __future__ import annotations

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

from .conftest import CONFIG_DIR

ADE = str(CONFIG_DIR / "eva_g_mask2former_ade20k_896.py")
STUFF = str(CONFIG_DIR / "eva_g_mask2former_cocostuff164k_896.py")
ALL = sorted(str(p) for p in CONFIG_DIR.glob("*.py"))


def _pipeline_step(pipeline, type_):
    return next(t for t in pipeline if t["type"] == type_)


def test_ade20k_published_settings():
    cfg = Config.fromfile(ADE)
    head = cfg.model.decode_head
    assert head.num_classes == 150 and head.num_queries == 200
    assert head.feat_channels == head.out_channels == 1024
    assert head.pixel_decoder.encoder.num_layers == 6
    assert head.pixel_decoder.encoder.layer_cfg.self_attn_cfg.embed_dims == 1024
    assert head.transformer_decoder.num_layers == 8
    assert head.loss_cls.loss_weight == 2.0 and head.loss_cls.class_weight == [1.0] * 150 + [0.1]
    assert head.loss_mask.loss_weight == 5.0 and head.loss_dice.loss_weight == 5.0
    assert head.train_cfg.num_points == 12544
    backbone = cfg.model.backbone
    assert backbone.type == "EVAViTAdapter" and backbone.preset == "eva_g_seg"
    assert backbone.backbone_overrides.drop_path_rate == 0.5
    assert backbone.adapter.deform_num_heads == 16 and backbone.adapter.n_points == 4
    assert backbone.adapter.deform_ratio == 0.5 and backbone.adapter.cffn_ratio == 0.25
    assert backbone.norm_cfg.type == "BN" and cfg.sync_bn == "torch"  # SyncBN only when distributed
    assert cfg.model.test_cfg == dict(mode="slide", crop_size=(896, 896), stride=(512, 512))
    assert cfg.model.data_preprocessor.size == (896, 896)
    assert _pipeline_step(cfg.train_dataloader.dataset.pipeline, "RandomCrop").crop_size == (896, 896)
    opt = cfg.optim_wrapper
    assert opt.optimizer.type == "AdamW" and opt.optimizer.lr == 2.5e-5 and opt.optimizer.weight_decay == 0.05
    assert (
        opt.constructor == "LayerDecayOptimWrapperConstructor" and opt.paramwise_cfg.layer_decay_rate == 0.95
    )
    assert cfg.param_scheduler[-1].type == "PolyLR" and cfg.train_cfg.max_iters == 20000
    assert cfg.auto_scale_lr.base_batch_size == 64
    assert "cocostuff" in cfg.load_from  # initialised from the COCO-Stuff model
    assert cfg.train_dataloader.dataset.type == "CheckedADE20KDataset"


def test_coco_stuff_published_settings():
    cfg = Config.fromfile(STUFF)
    assert cfg.model.decode_head.num_classes == 171
    assert cfg.model.decode_head.loss_cls.class_weight == [1.0] * 171 + [0.1]
    assert cfg.optim_wrapper.optimizer.lr == 1.5e-5 and cfg.train_cfg.max_iters == 60000
    assert cfg.train_dataloader.dataset.type == "CheckedCOCOStuffDataset"
    assert cfg.model.test_cfg.mode == "slide" and cfg.load_from is None


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.rsplit("/", 1)[-1])
def test_config_has_no_absolute_data_paths_and_tta(path):
    cfg = Config.fromfile(path)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert not cfg[loader].dataset.data_root.startswith("/"), f"{path}: {loader} data_root is absolute"
    assert cfg.tta_model.type == "SegTTAModel"
    steps = cfg.tta_pipeline[1].transforms
    flips = next(s for s in steps if s[0].type == "RandomFlip")
    assert len(steps[0]) >= 2 and {f.prob for f in flips} == {0.0, 1.0}  # multi-scale + flip


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.rsplit("/", 1)[-1])
def test_poly_decay_spans_the_whole_run(path):
    """A config that changes ``train_cfg.max_iters`` also moves the poly decay's end (an inherited end before
    max_iters leaves lr 0 for the rest of the run); an open end is the run's end."""
    cfg = Config.fromfile(path)
    total = cfg.train_cfg.max_iters
    polys = [s for s in cfg.param_scheduler if s.type == "PolyLR"]
    assert polys, path
    for sched in polys:
        assert sched.get("end", total) in (total, total + 1), (
            f"{path}: PolyLR end {sched.end}, max_iters {total}"
        )


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.rsplit("/", 1)[-1])
def test_config_builds_from_registry_on_meta_device(path):
    cfg = Config.fromfile(path)
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    vit = model.backbone.vit if hasattr(model.backbone, "vit") else model.backbone.adapter.backbone
    assert model.decode_head.num_classes == cfg.model.decode_head.num_classes
    assert cfg.model.decode_head.in_channels == [vit.embed_dim] * 4
    assert all(p.is_meta for p in model.parameters())
    if "eva_g" in path:
        n = sum(p.numel() for p in vit.parameters())
        assert 1.00e9 < n < 1.03e9  # EVA-g encoder: 1015M parameters (1023M with the bias tables)
        assert vit.depth == 40 and vit.patch_size == 16 and vit.num_prefix_tokens == 1  # CLS kept (authors)
        assert [r for r in model.backbone.adapter.interaction_indexes] == [
            (0, 9),
            (10, 19),
            (20, 29),
            (30, 39),
        ]


def test_tta_meta_keys_equal_the_plugin_constant():
    """The config's literal tuple and the plug-in's PACK_META_KEYS (read from mmseg's PackSegInputs defaults plus
    the padding key) are one list: a new mmseg default or an edited config fails here."""
    from eva_transfer_projects.segmentation.test_time import PACK_META_KEYS, PADDING_KEY

    base = Config.fromfile(str(CONFIG_DIR / "_base_/datasets/ade20k.py"))
    assert tuple(base.tta_meta_keys) == PACK_META_KEYS
    assert PACK_META_KEYS[-1] == PADDING_KEY and "img_path" in PACK_META_KEYS
    for path in (ADE, STUFF):  # the published configs' TTA pipelines pack exactly these keys
        packs = [
            t for t in Config.fromfile(path).tta_pipeline[1]["transforms"][-1] if t["type"] == "PackSegInputs"
        ]
        assert [tuple(t["meta_keys"]) for t in packs] == [PACK_META_KEYS], path
