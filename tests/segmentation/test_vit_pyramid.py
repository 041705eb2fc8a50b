"""EVA-02's plain-ViT pyramid (projects/segmentation/vit_pyramid.py) and its UperNet configs.

Authors' facts (EVA-02/seg/backbone/eva2.py, ``EVA2.__init__`` and ``forward_features``): at patch 16, fpn1 =
ConvTranspose2d(k2, s2) -> SyncBatchNorm -> GELU -> ConvTranspose2d(k2, s2), fpn2 = ConvTranspose2d(k2, s2),
fpn3 = identity, fpn4 = MaxPool2d(k2, s2); at patch 8, fpn1 = ConvTranspose2d, fpn2 = identity, fpn3 = MaxPool2d(2),
fpn4 = MaxPool2d(4); the maps are the outputs of the blocks ``out_indices`` with the CLS token dropped, no norm.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmseg.registry import MODELS

from eva_transfer_projects.segmentation import EVAViTFeaturePyramid, evaluate_command, train_command
from eva_transfer_projects.segmentation.synthetic import write_synthetic_ade

from .conftest import CONFIG_DIR, data_options

B_CFG = str(CONFIG_DIR / "eva02_b_upernet_ade20k_512.py")
L_CFG = str(CONFIG_DIR / "eva02_l_upernet_ade20k_512.py")
L640_CFG = str(CONFIG_DIR / "eva02_l_upernet_ade20k_640.py")
TINY_CFG = str(CONFIG_DIR / "eva02_tiny_upernet_synthetic.py")


def _randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return model.eval()


def _reference(model: EVAViTFeaturePyramid, x: torch.Tensor) -> list[torch.Tensor]:
    """The authors' forward written out on the model's weights: blocks by hand, then the four ops in F.*."""
    vit = model.vit
    tokens, (h, w) = vit.prepare_tokens(x)
    maps = []
    for i, blk in enumerate(vit.blocks):
        tokens = blk(tokens, (h, w))
        if i in model.out_indices:
            maps.append(tokens[:, 1:].permute(0, 2, 1).reshape(x.shape[0], -1, h, w))
    if len(maps) == 1:
        maps = maps * 4
    ops = model.pyramid
    if vit.patch_size == 16:
        up_a, bn, _, up_b = ops[0]
        y = F.conv_transpose2d(maps[0], up_a.weight, up_a.bias, stride=2)
        y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
        y = F.gelu(y * bn.weight[:, None, None] + bn.bias[:, None, None])
        out1 = F.conv_transpose2d(y, up_b.weight, up_b.bias, stride=2)
        out2 = F.conv_transpose2d(maps[1], ops[1][0].weight, ops[1][0].bias, stride=2)
        return [out1, out2, maps[2], F.max_pool2d(maps[3], 2, 2)]
    up = ops[0][0]
    out1 = F.conv_transpose2d(maps[0], up.weight, up.bias, stride=2)
    return [out1, maps[1], F.max_pool2d(maps[2], 2, 2), F.max_pool2d(maps[3], 4, 4)]


@pytest.mark.parametrize(
    "patch, out_indices, size",
    [
        (16, (0, 1, 2, 3), (70, 90)),
        (16, (0, 1, 2, 3), (97, 45)),
        (8, (0, 1, 2, 3), (37, 59)),
        (16, (2,), (64, 80)),
    ],
)
def test_four_maps_have_the_authors_strides_and_equal_the_reference(patch, out_indices, size):
    torch.manual_seed(0)
    model = EVAViTFeaturePyramid(
        preset="eva02_tiny_seg", backbone_overrides=dict(patch_size=patch), out_indices=out_indices
    )
    _randomized(model)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs = model(x)
        ref = _reference(model, x)
    gh, gw = size[0] // patch, size[1] // patch
    strides = [4, 8, 16, 32]
    for out, s in zip(outs, strides):
        # patch grid scaled by patch / stride; the 1/2 (1/4 at patch 8) pooling floors an odd grid
        f = patch / s
        want = (int(gh * f), int(gw * f)) if f >= 1 else (gh // round(1 / f), gw // round(1 / f))
        assert out.shape == (2, 64, *want), (s, out.shape, want)
    diffs = [(o - r).abs().max().item() for o, r in zip(outs, ref)]
    print(f"patch {patch} out_indices {out_indices} size {size}: max |pyramid - reference| {diffs}")
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r, rtol=0, atol=1e-5)


def test_out_indices_are_checked():
    with pytest.raises(ValueError, match="four block indexes"):
        EVAViTFeaturePyramid(preset="eva02_tiny_seg", out_indices=(0, 1))
    with pytest.raises(ValueError, match="block indexes in"):
        EVAViTFeaturePyramid(preset="eva02_tiny_seg", out_indices=(0, 1, 2, 4))
    with pytest.raises(ValueError, match="ascending"):
        EVAViTFeaturePyramid(preset="eva02_tiny_seg", out_indices=(1, 0, 2, 3))


def _authors(cfg_path: str) -> Config:
    return Config.fromfile(cfg_path)


#: EVA-02/seg/configs/eva02/upernet/upernet_eva02_large_24_512_slide_80k.py
L_WANT = dict(
    embed_dim=1024,  # :25
    depth=24,  # :26
    out_indices=(7, 11, 15, 23),  # :29
    drop_path=0.2,  # :32
    channels=1024,  # :54
    aux_channels=256,  # _base_/models/upernet_beit.py:44
    crop=512,  # :17
    stride=341,  # :60
    scale=(2048, 512),  # _base_/datasets/ade20k.py:10, 23
    lr=4e-5,  # :65
    layer_decay=0.9,  # :69
    max_iters=80000,  # _base_/schedules/schedule_80k.py:7
    batch=2,  # :78 (8 GPUs, README batch 16)
    total_batch=16,  # README.md:24
    max_keep=10,  # _base_/schedules/schedule_80k.py:8
    params=304e6,  # README.md:54 (304M)
)


@pytest.mark.parametrize(
    "path, want",
    [
        (
            B_CFG,
            # EVA-02/seg/configs/eva02/upernet/upernet_eva02_base_12_512_slide_60k.py
            dict(
                embed_dim=768,  # :25
                depth=12,  # :26
                out_indices=(3, 5, 7, 11),  # :29
                drop_path=0.15,  # :32
                channels=768,  # :54
                aux_channels=256,  # _base_/models/upernet_beit.py:44
                crop=512,  # :17
                stride=341,  # :60
                scale=(2048, 512),  # _base_/datasets/ade20k.py:10, 23
                lr=6e-5,  # :65
                layer_decay=0.85,  # :69
                max_iters=60000,  # _base_/schedules/schedule_60k.py:7
                batch=8,  # :79 (4 GPUs, README batch 32)
                total_batch=32,  # README.md:23
                max_keep=4,  # _base_/schedules/schedule_60k.py:8
                params=86e6,  # README.md:53 (86M)
            ),
        ),
        (L_CFG, L_WANT),
        (
            L640_CFG,
            # EVA-02/seg/configs/eva02/upernet/upernetpro_eva02_large_24_640_slide_80k.py: the 512 file's values (at
            # the same lines up to :32, one line later from :53 on: lr :66, layer decay :70, batch :79) except
            dict(
                L_WANT,
                channels=1536,  # :53
                aux_channels=1536,  # :58
                crop=640,  # :17, :22
                stride=426,  # :61
                scale=(2560, 640),  # _base_/datasets/ade20k_640x640.py:10, 23
                total_batch=16,  # README.md:25
                params=305e6,  # README.md:54 (304M; the 40x40 position table adds 0.6M)
            ),
        ),
    ],
    ids=["base", "large", "large_640"],
)
def test_eva02_upernet_configs_hold_the_authors_values(path, want):
    cfg = _authors(path)
    m = cfg.model
    assert m.backbone.type == "EVAViTFeaturePyramid"
    assert tuple(m.backbone.out_indices) == want["out_indices"]
    assert m.backbone.backbone_overrides.drop_path_rate == want["drop_path"]
    assert m.backbone.init_cfg.type == "Pretrained"
    # the UperNet head (_base_/models/upernet_beit.py:28-39 and the config's decode_head, :51-55)
    head = m.decode_head
    assert head.type == "UPerHead" and head.in_channels == [want["embed_dim"]] * 4
    assert head.channels == want["channels"] and head.num_classes == 150
    assert list(head.in_index) == [0, 1, 2, 3] and tuple(head.pool_scales) == (1, 2, 3, 6)
    assert head.dropout_ratio == 0.1 and head.loss_decode.loss_weight == 1.0 and not head.align_corners
    # the auxiliary FCN head (_base_/models/upernet_beit.py:40-52; in_channels from the config, :56-59)
    aux = m.auxiliary_head
    assert aux.type == "FCNHead" and aux.in_channels == want["embed_dim"] and aux.in_index == 2
    assert aux.channels == want["aux_channels"] and aux.num_convs == 1 and aux.concat_input is False
    assert aux.dropout_ratio == 0.1 and aux.loss_decode.loss_weight == 0.4 and aux.num_classes == 150
    assert (
        head.norm_cfg.type == aux.norm_cfg.type == m.backbone.norm_cfg.type == "BN"
    )  # SyncBN when distributed
    assert cfg.sync_bn == "torch"
    # slide test 512 / 341 (config :60); crop 512 (:17, _base_/datasets/ade20k.py:6); 640 / 426 at 640
    crop = (want["crop"], want["crop"])
    assert m.test_cfg.mode == "slide" and tuple(m.test_cfg.crop_size) == crop and tuple(cfg.crop_size) == crop
    assert tuple(m.test_cfg.stride) == (want["stride"],) * 2 and tuple(m.data_preprocessor.size) == crop
    # data (_base_/datasets/ade20k.py:5, 10-13, 23): scale (2048, 512), ratio 0.5-2.0, cat_max_ratio 0.75
    assert m.data_preprocessor.mean == [123.675, 116.28, 103.53] and m.data_preprocessor.std == [
        58.395,
        57.12,
        57.375,
    ]
    steps = {s.type: s for s in cfg.train_dataloader.dataset.pipeline}
    assert tuple(steps["RandomResize"].scale) == want["scale"]
    assert tuple(steps["RandomResize"].ratio_range) == (0.5, 2.0)
    assert tuple(steps["RandomCrop"].crop_size) == crop and steps["RandomCrop"].cat_max_ratio == 0.75
    assert steps["RandomFlip"].prob == 0.5 and "PhotoMetricDistortion" in steps
    test_steps = {s.type: s for s in cfg.test_dataloader.dataset.pipeline}
    assert tuple(test_steps["Resize"].scale) == want["scale"] and "ResizeToMultiple" not in test_steps
    assert cfg.val_dataloader.dataset.pipeline == cfg.test_dataloader.dataset.pipeline
    # --tta: the test scale times the ratios 0.5 ... 1.75 (_base_/datasets/ade20k_ms_eval.py:24)
    tta_scales = [tuple(t.scale) for t in cfg.tta_pipeline[1].transforms[0]]
    assert tta_scales == [(int(want["scale"][0] * r), int(want["scale"][1] * r)) for r in cfg.tta_ratios]
    # optimizer (:63-69): AdamW, betas (0.9, 0.999), weight decay 0.05, layer decay
    opt = cfg.optim_wrapper.optimizer
    assert opt.type == "AdamW" and opt.lr == want["lr"] and tuple(opt.betas) == (0.9, 0.999)
    assert opt.weight_decay == 0.05
    assert cfg.optim_wrapper.constructor == "LayerDecayOptimWrapperConstructor"
    assert cfg.optim_wrapper.paramwise_cfg == dict(layer_decay_rate=want["layer_decay"], scheme="eva")
    assert cfg.optim_wrapper.get("clip_grad") is None  # grad_clip=None (:85-88)
    # schedule (:72-76): linear warm-up 1500 from 1e-6, poly power 1.0 to 0, per iteration
    warm, poly = cfg.param_scheduler
    assert warm.type == "LinearLR" and warm.start_factor == 1e-6 and warm.end == 1500 + 1
    assert poly.type == "PolyLR" and poly.power == 1.0 and poly.eta_min == 0.0 and poly.begin == 0
    assert poly.end == want["max_iters"] + 1 and cfg.train_cfg.max_iters == want["max_iters"]
    # evaluation / checkpoints every 1000 iterations (_base_/schedules/schedule_*.py:8-9)
    assert cfg.train_cfg.val_interval == 1000 and cfg.default_hooks.checkpoint.interval == 1000
    assert cfg.default_hooks.checkpoint.max_keep_ckpts == want["max_keep"]
    assert cfg.train_dataloader.batch_size == want["batch"]
    assert cfg.auto_scale_lr.base_batch_size == want["total_batch"]
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    vit = model.backbone.vit
    assert vit.depth == want["depth"] and vit.embed_dim == want["embed_dim"] and vit.patch_size == 16
    # eva2.py: CLS token with a position slot (num_patches + 1, :566-570), no final norm (forward_features)
    grid = want["crop"] // 16
    assert vit.num_prefix_tokens == 1
    assert tuple(vit.pos_embed.shape[1:]) == (grid * grid + 1, want["embed_dim"])
    assert isinstance(vit.norm, torch.nn.Identity) and vit.rope_grid == (16, 16)  # pt_hw_seq_len=16 (:42)
    n = sum(p.numel() for p in vit.parameters())
    assert abs(n - want["params"]) / want["params"] < 0.01, n


def test_layer_decay_groups_follow_the_authors_constructor():
    """EVA-02/seg/mmcv_custom/layer_decay_optimizer_constructor.py: embeddings layer 0, block i layer i + 1, the rest
    (pyramid, heads) layer depth + 1 at the full lr; lr scale rate ** (depth + 1 - layer); 1-D and biases undecayed."""
    cfg = Config.fromfile(TINY_CFG)
    model = MODELS.build(cfg.model)
    from eva_transfer_projects.mmengine_layer_decay import LayerDecayOptimWrapperConstructor

    groups = LayerDecayOptimWrapperConstructor(
        cfg.optim_wrapper.to_dict(), cfg.optim_wrapper.paramwise_cfg
    ).param_groups(model)
    rate, depth, lr = 0.9, 4, 1e-3
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert scale["backbone.vit.pos_embed"] == pytest.approx(rate ** (depth + 1))
    assert scale["backbone.vit.blocks.2.attn.proj.weight"] == pytest.approx(rate ** (depth - 2))
    assert scale["backbone.pyramid.0.0.weight"] == scale["decode_head.conv_seg.weight"] == 1.0
    assert wd["backbone.vit.pos_embed"] == 0.05 and wd["backbone.pyramid.0.0.bias"] == 0.0
    assert all(g["lr"] == pytest.approx(lr * g["lr_scale"]) for g in groups)


#: mIoU (percent) the tiny EVA-02 UperNet reaches on the 16 held-out images; measured in docs/segmentation.md
TINY_MIN_MIOU = 45.0
TINY_ITERS = 300
TINY_RUN = [
    f"train_cfg.max_iters={TINY_ITERS}",
    f"train_cfg.val_interval={TINY_ITERS}",
    f"default_hooks.checkpoint.interval={TINY_ITERS}",
]


def test_tiny_config_learns_synthetic_ade(tmp_path, one_thread):
    """``eva02_tiny_upernet_synthetic.py`` from scratch on tools/make_synthetic_ade.py's data (64 training images,
    16 held out), its 150 iterations stretched to :data:`TINY_ITERS` (the lr schedule follows the run), then tested
    by the test tool through the config's IoUMetric; an untrained model scores 0.83."""
    root = write_synthetic_ade(tmp_path / "data")
    work = tmp_path / "work"
    options = [*data_options(root), *TINY_RUN]
    runner = train_command.main([TINY_CFG, "--work-dir", str(work), "--cfg-options", *options])
    iters = runner.iter
    assert iters == TINY_ITERS
    assert isinstance(runner.model.backbone, EVAViTFeaturePyramid)
    checkpoint = work / f"iter_{iters}.pth"
    metrics = evaluate_command.main(
        [
            TINY_CFG,
            str(checkpoint),
            "--work-dir",
            str(tmp_path / "test"),
            "--cfg-options",
            *data_options(root),
        ]
    )
    print(f"\ntiny EVA-02 UperNet, {iters} iterations: held-out mIoU {metrics['mIoU']:.2f}")
    assert metrics["mIoU"] >= TINY_MIN_MIOU
