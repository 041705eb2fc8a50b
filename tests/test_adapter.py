"""ViT-Adapter around the shared EVA backbone: shapes, checkpoint loading, the zero-initialised gate, gradients."""

import math
from functools import partial

import pytest
import torch
from torch import nn

from eva_transfer import build_eva_vit, load_checkpoint, save_checkpoint
from eva_transfer.adapter import ViTAdapter, build_vit_adapter, interaction_ranges
from eva_transfer.export import export_state_dict


def _adapter(**kwargs) -> ViTAdapter:
    return build_vit_adapter("eva_tiny_seg", adapter=kwargs)


def test_interaction_ranges_follow_the_depth():
    assert interaction_ranges(40) == [(0, 9), (10, 19), (20, 29), (30, 39)]
    assert interaction_ranges(24) == [(0, 5), (6, 11), (12, 17), (18, 23)]
    assert interaction_ranges(4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    with pytest.raises(ValueError, match="3 blocks"):
        interaction_ranges(3)


@pytest.mark.parametrize("size", [(64, 64), (70, 45), (100, 129)])
def test_output_shapes_any_input_size(size):
    model = _adapter().eval()
    h, w = size
    with torch.no_grad():
        outs = model(torch.randn(2, 3, h, w))
    assert [tuple(o.shape) for o in outs] == [
        (2, 64, math.ceil(h / s), math.ceil(w / s)) for s in (4, 8, 16, 32)
    ]
    assert all(torch.isfinite(o).all() for o in outs)


def test_adapter_wraps_the_backbone_without_a_second_vit():
    model = _adapter()
    vits = [m for m in model.modules() if type(m).__name__ == "EVAViT"]
    assert vits == [model.backbone]
    # one set of ViT blocks: the adapter's own parameters are the spatial prior, interactions, up and norms
    own = {n.split(".")[0] for n, _ in model.named_parameters() if not n.startswith("backbone.")}
    assert own == {"level_embed", "spm", "interactions", "up", "norms"}


def _perturb(module: nn.Module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.02)


def test_checkpoint_through_converter_equals_weights_set_directly(tmp_path):
    source = build_eva_vit("eva_tiny_seg")
    _perturb(source)
    direct = _adapter(init_values=0.5)  # a non-zero gate, so the injectors take part in the comparison
    _perturb(direct)
    direct.backbone.load_state_dict(source.state_dict())

    # a fine-tuned checkpoint as a segmentation framework writes it: wrapped, prefixed, one qkv bias per block
    state, _ = export_state_dict(source, "detectron2", prefix="backbone.backbone.")
    for k in [k for k in state if k.endswith("qkv.bias")]:  # a non-zero key bias, which has no effect
        state[k][64:128] = torch.randn(64)
    state["decode_head.conv_seg.weight"] = torch.randn(5, 8)
    path = tmp_path / "segmentor.pth"
    save_checkpoint({"state_dict": state, "meta": {"iter": 7}}, path)

    loaded = _adapter(init_values=0.5)
    own = {k: v for k, v in direct.state_dict().items() if not k.startswith("backbone.")}
    loaded.load_state_dict(own, strict=False)
    report = load_checkpoint(loaded, path, verbose=False)
    assert report.prefix == "backbone.backbone."
    assert not report.missing
    for k, v in direct.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k

    x = torch.randn(1, 3, 72, 90)
    direct.eval()
    loaded.eval()
    with torch.no_grad():
        for a, b in zip(direct(x), loaded(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("init_values", [0.0, 0.3])
def test_zero_initialised_gate_makes_the_injection_a_no_op(init_values):
    model = _adapter(init_values=init_values).eval()
    changes = []

    def record(module, args, output):
        changes.append(float((output - args[0]).abs().max()))

    for interaction in model.interactions:
        interaction.injector.register_forward_hook(record)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 80))
    assert len(changes) == 4
    if init_values == 0.0:
        assert max(changes) == 0.0
    else:
        assert min(changes) > 1e-3  # the same check sees a non-zero gate


def test_gradients_reach_the_vit_and_the_gates():
    model = _adapter()
    model.train()
    outs = model(torch.randn(2, 3, 48, 80))
    sum(o.square().mean() for o in outs).backward()
    vit = model.backbone
    for name, p in [
        ("patch_embed", vit.patch_embed.proj.weight),
        ("first block", vit.blocks[0].attn.qkv.weight),
        ("last block", vit.blocks[-1].mlp.fc2.weight),
        ("pos_embed", vit.pos_embed),
        ("injector gate", model.interactions[0].injector.gamma),
        ("level_embed", model.level_embed),
        ("spatial prior", model.spm.stem[0].weight),
        ("extra extractor", model.interactions[-1].extra_extractors[1].attn.value_proj.weight),
    ]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(1)
    plain = build_vit_adapter("eva_tiny_seg", adapter=dict(norm_layer=partial(nn.GroupNorm, 4)))
    ckpt = build_vit_adapter(
        "eva_tiny_seg", adapter=dict(norm_layer=partial(nn.GroupNorm, 4)), use_act_checkpoint=True
    )
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.use_act_checkpoint and not plain.use_act_checkpoint
    x = torch.randn(1, 3, 64, 64)
    for m in (plain, ckpt):
        m.train()
        sum(o.sum() for o in m(x)).backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=n)


def test_published_layout_for_eva_g_on_the_meta_device():
    with torch.device("meta"):
        model = build_vit_adapter("eva_g_seg", adapter=dict(deform_num_heads=16))
    assert model.interaction_indexes == [(0, 9), (10, 19), (20, 29), (30, 39)]
    inj = model.interactions[0].injector.attn
    assert (inj.n_heads, inj.n_points, inj.n_levels, inj.value_dim) == (16, 4, 3, 704)
    ffn = model.interactions[0].extractor.ffn
    assert ffn.fc1.out_features == 352 and ffn.dwconv.groups == 352
    assert len(model.interactions[-1].extra_extractors) == 2
    assert all(len(i.extra_extractors) == 0 for i in model.interactions[:-1])


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="global attention"):
        ViTAdapter(build_eva_vit("eva_tiny_det"))
    with pytest.raises(ValueError, match="cover blocks 0..3"):
        _adapter(interaction_indexes=[(0, 1), (3, 3)])
    with pytest.raises(ValueError, match="got 2 interactions"):
        _adapter(interaction_indexes=[(0, 1), (2, 3)])
    assert len(_adapter(interaction_indexes=[(0, 1), (2, 3)], add_vit_feature=False).interactions) == 2
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        _adapter(deform_num_heads=3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        _adapter()(torch.randn(1, 1, 32, 32))
