"""Layer-decay optimizer constructor: backbone block i decayed, decode-head queries and embeddings at full lr."""

from __future__ import annotations

import pytest
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmseg.registry import MODELS

from .conftest import TINY_CONFIG

RATE = 0.8


@pytest.fixture(scope="module")
def segmentor_and_groups():
    cfg = Config.fromfile(TINY_CONFIG)
    model = MODELS.build(cfg.model)
    optim_cfg = dict(
        type="OptimWrapper",
        optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05),
        constructor="LayerDecayOptimWrapperConstructor",
        paramwise_cfg=dict(layer_decay_rate=RATE),
    )
    wrapper = build_optim_wrapper(model, optim_cfg)
    by_name = {}
    for group in wrapper.optimizer.param_groups:
        for name in group["names"]:
            by_name[name] = group
    return model, wrapper, by_name


def test_every_trainable_parameter_is_in_exactly_one_group(segmentor_and_groups):
    model, wrapper, by_name = segmentor_and_groups
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(by_name) == trainable
    assert sum(len(g["params"]) for g in wrapper.optimizer.param_groups) == len(trainable)


def test_backbone_blocks_get_decayed_lr(segmentor_and_groups):
    model, _, by_name = segmentor_and_groups
    vit = model.backbone.adapter.backbone
    depth = vit.depth
    prefix = "backbone.adapter.backbone."
    for i in range(depth):
        group = by_name[f"{prefix}blocks.{i}.attn.qkv.weight"]
        assert group["lr"] == pytest.approx(1e-3 * RATE ** (depth - i)), f"block {i}"
        assert group["weight_decay"] == 0.05
    assert by_name[f"{prefix}patch_embed.proj.weight"]["lr"] == pytest.approx(1e-3 * RATE ** (depth + 1))
    assert by_name[f"{prefix}pos_embed"]["lr"] == pytest.approx(1e-3 * RATE ** (depth + 1))


@pytest.mark.parametrize(
    "name",
    [
        "decode_head.query_embed.weight",
        "decode_head.query_feat.weight",
        "decode_head.level_embed.weight",
        "backbone.adapter.level_embed",
    ],
)
def test_queries_and_level_embeddings_get_full_lr_and_no_weight_decay(segmentor_and_groups, name):
    _, _, by_name = segmentor_and_groups
    assert by_name[name]["lr"] == pytest.approx(1e-3)
    assert by_name[name]["weight_decay"] == 0.0


def test_head_and_adapter_weights_get_full_lr_with_weight_decay(segmentor_and_groups):
    model, _, by_name = segmentor_and_groups
    for name in ("decode_head.cls_embed.weight", "backbone.adapter.spm.conv4.0.weight"):
        assert by_name[name]["lr"] == pytest.approx(1e-3)
        assert by_name[name]["weight_decay"] == 0.05
    norms_and_biases = [n for n, p in model.named_parameters() if p.ndim == 1]
    assert norms_and_biases and all(by_name[n]["weight_decay"] == 0.0 for n in norms_and_biases)


def test_unknown_paramwise_key_is_an_error():
    cfg = Config.fromfile(TINY_CONFIG)
    model = MODELS.build(cfg.model)
    with pytest.raises(ValueError, match="layer_decay_rte"):
        build_optim_wrapper(
            model,
            dict(
                optimizer=dict(type="AdamW", lr=1e-3),
                constructor="LayerDecayOptimWrapperConstructor",
                paramwise_cfg=dict(layer_decay_rte=0.9),
            ),
        )
