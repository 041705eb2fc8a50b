"""Layer-wise lr decay for a model that contains the backbone."""

import pytest
import torch
from lr_decay_reference import lr_scale_for_name
from torch import nn

from eva_transfer import EVASimpleFeaturePyramid, build_eva_vit, param_groups_layer_decay
from eva_transfer.lr_decay import layer_id_for_name


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.net = build_eva_vit("eva_tiny_det")
        self.backbone.pyramid = EVASimpleFeaturePyramid(64, out_channels=32)
        self.queries = nn.Embedding(10, 32)
        self.level_embed = nn.Parameter(torch.zeros(4, 32))
        self.head = nn.Linear(32, 5)


def test_layer_ids():
    assert layer_id_for_name("patch_embed.proj.weight", 40) == 0
    assert layer_id_for_name("pos_embed", 40) == 0
    assert layer_id_for_name("blocks.0.norm1.weight", 40) == 1
    assert layer_id_for_name("blocks.39.mlp.fc2.bias", 40) == 40
    assert layer_id_for_name("norm.weight", 40) == 41
    assert lr_scale_for_name(
        "backbone.net.blocks.39.mlp.fc2.bias", 0.9, 40, "backbone.net."
    ) == pytest.approx(0.9)
    assert lr_scale_for_name("backbone.net.pos_embed", 0.9, 40, "backbone.net.") == pytest.approx(0.9**41)


def test_param_groups():
    model = Detector()
    groups = param_groups_layer_decay(model, base_lr=1e-4, weight_decay=0.1, decay_rate=0.5)
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    depth = 4
    assert by_name["backbone.net.patch_embed.proj.weight"]["lr"] == pytest.approx(1e-4 * 0.5 ** (depth + 1))
    assert by_name["backbone.net.blocks.2.attn.qkv.weight"]["lr"] == pytest.approx(1e-4 * 0.5 ** (depth - 2))
    # task-head parameters (pyramid, queries, level embeddings, head) get the full learning rate
    for name in ("backbone.pyramid.simfp_2.0.weight", "queries.weight", "level_embed", "head.weight"):
        assert by_name[name]["lr"] == pytest.approx(1e-4), name
    # no weight decay on biases, norms, embeddings and relative-position tables
    for name in (
        "backbone.net.pos_embed",
        "backbone.net.blocks.1.attn.rel_pos_h",
        "backbone.net.blocks.0.norm1.weight",
        "head.bias",
        "backbone.net.blocks.0.attn.q_bias",
    ):
        assert by_name[name]["weight_decay"] == 0.0, name
    assert by_name["backbone.net.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.1
    assert by_name["queries.weight"]["weight_decay"] == 0.1
    nd = param_groups_layer_decay(model, 1e-4, 0.1, 0.5, no_decay_patterns=[r"^queries\."])
    assert {n: g for g in nd for n in g["param_names"]}["queries.weight"]["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups)  # the groups are valid optimizer input
    assert len(opt.param_groups) == len(groups)


def test_frozen_parameters_left_out():
    model = Detector()
    model.backbone.net.patch_embed.requires_grad_(False)
    names = [n for g in param_groups_layer_decay(model, 1e-4, 0.1, 0.9) for n in g["param_names"]]
    assert not any("patch_embed" in n for n in names)


def _no_decay_names(groups) -> set[str]:
    return {n for g in groups if g["weight_decay"] == 0.0 for n in g["param_names"]}


def test_no_weight_decay_follows_the_models_own_list():
    model = Detector()
    groups = param_groups_layer_decay(model, 1e-4, 0.1, 0.9)
    # the rule written out: 1-D parameters, the ViT's position embedding, CLS/mask tokens, relative-position tables
    expected = {
        n
        for n, p in model.named_parameters()
        if p.ndim <= 1
        or n.startswith("backbone.net.")
        and (n.rsplit(".", 1)[-1] in ("pos_embed", "cls_token", "mask_token") or "rel_pos" in n)
    }
    assert "backbone.net.blocks.0.attn.rel_pos_h" in expected and "backbone.net.pos_embed" in expected
    assert _no_decay_names(groups) == expected

    # a module that lists its own parameter in no_weight_decay() is heard, under its full name
    class Table(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.zeros(3, 4))

        def no_weight_decay(self):
            return {"table"}

    model.extra = Table()
    assert "extra.table" in _no_decay_names(param_groups_layer_decay(model, 1e-4, 0.1, 0.9))
    assert "extra.table" not in _no_decay_names(
        param_groups_layer_decay(model, 1e-4, 0.1, 0.9, weight_decay_scope="all")
    )


def test_layer_id_rules_and_no_decay_fn_against_a_direct_reference():
    """The extensions the segmentation constructor uses: regex -> layer id for names outside the ViT (first rule
    that matches wins), and a custom no-weight-decay predicate; checked against rules written out here."""
    model = Detector()
    rules = [(r"^queries\.", 0), (r"^level_embed$", 2), (r"^queries", 3)]
    groups = param_groups_layer_decay(
        model, 1e-4, 0.1, 0.5, layer_id_rules=rules, no_decay_fn=lambda name, p: name.endswith(".bias")
    )
    depth = 4
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    for name, _ in model.named_parameters():
        if name.startswith("backbone.net."):
            rest = name[len("backbone.net.") :]
            want = 0 if rest.startswith(("patch_embed", "pos_embed")) else depth + 1
            if rest.startswith("blocks."):
                want = int(rest.split(".")[1]) + 1
        else:
            want = {"queries.weight": 0, "level_embed": 2}.get(name, depth + 1)
        g = by_name[name]
        assert g["layer_id"] == want, name
        assert g["lr"] == pytest.approx(1e-4 * 0.5 ** (depth + 1 - want)), name
        # the predicate alone decides: norms and pos_embed are decayed, biases are not
        assert g["weight_decay"] == (0.0 if name.endswith(".bias") else 0.1), name
    with pytest.raises(ValueError, match="no_decay_fn replaces"):
        param_groups_layer_decay(
            model, 1e-4, 0.1, 0.5, no_decay_patterns=["x"], no_decay_fn=lambda n, p: False
        )
    with pytest.raises(ValueError, match=r"layer id 9 of '\^head' must be an integer in \[0, 5\]"):
        param_groups_layer_decay(model, 1e-4, 0.1, 0.5, layer_id_rules={r"^head": 9})
