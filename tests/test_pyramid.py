"""Simple feature pyramid against Detectron2's, with the same weights (its state dict loads unchanged)."""

import torch
from reference_models import TINY_DET_LAYOUT, tiny_detectron2_vit
from torch import nn

import eva_transfer_projects.compat as compat
from eva_transfer import EVASimpleFeaturePyramid, build_eva_vit, load_checkpoint


def test_matches_detectron2_simple_feature_pyramid():
    compat.apply_detectron2()
    from detectron2.modeling import SimpleFeaturePyramid
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    vit = tiny_detectron2_vit(**TINY_DET_LAYOUT)
    ref = SimpleFeaturePyramid(
        vit,
        "last_feat",
        32,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=LastLevelMaxPool(),
        norm="LN",
        square_pad=0,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)

    backbone = build_eva_vit("eva_tiny_det", img_size=128).eval()
    load_checkpoint(backbone, ref.state_dict(), verbose=False)
    ours = EVASimpleFeaturePyramid(64, in_stride=16, out_channels=32).eval()
    pyramid_sd = {k: v for k, v in ref.state_dict().items() if k.startswith("simfp_")}
    result = ours.load_state_dict(pyramid_sd, strict=True)
    assert not result.missing_keys

    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        expected = ref(x)
        got = ours(backbone(x))
    assert list(got) == ["p2", "p3", "p4", "p5", "p6"] == list(expected)
    assert ours.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for k in expected:
        assert got[k].shape == expected[k].shape, k
        assert (got[k] - expected[k]).abs().max() <= 1e-5, k


def test_training_hands_the_standard_layout_to_convolutions_and_keeps_values():
    """In training every convolution of the pyramid gets an (N, C, H, W)-contiguous input (oneDNN's backward is
    2-3x slower on the channels-last view a ViT map and a permuted LayerNorm give); the outputs and gradients equal
    those of the view-only path, which inference keeps."""
    from eva_transfer.pyramid import LayerNorm2d

    torch.manual_seed(0)
    pyramid = EVASimpleFeaturePyramid(
        32, in_stride=16, out_channels=16
    ).double()  # float64: no rounding noise
    seen = []
    for m in pyramid.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous()))
    x = torch.randn(2, 12, 10, 32, dtype=torch.float64).permute(0, 3, 1, 2)  # the channels-last view of a ViT
    assert not x.is_contiguous()

    pyramid(x.detach().clone())  # a frozen backbone's map (no gradient) is copied too
    assert seen and all(seen), seen
    seen.clear()
    x_train = x.detach().clone().requires_grad_(True)
    outs = pyramid(x_train)
    assert seen and all(seen), seen
    sum(
        (o * torch.linspace(0, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs.values()
    ).backward()
    grads = {n: p.grad.clone() for n, p in pyramid.named_parameters()}

    seen.clear()
    with torch.no_grad():
        view_outs = pyramid(x)
    assert not all(seen)  # inference keeps the views (no copies)
    for k in outs:
        torch.testing.assert_close(outs[k].detach(), view_outs[k], rtol=0, atol=1e-12)

    # the same gradients through the view-only norm (a copy changes no value)
    pyramid.zero_grad()
    orig = LayerNorm2d.forward
    try:
        LayerNorm2d.forward = lambda self, t: torch.nn.functional.layer_norm(
            t.permute(0, 2, 3, 1), (t.shape[1],), self.weight, self.bias, self.eps
        ).permute(0, 3, 1, 2)
        outs = pyramid(x.detach().clone().requires_grad_(True))
        sum(
            (o * torch.linspace(0, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs.values()
        ).backward()
    finally:
        LayerNorm2d.forward = orig
    for n, p in pyramid.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-10, atol=1e-12)
