"""Detection checkpoint files other than .pth: .pkl model-zoo files are read without executing code."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
from torch import nn

from eva_transfer import build_eva_vit
from eva_transfer.checkpoint_io import CheckpointError
from eva_transfer_projects.detection.checkpoint import EVADetectionCheckpointer, read_pkl_weights


def _detector():
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.net = build_eva_vit(
        "eva_tiny", depth=2, embed_dim=16, num_heads=2, mlp_dim=32, img_size=32
    )
    return model


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_code_executing_pkl_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model_zoo.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": _Planted(marker)}, "__author__": "x"}))
    with pytest.raises(CheckpointError, match=r"model_zoo\.pkl: not a readable \.pkl weights file .*system"):
        EVADetectionCheckpointer(_detector()).load(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"\x80\x04garbage", b"plain text", b""])
def test_a_damaged_pkl_is_named(tmp_path, data):
    path = tmp_path / "weights.pkl"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"weights\.pkl"):
        EVADetectionCheckpointer(_detector()).load(str(path))


def test_model_zoo_pkl_arrays_are_read(tmp_path):
    blobs = OrderedDict(
        conv1_w=np.arange(6, dtype=np.float32).reshape(2, 3),
        conv1_b=np.ones(2, dtype=np.float64),
        iter=np.int64(3),
    )
    path = tmp_path / "caffe2.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    data = read_pkl_weights(str(path))
    assert (
        np.array_equal(data["blobs"]["conv1_w"], blobs["conv1_w"])
        and data["blobs"]["conv1_b"].dtype == np.float64
    )
    # through the checkpointer: read, then refused by name because it holds no EVA backbone
    with pytest.raises(CheckpointError, match=r"caffe2\.pkl: no backbone keys"):
        EVADetectionCheckpointer(_detector()).load(str(path))
