"""mmcv's RoIAlign and NMS, as MMDetection calls them, against small references written from the equations.

With mmcv-lite the compiled ops are missing and ``eva_transfer_projects.compat`` routes them to torchvision; with a full mmcv
build the compiled ops are tested against the same references. The references import nothing from this project.
"""

from __future__ import annotations

import math

import pytest
import torch

from eva_transfer_projects.compat import apply_mmcv

apply_mmcv()

from mmcv.ops import RoIAlign, batched_nms, nms  # noqa: E402

# --- references -------------------------------------------------------------------------------------------------


def _bilinear(feat: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Bilinear sample of feat (C, H, W) at (y, x) with mmcv's / Detectron2's border rules."""
    h, w = feat.shape[-2:]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return feat.new_zeros(feat.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * feat[:, y0, x0]
        + hy * lx * feat[:, y0, x1]
        + ly * hx * feat[:, y1, x0]
        + ly * lx * feat[:, y1, x1]
    )


def roi_align_reference(feats, rois, out_size, scale, sampling_ratio, aligned):
    """Average RoIAlign: each output bin is the mean of a grid of bilinear samples at the centres of equal sub-bins.
    ``aligned`` shifts the box by half a pixel (pixel centres at .5); unaligned boxes are at least 1 x 1."""
    ph, pw = out_size
    outs = []
    for roi in rois.tolist():
        b = int(roi[0])
        off = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (v * scale - off for v in roi[1:])
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / pw, rh / ph
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw)
        count = max(gh * gw, 1)
        bins = []
        for i in range(ph):
            row = []
            for j in range(pw):
                acc = feats.new_zeros(feats.shape[1])
                for iy in range(gh):
                    y = y1 + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = x1 + j * bw + (ix + 0.5) * bw / gw
                        acc = acc + _bilinear(feats[b], y, x)
                row.append(acc / count)
            bins.append(torch.stack(row, -1))
        outs.append(torch.stack(bins, -2))
    return torch.stack(outs)


def _iou(a, b, offset):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + offset)
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + offset)
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + offset) * (r[3] - r[1] + offset)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def nms_reference(boxes, scores, thr, offset=0):
    """Greedy NMS: visit boxes by decreasing score; keep one unless it overlaps a kept box with IoU > thr."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept = []
    for i in order:
        if all(_iou(boxes[i].tolist(), boxes[k].tolist(), offset) <= thr for k in kept):
            kept.append(i)
    return kept


# --- RoIAlign ---------------------------------------------------------------------------------------------------


def _rois(gen, n_img, h, w, stride):
    """Boxes in image pixels: ordinary ones, sub-pixel ones, and ones crossing the image border."""
    rows = []
    for _ in range(10):
        x1, y1 = torch.rand(2, generator=gen) * torch.tensor([w * stride * 0.8, h * stride * 0.8])
        bw, bh = torch.rand(2, generator=gen) * torch.tensor([w * stride * 0.6, h * stride * 0.6]) + 0.3
        rows.append([float(torch.randint(n_img, (1,), generator=gen)), x1, y1, x1 + bw, y1 + bh])
    rows.append([0, 1.0, 1.0, 1.4, 1.3])  # smaller than one feature pixel
    rows.append([n_img - 1, -6.0, -5.0, w * stride + 7.0, h * stride + 3.0])  # beyond every border
    rows.append([0, w * stride - 2.0, h * stride - 2.0, w * stride + 20.0, h * stride + 20.0])  # corner
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("stride", [1, 4])
def test_roi_align_matches_reference(aligned, sampling_ratio, stride):
    gen = torch.Generator().manual_seed(int(aligned) * 10 + sampling_ratio + stride)
    feats = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = _rois(gen, 2, 9, 11, stride)
    layer = RoIAlign((3, 4), spatial_scale=1.0 / stride, sampling_ratio=sampling_ratio, aligned=aligned)
    out = layer(feats, rois)
    ref = roi_align_reference(feats, rois, (3, 4), 1.0 / stride, sampling_ratio, aligned)
    assert out.shape == (len(rois), 3, 3, 4)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)

    weight = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weight).sum(), feats)
    (grad_ref,) = torch.autograd.grad((ref * weight).sum(), feats)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-9)


def test_roi_align_aligned_and_sampling_ratio_change_the_result():
    """The two settings are not no-ops: a half-pixel shift and the sample count both move the value."""
    feats = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8) ** 1.5
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 5.0]])
    a = RoIAlign(2, 1.0, sampling_ratio=0, aligned=True)(feats, rois)
    b = RoIAlign(2, 1.0, sampling_ratio=0, aligned=False)(feats, rois)
    c = RoIAlign(2, 1.0, sampling_ratio=1, aligned=True)(feats, rois)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_roi_align_float32_mmdet_shapes():
    """mmdet's mask-head call: 256 channels, 14 x 14 output, stride 4, sampling_ratio 0, aligned."""
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(1, 256, 16, 16, generator=gen)
    rois = _rois(gen, 1, 16, 16, 4).float()
    out = RoIAlign(14, spatial_scale=0.25, sampling_ratio=0, aligned=True)(feats, rois)
    ref = roi_align_reference(feats.double(), rois.double(), (14, 14), 0.25, 0, True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_roi_align_half_precision_maps_sample_in_float32():
    """AMP gives bfloat16 / float16 maps with float32 boxes: the samples are taken at float32 coordinates, so only
    the output's rounding differs from the reference on the same (rounded) map."""
    gen = torch.Generator().manual_seed(11)
    feats = torch.randn(1, 8, 64, 64, generator=gen).to(torch.bfloat16)
    rois = torch.tensor([[0, 700.3, 611.7, 1003.9, 980.2], [0, 10.6, 3.2, 250.1, 90.8]])
    out = RoIAlign(7, spatial_scale=1 / 16, sampling_ratio=0, aligned=True)(feats, rois)
    assert out.dtype == torch.bfloat16
    ref = roi_align_reference(feats.double(), rois.double(), (7, 7), 1 / 16, 0, True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)


# --- NMS --------------------------------------------------------------------------------------------------------


def _boxes(gen, n, size=50.0):
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size * 0.5 + 1.0
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_reference(offset, thr):
    gen = torch.Generator().manual_seed(int(thr * 10) + offset)
    boxes = _boxes(gen, 60, size=20.0)
    scores = torch.rand(60, generator=gen)
    dets, keep = nms(boxes, scores, thr, offset=offset)
    assert keep.tolist() == nms_reference(boxes, scores, thr, offset)
    torch.testing.assert_close(dets[:, :4], boxes[keep])
    torch.testing.assert_close(dets[:, 4], scores[keep])


def test_nms_offset_matters():
    """Two 2 x 2 boxes shifted by 1: IoU 2/6 without offset, 6/12 with it (widths x2 - x1 + 1): a 0.4 threshold
    separates them."""
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]])
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.4, offset=0)[1].tolist() == [0, 1]
    assert nms(boxes, scores, 0.4, offset=1)[1].tolist() == [0]


def test_nms_score_threshold_and_max_num():
    gen = torch.Generator().manual_seed(5)
    boxes = _boxes(gen, 40)
    scores = torch.rand(40, generator=gen)
    _, keep = nms(boxes, scores, 0.5, score_threshold=0.3, max_num=5)
    ref = [i for i in nms_reference(boxes[scores > 0.3], scores[scores > 0.3], 0.5)][:5]
    assert keep.tolist() == torch.nonzero(scores > 0.3).flatten()[ref].tolist()


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_batched_nms_with_class_offsets(class_agnostic):
    """Per-class NMS (boxes of different classes never suppress each other) through mmcv's coordinate offsets,
    or class-agnostic NMS, as mmdet's heads call it."""
    gen = torch.Generator().manual_seed(7)
    boxes = _boxes(gen, 80, size=15.0)
    scores = torch.rand(80, generator=gen)
    labels = torch.randint(3, (80,), generator=gen)
    cfg = dict(type="nms", iou_threshold=0.5)
    dets, keep = batched_nms(boxes, scores, labels, cfg, class_agnostic=class_agnostic)
    if class_agnostic:
        ref = nms_reference(boxes, scores, 0.5)
    else:
        ref = []
        for c in range(3):
            idx = torch.nonzero(labels == c).flatten()
            ref += idx[nms_reference(boxes[idx], scores[idx], 0.5)].tolist()
        ref.sort(key=lambda i: -float(scores[i]))
    assert keep.tolist() == ref
    assert len(set(labels[keep].tolist())) == 3
    torch.testing.assert_close(dets[:, :4], boxes[keep])


def test_empty_inputs():
    dets, keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert dets.shape == (0, 5) and keep.numel() == 0
    out = RoIAlign(7, 0.25, 0, aligned=True)(torch.randn(1, 4, 8, 8), torch.zeros(0, 5))
    assert out.shape == (0, 4, 7, 7)


def test_max_pool_mode_is_a_clear_error_on_the_torchvision_route():
    import eva_transfer_projects.compat as compat

    if "mmcv._ext.roi_align/nms" not in compat.APPLIED:
        pytest.skip("compiled mmcv ops present")
    with pytest.raises(NotImplementedError, match="pool_mode='max'"):
        RoIAlign(2, 1.0, 0, pool_mode="max", aligned=True)(
            torch.randn(1, 1, 4, 4), torch.tensor([[0, 0, 0, 3.0, 3]])
        )
