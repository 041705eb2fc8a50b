"""EVA-02's block as options of EVAViT (SwiGLU MLP, sub-LN in the MLP and in attention, 2-D rotary position):
the ``eva02_*`` presets against timm's ``eva02_*_patch14_224`` with shared weights (through the checkpoint
converter), in float64, forward and gradients, at the pre-training size and at other sizes, non-square included;
and the window/global rotary rule against an independent float64 reference written from the EVA-02 detection
backbone (``EVA-02/det/detectron2/modeling/backbone/vit.py``: rotary table on the window grid in windowed blocks,
on the image grid in global blocks, windows zero-padded after the first norm)."""

from __future__ import annotations

import functools

import pytest
import torch
from model_zoo_files import to_eva02_layout
from reference_models import eva02_det_vit_forward, randomize

from eva_transfer import EVAViT, build_eva_vit, load_checkpoint
from eva_transfer.convert import convert_state_dict
from eva_transfer.presets import PRESETS

timm = pytest.importorskip("timm")
timm_eva = pytest.importorskip("timm.models.eva")

NAMES = ["eva02_tiny", "eva02_small", "eva02_base", "eva02_large"]
#: block counts for the numerical comparisons, shrunk to keep the float64 runs short on a CPU (the full presets'
#: shapes are checked against timm's on the meta device)
DEPTH = {"eva02_tiny": 4, "eva02_small": 3, "eva02_base": 2, "eva02_large": 2}
#: input sizes: the pre-training 224 and other patch grids, non-square ones included (12x18, 20x14)
SIZES = [(224, 224), (168, 252), (280, 196)]


def _randomize(model, seed=1):
    return randomize(model, seed, dtype=torch.float64)


def _timm_model(name, **kw):
    # use_fc_norm=False: timm's ``norm`` is the final LayerNorm of forward_features, as in the presets' layout
    return timm.create_model(
        f"{name}_patch14_224", num_classes=0, use_fc_norm=False, dynamic_img_size=True, **kw
    ).eval()


@pytest.fixture
def timm_pos_like_ours(monkeypatch):
    """timm resizes the absolute table with antialiased bicubic (a different kernel, also when enlarging);
    EVAViT with the ViTDet/EVA plain bicubic. The reference follows the backbone's documented table resize, so
    that comparisons at other sizes test the blocks (rotary rescaling) rather than the table's kernel."""
    from timm.layers import resample_abs_pos_embed

    monkeypatch.setattr(
        timm_eva, "resample_abs_pos_embed", functools.partial(resample_abs_pos_embed, antialias=False)
    )


def _pair(name, **kw):
    """timm's model and the preset with the same random weights, in float64."""
    ref = _randomize(_timm_model(name, depth=DEPTH[name], **kw))
    ours = build_eva_vit(name, depth=DEPTH[name]).eval()
    report = load_checkpoint(ours, ref.state_dict(), verbose=False)
    assert not report.missing and not report.unexpected, report.summary()
    return ref.double(), ours.double()


@pytest.mark.parametrize("name", NAMES)
def test_full_preset_has_timm_shape(name):
    """The whole preset (on the meta device) against timm's model of the same name: every tensor of timm's
    state dict converts to one of the preset's with the same shape, and the block options agree."""
    with torch.device("meta"):
        ref = _timm_model(name)
        ours = build_eva_vit(name)
    blk, rblk = ours.blocks[0], ref.blocks[0]
    assert ours.embed_dim == ref.embed_dim and ours.depth == len(ref.blocks)
    assert ours.num_heads == rblk.attn.num_heads and ours.patch_size == ref.patch_embed.patch_size[0]
    assert blk.mlp.fc2.in_features == rblk.mlp.fc2.in_features  # the SwiGLU hidden width
    assert isinstance(blk.mlp.norm, torch.nn.LayerNorm) == isinstance(rblk.mlp.norm, torch.nn.LayerNorm)
    assert blk.attn.norm is None and isinstance(rblk.attn.norm, torch.nn.Identity)
    assert blk.attn.rope.ref_grid == tuple(ref.rope.ref_feat_shape) == (16, 16)
    assert ours.num_prefix_tokens == ref.num_prefix_tokens == 1
    converted, report = convert_state_dict(ref.state_dict(), ours)
    assert not report.missing and not report.unexpected, report.summary()
    target = ours.state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in target.items()}
    assert PRESETS[name]["img_size"] == 224 and PRESETS[name]["rope_grid"] == 16


@pytest.mark.parametrize("name", NAMES)
def test_preset_matches_timm(name, timm_pos_like_ours):
    """Features at every size, then input and parameter gradients at a non-square one; timm's parameter gradients
    are mapped by the converter (fused q/k/v, split packed SwiGLU projection), as its weights are."""
    ref, ours = _pair(name)
    g = torch.Generator().manual_seed(2)
    for size in SIZES:
        x = torch.randn(1, 3, *size, generator=g, dtype=torch.float64)
        with torch.no_grad():
            want, got = ref.forward_features(x), ours.forward_features(x)
        assert got.shape == want.shape == (1, 1 + (size[0] // 14) * (size[1] // 14), ours.embed_dim)
        err = (got - want).abs().max().item()
        assert err <= 1e-8 * max(1.0, want.abs().max().item()), (name, size, err)
    x = torch.randn(1, 3, 168, 252, generator=g, dtype=torch.float64)
    w = torch.randn(1, 1 + 12 * 18, ours.embed_dim, generator=g, dtype=torch.float64)
    grads = []
    for model in (ref, ours):
        xi = x.clone().requires_grad_(True)
        (model.forward_features(xi) * w).sum().backward()
        grads.append(xi.grad)
    scale = grads[0].abs().max().item()
    assert (grads[1] - grads[0]).abs().max().item() <= 1e-8 * scale
    timm_grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    mapped, report = convert_state_dict(timm_grads, ours)
    ours_grads = {n: p.grad for n, p in ours.named_parameters()}
    assert set(mapped) == set(ours_grads), report.summary()
    for n, want in mapped.items():
        err = (ours_grads[n] - want).abs().max().item()
        # both resize the position table in float32 (its gradient too) at a size other than 224
        tol = 1e-6 if n == "pos_embed" else 1e-7
        assert err <= tol * max(1.0, want.abs().max().item()), (name, n, err)


def test_rope_and_sub_ln_change_the_output(timm_pos_like_ours):
    """Each EVA-02 option matters: switching rope off (same weights) changes the features; a preset without the
    MLP sub-LN cannot take a sub-LN checkpoint's weights."""
    ref, ours = _pair("eva02_base")
    plain = build_eva_vit("eva02_base", depth=2, rope=False).double().eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 168, 252, dtype=torch.float64)
    with torch.no_grad():
        assert (plain.forward_features(x) - ref.forward_features(x)).abs().max().item() > 1e-3
    no_ln = build_eva_vit("eva02_base", depth=2, mlp_norm=False)
    report = load_checkpoint(no_ln, ref.state_dict(), verbose=False)
    assert any(k.endswith("mlp.norm.weight") for k in report.unexpected)


@pytest.mark.parametrize(
    "options, timm_kw",
    [
        (dict(attn_norm=True), dict(scale_attn_inner=True)),  # sub-LN in attention
        (dict(mlp_norm=True), dict(scale_mlp=True)),  # GELU MLP with sub-LN
        (
            dict(mlp_type="swiglu", mlp_dim=96, mlp_norm=True),
            dict(swiglu_mlp=True, scale_mlp=True, mlp_ratio=1.5),
        ),
        (dict(rope=True), dict(use_rot_pos_emb=True, ref_feat_shape=(4, 4))),
    ],
)
def test_each_option_matches_timm(options, timm_kw, timm_pos_like_ours):
    kw = dict(img_size=(64, 64), patch_size=16, embed_dim=64, depth=2, num_heads=4)
    ref = timm_eva.Eva(
        num_classes=0, use_fc_norm=False, dynamic_img_size=True, **{**kw, "mlp_ratio": 2.0, **timm_kw}
    )
    ref = _randomize(ref.eval()).double()
    ours = EVAViT(use_cls_token=True, final_norm=True, **{**kw, "mlp_dim": 128, **options}).eval()
    report = load_checkpoint(ours, ref.state_dict(), verbose=False)
    assert not report.missing and not report.unexpected, report.summary()
    ours.double()
    for size in [(64, 64), (48, 96)]:
        x = torch.randn(2, 3, *size, dtype=torch.float64)
        with torch.no_grad():
            err = (ours.forward_features(x) - ref.forward_features(x)).abs().max().item()
        assert err <= 1e-10, (options, size, err)


def test_eva01_layout_unchanged():
    """Without the new options a block holds exactly EVA-01's parameters and no rotary table."""
    model = build_eva_vit("eva_tiny_det")
    blk = model.blocks[0]
    assert blk.attn.rope is None and blk.attn.norm is None and blk.mlp.norm is None
    assert sorted(n for n, _ in blk.named_parameters()) == sorted(
        ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight", "attn.q_bias"]
        + ["attn.v_bias", "attn.proj.weight", "attn.proj.bias", "attn.rel_pos_h", "attn.rel_pos_w"]
        + ["mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    )


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(mlp_type="relu"), "mlp_type"),
        (dict(rope=True, rope_grid=0), "rope_grid"),
        (dict(rope=True, rope_grid=(16, 16, 1)), "rope_grid"),
        (dict(rope=True, embed_dim=36, num_heads=6), "divisible by 4"),
    ],
)
def test_option_checks(kw, match):
    with pytest.raises(ValueError, match=match):
        EVAViT(**dict(dict(img_size=64, patch_size=16, embed_dim=64, depth=1, num_heads=4), **kw))


# --- the window/global rule, against the EVA-02 detection backbone's computation -----------------------------------


def _reference(model, x, window_rope="window"):
    """Float64 forward of the EVA-02 detection backbone (``reference_models.eva02_det_vit_forward``) with
    ``model``'s weights in the authors' names. ``window_rope="image"`` is the rule it does not follow (the image
    grid's table, cut into windows), for the negative check."""
    return eva02_det_vit_forward(
        to_eva02_layout(model.state_dict()), x, num_heads=model.num_heads, window_size=model.window_size,
        global_blocks=model.global_block_indexes, window_rope=window_rope,
    )  # fmt: skip


def _windowed_model():
    model = EVAViT(
        img_size=(64, 64),
        patch_size=8,
        embed_dim=32,
        depth=3,
        num_heads=2,
        use_abs_pos=False,
        window_size=4,
        global_block_indexes=(1,),
        mlp_type="swiglu",
        mlp_dim=48,
        mlp_norm=True,
        rope=True,
        rope_grid=16,
    )
    return _randomize(model, seed=4).double().eval()


@pytest.mark.parametrize("size", [(64, 64), (48, 56), (40, 72)])  # grids 8x8, 6x7 and 5x9: padded windows
def test_window_and_global_rope_match_the_detection_backbone(size):
    model = _windowed_model()
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    got = model(x)
    want = _reference(model, x)
    err = (got - want).abs().max().item()
    assert err <= 1e-10 * max(1.0, want.abs().max().item()), err
    # gradients through the windows and the rotary tables
    g = torch.randn_like(got)
    (dx_got,) = torch.autograd.grad(got, x, g)
    (dx_want,) = torch.autograd.grad(want, x, g)
    assert (dx_got - dx_want).abs().max().item() <= 1e-10 * max(1.0, dx_want.abs().max().item())
    # the other rule (the image grid's table in windowed blocks) is a different model
    with torch.no_grad():
        other = _reference(model, x, window_rope="image")
    assert (got - other).abs().max().item() > 1e-4


def test_presets_are_timm_models():
    model = timm.create_model("eva02_tiny", depth=1)
    assert isinstance(model, EVAViT) and model.blocks[0].attn.rope is not None
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["paper_ids"] == "arXiv:2303.11331"
    out = model(torch.randn(1, 3, 98, 126))
    assert out.shape == (1, 192, 7, 9)
