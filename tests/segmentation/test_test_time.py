"""Test time as the EVA-01 authors' segmentation code (``EVA-01/seg``, mmseg 0.x) runs it.

- Mask combination: their ``Mask2FormerHead.forward_test`` takes the last decoder layer's class softmax (no-object
  column dropped) and mask sigmoid at the mask features' size (1/4 of the input) and sums them over the queries;
  their segmentor's ``encode_decode`` then resizes that class map (bilinear, corners not aligned) to the input,
  which in the sliding window is each window; windows are summed and divided by their count, the short-side
  padding is cut (``img_shape``), the map resized to ``ori_shape``, softmax over the classes, flipped back, and the
  multi-scale/flip views averaged. The references below are written from those equations on the head's raw
  outputs (torch only; nothing from the toolkit).
- Single-scale test pipeline: ``Resize(img_scale=(3584, 896), keep_ratio=True)`` then
  ``ResizeToMultiple(size_divisor=32)`` (bilinear, sides rounded up), no padding.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS, TRANSFORMS
from mmseg.structures import SegDataSample
from torch.nn import functional as F

from .conftest import CONFIG_DIR, TINY_CONFIG

PUBLISHED = [
    "eva_g_mask2former_ade20k_896.py",
    "eva_g_mask2former_ade20k_896_relpos_layerscale_9dec.py",
    "eva_g_mask2former_cocostuff164k_896.py",
    "eva_g_mask2former_cocostuff164k_896_relpos_layerscale_9dec.py",
    "eva_l_mask2former_ade20k_896.py",
    "eva_b_mask2former_ade20k_896.py",
]

# ------------------------------------------------------------------------------------------ authors' equations


def authors_semantic(cls_logits: torch.Tensor, mask_logits: torch.Tensor, size) -> torch.Tensor:
    """``forward_test`` then ``encode_decode``: combine at the masks' size, then resize the class map to ``size``."""
    cls = F.softmax(cls_logits, dim=-1)[..., :-1]
    masks = mask_logits.sigmoid()
    seg = torch.einsum("bqc,bqhw->bchw", cls, masks)
    return F.interpolate(seg, size=tuple(size), mode="bilinear", align_corners=False)


def upsample_first(cls_logits: torch.Tensor, mask_logits: torch.Tensor, size) -> torch.Tensor:
    """mmseg 1.x ``Mask2FormerHead.predict``'s order (mask logits resized first), for contrast."""
    masks = F.interpolate(mask_logits, size=tuple(size), mode="bilinear", align_corners=False).sigmoid()
    return torch.einsum("bqc,bqhw->bchw", F.softmax(cls_logits, dim=-1)[..., :-1], masks)


def authors_slide(raw, x: torch.Tensor, crop, stride, combine=authors_semantic) -> torch.Tensor:
    """``slide_inference``: every window combined and resized on its own, summed, divided by the count."""
    (hc, wc), (hs, ws) = crop, stride
    b, _, h, w = x.shape
    preds, count = None, torch.zeros(b, 1, h, w)
    for hi in range(max(h - hc + hs - 1, 0) // hs + 1):
        for wi in range(max(w - wc + ws - 1, 0) // ws + 1):
            y2, x2 = min(hi * hs + hc, h), min(wi * ws + wc, w)
            y1, x1 = max(y2 - hc, 0), max(x2 - wc, 0)
            window = x[:, :, y1:y2, x1:x2]
            seg = combine(*raw(window), window.shape[2:])
            if preds is None:
                preds = torch.zeros(b, seg.shape[1], h, w)
            preds[:, :, y1:y2, x1:x2] += seg
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def authors_view_probs(seg: torch.Tensor, img_shape, ori_shape, flip: bool) -> torch.Tensor:
    """``slide_inference`` (unpad, rescale) and ``inference`` (softmax, flip back) of one test view."""
    seg = seg[:, :, : img_shape[0], : img_shape[1]]
    seg = F.interpolate(seg, size=tuple(ori_shape), mode="bilinear", align_corners=False)
    probs = F.softmax(seg, dim=1)
    return probs.flip(dims=(3,)) if flip else probs


def authors_resized_size(h: int, w: int, scale=(3584, 896), divisor: int = 32) -> tuple[tuple, tuple]:
    """mmcv ``imrescale`` to fit (long, short) then ``imresize_to_multiple`` (sides rounded up): (h, w) twice."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    h1, w1 = int(h * factor + 0.5), int(w * factor + 0.5)
    return (h1, w1), (math.ceil(h1 / divisor) * divisor, math.ceil(w1 / divisor) * divisor)


# ------------------------------------------------------------------------------------------------ tiny model


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights spread enough that several classes win somewhere (the default init predicts one class)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
                if "cls_embed" in name or "mask_embed.2" in name:
                    p.mul_(4.0)
            elif ("norm" in name or ".gn." in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / 10)


def _blocks(h: int, w: int, seed: int) -> np.ndarray:
    """An (h, w, 3) uint8 image of 16x16 blocks of random colours (on noise every pixel gets the same class)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 255, (-(-h // 16), -(-w // 16), 3), dtype=np.uint8)
    return np.ascontiguousarray(colours.repeat(16, 0).repeat(16, 1)[:h, :w])


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def tiny(one_thread):
    cfg = Config.fromfile(TINY_CONFIG)
    cfg.model.test_cfg = dict(mode="slide", crop_size=(64, 64), stride=(32, 32))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    _randomize(model)
    return model


def _raw(model):
    """The head's raw last-layer outputs (class logits (B, Q, C+1), mask logits (B, Q, H/4, W/4)) for an input."""

    def run(x):
        metas = [dict(img_shape=tuple(x.shape[2:]), pad_shape=tuple(x.shape[2:]))] * x.shape[0]
        cls, masks = model.decode_head(model.extract_feat(x), [SegDataSample(metainfo=m) for m in metas])
        return cls[-1], masks[-1]

    return run


def _normalised(model, img: torch.Tensor) -> torch.Tensor:
    return model.data_preprocessor(dict(inputs=[img], data_samples=[SegDataSample()]), False)["inputs"]


def test_whole_image_combines_at_mask_size_then_resizes(tiny):
    model = tiny
    img = _chw(_blocks(64, 96, 1))
    sample = SegDataSample(metainfo=dict(ori_shape=(64, 96), img_shape=(64, 96)))
    model.test_cfg.mode = "whole"
    try:
        with torch.no_grad():
            out = model.test_step(dict(inputs=[img], data_samples=[sample]))[0]
            raw = _raw(model)(_normalised(model, img))
    finally:
        model.test_cfg.mode = "slide"
    assert raw[1].shape[-2:] == (16, 24)  # the masks come at 1/4 of the input
    expected = authors_semantic(*raw, (64, 96))[0]
    torch.testing.assert_close(out.seg_logits.data, expected, rtol=1e-5, atol=1e-6)
    # mmseg's order (upsample, then sigmoid and combine) is measurably another map
    assert (out.seg_logits.data - upsample_first(*raw, (64, 96))[0]).abs().max() > 1e-3


def test_sliding_window_combines_each_window_then_averages(tiny):
    model = tiny
    img = _chw(_blocks(96, 128, 2))
    sample = SegDataSample(metainfo=dict(ori_shape=(96, 128), img_shape=(96, 128)))
    with torch.no_grad():
        out = model.test_step(dict(inputs=[img], data_samples=[sample]))[0]
        x = _normalised(model, img)
        expected = authors_slide(_raw(model), x, (64, 64), (32, 32))[0]
        mmseg_order = authors_slide(_raw(model), x, (64, 64), (32, 32), combine=upsample_first)[0]
    torch.testing.assert_close(out.seg_logits.data, expected, rtol=1e-5, atol=1e-6)
    assert (out.seg_logits.data - mmseg_order).abs().max() > 1e-3
    assert len(out.pred_sem_seg.data.unique()) > 1  # the weights give more than one class


def test_multi_scale_flip_test_averages_the_authors_view_probabilities(tiny):
    """The synthetic config's test-time views (scales 0.5 and 1.5, flip, short side padded to the 64 window) through
    mmseg's SegTTAModel equal the authors' ``aug_test``: per view the sliding window combined per window, padding
    cut, resized to the original size, softmax, flipped back; the views' probabilities averaged."""
    model = tiny
    cfg = Config.fromfile(TINY_CONFIG)
    aug = cfg.tta_pipeline[1]
    aug.transforms = [step for step in aug.transforms if step[0]["type"] != "LoadCheckedAnnotations"]
    tta = TRANSFORMS.build(aug)
    ori = _blocks(48, 80, 3)
    views = tta(dict(img=ori, img_path="synthetic.png", img_shape=(48, 80), ori_shape=(48, 80)))
    samples = views["data_samples"]
    assert len(samples) == 4 and {s.metainfo["flip"] for s in samples} == {False, True}
    assert sorted({s.metainfo["img_shape"] for s in samples}) == [
        (32, 64),
        (96, 160),
    ]  # 0.5x padded to 64 rows
    tta_model = MODELS.build(dict(type="SegTTAModel", module=model))
    with torch.no_grad():
        merged = tta_model.test_step(
            dict(inputs=[[v] for v in views["inputs"]], data_samples=[[s] for s in samples])
        )
        probs = []
        for img, s in zip(views["inputs"], samples):
            x = _normalised(model, img)
            seg = authors_slide(_raw(model), x, (64, 64), (32, 32))
            probs.append(authors_view_probs(seg, s.metainfo["img_shape"], (48, 80), s.metainfo["flip"]))
    mean = torch.stack(probs).mean(0)[0]
    labels = merged[0].pred_sem_seg.data[0]
    expected = mean.argmax(0)
    top2 = mean.topk(2, dim=0).values
    differ = labels != expected
    assert bool(((top2[0] - top2[1])[differ] < 1e-5).all())  # only ties may differ
    assert len(expected.unique()) > 1


@pytest.mark.parametrize("name", PUBLISHED + ["eva_tiny_mask2former_synthetic.py"])
def test_configs_combine_in_the_authors_order(name):
    cfg = Config.fromfile(str(CONFIG_DIR / name))
    assert (cfg.model.type, cfg.model.combine_masks_at) == ("EncoderDecoderShortSidePad", "mask_size")


def test_mmseg_order_is_an_option(one_thread):
    cfg = Config.fromfile(TINY_CONFIG)
    cfg.model.combine_masks_at = "input_size"
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    _randomize(model)
    x = _normalised(model, _chw(_blocks(64, 64, 4)))
    metas = [dict(ori_shape=(64, 64), img_shape=(64, 64), pad_shape=(64, 64))]
    with torch.no_grad():
        got = model.encode_decode(x, metas)
        expected = model.decode_head.predict(model.extract_feat(x), metas, model.test_cfg)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(got, upsample_first(*_raw(model)(x), (64, 64)), rtol=1e-5, atol=1e-6)
    cfg.model.combine_masks_at = "image"
    with pytest.raises(ValueError, match="combine_masks_at"):
        MODELS.build(cfg.model)


# ----------------------------------------------------------------------------------------- single-scale pipeline


@pytest.mark.parametrize("name", PUBLISHED)
def test_single_scale_test_pipeline_is_the_authors(name):
    cfg = Config.fromfile(str(CONFIG_DIR / name))
    for loader in ("val_dataloader", "test_dataloader"):
        steps = cfg[loader].dataset.pipeline
        types = [t.type for t in steps]
        assert types == [
            "LoadImageFromFile",
            "Resize",
            "ResizeToMultiple",
            "LoadCheckedAnnotations",
            "PackSegInputs",
        ]
        resize, multiple = steps[1], steps[2]
        assert (tuple(resize.scale), resize.keep_ratio) == ((3584, 896), True)
        assert multiple.size_divisor == 32 and multiple.get("interpolation") is None  # bilinear
        assert not any("Pad" in t for t in types)


@pytest.mark.parametrize("hw", [(300, 500), (100, 1000), (641, 479)])
def test_single_scale_transform_gives_the_authors_image(hw):
    """The published pipeline's resize steps and the data preprocessor give the authors' image: resized to the
    896 short side, then stretched (not padded) to multiples of 32."""
    cfg = Config.fromfile(str(CONFIG_DIR / PUBLISHED[0]))
    steps = [
        TRANSFORMS.build(t)
        for t in cfg.test_dataloader.dataset.pipeline
        if t.type not in ("LoadImageFromFile", "LoadCheckedAnnotations")
    ]
    h, w = hw
    img = np.random.default_rng(h).integers(0, 255, (h, w, 3), dtype=np.uint8)
    results = dict(img=img, img_shape=(h, w), ori_shape=(h, w))
    for step in steps:
        results = step(results)
    (h1, w1), (h2, w2) = authors_resized_size(h, w)
    assert (h1, w1) != (h2, w2)  # the second resize does something here
    expected = cv2.resize(
        cv2.resize(img, (w1, h1), interpolation=cv2.INTER_LINEAR), (w2, h2), interpolation=cv2.INTER_LINEAR
    )
    packed = results["inputs"]
    assert tuple(packed.shape) == (3, h2, w2)
    np.testing.assert_array_equal(packed.permute(1, 2, 0).numpy(), expected)
    meta = results["data_samples"].metainfo
    assert tuple(meta["img_shape"]) == (h2, w2) and tuple(meta["ori_shape"]) == (h, w)
    # the preprocessor has nothing left to pad
    pre = MODELS.build(cfg.model.data_preprocessor)
    out = pre(dict(inputs=[packed], data_samples=[results["data_samples"]]), False)
    assert tuple(out["inputs"].shape[-2:]) == (h2, w2)
    assert list(out["data_samples"][0].metainfo.get("padding_size", [0] * 4)) == [0, 0, 0, 0]
