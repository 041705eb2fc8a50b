"""Segmentation schedules follow the run: a shortened run scales the warm-up and poly start; a resumed run with a
longer max_iters continues on the longer schedule (the same lr as a run planned that long from the start)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS, PARAM_SCHEDULERS
from mmengine.runner import Runner

from eva_transfer_projects.segmentation import train_command
from eva_transfer_projects.segmentation.synthetic import write_synthetic_ade

from .conftest import CONFIG_DIR, TINY_CONFIG, data_options


@HOOKS.register_module(force=True)
class RecordLrHook(Hook):
    """Records the lr of the first parameter group used by each training iteration."""

    lrs: dict = {}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        RecordLrHook.lrs[runner.iter] = runner.optim_wrapper.param_groups[0]["lr"]


def test_published_configs_keep_absolute_values_and_short_runs_scale(caplog):
    train = train_command
    cfg = train.make_config(train.parse_args([str(CONFIG_DIR / "eva_g_mask2former_ade20k_896.py")]))
    # the authors' ADE20K schedule: warm-up 500, poly counted from 0 to the end of the run (mmengine's end is
    # exclusive of the last value, hence 501 and 20001)
    assert [(s.begin, s.end) for s in cfg.param_scheduler] == [(0, 501), (0, 20001)]
    with caplog.at_level(logging.WARNING):
        short = train.make_config(
            train.parse_args(
                [str(CONFIG_DIR / "eva_g_mask2former_ade20k_896.py"), "--opts", "train_cfg.max_iters=200"]
            )
        )
    assert short.param_scheduler[0].end == round(501 * 200 / 20000) == 5
    assert short.param_scheduler[1].begin == 0 and short.param_scheduler[1].end == 201
    assert "shorter than the config's 20000" in caplog.text
    explicit = train.make_config(
        train.parse_args(
            [
                TINY_CONFIG,
                "--opts",
                "train_cfg.max_iters=40",
                "param_scheduler.0.end=7",
                "param_scheduler.1.begin=7",
            ]
        )
    )
    assert explicit.param_scheduler[0].end == 7 and explicit.param_scheduler[1].begin == 7


def _run(train, root, work, max_iters, resume=False):
    args = [TINY_CONFIG, "--work-dir", str(work)] + (["--resume"] if resume else [])
    opts = [
        *data_options(root),
        f"train_cfg.max_iters={max_iters}",
        "default_hooks.checkpoint.interval=100",
        "val_dataloader=None",
        "val_cfg=None",
        "val_evaluator=None",
        "train_dataloader.batch_size=1",
        "train_dataloader.num_workers=0",
        "train_dataloader.persistent_workers=False",
        "param_scheduler.0.end=2",
        "param_scheduler.1.begin=2",
    ]
    cfg = train.make_config(train.parse_args([*args, "--cfg-options", *opts]))
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type="RecordLrHook")]
    RecordLrHook.lrs = {}
    runner = Runner.from_cfg(cfg)
    runner.train()
    return dict(RecordLrHook.lrs)


def test_resume_with_longer_max_iters_extends_the_schedule(tmp_path, one_thread):
    root = write_synthetic_ade(tmp_path / "data", num_train=2, num_val=1, size=32)
    train = train_command
    planned = _run(train, root, tmp_path / "planned", 8)  # the reference: planned 8 iterations from the start
    first = _run(train, root, tmp_path / "resumed", 4)
    assert first[3] == 0.0  # the poly decay has reached its end (eta_min 0) in the last planned iteration
    resumed = _run(train, root, tmp_path / "resumed", 8, resume=True)
    assert sorted(resumed) == [4, 5, 6, 7]
    for it in range(4, 8):
        assert resumed[it] == pytest.approx(planned[it], rel=1e-6), it
    assert resumed[4] > 0.1 * planned[2]  # not the finished run's final lr (0)


def authors_poly_lr(
    t: int, base: float, max_iters: int, warmup_iters: int, warmup_ratio: float = 1e-6
) -> float:
    """The authors' lr at iteration ``t`` (mmcv-full 1.4.2 ``lr_config = dict(policy='poly', warmup='linear', power=1.0,
    min_lr=0.0, by_epoch=False)``): poly counted from iteration 0 over ``max_iters``, multiplied during the warm-up
    iterations by ``1 - (1 - t / warmup_iters) * (1 - warmup_ratio)``."""
    power, min_lr = 1.0, 0.0
    regular = (base - min_lr) * (1 - t / max_iters) ** power + min_lr
    if t < warmup_iters:
        return regular * (1 - (1 - t / warmup_iters) * (1 - warmup_ratio))
    return regular


def _published_lrs(name: str, *cfg_options: str):
    """The config as the train command makes it, its schedulers built as mmengine's runner does (an open ``end`` is
    ``max_iters``) and stepped on a one-parameter optimizer: the lr of every iteration, and the config."""
    argv = [str(CONFIG_DIR / name)] + (["--cfg-options", *cfg_options] if cfg_options else [])
    cfg = train_command.make_config(train_command.parse_args(argv))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    total = cfg.train_cfg.max_iters
    schedulers = [
        PARAM_SCHEDULERS.build(dict(dict(end=total), **sched, optimizer=optimizer))
        for sched in copy.deepcopy(cfg.param_scheduler)
    ]
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        for sched in schedulers:
            sched.step()
    return lrs, cfg


# The authors' training logs (EVA-01/logs/sem_seg/*relpos_layerscale_9dec*_training_log.txt) print the lr of their
# first parameter group, the base lr times layer_decay_rate ** 41 (num_layers 40 + 2 layer ids, layer 0), once per
# 50 iterations: "Iter [n/...]" shows the lr used by iteration n - 1.
SECOND_SET = {
    "cocostuff_80k": (
        "eva_g_mask2former_cocostuff164k_896_relpos_layerscale_9dec.py",
        80000,
        0.95,
        {
            50: 3.986e-08,
            1500: 1.197e-06,
            2000: 1.190e-06,
            20000: 9.157e-07,
            40000: 6.104e-07,
            60000: 3.052e-07,
            79950: 7.783e-10,
            80000: 1.526e-11,
        },
    ),
    "ade20k_40k": (
        "eva_g_mask2former_ade20k_896_relpos_layerscale_9dec.py",
        40000,
        0.9,
        {
            50: 4.340e-09,
            1500: 1.280e-07,
            1550: 1.279e-07,
            2000: 1.264e-07,
            20000: 6.652e-08,
            40000: 3.326e-12,
        },
    ),
}


@pytest.mark.parametrize("name, total, decay, logged", list(SECOND_SET.values()), ids=list(SECOND_SET))
def test_second_set_lr_is_the_authors_at_every_iteration(name, total, decay, logged):
    """EVA-01 seg/configs/coco_stuff164k/eva_mask2former_896_80k_cocostuff164k_ss_relpos_layerscale_9dec.py and
    ade20k/eva_mask2former_896_40k_coco164k2ade20k_ss_relpos_layerscale_9dec.py: lr 1e-5, 1500 linear warm-up
    iterations (ratio 1e-6), poly (power 1, min 0) over all of max_iters (schedule_80k.py / schedule_40k.py)."""
    lrs, cfg = _published_lrs(name)
    base, warmup = cfg.optim_wrapper.optimizer.lr, 1500
    assert base == 1e-5 and cfg.train_cfg.max_iters == total == len(lrs)
    checked = sorted({0, warmup - 1, warmup, 60000, total // 2, total - 1} | set(range(0, total, 313)))
    for t in (t for t in checked if t < total):
        expected = authors_poly_lr(t, base, total, warmup)
        assert lrs[t] == pytest.approx(expected, rel=1e-6, abs=1e-20), f"iteration {t}"
    # the poly curve counts from 0 (below base after the warm-up) and is still decaying in the last iteration
    assert lrs[warmup] == pytest.approx(base * (1 - warmup / total), rel=1e-6)
    assert lrs[total - 1] == pytest.approx(base / total, rel=1e-6) and lrs[total - 1] > 0.0
    for n, value in logged.items():  # their logged group, to the log's 4 significant digits
        assert lrs[n - 1] * decay**41 == pytest.approx(value, rel=1e-3), f"Iter [{n}/{total}]"


def test_second_set_ade20k_keeps_poly_after_warmup_as_an_option():
    """The earlier schedule (poly from the end of the warm-up) through --cfg-options, as the config describes."""
    name = SECOND_SET["ade20k_40k"][0]
    options = ("param_scheduler.0.end=1500", "param_scheduler.1.begin=1500", "param_scheduler.1.end=40000")
    lrs, cfg = _published_lrs(name, *options)
    base = cfg.optim_wrapper.optimizer.lr
    assert lrs[1500] == pytest.approx(base, rel=1e-6)
    assert lrs[1500] / authors_poly_lr(1500, base, 40000, 1500) == pytest.approx(
        1 / (1 - 1500 / 40000), rel=1e-6
    )
