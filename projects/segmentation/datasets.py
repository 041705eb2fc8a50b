"""Datasets and a checked annotation loader: bad input fails early with an error naming the file.

- :class:`CheckedADE20KDataset`, :class:`CheckedCOCOStuffDataset`, :class:`CheckedSegDataset` (any classes given
  in ``metainfo``), :class:`SyntheticADEDataset` (the data of :mod:`projects.segmentation.synthetic`): mmseg's
  datasets plus a check, when the dataset is built, that the image folder has images and every image has its
  label file. Each sample carries ``num_classes`` for :class:`LoadCheckedAnnotations`.
- :class:`LoadCheckedAnnotations`: mmseg's ``LoadAnnotations`` that also checks the label against its image:
  same height and width, and every value a class index (after ``reduce_zero_label``) or the ignore index.
"""

from __future__ import annotations

import os.path as osp
from typing import List, Optional

import numpy as np
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

    def _load_seg_map(self, results: dict) -> None:
        path = results["seg_map_path"]
        if not osp.isfile(path):
            raise DatasetFileError(f"missing label file {path!r} for image {results.get('img_path')!r}")
        super()._load_seg_map(results)
        seg = results["gt_seg_map"]
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
