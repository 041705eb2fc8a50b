"""EVAViT (eva_transfer/vit.py).

- Against independent references: timm's Eva (global attention, CLS token) and Detectron2's ViT (windowed attention
  with decomposed relative position); weights go through the checkpoint converter.
- Behaviour: presets, any input size, intermediates, masking, activation checkpointing.
- Every documented input: any grid shape, any size (floored to the patch), empty batches; degenerate arguments and
  inputs are errors naming the argument.
- BEiT-style options against timm's BEiT: relative-position bias table with CLS rows, LayerScale, and the
  CLS token with or without a position; the timm weights load through the one converter.

EVA-02's options (SwiGLU, sub-LN, RoPE) are in tests/test_vit_eva02.py.
"""

from __future__ import annotations

import logging
from functools import partial

import pytest
import torch
from reference_models import TINY_DET_LAYOUT, randomize, tiny_detectron2_vit, tiny_timm_eva
from timm.models.beit import Beit

from eva_transfer import PRESETS, EVAViT, build_eva_vit, load_checkpoint
from eva_transfer.blocks import beit_rel_pos_index
from eva_transfer.checkpoint_io import CheckpointError
from eva_transfer.presets import every_kth_block

timm_eva = pytest.importorskip("timm.models.eva")


_randomize = partial(randomize, seed=1)


def _timm_eva(patch, img, **kw):
    return tiny_timm_eva(img_size=img, patch_size=patch, **kw)


@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("shape", [(4, 4), (4, 6)])
def test_global_attention_matches_timm(patch, shape):
    img = (shape[0] * patch, shape[1] * patch)
    ref = _randomize(_timm_eva(patch, img))
    ours = build_eva_vit("eva_tiny", patch_size=patch, img_size=img).eval()
    assert ours.pos_grid == shape
    report = load_checkpoint(ours, ref.state_dict(), verbose=False)
    assert not report.missing and not report.unexpected
    x = torch.randn(2, 3, *img)
    with torch.no_grad():
        expected = ref.forward_features(x)
        got = ours.forward_tokens(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5


_d2_vit = tiny_detectron2_vit


@pytest.mark.parametrize("img", [(128, 128), (96, 160), (100, 84)])
def test_windowed_relpos_matches_detectron2(img):
    """Windowed + global blocks with decomposed relative position, padding to the window, on square,
    non-square and non-divisible inputs; the pretrain grid (4x4 + CLS slot) is interpolated at run time."""
    ours = _detectron2_weights_same_output(img)
    assert ours.global_block_indexes == (1, 3)


def test_windowed_relpos_gradients_match_detectron2(monkeypatch):
    """Training parity: the same loss gives the same gradients; the query-chunked global attention too."""
    import eva_transfer.attention as attention

    # forces several query chunks in the global blocks
    monkeypatch.setattr(attention, "MAX_BIAS_ELEMENTS", 2000)
    ref = _randomize(_d2_vit(**TINY_DET_LAYOUT))
    ours = build_eva_vit("eva_tiny_det", img_size=128).eval()
    load_checkpoint(ours, ref.state_dict(), verbose=False)
    x = torch.randn(2, 3, 112, 144)
    (ref(x)["last_feat"] ** 2).sum().backward()
    (ours(x) ** 2).sum().backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        if name.endswith(("q_bias", "v_bias")):
            g = ref_grads[name.replace(name.split(".")[-1], "qkv.bias")].grad
            c = g.shape[0] // 3
            expected = g[:c] if name.endswith("q_bias") else g[2 * c :]
        else:
            expected = ref_grads[name].grad
        scale = expected.abs().max().clamp_min(1e-6)
        assert ((p.grad - expected).abs().max() / scale) <= 1e-5, name


# -------------------- backbone
# Backbone behaviour: presets, any input size, intermediates, masking, activation checkpointing.
def test_eva_g_parameter_count_matches_paper():
    with torch.device("meta"):
        model = build_eva_vit("eva_g")
    n = sum(p.numel() for p in model.parameters())
    # EVA-01 paper, Table 3a: a 1011M-parameter encoder (40 blocks, width 1408, MLP 6144, 16 heads, patch 14)
    assert abs(n - 1011e6) / 1011e6 < 0.001, n
    assert (model.depth, model.embed_dim, model.num_heads, model.patch_size) == (40, 1408, 16, 14)
    assert model.blocks[0].mlp.fc1.out_features == 6144
    assert model.pos_embed.shape == (1, 257, 1408)


def test_detection_preset_layout():
    with torch.device("meta"):
        model = build_eva_vit("eva_g_det")
    assert model.global_block_indexes == tuple(range(3, 40, 4))
    assert model.window_size == 16 and model.patch_size == 16 and model.cls_token is None
    assert isinstance(model.norm, torch.nn.Identity)
    assert model.blocks[39].drop_path.drop_prob == pytest.approx(0.6)
    assert model.blocks[3].attn.rel_pos_h.shape == (2 * 80 - 1, 88)  # global block at 1280 / 16
    assert model.blocks[0].attn.rel_pos_h.shape == (31, 88)  # window 16


def test_preset_errors_suggest_names():
    with pytest.raises(KeyError, match="did you mean 'eva_g_det'"):
        build_eva_vit("eva_g_dt")
    with pytest.raises(TypeError, match="did you mean 'drop_path_rate'"):
        build_eva_vit("eva_tiny", drop_path=0.1)


def test_depth_override_keeps_interleaving():
    model = build_eva_vit("eva_tiny_det", depth=6)
    assert model.global_block_indexes == every_kth_block(6, 2) == (1, 3, 5)
    assert PRESETS["eva_g_det"]["global_block_indexes"] == every_kth_block(40, 4)


@pytest.mark.parametrize("name", ["eva_tiny", "eva_tiny_det", "eva_tiny_seg"])
@pytest.mark.parametrize("hw", [(64, 64), (80, 144), (50, 70)])
def test_any_input_size(name, hw):
    model = build_eva_vit(name).eval()
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 64, hw[0] // 16, hw[1] // 16)
    assert torch.isfinite(out).all()


def test_window_padding_does_not_leak_across_images():
    """Each image's features depend on that image only (windows are per image, padding is per image)."""
    model = build_eva_vit("eva_tiny_det").eval()
    a, b = torch.randn(1, 3, 80, 112), torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        both = model(torch.cat([a, b]))
        alone = model(a)
    assert torch.allclose(both[:1], alone, atol=1e-5)


def test_forward_intermediates():
    model = build_eva_vit("eva_tiny_det").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[1, -1])
        full = model(x)
        _, last_two = model.forward_intermediates(x, indices=2)
    assert len(inter) == 2 and len(last_two) == 2
    assert all(t.shape == (2, 64, 4, 6) for t in inter)
    assert torch.equal(final, full) and torch.equal(inter[1], full)
    assert not torch.equal(inter[0], inter[1])


def test_mask_token_replaces_masked_patches_only():
    model = build_eva_vit("eva_tiny", use_mask_token=True).eval()
    x = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 5] = True
    tokens, hw = model.prepare_tokens(x, mask)
    plain, _ = model.prepare_tokens(x)
    assert hw == (4, 4) and tokens.shape == (1, 17, 64)
    changed = (tokens != plain).any(-1)[0]
    assert changed.nonzero().flatten().tolist() == [6]  # CLS is token 0
    with pytest.raises(ValueError, match="mask token"):
        build_eva_vit("eva_tiny").prepare_tokens(x, mask)


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = build_eva_vit("eva_tiny_det")
    ckpt = build_eva_vit("eva_tiny_det", use_act_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 80)
    for m in (plain, ckpt):
        m.train()
        (m(x) ** 2).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None, name
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), name


def test_drop_path_is_stochastic_in_training_only():
    model = build_eva_vit("eva_tiny", drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_invalid_layouts_are_refused():
    with pytest.raises(ValueError, match="CLS token needs global attention"):
        EVAViT(embed_dim=64, depth=2, num_heads=4, use_cls_token=True, window_size=4)
    with pytest.raises(ValueError, match="out of range"):
        EVAViT(embed_dim=64, depth=2, num_heads=4, window_size=4, global_block_indexes=(2,))
    with pytest.raises(ValueError, match="smaller than one 16px patch"):
        build_eva_vit("eva_tiny")(torch.randn(1, 3, 8, 64))


# -------------------- backbone_inputs
# The backbone takes every input it documents: any grid shape, any size (floored to the patch), empty batches;
def _detectron2_vit():
    return tiny_detectron2_vit(**TINY_DET_LAYOUT, pretrain_use_cls_token=True)


def _detectron2_weights_same_output(img: tuple[int, int]) -> EVAViT:
    """``eva_tiny_det`` loaded whole from a random Detectron2 ViT gives its output on a ``(2, 3, *img)`` batch."""
    ref = _randomize(_detectron2_vit())
    ours = build_eva_vit("eva_tiny_det", img_size=128).eval()
    report = load_checkpoint(ours, ref.state_dict(), verbose=False)
    assert not report.missing and not report.unexpected
    x = torch.randn(2, 3, *img)
    with torch.no_grad():
        expected = ref(x)["last_feat"]
        got = ours(x)
    assert got.shape == expected.shape == (2, 64, img[0] // 16, img[1] // 16)
    assert (got - expected).abs().max().item() <= 1e-5
    return ours


@pytest.mark.parametrize("img", [(16, 80), (32, 80), (64, 160), (48, 200)])
def test_one_window_tall_grids_match_detectron2(img):
    """A padded patch grid one window tall and several wide (crashed in the window partition before)."""
    _detectron2_weights_same_output(img)


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


# -------------------- vit_beit_options
# EVAViT's BEiT-style options against timm's BEiT: relative-position bias table with CLS rows, LayerScale, and the
SHAPE = dict(embed_dim=64, depth=2, num_heads=4)


def _timm_beit(grid=(4, 6), init_values=0.3):
    torch.manual_seed(0)
    model = Beit(
        img_size=(16 * grid[0], 16 * grid[1]),
        patch_size=16,
        num_classes=0,
        mlp_ratio=2.0,
        qkv_bias=True,
        init_values=init_values,
        use_abs_pos_emb=True,
        use_rel_pos_bias=True,
        use_fc_norm=False,
        **SHAPE,
    ).eval()
    with torch.no_grad():  # timm zero-initialises the tables and biases: make them count
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or "bias" in name or "pos_embed" in name:
                p.normal_(0, 0.5)
            if "gamma" in name:
                p.uniform_(0.2, 1.5)
    return model


def _ours(grid=(4, 6), **kw):
    return EVAViT(
        img_size=(16 * grid[0], 16 * grid[1]),
        mlp_dim=128,
        use_cls_token=True,
        final_norm=True,
        use_rel_pos_bias=True,
        layer_scale_init=1.0,
        **SHAPE,
        **kw,
    ).eval()


def test_bias_table_layerscale_and_cls_match_timm_beit():
    grid = (4, 6)  # not square: rows and columns of the bias index must not be swapped
    theirs = _timm_beit(grid)
    ours = _ours(grid)
    report = load_checkpoint(ours, theirs.state_dict(), verbose=False)
    assert not report.missing, report.missing
    assert not report.unexpected and not report.resized
    assert {k for k in report.loaded if "relative_position_bias_table" in k or "gamma" in k} == {
        f"blocks.{i}.{n}"
        for i in range(2)
        for n in ("attn.relative_position_bias_table", "gamma_1", "gamma_2")
    }
    x = torch.randn(2, 3, 16 * grid[0], 16 * grid[1])
    with torch.no_grad():
        expected = theirs.forward_features(x)
        got = ours.forward_tokens(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # timm's index (CLS row, CLS column, CLS-CLS entry) is the one built here
    torch.testing.assert_close(beit_rel_pos_index(grid), theirs.blocks[0].attn.relative_position_index)


def test_cls_token_without_position_is_not_timm_and_differs():
    theirs = _timm_beit()
    ours = _ours(cls_token_pos=False)
    load_checkpoint(ours, theirs.state_dict(), verbose=False)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        tokens = ours.forward_tokens(x)
        ours.cls_token_pos = True
        with_pos = ours.forward_tokens(x)
    assert not torch.allclose(tokens, with_pos, atol=1e-4)


def test_missing_options_name_the_key():
    theirs = _timm_beit()
    plain = EVAViT(img_size=(64, 96), mlp_dim=128, use_cls_token=True, final_norm=True, **SHAPE)
    with pytest.raises(
        CheckpointError,
        match=r"blocks\.0\.(gamma_1|attn\.relative_position_bias_table).*use_rel_pos_bias|layer_scale_init",
    ):
        load_checkpoint(plain, theirs.state_dict(), verbose=False)


def test_bias_table_resized_for_another_grid_keeps_cls_rows():
    ours = _ours((4, 4))
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.2)
    attn = ours.blocks[0].attn
    bias = attn.rel_pos_bias((6, 5), prefix=1)
    assert bias.shape == (4, 31, 31)
    table = attn.relative_position_bias_table
    torch.testing.assert_close(bias[:, 0, 1:], table[-3][:, None].expand(4, 30))  # CLS -> patches
    torch.testing.assert_close(bias[:, 1:, 0], table[-2][:, None].expand(4, 30))  # patches -> CLS
    torch.testing.assert_close(bias[:, 0, 0], table[-1])
    same = attn.rel_pos_bias((4, 4), prefix=0)  # the table's own grid: used as trained
    idx = beit_rel_pos_index((4, 4))[1:, 1:]
    torch.testing.assert_close(same, table[idx.reshape(-1)].view(16, 16, 4).permute(2, 0, 1))
