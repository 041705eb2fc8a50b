"""Shared pieces of the segmentation command lines (tools/train_seg.py, test_seg.py, infer_seg.py).

``--cfg-options`` overrides are checked against the config before they are merged: a key that does not exist is
an error naming the nearest existing keys (mmengine would otherwise add the misspelt key silently and the run would
use the old value). A new key is added on purpose with a leading ``+`` (``+model.backbone.adapter.n_points=8``).
"""

from __future__ import annotations

import difflib
import os
import os.path as osp
from typing import Any, Mapping, Optional

from mmengine.config import Config

from .schedule import fit_schedule_to_run

__all__ = ["ConfigOverrideError", "check_cfg_options", "load_config"]


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
            close = difflib.get_close_matches(part, _keys(node), n=3, cutoff=0.5)
            hint = (
                f"; did you mean {' or '.join(repr('.'.join(parts[:depth] + [c])) for c in close)}?"
                if close
                else ""
            )
            existing = ", ".join(_keys(node)[:20]) or "(not a dict)"
            raise ConfigOverrideError(
                f"--cfg-options {key}: {where} has no key {part!r}{hint} (it has: {existing}). "
                f"To add a new key write +{key}=..."
            )
        checked[key] = value
    return checked


def load_config(
    path: str,
    cfg_options: Optional[Mapping[str, Any]] = None,
    work_dir: Optional[str] = None,
    launcher: str = "none",
) -> Config:
    """Reads ``path``, applies checked overrides (a shortened ``train_cfg.max_iters`` scales the schedule, see
    :mod:`projects.segmentation.schedule`), sets ``work_dir`` (default ``work_dirs/<config name>``) and the
    launcher."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    cfg = Config.fromfile(path)
    planned_iters = (cfg.get("train_cfg") or {}).get("max_iters")
    if cfg_options:
        cfg.merge_from_dict(check_cfg_options(cfg, cfg_options))
        fit_schedule_to_run(cfg, planned_iters, cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(path))[0])
    cfg.launcher = launcher
    os.environ.setdefault("LOCAL_RANK", "0")
    return cfg
