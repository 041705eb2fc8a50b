"""A shortened pre-training run scales its warm-up; the config's own length keeps it."""

from __future__ import annotations

import logging

from eva_transfer.pretrain import load_pretrain_config

from .conftest import TINY_CONFIG


def test_warmup_follows_shortened_run(caplog):
    base = load_pretrain_config(TINY_CONFIG)
    assert base["schedule"]["total_steps"] == 300 and base["schedule"]["warmup_steps"] == 20
    with caplog.at_level(logging.WARNING):
        cfg = load_pretrain_config(TINY_CONFIG, ["schedule.total_steps=40"])
    assert cfg["schedule"]["warmup_steps"] == round(20 * 40 / 300) == 3
    assert "schedule.total_steps=40 is shorter" in caplog.text
    assert load_pretrain_config(TINY_CONFIG, ["schedule.total_steps=600"])["schedule"]["warmup_steps"] == 20
    explicit = load_pretrain_config(TINY_CONFIG, ["schedule.total_steps=40", "schedule.warmup_steps=10"])
    assert explicit["schedule"]["warmup_steps"] == 10
    epochs = load_pretrain_config(None, ["schedule.epochs=15"])["schedule"]  # defaults: 150 epochs, 2 warm-up
    assert epochs["warmup_epochs"] == 2 * 15 / 150
