"""Distributed start-up of pre-training: a missing rank ends after a bounded wait with a message saying so."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from .conftest import REPO, TINY_CONFIG


def _run(tmp_path, make_images, env_extra, timeout=240):
    folder = make_images(tmp_path / "imgs", 4)[0].parent
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env_extra)
    cmd = [sys.executable, str(REPO / "tools/pretrain.py"), "--config", str(TINY_CONFIG), f"data.root={str(folder)!r}",
           f"train.output_dir={str(tmp_path / 'out')!r}", "train.dist_timeout=2"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_missing_rank_ends_after_a_bounded_wait(tmp_path, make_images):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    out = _run(tmp_path, make_images, env)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: distributed start-up: only 1 of 2 processes (WORLD_SIZE=2) joined within 2 s" in out.stderr
    assert "Traceback" not in out.stderr


def test_world_size_without_torchrun_says_what_to_run(tmp_path, make_images):
    out = _run(tmp_path, make_images, dict(RANK="0", WORLD_SIZE="2"))
    assert out.returncode == 2, out.stderr[-3000:]
    assert "MASTER_ADDR, MASTER_PORT not set: start the processes with torchrun" in out.stderr
