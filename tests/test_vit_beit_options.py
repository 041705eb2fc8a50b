"""EVAViT's BEiT-style options against timm's BEiT: relative-position bias table with CLS rows, LayerScale, and the
CLS token with or without a position; the timm weights load through the one converter."""

from __future__ import annotations

import pytest
import torch
from timm.models.beit import Beit

from eva_transfer import load_checkpoint
from eva_transfer.blocks import beit_rel_pos_index
from eva_transfer.checkpoint_io import CheckpointError
from eva_transfer.vit import EVAViT

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
