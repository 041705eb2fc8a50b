"""Segmentation training stops cleanly: SIGTERM / SIGINT finish the iteration, save and exit; a NaN loss names
the iteration and the likely cause."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from eva_transfer_projects.segmentation import train_command
from eva_transfer_projects.segmentation.synthetic import write_synthetic_ade

from .conftest import ROOT, TINY_CONFIG, data_options

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from signal_run import signal_once_started  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_ade(tmp_path_factory.mktemp("ade"), num_train=8, num_val=2, size=64, seed=0)


def _options(data, *extra):
    return ["--cfg-options", *data_options(data), "train_dataloader.num_workers=0", "val_dataloader.num_workers=0",
            "test_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
            "val_dataloader.persistent_workers=False", "test_dataloader.persistent_workers=False", *extra]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_iteration_saves_and_exits(data, tmp_path, signum):
    work = tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "tools/train_seg.py"), TINY_CONFIG, "--work-dir", str(work),
           *_options(data, "train_cfg.max_iters=10000", "default_hooks.logger.interval=1")]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    rc, log = signal_once_started(cmd, env, "Iter(train) [", signum, start_timeout=240)
    assert rc == 0, log[-3000:]
    assert "stopped at iteration" in log and "rerun with --resume" in log, log[-3000:]
    last = (work / "last_checkpoint").read_text().strip()
    assert os.path.isfile(last) and os.path.basename(last).startswith("iter_")
    step = int(os.path.basename(last)[5:-4])
    assert 1 <= step < 10000
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["meta"]["iter"] == step and "optimizer" in ckpt and ckpt["state_dict"]
    assert "Traceback" not in log


def test_nan_loss_names_the_iteration(data, tmp_path, one_thread):
    train = train_command
    from mmengine.runner import Runner

    cfg = train.make_config(
        train.parse_args(
            [TINY_CONFIG, "--work-dir", str(tmp_path / "w"), *_options(data, "train_cfg.max_iters=25")]
        )
    )
    runner = Runner.from_cfg(cfg)
    real = runner.model.train_step
    calls = []

    def step(data_batch, optim_wrapper):
        out = real(data_batch, optim_wrapper=optim_wrapper)
        calls.append(1)
        if len(calls) == 3:
            out["loss"] = torch.tensor(float("nan"))
        return out

    runner.model.train_step = step
    with pytest.raises(FloatingPointError, match=r"loss is nan at iteration 3 .*learning rate"):
        runner.train()


def test_divergence_reaching_the_matcher_names_the_iteration(data, tmp_path, one_thread):
    # an absurd lr: the weights blow up and the NaN appears in the predictions (the Hungarian matcher) or the loss
    train = train_command
    argv = [TINY_CONFIG, "--work-dir", str(tmp_path / "w"),
            *_options(data, "train_cfg.max_iters=20", "optim_wrapper.optimizer.lr=1e30",
                      "optim_wrapper.clip_grad=None", "param_scheduler=[]")]  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"at iteration \d+.*diverged.*learning rate") as err:
        train.main(argv)
    assert "invalid numeric entries" not in str(err.value)
