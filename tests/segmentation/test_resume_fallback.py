"""Segmentation --resume skips a damaged newest checkpoint and resumes from the previous intact one."""

from __future__ import annotations

import logging

import pytest
import torch

from eva_transfer.checkpoint_io import CheckpointError
from eva_transfer_projects.segmentation import train_command
from eva_transfer_projects.segmentation.checkpoint_io import latest_intact_checkpoint

from .conftest import TINY_CONFIG


def _write(path, it):
    torch.save({"state_dict": {"w": torch.full((4,), float(it))}, "meta": {"iter": it}}, path)


def test_resume_falls_back_to_the_previous_intact_checkpoint(tmp_path, caplog):
    for it in (10, 20, 30):
        _write(tmp_path / f"iter_{it}.pth", it)
    newest = tmp_path / "iter_30.pth"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    (tmp_path / "last_checkpoint").write_text(str(newest))
    with caplog.at_level(logging.WARNING):
        assert latest_intact_checkpoint(str(tmp_path)) == str(tmp_path / "iter_20.pth")
    assert any("iter_30.pth" in r.getMessage() and "previous" in r.getMessage() for r in caplog.records)
    # the command line resumes from it
    train = train_command
    cfg = train.make_config(train.parse_args([TINY_CONFIG, "--work-dir", str(tmp_path), "--resume"]))
    assert cfg.resume and cfg.load_from == str(tmp_path / "iter_20.pth")


def test_resume_with_no_checkpoint_starts_afresh_and_with_none_intact_is_an_error(tmp_path):
    assert latest_intact_checkpoint(str(tmp_path)) is None
    (tmp_path / "iter_10.pth").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint .*iter_10\.pth"):
        latest_intact_checkpoint(str(tmp_path))


def test_resume_takes_the_tagged_checkpoint_when_intact(tmp_path):
    for it in (10, 20):
        _write(tmp_path / f"iter_{it}.pth", it)
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_20.pth"))
    assert latest_intact_checkpoint(str(tmp_path)) == str(tmp_path / "iter_20.pth")
