"""The parts of a pre-training run built from its config: the teacher and student, the mask generator, the dataset
and the optimizer. :mod:`.trainer` puts them together into the training loop."""

from __future__ import annotations

import logging
from typing import Any

import torch

from .data import MIMDataset, list_images
from .masking import BlockMaskGenerator
from .objective import param_groups
from .student import MIMStudent, build_student
from .teacher import CLIPTeacher, build_teacher, check_target_width

logger = logging.getLogger(__name__)

__all__ = ["build_dataset", "build_mask_generator", "build_models", "build_optimizer"]


def build_models(cfg: dict, device: torch.device) -> tuple[MIMStudent, CLIPTeacher]:
    """Teacher and student from a config; the student head follows (or is checked against) the teacher."""
    t = cfg["teacher"]
    teacher = build_teacher(
        family=t["family"],
        name=t["name"],
        pretrained=t["pretrained"],
        checkpoint=t["checkpoint"],
        img_size=t["img_size"],
        kwargs=t["kwargs"],
        mean=t["mean"],
        std=t["std"],
        act_layer=t["act_layer"],
    )
    m = cfg["model"]
    target_dim = m["target_dim"] if m["target_dim"] is not None else teacher.out_dim
    check_target_width(target_dim, teacher)
    student = build_student(
        m["preset"],
        target_dim,
        drop_path_rate=m["drop_path_rate"],
        use_act_checkpoint=m["use_act_checkpoint"],
        **{"init_mode": m["init_mode"], "init_std": m["init_std"], **m["backbone_overrides"]},
    )
    return student.to(device), teacher.to(device)


def build_mask_generator(cfg: dict, grid: tuple[int, int]) -> BlockMaskGenerator:
    """The block-wise mask generator of a pre-training config's ``mask`` section for a ``grid`` of patches."""
    mk = cfg["mask"]
    return BlockMaskGenerator(
        grid,
        num_masked=mk["num_patches"],
        mask_ratio=mk["ratio"],
        min_patches=mk["min_patches"],
        max_patches=mk["max_patches"],
        min_aspect=mk["min_aspect"],
        max_aspect=mk["max_aspect"],
        max_tries=mk["max_tries"],
    )


def build_dataset(cfg: dict, grid: tuple[int, int], seed: int) -> MIMDataset:
    """The MIM dataset of a config's ``data`` section: images, crops and masks for a ``grid`` of patches."""
    dcfg = cfg["data"]
    masker = build_mask_generator(cfg, grid)
    return MIMDataset(
        list_images(dcfg["root"], dcfg["list_file"]),
        dcfg["img_size"],
        masker,
        scale=tuple(dcfg["scale"]),
        ratio=tuple(dcfg["ratio"]),
        hflip=dcfg["hflip"],
        interpolation=dcfg["interpolation"],
        seed=seed,
    )


def build_optimizer(student: MIMStudent, ocfg: dict, world: int, is_main: bool) -> tuple[Any, bool]:
    """AdamW over :func:`param_groups`, ZeRO-1 sharded when ``optim.zero`` and several processes."""
    groups = param_groups(student, ocfg)
    for g in groups:
        g.pop("param_names")
    adamw = dict(lr=ocfg["lr"], betas=tuple(ocfg["betas"]), eps=ocfg["eps"])
    use_zero = bool(ocfg["zero"]) and world > 1
    if ocfg["zero"] and not use_zero and is_main:
        logger.info("optim.zero: one process, nothing to shard; using plain AdamW")
    if use_zero:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, **adamw), True
    return torch.optim.AdamW(groups, **adamw), False
