"""The pre-training objective and its schedule: the learning rate at a step, the AdamW parameter groups, and the
loss of one batch (the student's prediction of the teacher's features at the masked patches)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Optional

import torch
from torch import Tensor, nn

from .student import masked_cosine_loss
from .teacher import CLIPTeacher

__all__ = ["lr_at_step", "param_groups", "mim_loss"]


def lr_at_step(step: int, total: int, warmup: int, lr: float, warmup_lr: float, min_lr: float) -> float:
    """Linear warm-up from ``warmup_lr`` to ``lr`` over ``warmup`` steps, then cosine from ``lr`` to ``min_lr``
    at ``total`` (step ``s`` uses the value at ``s``; the first step of training is 0)."""
    if step < warmup:
        return warmup_lr + (lr - warmup_lr) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(student: nn.Module, ocfg: dict) -> list[dict]:
    """AdamW groups of the student: no weight decay on 1-D parameters, biases and the parameters named in
    ``optim.no_decay_names`` (EVA's: ``pos_embed``, ``cls_token``; the mask token is decayed). Each group holds
    ``params``, ``lr``, ``weight_decay`` and ``param_names``."""
    skip = tuple(ocfg["no_decay_names"])
    decay, no_decay = dict(params=[], param_names=[]), dict(params=[], param_names=[])
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        bare = name.rsplit(".", 1)[-1]
        group = no_decay if p.ndim <= 1 or name.endswith(".bias") or bare in skip else decay
        group["params"].append(p)
        group["param_names"].append(name)
    decay.update(lr=ocfg["lr"], weight_decay=ocfg["weight_decay"])
    no_decay.update(lr=ocfg["lr"], weight_decay=0.0)
    return [g for g in (decay, no_decay) if g["params"]]


def _normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (images - mean) / std


def mim_loss(
    student: nn.Module,
    teacher: CLIPTeacher,
    images: Tensor,
    mask: Tensor,
    mean: Tensor,
    std: Tensor,
    grid: tuple[int, int],
    normalizer: Optional[float] = None,
    amp_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """The training objective for one batch.

    Args:
        student: a :class:`MIMStudent` (possibly DDP-wrapped).
        images: ``(B, 3, S, S)`` crops in ``[0, 1]``; the student and the teacher normalise them their own way.
        mask: ``(B, N)`` bool; mean, std: ``(1, 3, 1, 1)`` student normalisation; grid: the student's patch grid.
        normalizer: see :func:`masked_cosine_loss`.
    Returns:
        scalar fp32 loss.
    """
    autocast = (
        torch.autocast(device_type=images.device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else nullcontext()
    )
    with autocast:
        targets = teacher(images, grid)
        pred = student(_normalize(images, mean, std), mask)
    return masked_cosine_loss(pred, targets, mask, normalizer)
