"""The authors' segmentation recipe (EVA-01/seg/configs/ade20k/*_ms.py, coco_stuff164k/*_ss.py): lr schedule,
batch, multi-scale test with short-side padding and its removal, extra extractors' drop path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import PARAM_SCHEDULERS
from mmseg.registry import MODELS, TRANSFORMS
from mmseg.structures import SegDataSample
from torch.nn import functional as F

from .conftest import CONFIG_DIR, TINY_CONFIG

ADE = str(CONFIG_DIR / "eva_g_mask2former_ade20k_896.py")
STUFF = str(CONFIG_DIR / "eva_g_mask2former_cocostuff164k_896.py")


def mmcv_poly_with_linear_warmup(t: int, base: float, total: int, warmup: int, ratio: float = 1e-6) -> float:
    """mmcv 1.x ``PolyLrUpdaterHook`` (power 1, min_lr 0) with linear warm-up, by iteration: the regular lr is
    ``base * (1 - t / total)``; during warm-up it is multiplied by ``1 - (1 - t / warmup) * (1 - ratio)``."""
    regular = base * (1 - t / total) ** 1.0
    if t < warmup:
        k = (1 - t / warmup) * (1 - ratio)
        return regular * (1 - k)
    return regular


def _lrs(cfg) -> list[float]:
    """The lr of every iteration, stepping the config's schedulers as mmengine's runner builds them."""
    param = torch.nn.Parameter(torch.zeros(1))
    base = cfg.optim_wrapper.optimizer.lr
    optimizer = torch.optim.SGD([param], lr=base)
    total = cfg.train_cfg.max_iters
    schedulers = []
    for sched in copy.deepcopy(cfg.param_scheduler):
        sched = dict(sched)
        sched.setdefault("end", total)  # what the runner does for an open end
        schedulers.append(PARAM_SCHEDULERS.build(dict(sched, optimizer=optimizer)))
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        for s in schedulers:
            s.step()
    return lrs


@pytest.mark.parametrize(
    "path, warmup, total", [(ADE, 500, 20000), (STUFF, 1500, 60000)], ids=["ade", "stuff"]
)
def test_lr_schedule_is_the_authors_poly_from_iteration_zero(path, warmup, total):
    cfg = Config.fromfile(path)
    assert cfg.train_cfg.max_iters == total
    base = cfg.optim_wrapper.optimizer.lr
    lrs = _lrs(cfg)
    for t in list(range(0, 2 * warmup, 7)) + list(range(2 * warmup, total, 997)) + [total - 1]:
        expected = mmcv_poly_with_linear_warmup(t, base, total, warmup)
        assert lrs[t] == pytest.approx(expected, rel=1e-6, abs=1e-18), f"iteration {t}"
    # at the end of the warm-up the lr is already below base: the poly curve counts from 0
    assert lrs[warmup] == pytest.approx(base * (1 - warmup / total), rel=1e-6)


def test_coco_stuff_batch_is_32_and_ade20k_64():
    assert Config.fromfile(STUFF).auto_scale_lr.base_batch_size == 32
    assert Config.fromfile(ADE).auto_scale_lr.base_batch_size == 64


def _tta_steps(cfg) -> list:
    aug = cfg.tta_pipeline[1]
    assert aug.type == "TestTimeAug"
    return aug.transforms


@pytest.mark.parametrize("path", [ADE, STUFF], ids=["ade", "stuff"])
def test_multi_scale_test_is_the_authors(path):
    steps = _tta_steps(Config.fromfile(path))
    scales = [t.scale for t in steps[0]]
    assert all(t.type == "Resize" and t.keep_ratio for t in steps[0])
    # img_scale (3584, 896) x 512/896 ... 1280/896
    assert scales == [(4 * s, s) for s in (512, 640, 768, 896, 1024, 1152, 1280)]
    assert [t.type for t in steps[1]] == ["ResizeToMultiple"] and steps[1][0].size_divisor == 32
    assert {(t.type, t.prob) for t in steps[2]} == {("RandomFlip", 0.0), ("RandomFlip", 1.0)}
    pad = steps[3][0]
    assert (pad.type, pad.size, pad.pad_val, pad.seg_pad_val) == ("PadShortSide", 896, 0, 255)
    assert "short_side_padding" in steps[-1][0].meta_keys
    assert Config.fromfile(path).model.type == "EncoderDecoderShortSidePad"


def test_pad_short_side_pads_bottom_right_and_records_it():
    pad = TRANSFORMS.build(dict(type="PadShortSide", size=8, pad_val=0, seg_pad_val=255))
    img = np.full((5, 12, 3), 7, np.uint8)
    seg = np.ones((5, 12), np.uint8)
    out = pad.transform(
        dict(img=img.copy(), gt_seg_map=seg.copy(), seg_fields=["gt_seg_map"], img_shape=(5, 12))
    )
    assert out["img"].shape == (8, 12, 3) and out["gt_seg_map"].shape == (8, 12)
    assert (out["img"][:5] == 7).all() and (out["img"][5:] == 0).all()
    assert (out["gt_seg_map"][:5] == 1).all() and (out["gt_seg_map"][5:] == 255).all()
    assert out["short_side_padding"] == (0, 0, 0, 3) and out["img_shape"] == (5, 12)
    big = pad.transform(dict(img=np.zeros((9, 10, 3), np.uint8)))
    assert big["img"].shape == (9, 10, 3) and big["short_side_padding"] == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="PadShortSide: size"):
        TRANSFORMS.build(dict(type="PadShortSide", size=0))


@pytest.fixture(scope="module")
def tiny_slide_model(one_thread):
    cfg = Config.fromfile(TINY_CONFIG)
    cfg.model.test_cfg = dict(mode="slide", crop_size=(64, 64), stride=(32, 32))
    torch.manual_seed(0)
    return MODELS.build(cfg.model).eval()


def test_sliding_window_covers_images_larger_than_the_window(tiny_slide_model):
    """mmseg's own sliding window fails here (the Mask2Former head upsamples each window to the whole image)."""
    model = tiny_slide_model
    img = torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8)
    sample = SegDataSample(metainfo=dict(ori_shape=(96, 128), img_shape=(96, 128)))
    with torch.no_grad():
        out = model.test_step(dict(inputs=[img], data_samples=[sample]))[0]
        logits = out.seg_logits.data
        assert logits.shape == (model.out_channels, 96, 128)
        # reference: each window through the whole-image path, averaged where windows overlap
        x = model.data_preprocessor(dict(inputs=[img], data_samples=[SegDataSample()]), False)["inputs"]
        preds, count = torch.zeros(1, model.out_channels, 96, 128), torch.zeros(1, 1, 96, 128)
        for y1 in (0, 32):
            for x1 in (0, 32, 64):
                crop = x[:, :, y1 : y1 + 64, x1 : x1 + 64]
                meta = [dict(ori_shape=(64, 64), img_shape=(64, 64), pad_shape=(64, 64))]
                preds[:, :, y1 : y1 + 64, x1 : x1 + 64] += model.encode_decode(crop, meta)
                count[:, :, y1 : y1 + 64, x1 : x1 + 64] += 1
    torch.testing.assert_close(logits, (preds / count)[0], rtol=1e-5, atol=1e-6)


def test_short_side_padding_is_removed_before_flip_back_and_resize(tiny_slide_model):
    model = tiny_slide_model
    rng = np.random.default_rng(0)
    ori = rng.integers(0, 255, (40, 96, 3), dtype=np.uint8)
    flipped = ori[:, ::-1].copy()
    pad = TRANSFORMS.build(dict(type="PadShortSide", size=64))
    packed = TRANSFORMS.build(
        dict(
            type="PackSegInputs",
            meta_keys=("ori_shape", "img_shape", "flip", "flip_direction", "short_side_padding"),
        )
    )
    results = pad.transform(
        dict(img=flipped, ori_shape=(40, 96), img_shape=(40, 96), flip=True, flip_direction="horizontal")
    )
    data = packed.transform(results)
    with torch.no_grad():
        out = model.test_step(dict(inputs=[data["inputs"]], data_samples=[data["data_samples"]]))[0]
        logits = out.seg_logits.data
        # reference: the padded image's logits, padding rows cut (24 at the bottom), flipped back
        x = model.data_preprocessor(dict(inputs=[data["inputs"]], data_samples=[SegDataSample()]), False)[
            "inputs"
        ]
        assert x.shape[-2:] == (64, 96)
        full = model.slide_inference(x, [dict(ori_shape=(64, 96), img_shape=(64, 96), pad_shape=(64, 96))])
    expected = full[0, :, :40, :].flip(-1)
    assert logits.shape == (model.out_channels, 40, 96)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    # without the removal the padded rows would have been squeezed into the image
    squeezed = F.interpolate(full, size=(40, 96), mode="bilinear", align_corners=False)[0].flip(-1)
    assert not torch.allclose(logits, squeezed, atol=1e-4)


def test_extra_extractors_have_the_extractors_drop_path():
    cfg = Config.fromfile(ADE)
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    last = model.backbone.adapter.interactions[-1]
    assert len(last.extra_extractors) == 2
    assert last.extractor.drop_path.drop_prob == 0.5
    assert [e.drop_path.drop_prob for e in last.extra_extractors] == [0.5, 0.5]


def test_poly_after_warmup_option_keeps_the_earlier_schedule():
    cfg = Config.fromfile(str(CONFIG_DIR / "_base_/schedules/adamw_layer_decay_poly_after_warmup.py"))
    base = cfg.optim_wrapper.optimizer.lr
    lrs = _lrs(cfg)
    assert lrs[0] == pytest.approx(base * 1e-6, rel=1e-6)
    assert lrs[1500] == pytest.approx(base, rel=1e-6)  # the poly curve starts at the end of the warm-up
    assert lrs[1500] > lrs[1501] > lrs[10000] > lrs[-1] >= 0.0
