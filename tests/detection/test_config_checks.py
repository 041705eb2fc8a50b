"""Config and launch checks of tools/train_net.py: each bad value is an error naming the key, before any model or
data is built."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from eva_transfer_projects.detection.config_checks import (
    ConfigValueError,
    check_config,
    check_launch_args,
    explain_startup_failure,
)
from eva_transfer_projects.detection.engine import load_det_config

from .conftest import REPO, TINY_COCO, TRAIN_NET, python, train_net_env

RECIPES = sorted(p.name for p in (REPO / "configs/detection").glob("*.py") if not p.name.endswith("_test.py"))


@pytest.mark.parametrize("name", RECIPES)
def test_published_recipes_pass_the_checks(name):
    check_config(load_det_config(str(REPO / "configs/detection" / name)))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["dataloader.train.total_batch_size=0"],
            r"dataloader\.train\.total_batch_size must be an integer >= 1, got 0",
        ),
        (["train.max_iter=0"], r"train\.max_iter must be an integer >= 1, got 0"),
        (["lr_multiplier.steps=[300,200]"], r"lr_multiplier\.steps must increase strictly, got \[300, 200\]"),
        (["lr_multiplier.steps=[400]"], r"lr_multiplier\.steps \[400\] must lie inside the run .*350"),
        (["lr_multiplier.warmup_iters=500"], r"lr_multiplier\.warmup_iters=500 is longer than the run .*350"),
        (["train.stop_iter=400"], r"train\.stop_iter=400 is beyond train\.max_iter=350"),
        (["train.checkpointer.period=0"], r"train\.checkpointer\.period must be an integer >= 1"),
        (["lr_multiplier.max_iter=100"], r"lr_multiplier\.max_iter=100 differs from train\.max_iter=350"),
    ],
    ids=[
        "batch-0",
        "max-iter-0",
        "steps-decrease",
        "step-beyond",
        "warmup-long",
        "stop-beyond",
        "period-0",
        "span",
    ],
)
def test_bad_values_name_the_key(overrides, message):
    cfg = load_det_config(TINY_COCO, overrides)
    with pytest.raises(ConfigValueError, match=message):
        check_config(cfg)


def test_batch_must_divide_among_processes():
    cfg = load_det_config(TINY_COCO, ["dataloader.train.total_batch_size=6"])
    check_config(cfg, 3)
    with pytest.raises(ConfigValueError, match=r"total_batch_size=6 is not divisible by the 4 processes"):
        check_config(cfg, 4)


@pytest.mark.parametrize(
    "override", ["optimizer.lr=abc", "train.max_iter=lots", "dataloader.train.total_batch_size=[2]"]
)
def test_non_numeric_value_for_a_numeric_key_is_named(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigValueError, match=rf"{key} takes a number .*got"):
        load_det_config(TINY_COCO, [override])
    load_det_config(TINY_COCO, [f"{key}=7"])  # a number is accepted


def _args(**kw):
    base = dict(num_gpus=1, num_machines=1, machine_rank=0, dist_timeout=1800.0, dist_url="tcp://127.0.0.1:1")
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(num_gpus=0), r"--num-gpus 0: .*1 or more"),
        (dict(num_gpus=-1), r"--num-gpus -1: .*1 or more"),
        (dict(num_machines=0), r"--num-machines 0"),
        (
            dict(num_machines=2, machine_rank=2),
            r"--machine-rank 2 is not among the 2 machine\(s\) \(0\.\.1\)",
        ),
        (dict(dist_timeout=0), r"--dist-timeout 0"),
    ],
)
def test_bad_launch_arguments(kw, message):
    check_launch_args(_args())
    with pytest.raises(ConfigValueError, match=message):
        check_launch_args(_args(**kw))


def test_startup_failure_messages_say_who_is_missing():
    args = _args(num_machines=3, num_gpus=2)
    server = RuntimeError(
        "torch.distributed.DistStoreError: Timed out after 9 seconds waiting for clients. 2/6 clients joined."
    )
    msg = explain_startup_failure(server, args, 9)
    assert "only 2 of 6 processes joined within 9 s" in msg and "2 of machines 1..2" in msg
    client = RuntimeError(
        "DistNetworkError: The client socket has timed out after 8000ms while trying to connect to (h, 1)."
    )
    assert "machine 0 could not reach machine 0" not in explain_startup_failure(
        client, _args(machine_rank=1), 8
    )
    assert "could not reach machine 0" in explain_startup_failure(client, _args(machine_rank=1), 8)
    assert explain_startup_failure(ValueError("something else"), args, 9) is None


def _run(*argv, timeout=240):
    return subprocess.run(
        [python(), TRAIN_NET, *argv], capture_output=True, text=True, timeout=timeout, env=train_net_env()
    )


@pytest.mark.slow
def test_cli_errors_before_building_anything(tmp_path):
    missing = tmp_path / "nope.py"
    out = _run("--config-file", str(missing))
    assert out.returncode != 0 and f"error: --config-file {str(missing)!r}: no such file" in out.stderr
    assert "Traceback" not in out.stderr
    out = _run("--config-file", TINY_COCO, "--num-gpus", "0")
    assert out.returncode != 0 and "error: --num-gpus 0" in out.stderr and "Traceback" not in out.stderr
    out = _run(
        "--config-file", TINY_COCO, "dataloader.train.total_batch_size=0", f"train.output_dir={tmp_path}/o"
    )
    assert out.returncode != 0 and "error: dataloader.train.total_batch_size must be" in out.stderr
    assert not (tmp_path / "o").exists()  # nothing was set up


@pytest.mark.slow
def test_missing_machine_ends_after_a_bounded_wait(tmp_path):
    # machine 0 of 2 started alone: rendezvous times out and says who is missing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = _run(
        "--config-file", TINY_COCO, "--num-machines", "2", "--machine-rank", "0", "--dist-timeout", "2",
        "--dist-url", f"tcp://127.0.0.1:{port}", f"train.output_dir={tmp_path}/o",
        f"dataloader.synthetic_root={tmp_path}/data", "dataloader.train.total_batch_size=2",
        # the synthetic data is written before the processes start: 6 images each instead of 600 and 60
        "dataloader.datasets.0.synthetic.num_images=6", "dataloader.datasets.1.synthetic.num_images=6", timeout=300,
    )  # fmt: skip
    assert out.returncode != 0, out.stdout[-2000:]
    assert "error: distributed start-up: only 1 of 2 processes joined within 2 s" in out.stderr, out.stderr[
        -3000:
    ]
    assert "waiting up to 2 s for 2 processes" in out.stdout
