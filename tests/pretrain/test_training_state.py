"""Pre-training resume skips a damaged newest checkpoint; a file that is no training state is a named error."""

from __future__ import annotations

import logging

import pytest
import torch

from eva_transfer.checkpoint_io import CheckpointError, save_checkpoint
from eva_transfer.pretrain.training_state import read_resume_checkpoint


def _state(step):
    return {
        "model": {"w": torch.full((2,), float(step))},
        "optimizer": {"state": {}, "param_groups": []},
        "step": step,
    }


def test_resume_falls_back_to_the_previous_intact_checkpoint(tmp_path, caplog):
    for step in (5, 10):
        save_checkpoint(_state(step), tmp_path / f"checkpoint_{step:08d}.pth")
    save_checkpoint(_state(15), tmp_path / "last.pth")
    last = tmp_path / "last.pth"
    last.write_bytes(last.read_bytes()[:200])  # truncated
    with caplog.at_level(logging.WARNING):
        path, ckpt = read_resume_checkpoint("auto", tmp_path)
    assert path == tmp_path / "checkpoint_00000010.pth" and ckpt["step"] == 10
    assert any("last.pth" in r.getMessage() and "previous" in r.getMessage() for r in caplog.records)


def test_resume_auto_takes_last_when_intact_and_starts_afresh_without_one(tmp_path):
    assert read_resume_checkpoint("auto", tmp_path) == (None, None)
    save_checkpoint(_state(3), tmp_path / "checkpoint_00000003.pth")
    save_checkpoint(_state(7), tmp_path / "last.pth")
    path, ckpt = read_resume_checkpoint("auto", tmp_path)
    assert path == tmp_path / "last.pth" and ckpt["step"] == 7


def test_resume_with_nothing_intact_or_no_training_state_is_named(tmp_path):
    (tmp_path / "last.pth").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*last\.pth"):
        read_resume_checkpoint("auto", tmp_path)
    other = tmp_path / "weights.pth"
    state = _state(4)
    del state["optimizer"]
    save_checkpoint(state, other)
    with pytest.raises(CheckpointError, match=r"weights\.pth: no 'optimizer' entry"):
        read_resume_checkpoint(str(other), tmp_path)
    save_checkpoint(dict(_state(4), step="4"), other)
    with pytest.raises(CheckpointError, match=r"weights\.pth: key 'step' is '4'"):
        read_resume_checkpoint(str(other), tmp_path)
