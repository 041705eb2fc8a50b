"""The MMDetection plug-in: backbone and neck equal the core modules, init_cfg goes through the toolkit's converter,
the mmdet-layout export round-trips, and the configs build (EVA-g on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import eva_transfer_projects.mmdetection  # noqa: F401  (registers the plug-in, applies the stand-ins)
from eva_transfer import EVASimpleFeaturePyramid, build_eva_vit, load_checkpoint, save_checkpoint
from eva_transfer.checkpoint_io import CheckpointError, read_checkpoint
from eva_transfer.export import convert_backbone_file, export_mmdet
from eva_transfer.resize import resize_patch_kernel

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/mmdetection/eva_tiny_mask_rcnn_synthetic.py"
EVA_G = ROOT / "configs/mmdetection/eva_g_mask_rcnn_lsj_1024_coco.py"


def _build(cfg_path=TINY, **backbone):
    from mmdet.registry import MODELS

    init_default_scope("mmdet")
    cfg = Config.fromfile(str(cfg_path))
    cfg.model.backbone.update(backbone)
    return MODELS.build(cfg.model)


def _detectron2_layout(vit, pyramid) -> dict:
    """A fine-tuned Detectron2 EVA / ViTDet model's keys: ViT under backbone.net., pyramid under backbone., heads."""
    sd = {f"backbone.net.{k}": v for k, v in vit.state_dict().items()}
    sd.update({f"backbone.{k}": v for k, v in pyramid.state_dict().items()})
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.randn(7, 16)
    sd["proposal_generator.rpn_head.conv.weight"] = torch.randn(4, 4, 3, 3)
    return sd


def test_backbone_and_neck_equal_the_core_modules():
    det = _build().eval()
    vit = build_eva_vit("eva_tiny_det", img_size=128).eval()
    pyramid = EVASimpleFeaturePyramid(64, out_channels=32).eval()
    vit.load_state_dict(det.backbone.state_dict())
    pyramid.load_state_dict(det.neck.state_dict())
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        feats = det.extract_feat(x)
        ref = pyramid(vit(x))
    assert [f.shape[-2:] for f in feats] == [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]
    assert len(feats) == len(ref) == 5
    for f, r in zip(feats, ref.values()):
        torch.testing.assert_close(f, r, rtol=0, atol=0)
    assert det.neck.num_outs == len(det.rpn_head.prior_generator.strides) == 5


def test_init_cfg_pretrained_goes_through_the_converter(tmp_path):
    """An EVA MIM-layout checkpoint (patch 14, CLS slot, final norm, a mask token) loads through mmdet's init_cfg
    convention: kernel resized 14 -> 16, pre-training-only keys dropped, blocks loaded exactly."""
    src = build_eva_vit("eva_tiny", patch_size=14, img_size=56, use_mask_token=True)
    path = tmp_path / "eva_mim.pth"
    save_checkpoint({"model": src.state_dict()}, path)
    det = _build(init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    det.init_weights()
    got = det.backbone.state_dict()
    torch.testing.assert_close(got["blocks.3.attn.qkv.weight"], src.state_dict()["blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(got["blocks.0.mlp.fc2.weight"], src.state_dict()["blocks.0.mlp.fc2.weight"])
    want = resize_patch_kernel(src.state_dict()["patch_embed.proj.weight"], (16, 16), "bicubic")
    torch.testing.assert_close(got["patch_embed.proj.weight"], want)


def test_init_cfg_prefix_and_bad_entries(tmp_path):
    vit = build_eva_vit("eva_tiny_det", img_size=128)
    path = tmp_path / "d2.pth"
    save_checkpoint({"model": _detectron2_layout(vit, EVASimpleFeaturePyramid(64, out_channels=32))}, path)
    det = _build(init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone.net."))
    det.init_weights()
    for k, v in vit.state_dict().items():
        torch.testing.assert_close(det.backbone.state_dict()[k], v)

    with pytest.raises(ValueError, match="'checkpoint' \\(required\\)"):  # when the model is built
        _build(init_cfg=dict(type="Pretrained", path=str(path)))
    with pytest.raises(ValueError, match="need a 'type'"):
        _build(init_cfg=[dict(checkpoint=str(path))])
    det = _build(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "missing.pth")))
    with pytest.raises((FileNotFoundError, CheckpointError), match="missing.pth"):
        det.backbone.init_weights()
    with pytest.raises(KeyError, match="eva_tiny_det"):
        _build(preset="eva_tiny_dett")


def test_mmdet_export_round_trip(tmp_path):
    """Detectron2 layout -> mmdet layout (the converter tool's function) -> mmengine's own checkpoint loader into
    the mmdet detector -> same features as the Detectron2-layout modules; mmdet layout -> bare EVAViT -> same
    weights."""
    from mmengine.runner import load_checkpoint as mmengine_load

    vit = build_eva_vit("eva_tiny_det", img_size=128).eval()
    pyramid = EVASimpleFeaturePyramid(64, out_channels=32).eval()
    with torch.no_grad():
        for p in pyramid.parameters():
            p.normal_()
    d2 = tmp_path / "model_final.pth"
    save_checkpoint({"model": _detectron2_layout(vit, pyramid)}, d2)

    with pytest.raises(CheckpointError, match="--output-prefix and --to mmdet exclude each other"):
        convert_backbone_file(d2, layout="mmdet", output_prefix="backbone.net.")
    exported_now, reports = convert_backbone_file(d2, layout="mmdet")  # what the converter tool writes
    assert len(reports) == 1 and sorted(reports[0].unexpected) == [
        "proposal_generator.rpn_head.conv.weight",
        "roi_heads.box_predictor.cls_score.weight",
    ]
    out = tmp_path / "mmdet_init.pth"
    save_checkpoint({"state_dict": exported_now}, out)
    # converted for a model first (--preset): the same tensors when the shapes already match
    with torch.device("meta"):
        target = build_eva_vit("eva_tiny_det", img_size=128)
    for_model, _ = convert_backbone_file(d2, model=target, layout="mmdet")
    assert set(for_model) == set(exported_now)
    assert all(torch.equal(for_model[k], exported_now[k]) for k in for_model)
    exported = read_checkpoint(out)["state_dict"]

    det = _build().eval()
    backbone_neck = {k for k in det.state_dict() if k.startswith(("backbone.", "neck."))}
    assert set(exported) == backbone_neck
    mmengine_load(det, str(out), strict=False, map_location="cpu")
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        feats = det.extract_feat(x)
        ref = list(pyramid(vit(x)).values())
    for f, r in zip(feats, ref):
        torch.testing.assert_close(f, r, rtol=0, atol=0)

    # back: the mmdet detector's own state dict exports to itself, and loads into a bare backbone
    again, report = export_mmdet(det.state_dict())
    assert set(again) == backbone_neck and all(torch.equal(again[k], exported[k]) for k in exported)
    assert report.unexpected and all(k.startswith(("rpn_head.", "roi_head.")) for k in report.unexpected)
    bare = build_eva_vit("eva_tiny_det", img_size=128)
    load_checkpoint(bare, {"state_dict": det.state_dict()}, verbose=False)
    for k, v in vit.state_dict().items():
        torch.testing.assert_close(bare.state_dict()[k], v, rtol=0, atol=0)


def test_export_refuses_two_pyramids():
    vit = build_eva_vit("eva_tiny_det")
    sd = {f"backbone.net.{k}": v for k, v in vit.state_dict().items()}
    sd["backbone.simfp_2.0.weight"] = torch.zeros(1)
    sd["neck.simfp_2.0.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="two feature pyramids"):
        export_mmdet(sd, source="two.pth")


def test_layer_decay_in_the_mmdet_detector():
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    cfg = Config.fromfile(str(TINY))
    det = _build()
    wrapper_cfg = dict(cfg.optim_wrapper)
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(
            type=wrapper_cfg.pop("constructor"),
            optim_wrapper_cfg=wrapper_cfg,
            paramwise_cfg=wrapper_cfg.pop("paramwise_cfg"),
        )
    )
    groups = constructor.param_groups(det)
    lr_of = {n: g["lr"] for g in groups for n in g["names"]}
    lr, rate, depth = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.paramwise_cfg.layer_decay_rate, 4
    assert lr_of["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(lr * rate ** (depth + 1 - 1))
    assert lr_of["backbone.patch_embed.proj.weight"] == pytest.approx(lr * rate ** (depth + 1))
    assert lr_of["neck.simfp_2.0.weight"] == pytest.approx(lr)
    assert lr_of["roi_head.bbox_head.fc_cls.weight"] == pytest.approx(lr)
    # weight-decay scope (docs/records/fidelity.md, MMDetection): none on 1-D parameters, pos_embed, relative position
    wd_of = {n: g["weight_decay"] for g in groups for n in g["names"]}
    wd = cfg.optim_wrapper.optimizer.weight_decay
    assert (
        wd_of["backbone.blocks.0.attn.qkv.weight"] == wd and wd_of["roi_head.bbox_head.fc_cls.weight"] == wd
    )
    assert wd_of["backbone.blocks.0.attn.q_bias"] == wd_of["backbone.blocks.0.norm1.weight"] == 0.0
    assert wd_of["neck.simfp_2.0.bias"] == 0.0
    assert wd_of["backbone.pos_embed"] == wd_of["backbone.blocks.0.attn.rel_pos_h"] == 0.0


def test_eva_g_config_builds_on_meta_device():
    with torch.device("meta"):
        det = _build(EVA_G)
        feats = det.extract_feat(torch.empty(1, 3, 1024, 1024))
    vit = det.backbone
    assert (vit.depth, vit.embed_dim, vit.patch_embed.proj.weight.shape[-1]) == (40, 1408, 16)
    assert vit.global_block_indexes == tuple(range(3, 40, 4)) and vit.window_size == 16
    assert vit.drop_path_rate == 0.6 and vit.use_act_checkpoint
    n_backbone = sum(p.numel() for p in vit.parameters())
    assert 1.0e9 < n_backbone < 1.02e9
    assert [tuple(f.shape) for f in feats] == [(1, 256, 1024 // s, 1024 // s) for s in (4, 8, 16, 32, 64)]
    cfg = Config.fromfile(str(EVA_G))
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint="eva_psz14.pt")
    assert cfg.train_dataloader.dataset.type == "CocoDataset"
    assert cfg.val_dataloader.dataset.pipeline[1].scale == (1024, 1024)


def test_eva_g_config_is_the_vitdet_recipe():
    """ViTDet's Mask R-CNN schedule (detectron2 projects/ViTDet mask_rcnn_vitdet_b_100ep.py, configs/common/optim.py,
    coco_loader_lsj.py) with EVA-g's layer decay and drop path (cascade_mask_rcnn_vitdet_eva.py)."""
    cfg = Config.fromfile(str(EVA_G))
    opt = cfg.optim_wrapper
    assert (opt.optimizer.type, opt.optimizer.lr, tuple(opt.optimizer.betas), opt.optimizer.weight_decay) == (
        "AdamW",
        1e-4,
        (0.9, 0.999),
        0.1,
    )
    assert (
        opt.constructor == "LayerDecayOptimWrapperConstructor" and opt.paramwise_cfg.layer_decay_rate == 0.9
    )
    assert opt.type == "AmpOptimWrapper"
    assert cfg.model.backbone.drop_path_rate == 0.6
    assert cfg.train_cfg.max_iters == 184375
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == ("LinearLR", 0.001, 250, False)
    assert (steps.type, list(steps.milestones), steps.gamma, steps.by_epoch) == (
        "MultiStepLR",
        [163889, 177546],
        0.1,
        False,
    )
    assert cfg.train_dataloader.batch_size * 16 == 64
    resize, crop = cfg.train_dataloader.dataset.pipeline[2:4]
    assert (resize.type, tuple(resize.scale), tuple(resize.ratio_range)) == (
        "RandomResize",
        (1024, 1024),
        (0.1, 2.0),
    )
    assert (crop.type, tuple(crop.crop_size), crop.recompute_bbox) == ("RandomCrop", (1024, 1024), True)
    assert tuple(cfg.val_dataloader.dataset.pipeline[1].scale) == (1024, 1024)
