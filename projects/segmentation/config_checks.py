"""Loading and checking a segmentation config before mmengine builds anything (tools/train_seg.py, test_seg.py,
infer_seg.py).

``--cfg-options`` overrides are checked against the config before they are merged: a key that does not exist is
an error naming the nearest existing keys (mmengine would otherwise add the misspelt key silently and the run would
use the old value). A new key is added on purpose with a leading ``+`` (``+model.backbone.adapter.n_points=8``).
"""

from __future__ import annotations

import numbers
import os
import os.path as osp
from typing import Any, Mapping, Optional

from mmengine.config import Config

from eva_transfer.suggest import did_you_mean

from .schedule import fit_schedule_to_run

__all__ = [
    "ConfigOverrideError",
    "ConfigValueError",
    "check_cfg_options",
    "check_option_types",
    "check_train_config",
    "load_seg_config",
]


class ConfigOverrideError(KeyError):
    """A ``--cfg-options`` key that names nothing in the config."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _keys(node: Any) -> list[str]:
    if isinstance(node, Mapping):
        return [str(k) for k in node]
    if isinstance(node, (list, tuple)):
        return [str(i) for i in range(len(node))]
    return []


def check_cfg_options(cfg: Config, options: Mapping[str, Any]) -> dict[str, Any]:
    """Returns ``options`` with ``+`` prefixes removed; raises :class:`ConfigOverrideError` for an unknown key."""
    checked = {}
    for key, value in options.items():
        add = key.startswith("+")
        key = key[1:] if add else key
        parts = key.split(".")
        node: Any = cfg._cfg_dict if hasattr(cfg, "_cfg_dict") else cfg
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if isinstance(node, Mapping) and part in node:
                node = node[part]
                continue
            if add and last and isinstance(node, Mapping):
                break
            where = ".".join(parts[:depth]) or "the config"
            prefix = "".join(f"{p}." for p in parts[:depth])
            hint = did_you_mean(
                part, _keys(node), n=3, cutoff=0.5, show=lambda c, prefix=prefix: repr(prefix + c)
            )
            existing = ", ".join(_keys(node)[:20]) or "(not a dict)"
            raise ConfigOverrideError(
                f"--cfg-options {key}: {where} has no key {part!r}{hint} (it has: {existing}). "
                f"To add a new key write +{key}=..."
            )
        checked[key] = value
    return checked


def load_seg_config(
    path: str,
    cfg_options: Optional[Mapping[str, Any]] = None,
    work_dir: Optional[str] = None,
    launcher: str = "none",
) -> Config:
    """Reads ``path``, applies checked overrides (a shortened ``train_cfg.max_iters`` scales the schedule, see
    :mod:`eva_transfer_projects.segmentation.schedule`), sets ``work_dir`` (default ``work_dirs/<config name>``) and the
    launcher."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    cfg = Config.fromfile(path)
    planned_iters = (cfg.get("train_cfg") or {}).get("max_iters")
    if cfg_options:
        checked = check_cfg_options(cfg, cfg_options)
        check_option_types(cfg, checked)
        cfg.merge_from_dict(checked)
        fit_schedule_to_run(cfg, planned_iters, cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(path))[0])
    cfg.launcher = launcher
    os.environ.setdefault("LOCAL_RANK", "0")
    return cfg


class ConfigValueError(ValueError):
    """A config value or launch setting that cannot work; the message names the key."""


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_option_types(cfg: Config, options: Mapping[str, Any]) -> None:
    """A ``--cfg-options`` value that is not a number for a key whose config value is one is an error naming the
    key (``None`` is allowed). Call before merging."""
    for key, value in options.items():
        if key.startswith("+") or value is None or _is_number(value):
            continue
        node: Any = cfg._cfg_dict if hasattr(cfg, "_cfg_dict") else cfg
        for part in key.split("."):
            if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, Mapping) and part in node:
                node = node[part]
            else:
                node = None
                break
        if _is_number(node):
            raise ConfigValueError(
                f"--cfg-options {key}: takes a number (the config has {node!r}); got {value!r}"
            )


def _int_at_least(cfg: Config, key: str, minimum: int, default: Any = None) -> Optional[int]:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, (Mapping, Config)) else None
        if node is None:
            return default
    if not isinstance(node, int) or isinstance(node, bool) or node < minimum:
        raise ConfigValueError(f"{key} must be an integer >= {minimum}, got {node!r}")
    return node


def check_train_config(cfg: Config) -> None:
    """Checks a training config before the runner builds the model and data: batch size, run length, periods and
    that every ``param_scheduler`` phase (the warm-up first) fits inside ``train_cfg.max_iters``."""
    _int_at_least(cfg, "train_dataloader.batch_size", 1)
    _int_at_least(cfg, "train_dataloader.num_workers", 0)
    max_iters = _int_at_least(cfg, "train_cfg.max_iters", 1)
    _int_at_least(cfg, "train_cfg.val_interval", 1)
    _int_at_least(cfg, "default_hooks.checkpoint.interval", 1)
    _int_at_least(cfg, "default_hooks.logger.interval", 1)
    lr = (cfg.get("optim_wrapper") or {}).get("optimizer", {}).get("lr")
    if lr is not None and (not _is_number(lr) or lr <= 0):
        raise ConfigValueError(f"optim_wrapper.optimizer.lr must be a number > 0, got {lr!r}")
    schedulers = cfg.get("param_scheduler") or []
    if isinstance(schedulers, Mapping):
        schedulers = [schedulers]
    for i, sched in enumerate(schedulers):
        if max_iters is None or sched.get("by_epoch", True):
            continue
        begin, end = sched.get("begin", 0), sched.get("end")
        name = f"param_scheduler[{i}] ({sched.get('type')})"
        for what, v in (("begin", begin), ("end", end)):
            if v is not None and not _is_number(v):
                raise ConfigValueError(f"{name}.{what} must be an iteration number, got {v!r}")
        if begin >= max_iters:
            raise ConfigValueError(
                f"{name} begins at iteration {begin}, at or after the end of the run (train_cfg.max_iters="
                f"{max_iters})"
            )
        # mmengine reaches a phase's final value at ``end - 1``: a phase may end at ``max_iters + 1`` so that its
        # last value applies after the last iteration (the poly curve counted as mmcv 1.x did)
        if end is not None and end > max_iters + 1:
            raise ConfigValueError(
                f"{name} ends at iteration {end}, after the run (train_cfg.max_iters={max_iters}); shorten the "
                f"warm-up or lengthen the run"
            )
        if end is not None and end <= begin:
            raise ConfigValueError(f"{name}: end {end} must be after begin {begin}")
