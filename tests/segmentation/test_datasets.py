"""Bad input gives a clear error naming the file: missing files, a label of another size, an out-of-range label."""

from __future__ import annotations

import numpy as np
import pytest
from mmseg.registry import DATASETS
from PIL import Image

from eva_transfer_projects.segmentation.datasets import DatasetFileError
from eva_transfer_projects.segmentation.synthetic import SYNTHETIC_CLASSES, write_synthetic_ade

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


def test_colour_label_is_an_error_and_grey_rgb_label_is_read(root):
    label = np.asarray(Image.open(_label_path(root))).copy()
    expected = _dataset(root)[1]["gt_seg_map"]
    Image.fromarray(np.stack([label] * 3, axis=2)).save(_label_path(root))  # grey stored as RGB
    np.testing.assert_array_equal(_dataset(root)[1]["gt_seg_map"], expected)
    colour = np.stack([label, label, (label + 1) % 5], axis=2).astype(np.uint8)
    Image.fromarray(colour).save(_label_path(root))
    with pytest.raises(DatasetFileError, match=r"synthetic_training_00001\.png.* 3 channels"):
        _dataset(root)[1]


def test_16_bit_label_above_255_is_an_error_not_wrapped(root):
    label = np.asarray(Image.open(_label_path(root))).astype(np.uint16)
    expected = _dataset(root)[1]["gt_seg_map"]
    Image.fromarray(label).save(_label_path(root))  # 16-bit PNG of the same values: read as before
    assert Image.open(_label_path(root)).mode.startswith("I")
    np.testing.assert_array_equal(_dataset(root)[1]["gt_seg_map"], expected)
    label[3, 3] = 258  # mmseg's uint8 cast made this 2 (class 1 after reduce_zero_label)
    Image.fromarray(label).save(_label_path(root))
    with pytest.raises(DatasetFileError, match=r"synthetic_training_00001\.png.* values 0\.\.258.*0\.\.255"):
        _dataset(root)[1]


@pytest.mark.parametrize("size", [(1, 1), (4000, 16), (16, 4000)], ids=["1x1", "4000x16", "16x4000"])
@pytest.mark.parametrize("config", ["synthetic_ade", "ade20k"])
def test_tiny_or_thin_image_is_handled_or_named(root, size, config):
    from mmengine.config import Config

    from tests.segmentation.conftest import CONFIG_DIR

    pipeline = Config.fromfile(str(CONFIG_DIR / "_base_/datasets" / f"{config}.py")).train_pipeline
    w, h = size
    rng = np.random.default_rng(0)
    img = root / "images/training/synthetic_training_00001.jpg"
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img)
    Image.fromarray(rng.integers(1, len(SYNTHETIC_CLASSES) + 1, (h, w), dtype=np.uint8)).save(
        _label_path(root)
    )
    ds = _dataset(root, pipeline=pipeline)
    try:
        sample = ds[1]
    except DatasetFileError as e:
        assert "synthetic_training_00001.jpg" in str(e) and "synthetic_training_00001.png" in str(e)
    else:  # handled: a sample whose label matches its image
        image, seg = sample["inputs"], sample["data_samples"].gt_sem_seg.data
        assert image.shape[0] == 3 and image.shape[1:] == seg.shape[1:] and min(image.shape[1:]) >= 1
