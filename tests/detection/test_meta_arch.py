"""EVA-01's mixed-precision rule (``EVA-01/det/detectron2/modeling/meta_arch/rcnn.py``, training forward): under
autocast the backbone runs in reduced precision, the RPN and RoI heads in float32. CPU autocast with bfloat16
stands in for CUDA float16 AMP."""

from __future__ import annotations

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import BitMasks, Boxes, Instances

from eva_transfer_bench import amp_heads
from eva_transfer_projects.detection.engine import load_det_config
from eva_transfer_projects.detection.meta_arch import EVAGeneralizedRCNN

from .conftest import TINY_COCO


def _batch(n_images=2, size=128):
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n_images):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 70.0, 80.0], [50.0, 40.0, 120.0, 110.0]]))
        inst.gt_classes = torch.tensor([1, 3])
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        masks[0, 12:80, 10:70] = True
        masks[1, 40:110, 50:120] = True
        inst.gt_masks = BitMasks(masks)
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8).float()
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch


def _dtypes_in_training(model):
    """One training forward under CPU bfloat16 autocast; the dtypes seen by forward hooks, by module (the AMP
    benchmark's hooks, ``eva_transfer_bench.amp_heads``)."""
    seen, losses = amp_heads.dtypes_in_training(model, _batch(), "cpu", torch.bfloat16)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values()), losses
    return seen


@pytest.fixture(scope="module")
def tiny_detector():
    torch.manual_seed(0)
    return instantiate(load_det_config(TINY_COCO).model)


def test_heads_train_in_float32_under_autocast_the_backbone_in_reduced_precision(tiny_detector):
    assert isinstance(tiny_detector, EVAGeneralizedRCNN) and tiny_detector.fp32_heads  # the published default
    seen = _dtypes_in_training(tiny_detector)
    assert seen["backbone fc1"] == {"float32", "bfloat16"}  # float32 in, bfloat16 out: autocast is on
    assert "bfloat16" in seen["pyramid conv"]
    for name in ("rpn conv", "rpn logits", "box head", "box predictor", "mask head"):
        assert seen[name] == {"float32"}, (name, seen[name])


def test_fp32_heads_off_runs_the_heads_under_autocast(tiny_detector):
    tiny_detector.fp32_heads = False
    try:
        seen = _dtypes_in_training(tiny_detector)
    finally:
        tiny_detector.fp32_heads = True
    assert "bfloat16" in seen["rpn conv"] and "bfloat16" in seen["box head"]
