"""Checks of a detection config and of ``tools/train_net.py``'s launch arguments, run before any model or data
is built: each failure is a :class:`ConfigValueError` naming the key (or argument) and what was expected.

- :func:`numeric_keys` / :func:`check_override_types`: an override that puts a non-number into a numeric key
  (``optimizer.lr=abc``) is an error, not a string that fails deep inside the optimizer.
- :func:`check_config`: batch size, iteration counts, periods and the lr schedule fit the run.
- :func:`check_launch_args`: ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-timeout``.
- :func:`explain_startup_failure`: turns torch's rendezvous time-outs into a message saying who is missing.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, OmegaConf

from eva_transfer.runtime import rendezvous_failure

__all__ = [
    "ConfigValueError",
    "numeric_keys",
    "check_override_types",
    "check_config",
    "check_launch_args",
    "explain_startup_failure",
]


class ConfigValueError(ValueError):
    """A config value or launch argument that cannot work; the message names the key."""


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=False)


def numeric_keys(cfg: DictConfig, overrides: Iterable[str]) -> dict[str, Any]:
    """``{key: current value}`` of the overridden keys whose current value is a number (read before the
    overrides are applied)."""
    out = {}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith(("+", "~")):
            continue
        value = _select(cfg, key)
        if _is_number(value):
            out[key] = value
    return out


def check_override_types(cfg: DictConfig, numeric: dict[str, Any]) -> None:
    """After the overrides: each key of ``numeric`` (see :func:`numeric_keys`) still holds a number (or None)."""
    for key, old in numeric.items():
        value = _select(cfg, key)
        if value is not None and not _is_number(value):
            raise ConfigValueError(f"{key} takes a number (the config has {old!r}); got {value!r}")


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1, required: bool = True) -> Optional[int]:
    value = _select(cfg, key, default=_ABSENT)
    if value is _ABSENT or (value is None and not required):
        if required and value is _ABSENT:
            raise ConfigValueError(f"the config has no {key}")
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


_ABSENT = object()


def check_config(cfg: DictConfig, num_processes: int = 1) -> None:
    """Checks a loaded training config (after overrides) before the model and data are built.

    Args:
        num_processes: processes of the run (machines x processes per machine); the global batch must divide.
    """
    batch = _positive_int(cfg, "dataloader.train.total_batch_size")
    if batch % num_processes:
        raise ConfigValueError(
            f"dataloader.train.total_batch_size={batch} is not divisible by the {num_processes} processes of the "
            f"run (--num-machines x --num-gpus); use a multiple of {num_processes}"
        )
    _positive_int(cfg, "dataloader.train.num_workers", minimum=0, required=False)
    max_iter = _positive_int(cfg, "train.max_iter")
    stop_iter = _positive_int(cfg, "train.stop_iter", required=False)
    if stop_iter is not None and stop_iter > max_iter:
        raise ConfigValueError(
            f"train.stop_iter={stop_iter} is beyond train.max_iter={max_iter} (the schedule ends there)"
        )
    _positive_int(cfg, "train.checkpointer.period", required=False)
    _positive_int(cfg, "train.log_period", required=False)
    _positive_int(cfg, "train.eval_period", minimum=-1, required=False)
    for key in ("optimizer.lr", "optimizer.weight_decay"):
        value = _select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and value is not None and (not _is_number(value) or value < 0):
            raise ConfigValueError(f"{key} must be a number >= 0, got {value!r}")
    check_schedule(cfg, max_iter)


def check_schedule(cfg: DictConfig, max_iter: int) -> None:
    """``lr_multiplier`` (``step_schedule``'s ``max_iter`` / ``steps`` / ``warmup_iters``): the schedule spans
    the run, steps rise strictly inside it, the warm-up is not longer than the run."""
    lr = _select(cfg, "lr_multiplier")
    if not isinstance(lr, DictConfig):
        return
    sched_iter = _select(cfg, "lr_multiplier.max_iter")
    if sched_iter is not None:
        if not isinstance(sched_iter, int) or isinstance(sched_iter, bool) or sched_iter < 1:
            raise ConfigValueError(f"lr_multiplier.max_iter must be a positive integer, got {sched_iter!r}")
        if sched_iter != max_iter:
            raise ConfigValueError(
                f"lr_multiplier.max_iter={sched_iter} differs from train.max_iter={max_iter}: the schedule must "
                "span the run (leave it at ${train.max_iter})"
            )
    steps = _select(cfg, "lr_multiplier.steps")
    if steps is not None:
        steps = list(steps)
        if not all(_is_number(s) for s in steps):
            raise ConfigValueError(f"lr_multiplier.steps must be iteration numbers, got {steps}")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ConfigValueError(f"lr_multiplier.steps must increase strictly, got {steps}")
        if any(s <= 0 or s >= max_iter for s in steps):
            raise ConfigValueError(
                f"lr_multiplier.steps {steps} must lie inside the run (0 < step < train.max_iter={max_iter})"
            )
    warmup = _select(cfg, "lr_multiplier.warmup_iters")
    if warmup is not None:
        if not _is_number(warmup) or warmup < 0:
            raise ConfigValueError(f"lr_multiplier.warmup_iters must be a number >= 0, got {warmup!r}")
        if warmup > max_iter:
            raise ConfigValueError(
                f"lr_multiplier.warmup_iters={warmup} is longer than the run (train.max_iter={max_iter})"
            )


def check_launch_args(args) -> None:
    """``tools/train_net.py``'s launch arguments: at least one process per machine and one machine, a machine
    rank among them, a positive start-up time-out."""
    if args.num_gpus < 1:
        raise ConfigValueError(
            f"--num-gpus {args.num_gpus}: give the number of processes per machine, 1 or more (on a machine "
            "without GPUs, N starts N CPU processes)"
        )
    if args.num_machines < 1:
        raise ConfigValueError(f"--num-machines {args.num_machines}: give 1 or more")
    if not 0 <= args.machine_rank < args.num_machines:
        raise ConfigValueError(
            f"--machine-rank {args.machine_rank} is not among the {args.num_machines} machine(s) "
            f"(0..{args.num_machines - 1})"
        )
    if getattr(args, "dist_timeout", 1) <= 0:
        raise ConfigValueError(f"--dist-timeout {args.dist_timeout}: give a number of seconds > 0")


def explain_startup_failure(error: BaseException, args, timeout_s: float) -> Optional[str]:
    """A message saying who is missing when ``error`` is torch's rendezvous time-out, else None."""
    world = args.num_machines * args.num_gpus
    failure = rendezvous_failure(error)
    if failure is None:
        return None
    if failure.kind == "partial":
        k, n = failure.joined, failure.expected
        missing = n - k
        return (
            f"distributed start-up: only {k} of {n} processes joined within {timeout_s:g} s at {args.dist_url}; "
            f"{missing} process(es) are missing ({missing / args.num_gpus:g} of machines 1..{args.num_machines - 1}"
            f" with --num-gpus {args.num_gpus} each). Start tools/train_net.py on every machine with the same "
            f"--num-machines {args.num_machines} --dist-url {args.dist_url} and its own --machine-rank"
        )
    if failure.kind == "unreachable":
        return (
            f"distributed start-up: machine {args.machine_rank} could not reach machine 0 at {args.dist_url} "
            f"within {timeout_s:g} s; start machine 0 (--machine-rank 0) and check --dist-url "
            f"({world} processes expected in all)"
        )
    return (
        f"distributed start-up timed out after {timeout_s:g} s at {args.dist_url}: not all {world} processes "
        f"({args.num_machines} machine(s) x {args.num_gpus}) started"
    )
