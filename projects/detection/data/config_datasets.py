"""Registering the datasets a config lists in ``dataloader.datasets``.

Each entry is ``dict(name=, json_file=, image_root=, fmt="coco"|"lvis")`` for your own data, or
``dict(name=, fmt=, synthetic=dict(root=, split=, num_images=, ...))`` for a synthetic dataset that is written
on first use (arguments of :func:`eva_transfer_projects.detection.data.make_synthetic_dataset`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

from detectron2.data import DatasetCatalog

from .datasets import register_dataset
from .synthetic import make_synthetic_dataset

__all__ = ["prepare_config_datasets", "register_config_datasets"]


def _paths(entry: Mapping[str, Any], create: bool) -> tuple[str, str, str]:
    fmt = entry.get("fmt", "coco")
    if "synthetic" not in entry:
        missing = [k for k in ("name", "json_file", "image_root") if not entry.get(k)]
        if missing:
            raise ValueError(
                f"dataloader.datasets entry {dict(entry)} lacks {missing} "
                "(expected dict(name=, json_file=, image_root=, fmt=))"
            )
        return str(entry["json_file"]), str(entry["image_root"]), fmt
    spec = dict(entry["synthetic"])
    root, split = Path(spec.pop("root")), spec.pop("split")
    json_file = root / "annotations" / f"{fmt}_{split}.json"
    if create and not json_file.exists():
        json_file = make_synthetic_dataset(root, split, fmt=fmt, **spec)
    return str(json_file), str(root / split if fmt == "coco" else root), fmt


def prepare_config_datasets(entries: Iterable[Mapping[str, Any]]) -> None:
    """Writes the synthetic datasets that do not exist yet (call once, before starting worker processes)."""
    for entry in entries:
        _paths(entry, create=True)


def register_config_datasets(entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """Registers every entry not registered yet; returns the names of all entries."""
    names = []
    for entry in entries:
        names.append(entry["name"])
        if entry["name"] in DatasetCatalog.list():
            continue
        json_file, image_root, fmt = _paths(entry, create=True)
        register_dataset(entry["name"], json_file, image_root, fmt)
    return names
