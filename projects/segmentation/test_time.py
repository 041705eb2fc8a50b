"""Test-time padding of the short side and its removal (the authors' multi-scale ADE20K test).

The authors' multi-scale test (``EVA-01/seg/configs/ade20k/*_ms.py``) resizes each image to short side
512 ... 1280, and pads images whose short side is below the 896 window to 896 (bottom and right, image value 0,
label 255) before the sliding-window inference; their segmentor crops the padding off the logits before resizing
them back to the original size. Here:

- :class:`PadShortSide` (mmseg ``TRANSFORMS``): pads ``img`` (and any ``gt_seg_map``) on the bottom and right so
  that both sides are at least ``size``, and records ``short_side_padding = (left, right, top, bottom)``. Keep the
  key with ``PackSegInputs(meta_keys=(..., "short_side_padding"))``; :data:`PACK_META_KEYS` holds mmseg's
  defaults plus this one.
- :class:`EncoderDecoderShortSidePad` (mmseg ``MODELS``): mmseg's ``EncoderDecoder`` that removes that padding
  (with the data preprocessor's own) before flipping back and resizing, and whose sliding window tells the decode
  head each window's size: mmseg's Mask2Former head upsamples its masks to ``pad_shape``, which in mmseg's own
  sliding window is the whole image's, so windows of an image larger than the window do not fit back. It also
  combines a Mask2Former head's predictions in the authors' order (``combine_masks_at="mask_size"``): class
  softmax (no-object column dropped) times mask sigmoid at the mask features' size (1/4 of the input), summed over
  the queries, and only that class map resized (bilinear) to the input, i.e. to each window in the sliding window
  (``EVA-01/seg/mmseg_custom/models/decode_heads/mask2former_head.py`` ``forward_test``,
  ``.../segmentors/encoder_decoder_mask2former*.py`` ``encode_decode``). mmseg's head upsamples the mask logits
  first and combines at the input size; ``combine_masks_at="input_size"`` keeps that order.
"""

from __future__ import annotations

import inspect
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import BaseTransform
from mmseg.datasets.transforms import PackSegInputs
from mmseg.models.decode_heads import Mask2FormerHead
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS, TRANSFORMS
from mmseg.structures import SegDataSample
from torch import Tensor

__all__ = ["PadShortSide", "EncoderDecoderShortSidePad", "PACK_META_KEYS", "PADDING_KEY", "COMBINE_MASKS_AT"]

#: the metainfo key in which :class:`PadShortSide` records its padding
PADDING_KEY = "short_side_padding"


def _pack_default_meta_keys() -> tuple[str, ...]:
    return tuple(inspect.signature(PackSegInputs.__init__).parameters["meta_keys"].default)


#: where :class:`EncoderDecoderShortSidePad` combines a Mask2Former head's class and mask predictions: "mask_size"
#: (the authors': at the mask features' size, then the class map resized to the input) or "input_size" (mmseg's:
#: mask logits upsampled to the input first)
COMBINE_MASKS_AT = ("mask_size", "input_size")

#: PackSegInputs' default meta keys (read from mmseg, not copied) plus :data:`PADDING_KEY`. The text configs cannot
#: import it: ``configs/segmentation/_base_/datasets/ade20k.py`` writes the same tuple as ``tta_meta_keys`` and
#: ``tests/segmentation/test_configs.py`` checks that the two are equal.
PACK_META_KEYS = _pack_default_meta_keys() + (PADDING_KEY,)


@TRANSFORMS.register_module()
class PadShortSide(BaseTransform):
    """Pads the image (and segmentation maps) on the bottom/right so that height and width are at least ``size``.

    Images whose sides are both at least ``size`` pass unchanged. Adds ``short_side_padding`` (left, right, top,
    bottom) and updates ``pad_shape``; ``img_shape`` stays the unpadded size.

    Args:
        size: the least side length after padding (the authors': 896, the sliding window).
        pad_val: image padding value.
        seg_pad_val: segmentation-map padding value (the ignore index).
    """

    def __init__(self, size: int, pad_val: float = 0, seg_pad_val: int = 255) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"PadShortSide: size must be a positive int, got {size!r}")
        self.size = size
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    @staticmethod
    def _pad(array: np.ndarray, bottom: int, right: int, value) -> np.ndarray:
        widths = [(0, bottom), (0, right)] + [(0, 0)] * (array.ndim - 2)
        return np.pad(array, widths, mode="constant", constant_values=value)

    def transform(self, results: dict) -> dict:
        if "img" not in results:
            raise KeyError(
                "PadShortSide: the results have no 'img'; load the image first (LoadImageFromFile)"
            )
        h, w = results["img"].shape[:2]
        bottom, right = max(self.size - h, 0), max(self.size - w, 0)
        results[PADDING_KEY] = (0, right, 0, bottom)
        if bottom == 0 and right == 0:
            return results
        results["img"] = self._pad(results["img"], bottom, right, self.pad_val)
        for key in results.get("seg_fields", []) or (["gt_seg_map"] if "gt_seg_map" in results else []):
            results[key] = self._pad(results[key], bottom, right, self.seg_pad_val)
        results["pad_shape"] = results["img"].shape[:2]
        return results

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, pad_val={self.pad_val}, seg_pad_val={self.seg_pad_val})"
        )


@MODELS.register_module()
class EncoderDecoderShortSidePad(EncoderDecoder):
    """mmseg's ``EncoderDecoder``, removing :class:`PadShortSide`'s padding from the logits, with a sliding window
    whose windows reach the decode head with their own size (``img_shape`` and ``pad_shape``).

    Args:
        combine_masks_at: "mask_size" (default, the authors' order) combines a Mask2Former head's class softmax and
            mask sigmoid at the mask features' size and resizes the class map to the input (each window's size in
            the sliding window); "input_size" is mmseg's ``Mask2FormerHead.predict`` (mask logits upsampled to the
            input first). Other heads are not affected.
        *args, **kwargs: ``EncoderDecoder``'s.
    """

    def __init__(self, *args, combine_masks_at: str = "mask_size", **kwargs) -> None:
        if combine_masks_at not in COMBINE_MASKS_AT:
            raise ValueError(
                f"EncoderDecoderShortSidePad: combine_masks_at must be one of {COMBINE_MASKS_AT}, "
                f"got {combine_masks_at!r}"
            )
        super().__init__(*args, **kwargs)
        self.combine_masks_at = combine_masks_at

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        if self.combine_masks_at == "input_size" or not isinstance(self.decode_head, Mask2FormerHead):
            return super().encode_decode(inputs, batch_img_metas)
        x = self.extract_feat(inputs)
        samples = [SegDataSample(metainfo=meta) for meta in batch_img_metas]
        all_cls_scores, all_mask_preds = self.decode_head(x, samples)
        cls_probs = F.softmax(all_cls_scores[-1], dim=-1)[..., :-1]
        mask_probs = all_mask_preds[-1].sigmoid()
        seg = torch.einsum("bqc,bqhw->bchw", cls_probs, mask_probs)
        return F.interpolate(seg, size=inputs.shape[2:], mode="bilinear", align_corners=self.align_corners)

    def slide_inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        h_stride, w_stride = self.test_cfg.stride
        h_crop, w_crop = self.test_cfg.crop_size
        batch_size, _, h_img, w_img = inputs.size()
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = inputs.new_zeros((batch_size, self.out_channels, h_img, w_img))
        count = inputs.new_zeros((batch_size, 1, h_img, w_img))
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y2 = min(h_idx * h_stride + h_crop, h_img)
                x2 = min(w_idx * w_stride + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                crop = inputs[:, :, y1:y2, x1:x2]
                shape = tuple(crop.shape[2:])
                metas = [dict(meta, img_shape=shape, pad_shape=shape) for meta in batch_img_metas]
                logits = self.encode_decode(crop, metas)
                preds += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
                count[:, :, y1:y2, x1:x2] += 1
        return preds / count

    def postprocess_result(self, seg_logits: Tensor, data_samples: Optional[Sequence] = None):
        if data_samples is not None:
            for sample in data_samples:
                extra = sample.metainfo.get(PADDING_KEY)
                if extra is None or not any(extra):
                    continue
                # the preprocessor pads after PadShortSide (bottom/right), so the two paddings add up
                own = sample.metainfo.get("img_padding_size", sample.metainfo.get("padding_size", [0] * 4))
                total = [int(a) + int(b) for a, b in zip(own, extra)]
                sample.set_metainfo(dict(img_padding_size=total))
        return super().postprocess_result(seg_logits, data_samples)
