"""Bad input gives a clear error naming the file: missing files, a label of another size, an out-of-range label."""

from __future__ import annotations

import numpy as np
import pytest
from mmseg.registry import DATASETS
from PIL import Image

from projects.segmentation.datasets import DatasetFileError
from projects.segmentation.synthetic import SYNTHETIC_CLASSES, write_synthetic_ade

_PIPELINE = [dict(type="LoadImageFromFile"), dict(type="LoadCheckedAnnotations")]


@pytest.fixture
def root(tmp_path):
    return write_synthetic_ade(tmp_path / "ade", num_train=3, num_val=1, size=32, seed=1)


def _dataset(root, **kw):
    cfg = dict(
        type="SyntheticADEDataset",
        data_root=str(root),
        data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
        pipeline=_PIPELINE,
    )
    cfg.update(kw)
    return DATASETS.build(cfg)


def _label_path(root, i=1):
    return root / "annotations/training" / f"synthetic_training_{i:05d}.png"


def test_valid_data_loads_with_ade_label_convention(root):
    ds = _dataset(root)
    assert len(ds) == 3
    seg = ds[0]["gt_seg_map"]
    stored = np.asarray(Image.open(_label_path(root, 0)))
    # ADE convention: stored 0 (unlabelled) -> 255, stored k -> k - 1
    np.testing.assert_array_equal(seg, np.where(stored == 0, 255, stored.astype(np.int64) - 1))
    assert set(np.unique(seg)) <= set(range(len(SYNTHETIC_CLASSES))) | {255}


def test_missing_label_file_is_named_when_the_dataset_is_built(root):
    _label_path(root).unlink()
    with pytest.raises(DatasetFileError, match=r"missing label file .*synthetic_training_00001\.png"):
        _dataset(root)


def test_missing_image_listed_in_ann_file_is_named(root):
    (root / "train.txt").write_text("synthetic_training_00000\nsynthetic_training_00009\n")
    with pytest.raises(DatasetFileError, match=r"missing image file .*synthetic_training_00009\.jpg"):
        _dataset(root, ann_file="train.txt")


def test_empty_image_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "images/training").mkdir(parents=True)
    (tmp_path / "annotations/training").mkdir(parents=True)
    with pytest.raises(DatasetFileError, match=r"no images .* under .*images/training"):
        _dataset(tmp_path)


def test_label_of_another_size_than_its_image_is_named(root):
    Image.fromarray(np.ones((20, 32), np.uint8)).save(_label_path(root))
    ds = _dataset(root)
    with pytest.raises(
        DatasetFileError, match=r"label file .*synthetic_training_00001\.png.* is 32x20 .*image .* is 32x32"
    ):
        ds[1]


def test_label_value_above_class_count_is_named(root):
    label = np.asarray(Image.open(_label_path(root))).copy()
    label[5, 5] = len(SYNTHETIC_CLASSES) + 2  # stored value 7 -> class 6 of 5
    Image.fromarray(label).save(_label_path(root))
    ds = _dataset(root)
    with pytest.raises(DatasetFileError, match=r"synthetic_training_00001\.png.* value\(s\) \[6\].*0\.\.4"):
        ds[1]


def test_ignore_index_is_accepted(root):
    label = np.asarray(Image.open(_label_path(root))).copy()
    label[:4] = 0  # unlabelled -> 255 after reduce_zero_label
    Image.fromarray(label).save(_label_path(root))
    seg = _dataset(root)[1]["gt_seg_map"]
    assert (seg[:4] == 255).all()
