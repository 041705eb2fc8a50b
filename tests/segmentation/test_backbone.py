"""The registered EVAViTAdapter: checkpoint through the shared converter, normalisation choice, any input size."""

from __future__ import annotations

import logging

import pytest
import torch
from mmengine.logging import MMLogger
from mmseg.registry import MODELS
from torch import nn

from eva_transfer import build_eva_vit
from eva_transfer.checkpoint_io import save_checkpoint

TINY = dict(type="EVAViTAdapter", preset="eva_tiny_seg", adapter=dict(conv_inplane=16, deform_num_heads=4))


def test_init_cfg_pretrained_loads_backbone_through_shared_converter(tmp_path):
    # an EVA MIM-style checkpoint of the tiny ViT: CLS token, mask token and final norm are dropped by the converter
    source = build_eva_vit("eva_tiny")
    path = tmp_path / "mim.pth"
    save_checkpoint({"model": source.state_dict()}, path)
    model = MODELS.build(
        dict(
            TINY,
            init_cfg=dict(type="Pretrained", checkpoint=str(path)),
            norm_cfg=dict(type="GN", num_groups=8),
        )
    )
    # the report goes to mmengine's current logger (its console stream may belong to an earlier test's capture)
    current = MMLogger.get_current_instance()
    records, level = [], current.level
    catch = logging.Handler()
    catch.emit = records.append
    current.addHandler(catch)
    current.setLevel(logging.INFO)
    try:
        model.init_weights()
    finally:
        current.removeHandler(catch)
        current.setLevel(level)
    vit = model.adapter.backbone
    for name, p in vit.named_parameters():
        if name in source.state_dict() and not name.startswith("pos_embed"):
            torch.testing.assert_close(p, source.state_dict()[name], msg=name)
    assert any(f"EVAViTAdapter: weights from {path}" in r.getMessage() for r in records)

    # same outputs as the same weights set directly
    direct = MODELS.build(dict(TINY, norm_cfg=dict(type="GN", num_groups=8)))
    direct.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    model.eval(), direct.eval()
    for a, b in zip(model(x), direct(x)):
        torch.testing.assert_close(a, b)


def _authors_bicubic(pos: torch.Tensor, side: int) -> torch.Tensor:
    """EVA-01's position-table resize (``EVA-01/seg/interpolate_patch_14to16.py`` lines 20-27, to 14x14 there, and
    ``EVA-01/seg/mmcv_custom/checkpoint.py`` lines 475-487): the CLS slot kept, the grid bicubic, corners not
    aligned."""
    g, dim = int(round((pos.shape[1] - 1) ** 0.5)), pos.shape[2]
    grid = pos[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


@pytest.mark.parametrize("pos_grid", [56, 4])
def test_mim_position_table_takes_the_authors_two_steps(tmp_path, pos_grid):
    """eva_psz14.pt (patch 14, 16x16 grid + CLS) into the patch-16 segmentation backbone: EVA-01 resizes the grid
    16 -> 14 offline (their 14->16 script, 224 px at patch 16), then 14 -> the backbone's grid when it loads the
    file (56 at 896 px); not 16 -> 56 at once."""
    source = build_eva_vit("eva_tiny", patch_size=14, img_size=224)  # the MIM layout: 16x16 grid + CLS slot
    with torch.no_grad():
        source.pos_embed.normal_(std=0.5)
    sd = source.state_dict()
    assert sd["pos_embed"].shape == (1, 1 + 16 * 16, 64) and sd["patch_embed.proj.weight"].shape[-1] == 14
    path = tmp_path / "eva_psz14.pt"
    save_checkpoint({"model": sd}, path)
    overrides = dict(img_size=16 * pos_grid, pos_grid=pos_grid)
    model = MODELS.build(
        dict(
            TINY,
            backbone_overrides=overrides,
            init_cfg=dict(type="Pretrained", checkpoint=str(path)),
            norm_cfg=dict(type="GN", num_groups=8),
        )
    )
    model.init_weights()
    got = model.adapter.backbone.pos_embed.detach()
    authors = _authors_bicubic(_authors_bicubic(sd["pos_embed"], 14), pos_grid)
    torch.testing.assert_close(got, authors, rtol=0, atol=1e-6)
    one_step = _authors_bicubic(sd["pos_embed"], pos_grid)
    assert (got - one_step).abs().max() > 1e-2  # two bicubic steps are not one


@pytest.mark.parametrize(
    "norm_cfg, kind", [(dict(type="BN"), nn.BatchNorm2d), (dict(type="GN", num_groups=8), nn.GroupNorm)]
)
def test_normalisation_from_config(norm_cfg, kind):
    model = MODELS.build(dict(TINY, norm_cfg=norm_cfg))
    norms = [m for m in model.adapter.norms]
    assert norms and all(type(m) is kind for m in norms)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())  # SyncBN only via the runner


def test_input_not_divisible_by_32():
    model = MODELS.build(dict(TINY, norm_cfg=dict(type="GN", num_groups=8))).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 70, 50))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 18, 13), (1, 64, 9, 7), (1, 64, 5, 4), (1, 64, 3, 2)]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="out_indices"):
        MODELS.build(dict(TINY, out_indices=(0, 4)))
    with pytest.raises(ValueError, match="norm_cfg"):
        MODELS.build(dict(TINY, adapter=dict(TINY["adapter"], norm_layer=nn.BatchNorm2d)))
    with pytest.raises(KeyError, match="eva_tiny_sge"):
        MODELS.build(dict(TINY, preset="eva_tiny_sge"))
    with pytest.raises(ValueError, match="'checkpoint' \\(required\\)"):
        MODELS.build(dict(TINY, init_cfg=dict(type="Pretrained", path="eva.pt")))


def test_runner_sync_bn_option_converts_the_adapter_norms():
    """What the runner does with ``sync_bn="torch"`` when training is distributed."""
    from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm

    model = convert_sync_batchnorm(MODELS.build(dict(TINY, norm_cfg=dict(type="BN"))), "torch")
    assert all(isinstance(m, nn.SyncBatchNorm) for m in model.adapter.norms)
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    reverted = revert_sync_batchnorm(model)  # what it does on one device
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in reverted.modules())
