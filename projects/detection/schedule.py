"""The detection lr schedule (``step_schedule``, which configs call) and its fit to the run's length.

A run shortened below its config (``train.max_iter`` overridden to fewer iterations than the file sets) gets the
step schedule's ``steps`` and ``warmup_iters`` scaled by the same ratio, with a logged note. Published configs run
at their own length keep their absolute values; values set by the same overrides are kept as given. A resumed run
with a longer ``train.max_iter`` needs nothing here: the schedule is a function of the iteration and the
configured length (Detectron2's ``LRMultiplier`` stores only its position).
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional, Sequence

from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import DictConfig, OmegaConf

__all__ = ["fit_schedule_to_run", "step_schedule"]

logger = logging.getLogger("eva_transfer_projects.detection")


def fit_schedule_to_run(
    cfg: DictConfig, planned_iter: Optional[int], overrides: Iterable[str] = ()
) -> list[str]:
    """Scales ``lr_multiplier.steps`` / ``warmup_iters`` when ``train.max_iter`` is below ``planned_iter`` (the
    config file's value). Returns the changes made (also logged)."""
    max_iter = OmegaConf.select(cfg, "train.max_iter", default=None)
    sched = cfg.get("lr_multiplier")
    if not planned_iter or not isinstance(max_iter, int) or max_iter >= planned_iter or sched is None:
        return []
    keys = [o.split("=", 1)[0].strip().lstrip("+") for o in overrides]
    ratio = max_iter / planned_iter
    changes = []
    if "steps" in sched and not any(k.startswith("lr_multiplier.steps") for k in keys):
        steps = list(OmegaConf.to_container(sched.steps, resolve=True) or [])
        scaled = [max(1, min(max_iter - 1, round(s * ratio))) for s in steps]
        if scaled != steps:
            sched.steps = scaled
            changes.append(f"steps {steps} -> {scaled}")
    if "warmup_iters" in sched and "lr_multiplier.warmup_iters" not in keys:
        warmup = int(sched.warmup_iters)
        scaled_warmup = min(max_iter, round(warmup * ratio))
        if scaled_warmup != warmup:
            sched.warmup_iters = scaled_warmup
            changes.append(f"warm-up {warmup} -> {scaled_warmup} iterations")
    note = (
        f"train.max_iter={max_iter} is shorter than the config's {planned_iter}: the lr schedule is scaled by "
        f"{ratio:.3g} ({'; '.join(changes)}). Set lr_multiplier.steps / lr_multiplier.warmup_iters to choose "
        "them yourself."
    )
    if changes and note not in _NOTED:  # the tools load the config twice in one process: one note
        _NOTED.add(note)
        logger.warning(note)
    return changes


_NOTED: set = set()


def step_schedule(
    max_iter: int, steps: Sequence[int], warmup_iters: int, warmup_factor: float = 0.001, gamma: float = 0.1
) -> WarmupParamScheduler:
    """Linear warm-up over ``warmup_iters`` iterations, then the lr multiplied by ``gamma`` at each of ``steps``."""
    if any(s >= max_iter for s in steps):
        raise ValueError(f"lr steps {list(steps)} must be below max_iter {max_iter}")
    values = [gamma**i for i in range(len(steps) + 1)]
    return WarmupParamScheduler(
        MultiStepParamScheduler(values=values, milestones=list(steps) + [max_iter]),
        warmup_factor=warmup_factor,
        warmup_length=warmup_iters / max_iter,
    )
