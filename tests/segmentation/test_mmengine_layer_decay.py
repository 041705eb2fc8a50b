"""Layer-decay optimizer constructor: the authors' groups from the published config (scheme "eva"), and the
earlier "head_full_lr" option (backbone block i decayed, decode-head queries and embeddings at full lr)."""

from __future__ import annotations

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmseg.registry import MODELS

from .conftest import CONFIG_DIR, TINY_CONFIG

RATE = 0.8


@pytest.fixture(scope="module")
def segmentor_and_groups():
    cfg = Config.fromfile(TINY_CONFIG)
    model = MODELS.build(cfg.model)
    optim_cfg = dict(
        type="OptimWrapper",
        optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05),
        constructor="LayerDecayOptimWrapperConstructor",
        paramwise_cfg=dict(layer_decay_rate=RATE, scheme="head_full_lr"),
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


# --- the published config (EVA-g, ADE20K): the authors' groups ---------------------------------------------------

ADE_G = str(CONFIG_DIR / "eva_g_mask2former_ade20k_896.py")
VIT = "backbone.adapter.backbone."


def _authors_layer_id(name: str, num_layers: int) -> int:
    """The authors' layer id (EVA-01/seg/mmcv_custom/layer_decay_optimizer_constructor.py), on their names: the
    ViT's parameters sit directly under ``backbone.``, beside the adapter's."""
    if name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed"):
        return 0
    layer0_prefixes = (
        "backbone.patch_embed",
        "decode_head.mask_embed",
        "decode_head.cls_embed",
        "decode_head.level_embed",
        "decode_head.query_embed",
        "decode_head.query_feat",
    )
    if name.startswith(layer0_prefixes):
        return 0
    if name.startswith("backbone.blocks"):
        return int(name.split(".")[2]) + 1
    return num_layers + 1


def _authors_name(name: str) -> str:
    if name.startswith(VIT):
        return "backbone." + name[len(VIT) :]
    return name.replace("backbone.adapter.", "backbone.", 1)


@pytest.fixture(scope="module")
def published_groups():
    cfg = Config.fromfile(ADE_G)
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_lr, wd, rate = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay, 0.95
    by_name = {n: g for g in wrapper.optimizer.param_groups for n in g["names"]}
    shapes = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    return by_name, shapes, base_lr, wd, rate


def test_published_config_groups_follow_the_authors_for_every_parameter(published_groups):
    by_name, shapes, base_lr, wd, rate = published_groups
    assert set(by_name) == set(shapes)
    num_layers = 40
    for name, shape in shapes.items():
        layer = _authors_layer_id(_authors_name(name), num_layers)
        scale = rate ** (num_layers + 1 - layer)
        decayed = not (len(shape) == 1 or name.endswith(".bias"))
        group = by_name[name]
        assert group["lr_scale"] == pytest.approx(scale, rel=1e-12), name
        assert group["lr"] == pytest.approx(base_lr * scale, rel=1e-12), name
        assert group["weight_decay"] == (wd if decayed else 0.0), name


@pytest.mark.parametrize(
    "name, lr_scale, weight_decay",
    [
        ("decode_head.cls_embed.weight", 0.95**41, 0.05),
        ("decode_head.cls_embed.bias", 0.95**41, 0.0),
        ("decode_head.mask_embed.0.weight", 0.95**41, 0.05),
        ("decode_head.query_embed.weight", 0.95**41, 0.05),
        ("decode_head.query_feat.weight", 0.95**41, 0.05),
        ("decode_head.level_embed.weight", 0.95**41, 0.05),
        (VIT + "pos_embed", 0.95**41, 0.05),
        (VIT + "patch_embed.proj.weight", 0.95**41, 0.05),
        (VIT + "patch_embed.proj.bias", 0.95**41, 0.0),
        (VIT + "blocks.0.attn.qkv.weight", 0.95**40, 0.05),
        (VIT + "blocks.39.mlp.fc2.weight", 0.95**1, 0.05),
        (VIT + "blocks.39.norm1.weight", 0.95**1, 0.0),
        ("backbone.adapter.level_embed", 1.0, 0.05),
        ("backbone.adapter.spm.stem.0.weight", 1.0, 0.05),
        ("decode_head.transformer_decoder.layers.0.ffn.layers.0.0.weight", 1.0, 0.05),
        ("decode_head.pixel_decoder.level_encoding.weight", 1.0, 0.05),
    ],
)
def test_published_config_named_families(published_groups, name, lr_scale, weight_decay):
    by_name, _, base_lr, _, _ = published_groups
    group = by_name[name]
    assert group["lr_scale"] == pytest.approx(lr_scale, rel=1e-12)
    assert group["lr"] == pytest.approx(2.5e-5 * lr_scale, rel=1e-12)
    assert group["weight_decay"] == weight_decay


def test_unknown_scheme_is_an_error():
    model = MODELS.build(Config.fromfile(TINY_CONFIG).model)
    with pytest.raises(ValueError, match="scheme.*'evaa'.*head_full_lr"):
        build_optim_wrapper(
            model,
            dict(
                optimizer=dict(type="AdamW", lr=1e-3),
                constructor="LayerDecayOptimWrapperConstructor",
                paramwise_cfg=dict(layer_decay_rate=0.9, scheme="evaa"),
            ),
        )
