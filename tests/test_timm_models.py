"""The timm front door: every preset registered with timm, and the checks timm's own model tests make (forward
at the default and other sizes, backward, features_only against feature_info, forward_intermediates with and
without stop_early, state-dict round trip, pretrained_cfg, torch.compile), plus local-file pretrained loading
through the converter giving the same features as build_eva_vit."""

import pytest
import timm
import torch
from reference_models import randomize

import eva_transfer
from eva_transfer import PRESETS, build_eva_vit, load_checkpoint
from eva_transfer.export import export_state_dict
from eva_transfer.timm_models import AUTHOR_CHECKPOINTS, default_out_indices

TINY = ["eva_tiny", "eva_tiny_det", "eva_tiny_seg"]


def test_every_preset_is_registered_with_a_pretrained_cfg():
    assert set(PRESETS) <= set(timm.list_models(["eva_*", "eva02_*"]))
    for name in PRESETS:
        cfg = timm.models.get_pretrained_cfg(name).to_dict()
        img = PRESETS[name]["img_size"]
        assert cfg["input_size"] == (3, img, img), name
        assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
        assert cfg["interpolation"] == "bicubic" and cfg["num_classes"] == 0
        assert cfg["first_conv"] == "patch_embed.proj" and cfg["architecture"] == name
        if name in AUTHOR_CHECKPOINTS:
            assert AUTHOR_CHECKPOINTS[name] in cfg["notes"][0]
    assert AUTHOR_CHECKPOINTS["eva_g"] == "eva_psz14.pt"


@pytest.mark.parametrize("name", TINY)
def test_forward_default_and_other_sizes_and_backward(name):
    model = timm.create_model(name)
    assert isinstance(model, eva_transfer.EVAViT) and model.pretrained_cfg["architecture"] == name
    c, h, w = model.pretrained_cfg["input_size"]
    p = model.patch_size
    for size in [(h, w), (h // 2, w), (3 * p, 5 * p), (2 * p + 5, 3 * p + 1)]:
        out = model(torch.randn(2, c, *size))
        assert out.shape == (2, model.num_features, size[0] // p, size[1] // p), size
        assert torch.isfinite(out).all()
    tokens = model.forward_features(torch.randn(2, c, h, w))
    assert tokens.shape == (2, model.num_prefix_tokens + (h // p) * (w // p), model.num_features)
    pooled = model.forward_head(tokens)
    assert pooled.shape == (2, model.num_features)
    want = tokens[:, 0] if model.num_prefix_tokens else tokens.mean(1)
    torch.testing.assert_close(pooled, want)
    model.train()
    x = torch.randn(1, c, 3 * p, 2 * p, requires_grad=True)
    pooled = model.forward_head(model.forward_features(x))
    (pooled * torch.randn_like(pooled)).sum().backward()  # a plain sum of a LayerNorm output has no gradient
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(prm.grad is not None for n, prm in model.named_parameters() if "mask_token" not in n)
    with pytest.raises(ValueError, match="no classifier"):
        timm.create_model(name, num_classes=10)


@pytest.mark.parametrize("name", TINY)
def test_features_only_matches_feature_info(name):
    depth = PRESETS[name]["depth"]
    for out_indices in [None, (1, 3), (-1,)]:
        kw = {} if out_indices is None else {"out_indices": out_indices}
        feats = timm.create_model(name, features_only=True, **kw)
        want_idx = list(
            default_out_indices(depth) if out_indices is None else [i % depth for i in out_indices]
        )
        assert list(feats.feature_info.out_indices) == want_idx
        x = torch.randn(2, 3, 64, 96)
        outs = feats(x)
        assert len(outs) == len(want_idx)
        for o, ch, red in zip(outs, feats.feature_info.channels(), feats.feature_info.reduction()):
            assert o.shape == (2, ch, 64 // red, 96 // red)
        # pruned after the last index; outputs equal the full model's blocks
        assert len(feats.model.blocks) == want_idx[-1] + 1


def test_features_only_equals_full_model_intermediates():
    full = randomize(timm.create_model("eva_tiny_det")).eval()
    feats = timm.create_model("eva_tiny_det", features_only=True, out_indices=(0, 2))
    feats.model.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("blocks.3.")})
    x = torch.randn(1, 3, 80, 112)  # padded windows, batch of one
    with torch.no_grad():
        want = full.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        got = feats(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["eva_tiny", "eva_tiny_det"])
def test_forward_intermediates_arguments(name):
    model = randomize(timm.create_model(name)).eval()
    x = torch.randn(2, 3, 64, 80)
    gh, gw, c, pre = 4, 5, model.embed_dim, model.num_prefix_tokens
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == model.depth and all(t.shape == (2, c, gh, gw) for t in inter)
        torch.testing.assert_close(final, model(x))
        # NLC: patch tokens; the final output is all tokens, as forward_features
        final_nlc, inter_nlc = model.forward_intermediates(x, indices=[0, -1], output_fmt="NLC")
        torch.testing.assert_close(final_nlc, model.forward_features(x))
        assert [t.shape for t in inter_nlc] == [(2, gh * gw, c)] * 2
        torch.testing.assert_close(inter_nlc[0].transpose(1, 2).reshape(2, c, gh, gw), inter[0])
        # stop_early: same intermediates, the final output is the last requested block's
        only = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert isinstance(only, list) and len(only) == 1
        torch.testing.assert_close(only[0], inter[1])
        early_final, early = model.forward_intermediates(x, indices=2, stop_early=True)
        torch.testing.assert_close(early[0], inter[-2])
        torch.testing.assert_close(early[1], inter[-1])
        # norm applies the final norm (an identity on the det preset)
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[0], final)
        with_prefix = model.forward_intermediates(
            x, indices=[0], return_prefix_tokens=True, intermediates_only=True
        )
        assert with_prefix[0][0].shape == (2, c, gh, gw) and with_prefix[0][1].shape == (2, pre, c)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[model.depth])
    with pytest.raises(ValueError, match="last-n"):
        model.forward_intermediates(x, indices=0)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_prune_intermediate_layers():
    model = randomize(timm.create_model("eva_tiny_det")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert model.prune_intermediate_layers([0, -3], prune_norm=True) == [0, 1]
    assert len(model.blocks) == 2 and model.depth == 2 and model.global_block_indexes == (1,)
    assert len(model.feature_info) == 2
    with torch.no_grad():
        got = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        last = model(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(last, want[1])


@pytest.mark.parametrize("name", TINY)
def test_state_dict_round_trip(name):
    a = randomize(timm.create_model(name)).eval()
    b = timm.create_model(name).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", TINY)
def test_pretrained_local_file_goes_through_the_converter(name, tmp_path):
    """pretrained=True with a local file (a detector's in Detectron2's layout, or timm's Eva layout) gives the
    features of build_eva_vit + load_checkpoint on the same file."""
    src = randomize(build_eva_vit(name)).eval()
    # a CLS-free backbone as a fine-tuned ViTDet writes it; the CLS one in timm's own Eva layout
    sd, _ = export_state_dict(src, "timm" if src.cls_token is not None else "detectron2")
    for k in [k for k in sd if k.endswith("qkv.bias")]:  # a non-zero key bias, which has no effect
        sd[k][src.embed_dim : 2 * src.embed_dim] = torch.randn(src.embed_dim)
    path = tmp_path / "model_final.pth"
    torch.save({"model": sd}, path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    ref = build_eva_vit(name).eval()
    load_checkpoint(ref, str(path), verbose=False)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
        torch.testing.assert_close(model(x), src(x), rtol=1e-4, atol=1e-4)  # the k bias has no effect
    feats = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), features_only=True
    )
    with torch.no_grad():
        got = feats(x)
        want = ref.forward_intermediates(x, indices=default_out_indices(ref.depth), intermediates_only=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="pretrained_cfg_overlay=dict\\(file="):
        timm.create_model(name, pretrained=True)


def test_torch_compile_aot_eager():
    model = randomize(timm.create_model("eva_tiny_det")).eval()
    x = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_timm_layer_decay_matches_this_toolkits():
    """timm's optimizer factory groups the backbone through group_matcher as param_groups_layer_decay does."""
    from lr_decay_reference import lr_scale_for_name
    from timm.optim import create_optimizer_v2

    model = timm.create_model("eva_tiny")
    opt = create_optimizer_v2(model, "adamw", lr=1.0, weight_decay=0.05, layer_decay=0.75)
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert scale_of[id(p)] == pytest.approx(lr_scale_for_name(name, 0.75, model.depth)), name
    assert len({round(s, 6) for s in scale_of.values()}) == model.depth + 2


@pytest.mark.parametrize("size", [(64, 96), (96, 64), (48, 48)])
def test_windowed_batch_of_one_with_one_window_row(size):
    """A batch of one whose padded grid is one window high or wide (timm's features_only runs such inputs)."""
    model = randomize(build_eva_vit("eva_tiny_det")).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        both = model(x)
        one = model(x[:1])
    torch.testing.assert_close(one, both[:1], rtol=1e-5, atol=1e-5)
