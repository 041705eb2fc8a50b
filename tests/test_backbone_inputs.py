"""The backbone takes every input it documents: any grid shape, any size (floored to the patch), empty batches;
degenerate arguments and inputs are errors naming the argument."""

import logging
from functools import partial

import pytest
import torch
from torch import nn

import eva_transfer_projects.compat as compat
from eva_transfer import build_eva_vit, load_checkpoint


def _randomize(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _detectron2_vit():
    compat.apply_detectron2()
    from detectron2.modeling import ViT

    return ViT(
        img_size=128,
        patch_size=16,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=4,
        window_block_indexes=(0, 2),
        pretrain_img_size=64,
        pretrain_use_cls_token=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),  # ViTDet's and this toolkit's eps
    ).eval()


@pytest.mark.parametrize("img", [(16, 80), (32, 80), (64, 160), (48, 200)])
def test_one_window_tall_grids_match_detectron2(img):
    """A padded patch grid one window tall and several wide (crashed in the window partition before)."""
    ref = _randomize(_detectron2_vit())
    ours = build_eva_vit("eva_tiny_det", img_size=128).eval()
    load_checkpoint(ours, ref.state_dict(), verbose=False)
    x = torch.randn(2, 3, *img)
    with torch.no_grad():
        expected = ref(x)["last_feat"]
        got = ours(x)
    assert got.shape == expected.shape == (2, 64, img[0] // 16, img[1] // 16)
    assert (got - expected).abs().max().item() <= 1e-5


def test_eva_b_det_one_window_tall():
    model = build_eva_vit("eva_b_det", depth=2, global_block_indexes=(1,)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 1024))
    assert out.shape == (1, 768, 16, 64)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "argument, value",
    [
        ("depth", 0),
        ("depth", -2),
        ("patch_size", 0),
        ("embed_dim", 0),
        ("num_heads", 0),
        ("window_size", -1),
        ("drop_path_rate", 1.0),
        ("drop_path_rate", -0.1),
        ("drop_path_rate", 1.5),
        ("mlp_dim", 0),
        ("img_size", 8),
    ],
)
def test_degenerate_arguments_name_the_argument(argument, value):
    with pytest.raises(ValueError, match=rf"^{argument} must be"):
        build_eva_vit("eva_tiny_det", **{argument: value})


def test_input_of_the_wrong_rank_or_channels_is_named():
    model = build_eva_vit("eva_tiny").eval()
    with pytest.raises(ValueError, match=r"x: expected a \(B, C, H, W\) image batch, got a 3-D tensor"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="x: expected 3 channels, got 1"):
        model(torch.randn(2, 1, 64, 64))


@pytest.mark.parametrize("preset", ["eva_tiny", "eva_tiny_det"])
def test_an_empty_batch_gives_an_empty_output(preset):
    model = build_eva_vit(preset).eval()
    x = torch.randn(0, 3, 64, 96)
    assert model(x).shape == (0, 64, 4, 6)
    final, inter = model.forward_intermediates(x, indices=[0, 2])
    assert final.shape == (0, 64, 4, 6) and [t.shape for t in inter] == [(0, 64, 4, 6)] * 2
    n = 4 * 6 + model.num_prefix_tokens
    assert model.forward_tokens(x).shape == (0, n, 64)
    with pytest.raises(ValueError, match="smaller than one 16px patch"):
        model(torch.randn(0, 3, 8, 64))  # the same input checks as a batch with images


@pytest.mark.parametrize("preset", ["eva_tiny", "eva_tiny_det"])
def test_inputs_not_a_multiple_of_the_patch_are_floored_with_one_warning(preset, caplog):
    model = build_eva_vit(preset).eval()
    x = torch.randn(1, 3, 70, 100)
    with caplog.at_level(logging.WARNING, logger="eva_transfer.blocks"), torch.no_grad():
        got = model(x)
        model(x)
        cropped = model(x[:, :, :64, :96])  # what flooring means: the last 6 rows and 4 columns are unseen
    assert got.shape == (1, 64, 4, 6)
    assert torch.equal(got, cropped)
    warnings = [r.getMessage() for r in caplog.records if "not a multiple" in r.getMessage()]
    assert len(warnings) == 1
    assert "70x100" in warnings[0] and "last 6 rows and 4 columns" in warnings[0]


def test_an_empty_batch_through_the_pyramid_and_the_adapter():
    from eva_transfer import EVASimpleFeaturePyramid
    from eva_transfer.adapter import build_vit_adapter

    x = torch.randn(0, 3, 64, 64)
    with torch.no_grad():
        pyramid = EVASimpleFeaturePyramid(64)(build_eva_vit("eva_tiny_det").eval()(x))
        maps = build_vit_adapter("eva_tiny_seg").eval()(x)
    assert [tuple(v.shape) for v in pyramid.values()] == [(0, 256, s, s) for s in (16, 8, 4, 2, 1)]
    assert [tuple(m.shape) for m in maps] == [(0, 64, s, s) for s in (16, 8, 4, 2)]
