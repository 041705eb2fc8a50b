"""Federated-loss class weights and repeat factors on any registered dataset, against hand-computed values."""

import math

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from eva_transfer_projects.detection.class_frequency import (
    FedLossClassWeights,
    class_image_counts,
    repeat_factors,
)
from eva_transfer_projects.detection.data import make_synthetic_dataset, register_dataset, unregister_dataset


def _register_plain(name):
    # 4 images; class 0 in all of them, class 1 in one, class 2 in two; no image counts in the metadata
    classes = [[0], [0, 1], [0, 2, 2], [0, 2]]
    dicts = [
        dict(
            file_name=f"{i}.png",
            image_id=i,
            height=8,
            width=8,
            annotations=[dict(bbox=[0, 0, 2, 2], bbox_mode=0, category_id=c) for c in cs],
        )
        for i, cs in enumerate(classes)
    ]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).thing_classes = ["a", "b", "c"]


@pytest.fixture
def plain_dataset():
    _register_plain("freq_plain")
    yield "freq_plain"
    DatasetCatalog.remove("freq_plain")
    MetadataCatalog.remove("freq_plain")


def test_counts_from_annotations(plain_dataset):
    torch.testing.assert_close(class_image_counts(plain_dataset), torch.tensor([4.0, 1.0, 2.0]))
    torch.testing.assert_close(
        FedLossClassWeights(plain_dataset, 0.5)(), torch.tensor([2.0, 1.0, math.sqrt(2)])
    )
    # r(c) = max(1, sqrt(t / f(c))) with f = (1, 1/4, 1/2); per image the max over its classes
    r = repeat_factors(plain_dataset, repeat_thresh=0.5)
    r_b, r_c = math.sqrt(0.5 / 0.25), 1.0
    torch.testing.assert_close(r, torch.tensor([1.0, r_b, r_c, r_c]))


def test_counts_from_lvis_metadata(tmp_path):
    json_file = make_synthetic_dataset(tmp_path, "train", 30, fmt="lvis", num_classes=6, seed=3)
    register_dataset("freq_lvis", json_file, tmp_path, fmt="lvis")
    try:
        import json

        data = json.loads(json_file.read_text())
        want = torch.tensor(
            [float(c["image_count"]) for c in sorted(data["categories"], key=lambda c: c["id"])]
        )
        torch.testing.assert_close(class_image_counts("freq_lvis"), want)
        torch.testing.assert_close(FedLossClassWeights(["freq_lvis"], 0.5)(), want**0.5)
        assert len(repeat_factors("freq_lvis", 0.001)) == len(DatasetCatalog.get("freq_lvis"))
    finally:
        unregister_dataset("freq_lvis")
