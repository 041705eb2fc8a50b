"""The backbone against independent references: timm's Eva (global attention, CLS token) and Detectron2's ViT
(windowed attention with decomposed relative position). Weights go through the checkpoint converter."""

from functools import partial

import pytest
import torch
from torch import nn

import eva_transfer_projects.compat as compat
from eva_transfer import build_eva_vit, load_checkpoint

timm_eva = pytest.importorskip("timm.models.eva")


def _randomize(model):
    """Non-trivial values everywhere (biases, norms, relative-position tables are zero or one at init)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _timm_eva(patch, img, **kw):
    return timm_eva.Eva(
        img_size=img,
        patch_size=patch,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=0,
        use_fc_norm=False,
        **kw,
    ).eval()


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


def _d2_vit(**kw):
    compat.apply_detectron2()
    from detectron2.modeling import ViT

    # ViTDet's configs and this toolkit use LayerNorm eps 1e-6 (Detectron2's class default is PyTorch's 1e-5)
    norm = partial(nn.LayerNorm, eps=1e-6)
    return ViT(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, qkv_bias=True, norm_layer=norm, **kw).eval()


@pytest.mark.parametrize("img", [(128, 128), (96, 160), (100, 84)])
def test_windowed_relpos_matches_detectron2(img):
    """Windowed + global blocks with decomposed relative position, padding to the window, on square,
    non-square and non-divisible inputs; the pretrain grid (4x4 + CLS slot) is interpolated at run time."""
    ref = _randomize(
        _d2_vit(
            img_size=128,
            patch_size=16,
            use_rel_pos=True,
            window_size=4,
            window_block_indexes=(0, 2),
            pretrain_img_size=64,
            pretrain_use_cls_token=True,
        )
    )
    ours = build_eva_vit("eva_tiny_det", img_size=128).eval()
    assert ours.global_block_indexes == (1, 3)
    report = load_checkpoint(ours, ref.state_dict(), verbose=False)
    assert not report.missing and not report.unexpected
    x = torch.randn(2, 3, *img)
    with torch.no_grad():
        expected = ref(x)["last_feat"]
        got = ours(x)
    assert got.shape == expected.shape == (2, 64, img[0] // 16, img[1] // 16)
    assert (got - expected).abs().max().item() <= 1e-5


def test_windowed_relpos_gradients_match_detectron2(monkeypatch):
    """Training parity: the same loss gives the same gradients; the query-chunked global attention too."""
    import eva_transfer.attention as attention

    # forces several query chunks in the global blocks
    monkeypatch.setattr(attention, "MAX_BIAS_ELEMENTS", 2000)
    ref = _randomize(
        _d2_vit(
            img_size=128,
            patch_size=16,
            use_rel_pos=True,
            window_size=4,
            window_block_indexes=(0, 2),
            pretrain_img_size=64,
        )
    )
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
