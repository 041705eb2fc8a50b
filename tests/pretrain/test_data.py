"""Image lists, augmentation, unreadable files and the resumable distributed order."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from eva_transfer.pretrain import BlockMaskGenerator, GlobalBatchSampler, MIMDataset, list_images
from eva_transfer.pretrain.data import collate, random_resized_crop_box


def test_folder_and_list_files(tmp_path, make_images):
    make_images(tmp_path / "a" / "sub", 3)
    make_images(tmp_path / "a", 2, seed=1)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    paths = list_images(tmp_path / "a")
    assert len(paths) == 5 and paths == sorted(paths)
    (tmp_path / "train.txt").write_text("a/img_0000.png 3\n# comment\n\na/sub/img_0001.png 7\n")
    assert list_images(list_file=tmp_path / "train.txt") == [
        str(tmp_path / "a/img_0000.png"),
        str(tmp_path / "a/sub/img_0001.png"),
    ]
    coco = {"images": [{"id": 1, "file_name": "img_0001.png"}], "annotations": []}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    assert list_images(tmp_path / "a", tmp_path / "instances.json") == [str(tmp_path / "a" / "img_0001.png")]
    (tmp_path / "bad.json").write_text(json.dumps({"images": [{"id": 1}]}))
    with pytest.raises(ValueError, match=r"images\[0\] has no 'file_name'"):
        list_images(list_file=tmp_path / "bad.json")


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list_images(tmp_path / "missing")


def test_random_resized_crop_box_bounds():
    rng = np.random.default_rng(0)
    for _ in range(500):
        left, top, w, h = random_resized_crop_box(200, 120, rng)
        assert 0 <= left and left + w <= 200 and 0 <= top and top + h <= 120
        assert 0.2 * 200 * 120 * 0.9 <= w * h <= 200 * 120
    a = random_resized_crop_box(200, 120, np.random.default_rng([1, 2]))
    assert a == random_resized_crop_box(200, 120, np.random.default_rng([1, 2]))


def _dataset(paths):
    return MIMDataset([str(p) for p in paths], 64, BlockMaskGenerator(4, num_masked=6, min_patches=2), seed=5)


def test_samples_are_seeded_by_epoch_and_index(tmp_path, make_images):
    ds = _dataset(make_images(tmp_path, 4))
    a, b = ds[1], ds[1]
    assert a["image"].shape == (3, 64, 64) and a["mask"].shape == (16,) and a["mask"].dtype == torch.bool
    assert 0 <= a["image"].min() and a["image"].max() <= 1
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    ds.set_epoch(1)
    c = ds[1]
    assert not (torch.equal(a["image"], c["image"]) and torch.equal(a["mask"], c["mask"]))


def test_unreadable_image_is_logged_and_skipped(tmp_path, make_images, caplog):
    paths = make_images(tmp_path, 3)
    bad = tmp_path / "img_0001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = _dataset(paths)
    with caplog.at_level(logging.WARNING):
        item = ds[1]
    assert item["skipped"] == 1 and item["image"] is None and item["path"] == str(bad)
    assert "skipping unreadable image" in caplog.text and str(bad) in caplog.text
    assert ds[0]["skipped"] == 0 and ds[2]["skipped"] == 0


def test_unreadable_images_count_files_and_no_neighbour_stands_in(tmp_path, make_images):
    paths = make_images(tmp_path, 5)
    for i in (1, 2):  # two neighbours: the old stand-in rule read file 3 three times and counted 3 retries
        Path(paths[i]).write_bytes(b"")
    ds = _dataset(paths)
    batch = collate([ds[i] for i in range(5)])
    assert int(batch["skipped"]) == 2
    assert batch["index"].tolist() == [0, 3, 4]
    assert batch["image"].shape == (3, 3, 64, 64) and batch["mask"].shape == (3, 16)
    assert torch.equal(batch["image"][1], ds[3]["image"])
    with pytest.raises(RuntimeError, match="all 2 images of a batch are unreadable.*img_0001"):
        collate([ds[1], ds[2]])


def test_global_batches_do_not_depend_on_the_number_of_processes():
    one = list(GlobalBatchSampler(50, 8, seed=3, epoch=2))
    two = [list(GlobalBatchSampler(50, 8, rank=r, world_size=2, seed=3, epoch=2)) for r in range(2)]
    assert len(one) == 6
    for b, batch in enumerate(one):
        assert two[0][b] + two[1][b] == batch
    assert list(GlobalBatchSampler(50, 8, seed=3, epoch=2, start_batch=4)) == one[4:]
    assert list(GlobalBatchSampler(50, 8, seed=3, epoch=3)) != one
    with pytest.raises(ValueError, match="not divisible"):
        GlobalBatchSampler(50, 9, world_size=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(5, 8)
