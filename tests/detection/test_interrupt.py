"""Detection training stops cleanly on SIGTERM / SIGINT: the iteration finishes, a checkpoint is written, exit 0."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import torch

from .conftest import TINY_COCO, TRAIN_NET, python, train_net_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from signal_run import signal_once_started  # noqa: E402

pytestmark = pytest.mark.slow  # trains for a minute or more (still in the full run)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_iteration_saves_and_exits(tmp_path, signum):
    out = tmp_path / "out"
    cmd = [python(), TRAIN_NET, "--config-file", TINY_COCO, f"train.output_dir={out}",
           f"dataloader.synthetic_root={tmp_path}/data", "dataloader.datasets.0.synthetic.num_images=24",
           "dataloader.datasets.1.synthetic.num_images=4", "dataloader.train.total_batch_size=2",
           "dataloader.train.num_workers=0", "train.log_period=1", "train.eval_period=-1",
           "train.max_iter=5000", "lr_multiplier.steps=[4000]"]  # fmt: skip
    env = dict(train_net_env(), OMP_NUM_THREADS="1")
    rc, log = signal_once_started(cmd, env, " iter: ", signum, start_timeout=300)
    assert rc == 0, log[-3000:]
    assert "rerun with --resume to continue" in log and "Traceback" not in log, log[-3000:]
    name = (out / "last_checkpoint").read_text().strip()
    assert name.startswith("model_") and name.endswith(".pth")
    iteration = int(name[6:-4])
    assert 0 <= iteration < 5000
    ckpt = torch.load(Path(out) / name, map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == iteration and ckpt["trainer"]["iteration"] == iteration
    assert ckpt["model"] and ckpt["trainer"]["optimizer"]["state"]
    assert not (out / "model_final.pth").exists()
