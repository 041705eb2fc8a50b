"""Segmentation config and launch checks: errors name the key before the model and data are built; a missing
rank ends after a bounded wait.

Command-line overrides: a misspelt --cfg-options key is an error naming the nearest keys."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from eva_transfer_projects.segmentation import train_command
from eva_transfer_projects.segmentation.config_checks import (
    ConfigOverrideError,
    ConfigValueError,
    check_train_config,
    load_seg_config,
)

from .conftest import CONFIG_DIR, ROOT, TINY_CONFIG

CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.py"))


@pytest.fixture(scope="module")
def train():
    return train_command


@pytest.mark.parametrize("name", CONFIGS)
def test_published_configs_pass_the_checks(name):
    check_train_config(load_seg_config(str(CONFIG_DIR / name), work_dir="unused"))


@pytest.mark.parametrize(
    "options, message",
    [
        (["train_dataloader.batch_size=0"], r"train_dataloader\.batch_size must be an integer >= 1, got 0"),
        (["train_cfg.max_iters=0"], r"train_cfg\.max_iters must be an integer >= 1, got 0"),
        (
            ["train_cfg.max_iters=10", "param_scheduler.0.end=20"],  # an explicit warm-up is not scaled
            r"param_scheduler\[0\] \(LinearLR\) ends at iteration 20, after the run .*=10",
        ),
        (["param_scheduler.1.begin=200"], r"param_scheduler\[1\] \(PolyLR\) begins at iteration 200, .*=150"),
        (
            ["default_hooks.checkpoint.interval=0"],
            r"default_hooks\.checkpoint\.interval must be an integer >= 1",
        ),
        (["optim_wrapper.optimizer.lr=0.0"], r"optim_wrapper\.optimizer\.lr must be a number > 0"),
    ],
    ids=["batch-0", "iters-0", "warmup-beyond", "poly-beyond", "ckpt-0", "lr-0"],
)
def test_bad_values_name_the_key_before_anything_is_built(train, tmp_path, options, message, monkeypatch):
    from mmengine.runner import Runner

    monkeypatch.setattr(Runner, "from_cfg", lambda cfg: pytest.fail("the runner was built"))
    with pytest.raises(ConfigValueError, match=message):
        train.main([TINY_CONFIG, "--work-dir", str(tmp_path), "--cfg-options", *options])


@pytest.mark.parametrize("option", ["optim_wrapper.optimizer.lr=abc", "train_cfg.max_iters=lots"])
def test_non_numeric_value_for_a_numeric_key_is_named(option):
    key = option.split("=")[0]
    with pytest.raises(ConfigValueError, match=rf"--cfg-options {key}: takes a number .*got '"):
        load_seg_config(TINY_CONFIG, dict([option.split("=")]))
    load_seg_config(TINY_CONFIG, {key: 7})


def test_pytorch_launcher_outside_torchrun_says_what_to_run(train, tmp_path, monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(ConfigValueError, match=r"torchrun --nproc-per-node .* --launcher pytorch"):
        train.main([TINY_CONFIG, "--work-dir", str(tmp_path), "--launcher", "pytorch"])


@pytest.mark.slow
def test_missing_rank_ends_after_a_bounded_wait(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RANK="0", LOCAL_RANK="0", WORLD_SIZE="2",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")  # fmt: skip
    cmd = [sys.executable, str(ROOT / "tools/train_seg.py"), TINY_CONFIG, "--work-dir", str(tmp_path),
           "--launcher", "pytorch", "--dist-timeout", "2"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode != 0
    assert (
        "error: distributed start-up: only 1 of 2 processes (WORLD_SIZE=2) joined within 2 s" in out.stderr
    ), out.stderr[-3000:]
    assert "Traceback" not in out.stderr


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
