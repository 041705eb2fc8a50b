"""Command-line overrides: a misspelt --cfg-options key is an error naming the nearest keys."""

from __future__ import annotations

import pytest

from eva_transfer_projects.segmentation import train_command
from eva_transfer_projects.segmentation.config_checks import ConfigOverrideError

from .conftest import TINY_CONFIG


@pytest.fixture(scope="module")
def train():
    return train_command


def _cfg(train, *options):
    return train.make_config(
        train.parse_args([TINY_CONFIG, "--work-dir", "unused", "--cfg-options", *options])
    )


def test_override_of_existing_keys_including_list_items(train):
    cfg = _cfg(
        train, "optim_wrapper.optimizer.lr=0.5", "train_dataloader.dataset.pipeline.1.type=LoadAnnotations"
    )
    assert cfg.optim_wrapper.optimizer.lr == 0.5
    assert cfg.train_dataloader.dataset.pipeline[1].type == "LoadAnnotations"


def test_typo_is_an_error_with_a_suggestion(train):
    with pytest.raises(
        ConfigOverrideError, match=r"optim_wrapper has no key 'optimzer'.*'optim_wrapper\.optimizer'"
    ):
        _cfg(train, "optim_wrapper.optimzer.lr=0.5")
    with pytest.raises(ConfigOverrideError, match=r"the config has no key 'lod_from'.*'load_from'"):
        _cfg(train, "lod_from=x.pth")


def test_new_key_needs_a_plus(train):
    with pytest.raises(ConfigOverrideError, match=r"\+model\.backbone\.backbone_overrides\.img_size"):
        _cfg(train, "model.backbone.backbone_overrides.img_size=96")
    cfg = _cfg(train, "+model.backbone.backbone_overrides.img_size=96")
    assert cfg.model.backbone.backbone_overrides.img_size == 96


def test_resume_and_work_dir(train):
    cfg = train.make_config(train.parse_args([TINY_CONFIG, "--resume"]))
    assert cfg.resume is True and cfg.load_from is None
    assert cfg.work_dir.endswith("work_dirs/eva_tiny_mask2former_synthetic")
    cfg = train.make_config(train.parse_args([TINY_CONFIG, "--resume", "some/iter_10.pth"]))
    assert cfg.resume is True and cfg.load_from == "some/iter_10.pth"


def test_missing_config_file_is_named(train):
    with pytest.raises(FileNotFoundError, match="no_such_config.py"):
        train.make_config(train.parse_args(["configs/segmentation/no_such_config.py"]))
