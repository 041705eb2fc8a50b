"""Learning-rate schedules that follow the run's length.

- A run shortened below its config (``train_cfg.max_iters`` overridden to fewer iterations) gets the config's
  iteration-based ``param_scheduler`` boundaries (``begin`` / ``end``: the warm-up length, the start of the poly
  decay) scaled by the same ratio, with a logged note. Published configs run at their own length keep their
  absolute values; boundaries set by the same overrides are kept as given.
- A resumed run with a longer ``max_iters`` than the checkpoint's extends the schedule (:class:`ScheduleFollowsRunHook`):
  the loaded schedulers' ``end`` is moved to the configured one and a poly decay continues on the longer curve
  (without this, mmengine restores the old ``end`` and the extra iterations run at the final lr, 0 for EVA).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ["fit_schedule_to_run", "ScheduleFollowsRunHook"]

logger = logging.getLogger(__name__)


def _schedulers(cfg: Config) -> list:
    sched = cfg.get("param_scheduler")
    if sched is None:
        return []
    return list(sched) if isinstance(sched, (list, tuple)) else [sched]


def fit_schedule_to_run(
    cfg: Config, planned_iters: Optional[int], overrides: Optional[Mapping[str, Any]] = None
) -> list[str]:
    """Scales the iteration boundaries of ``cfg.param_scheduler`` when ``train_cfg.max_iters`` is below
    ``planned_iters`` (the config file's value). Returns the changes made (also logged)."""
    train_cfg = cfg.get("train_cfg") or {}
    max_iters = train_cfg.get("max_iters") if isinstance(train_cfg, Mapping) else None
    if not planned_iters or not max_iters or max_iters >= planned_iters or max_iters < 2:
        return []
    if any(str(k).lstrip("+").startswith("param_scheduler") for k in (overrides or {})):
        return []  # the schedule was set explicitly
    ratio = max_iters / planned_iters
    changes = []
    for i, sched in enumerate(_schedulers(cfg)):
        if sched.get("by_epoch", True):
            continue  # epoch-based boundaries do not follow max_iters
        for key in ("begin", "end"):
            value = sched.get(key)
            if not isinstance(value, int) or value <= 0 or value > planned_iters + 1:
                continue
            if value == planned_iters + 1:
                scaled = max_iters + 1  # "after the last iteration" (the poly curve counted from 0) stays so
            else:
                scaled = max(1, min(max_iters - 1, round(value * ratio)))
            if scaled != value:
                sched[key] = scaled
                changes.append(f"param_scheduler.{i}.{key} ({sched.get('type')}) {value} -> {scaled}")
    if changes:
        logger.warning(
            "train_cfg.max_iters=%d is shorter than the config's %d: the schedule is scaled by %.3g (%s). "
            "Override param_scheduler to choose the boundaries yourself.",
            max_iters,
            planned_iters,
            ratio,
            "; ".join(changes),
        )
    return changes


@HOOKS.register_module(force=True)
class ScheduleFollowsRunHook(Hook):
    """After a resume, moves each iteration-based scheduler's ``end`` to its configured value (the runner's
    ``max_iters`` when unset) if the checkpoint's was earlier, and recomputes a poly decay's current value on the
    extended curve. Logs what it changed."""

    priority = "VERY_HIGH"

    def before_train(self, runner) -> None:
        schedulers = runner.param_schedulers
        if not schedulers or isinstance(schedulers, dict):
            return
        configured = _schedulers(runner.cfg)
        if len(configured) != len(schedulers):
            return
        for sched, sched_cfg in zip(schedulers, configured):
            if sched.by_epoch:
                continue
            want = sched_cfg.get("end", runner.max_iters)
            if not isinstance(want, int) or sched.end >= want:
                continue
            old = sched.end
            sched.end = want
            if hasattr(sched, "total_iters"):
                sched.total_iters = want - sched.begin - 1
            note = ""
            poly = hasattr(sched, "power") and hasattr(sched, "eta_min")
            if poly and runner.iter >= sched.begin:  # the value at this step on the extended curve
                # a finished scheduler stopped counting at its old end: its position is the run's iteration
                sched.last_step = runner.iter - sched.begin
                progress = sched.last_step / max(1, sched.total_iters)
                factor = max(0.0, 1.0 - progress) ** sched.power
                name = sched.param_name
                for group, base in zip(sched.optimizer.param_groups, sched.base_values):
                    group[name] = sched.eta_min + (base - sched.eta_min) * factor
                sched._last_value = [g[name] for g in sched.optimizer.param_groups]
                note = f"; {name} now {sched._last_value[0]:.3g}"
            runner.logger.warning(
                "resumed at iteration %d with max_iters %d: %s end extended from %d to %d%s",
                runner.iter,
                runner.max_iters,
                type(sched).__name__,
                old,
                want,
                note,
            )
