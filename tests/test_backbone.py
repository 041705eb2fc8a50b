"""Backbone behaviour: presets, any input size, intermediates, masking, activation checkpointing."""

import pytest
import torch

from eva_transfer import PRESETS, EVAViT, build_eva_vit
from eva_transfer.presets import every_kth_block


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
