"""Simple feature pyramid against Detectron2's, with the same weights (its state dict loads unchanged)."""

from functools import partial

import torch
from torch import nn

import eva_transfer_projects.compat as compat
from eva_transfer import EVASimpleFeaturePyramid, build_eva_vit, load_checkpoint


def test_matches_detectron2_simple_feature_pyramid():
    compat.apply_detectron2()
    from detectron2.modeling import SimpleFeaturePyramid, ViT
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    vit = ViT(
        img_size=128,
        patch_size=16,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        use_rel_pos=True,
        window_size=4,
        window_block_indexes=(0, 2),
        pretrain_img_size=64,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),  # ViTDet's and this toolkit's eps
    )
    ref = SimpleFeaturePyramid(
        vit,
        "last_feat",
        32,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=LastLevelMaxPool(),
        norm="LN",
        square_pad=0,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)

    backbone = build_eva_vit("eva_tiny_det", img_size=128).eval()
    load_checkpoint(backbone, ref.state_dict(), verbose=False)
    ours = EVASimpleFeaturePyramid(64, in_stride=16, out_channels=32).eval()
    pyramid_sd = {k: v for k, v in ref.state_dict().items() if k.startswith("simfp_")}
    result = ours.load_state_dict(pyramid_sd, strict=True)
    assert not result.missing_keys

    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        expected = ref(x)
        got = ours(backbone(x))
    assert list(got) == ["p2", "p3", "p4", "p5", "p6"] == list(expected)
    assert ours.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for k in expected:
        assert got[k].shape == expected[k].shape, k
        assert (got[k] - expected[k]).abs().max() <= 1e-5, k
