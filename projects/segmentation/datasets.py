"""Datasets and a checked annotation loader: bad input fails early with an error naming the file.

- :class:`CheckedADE20KDataset`, :class:`CheckedCOCOStuffDataset`, :class:`CheckedSegDataset` (any classes given
  in ``metainfo``), :class:`SyntheticADEDataset` (the data of :mod:`eva_transfer_projects.segmentation.synthetic`): mmseg's
  datasets plus a check, when the dataset is built, that the image folder has images and every image has its
  label file. Each sample carries ``num_classes`` for :class:`LoadCheckedAnnotations`.
- :class:`LoadCheckedAnnotations`: mmseg's ``LoadAnnotations`` that also checks the label against its image:
  one channel (an RGB label of equal channels is read as grey; a colour label is an error), values that fit in
  8 bits (a 16-bit label with 258 is an error, not class 1), same height and width, and every value a class
  index (after ``reduce_zero_label``) or the ignore index.
- Any other error in a sample's pipeline (a broken image, one too thin for the resize) names its files.
"""

from __future__ import annotations

import os.path as osp
from typing import List, Optional

import mmcv
import numpy as np
from mmengine import fileio
from mmseg.datasets import ADE20KDataset, BaseSegDataset, COCOStuffDataset
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import DATASETS, TRANSFORMS

from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE

__all__ = [
    "DatasetFileError",
    "CheckedSegDataset",
    "CheckedADE20KDataset",
    "CheckedCOCOStuffDataset",
    "SyntheticADEDataset",
    "LoadCheckedAnnotations",
]


class DatasetFileError(ValueError):
    """A dataset file that is missing or does not match what the dataset expects; the message names it."""


class _FileChecks:
    """Mixin for ``BaseSegDataset`` subclasses: verifies the listed files exist when the dataset is built."""

    def load_data_list(self) -> List[dict]:
        data_list = super().load_data_list()
        img_dir = self.data_prefix.get("img_path", "")
        if not data_list:
            raise DatasetFileError(
                f"no images ending in {self.img_suffix!r} found under {img_dir!r} "
                f"(data_root={self.data_root!r}); check data_root and data_prefix"
            )
        num_classes = len(self.metainfo.get("classes", ()) or ())
        for info in data_list:
            if not osp.isfile(info["img_path"]):
                raise DatasetFileError(
                    f"missing image file {info['img_path']!r} (listed in {self.ann_file!r})"
                )
            seg = info.get("seg_map_path")
            if seg is not None and not osp.isfile(seg):
                raise DatasetFileError(
                    f"missing label file {seg!r} for image {info['img_path']!r} "
                    f"(labels are looked up as <image name>{self.seg_map_suffix})"
                )
            info["num_classes"] = num_classes
        return data_list

    def prepare_data(self, idx):
        """The sample through the pipeline; an error in a transform (an image too small or too thin for the
        resize, a broken file) names the image and label files."""
        try:
            return super().prepare_data(idx)
        except DatasetFileError:
            raise
        except Exception as e:
            info = self.get_data_info(idx)
            raise DatasetFileError(
                f"image {info.get('img_path')!r} (label {info.get('seg_map_path')!r}) failed in the data "
                f"pipeline: {type(e).__name__}: {e}"
            ) from e


@DATASETS.register_module()
class CheckedSegDataset(_FileChecks, BaseSegDataset):
    """``BaseSegDataset`` (classes and palette from ``metainfo``) with the file checks."""


@DATASETS.register_module()
class CheckedADE20KDataset(_FileChecks, ADE20KDataset):
    """ADE20K (150 classes, ``.jpg`` images, ``.png`` labels, ``reduce_zero_label``) with the file checks."""


@DATASETS.register_module()
class CheckedCOCOStuffDataset(_FileChecks, COCOStuffDataset):
    """COCO-Stuff-164k (171 classes, ``_labelTrainIds.png`` labels) with the file checks."""


@DATASETS.register_module()
class SyntheticADEDataset(_FileChecks, BaseSegDataset):
    """The synthetic ADE-layout data written by ``tools/make_synthetic_ade.py``."""

    METAINFO = dict(classes=SYNTHETIC_CLASSES, palette=[list(c) for c in SYNTHETIC_PALETTE])

    def __init__(
        self, img_suffix: str = ".jpg", seg_map_suffix: str = ".png", reduce_zero_label: bool = True, **kwargs
    ) -> None:
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=reduce_zero_label,
            **kwargs,
        )


@TRANSFORMS.register_module()
class LoadCheckedAnnotations(LoadAnnotations):
    """``LoadAnnotations`` that checks the label map against its image and the class count.

    Args:
        num_classes: valid labels are ``0 .. num_classes-1`` after ``reduce_zero_label``; ``None`` takes the
            dataset's (``results["num_classes"]``).
        ignore_index: the one other value allowed.
    """

    def __init__(self, num_classes: Optional[int] = None, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def _read_label(self, path: str) -> np.ndarray:
        """The label map as a 2-D uint8 array; a colour label, or values that do not fit in 8 bits, are errors
        (mmseg's loader would take a colour label's channels as rows or wrap 258 to class 1)."""
        try:
            seg = mmcv.imfrombytes(
                fileio.get(path, backend_args=self.backend_args),
                flag="unchanged",
                backend=self.imdecode_backend,
            )
        except Exception as e:
            raise DatasetFileError(f"label file {path!r} cannot be read ({type(e).__name__}: {e})") from e
        if seg is None:
            raise DatasetFileError(f"label file {path!r} cannot be decoded as an image")
        if seg.ndim == 3 and seg.shape[2] == 1:
            seg = seg[..., 0]
        if seg.ndim == 3:
            if all(np.array_equal(seg[..., 0], seg[..., c]) for c in range(1, seg.shape[2])):
                seg = seg[..., 0]  # grey values stored as RGB: the class index is any channel
            else:
                raise DatasetFileError(
                    f"label file {path!r} has {seg.shape[2]} channels with different values (a colour image?); "
                    f"expected a single-channel image of class indexes"
                )
        if seg.ndim != 2:
            raise DatasetFileError(
                f"label file {path!r} has shape {seg.shape}; expected a 2-D class-index map"
            )
        if seg.dtype != np.uint8:
            if seg.size and (seg.min() < 0 or seg.max() > 255):
                raise DatasetFileError(
                    f"label file {path!r} is {seg.dtype} with values {int(seg.min())}..{int(seg.max())}; class "
                    f"indexes must lie in 0..255 (an 8-bit label), higher values would wrap around"
                )
            seg = seg.astype(np.uint8)
        return seg

    def _load_seg_map(self, results: dict) -> None:
        path = results["seg_map_path"]
        if not osp.isfile(path):
            raise DatasetFileError(f"missing label file {path!r} for image {results.get('img_path')!r}")
        seg = self._read_label(path)
        # the rest as mmseg's LoadAnnotations: reduce_zero_label, then a custom label map
        if self.reduce_zero_label is None:
            self.reduce_zero_label = results["reduce_zero_label"]
        if self.reduce_zero_label != results.get("reduce_zero_label", self.reduce_zero_label):
            raise ValueError(
                f"the dataset has reduce_zero_label={results['reduce_zero_label']} but LoadCheckedAnnotations has "
                f"{self.reduce_zero_label}"
            )
        if self.reduce_zero_label:
            seg[seg == 0] = 255
            seg = seg - 1
            seg[seg == 254] = 255
        if results.get("label_map", None) is not None:
            original = seg.copy()
            for old_id, new_id in results["label_map"].items():
                seg[original == old_id] = new_id
        results["gt_seg_map"] = seg
        results["seg_fields"].append("gt_seg_map")
        img_shape = results.get("ori_shape") or results.get("img_shape")
        if img_shape is not None and tuple(seg.shape[:2]) != tuple(img_shape[:2]):
            raise DatasetFileError(
                f"label file {path!r} is {seg.shape[1]}x{seg.shape[0]} (WxH) but its image "
                f"{results.get('img_path')!r} is {img_shape[1]}x{img_shape[0]}"
            )
        num_classes = self.num_classes if self.num_classes is not None else results.get("num_classes")
        if num_classes:
            values = np.unique(seg)
            bad = values[(values >= num_classes) & (values != self.ignore_index)]
            if bad.size:
                shift = " (stored value - 1, as reduce_zero_label is on)" if self.reduce_zero_label else ""
                raise DatasetFileError(
                    f"label file {path!r} has class value(s) {bad.tolist()}{shift}; expected 0..{num_classes - 1} "
                    f"or the ignore index {self.ignore_index}"
                )
