"""The segmentation training loop: mmengine's ``IterBasedTrainLoop`` with a clean stop and a NaN check.

:class:`CheckedIterBasedTrainLoop` (``train_cfg.type`` of the shared schedule) runs the same iterations and adds:

- SIGINT / SIGTERM: the current iteration finishes, a checkpoint ``iter_<N>.pth`` is written through the
  config's ``CheckpointHook`` (same folder, backend and ``last_checkpoint`` file, so ``--resume`` continues from
  it), and training returns normally. A second signal stops at once. With several processes the flag is reduced
  so that every process stops after the same iteration.
- A non-finite loss stops with a ``FloatingPointError`` naming the iteration and the likely causes, and so do
  non-finite decode-head predictions (checked by a forward hook before they reach the loss, whose Hungarian
  matcher would fail on them with scipy's own error) when the weights already diverged. Under fp16 mixed precision (``AmpOptimWrapper``), whose loss scaler skips an
  overflowing step, the error comes after ``amp_nan_patience`` non-finite losses in a row.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import IterBasedTrainLoop
from mmseg.registry import LOOPS
from torch import nn

from eva_transfer.runtime import StopSignals

__all__ = ["CheckedIterBasedTrainLoop", "StopSignals"]


def _warn(msg: str) -> None:
    print_log(msg, logger="current", level=logging.WARNING)


def _nan_message(step: int, what: str, runner) -> str:
    lr = None
    try:
        lr = runner.optim_wrapper.get_lr()
        lr = {k: [f"{x:.3g}" for x in v] for k, v in lr.items()} if isinstance(lr, dict) else lr
    except Exception:  # a wrapper without get_lr
        pass
    return (
        f"{what} at iteration {step}{f' (lr {lr})' if lr else ''}: training diverged. Likely causes: a learning "
        "rate too high for the batch (optim_wrapper.optimizer.lr) or too short a warm-up (param_scheduler), fp16 "
        "overflow (try without --amp or with bf16), or broken inputs. Resume from the last checkpoint with a "
        "lower lr (--resume)"
    )


@LOOPS.register_module()
class CheckedIterBasedTrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` that stops cleanly on SIGINT / SIGTERM and on a NaN loss (module docstring)."""

    def __init__(self, *args, amp_nan_patience: int = 5, **kwargs):
        super().__init__(*args, **kwargs)
        self.amp_nan_patience = amp_nan_patience
        self._nan_run = 0
        self._signals: StopSignals | None = None
        self.interrupted = False

    def run(self):
        model = self.runner.model.module if is_model_wrapper(self.runner.model) else self.runner.model
        head = getattr(model, "decode_head", None)
        hook = head.register_forward_hook(self._check_predictions) if isinstance(head, nn.Module) else None
        try:
            with StopSignals("iteration", warn=_warn) as self._signals:
                return super().run()
        finally:
            if hook is not None:
                hook.remove()

    def _check_predictions(self, module: nn.Module, args, output) -> None:
        """Forward hook of the decode head: training predictions must be finite (one device sync)."""
        if not module.training:
            return
        tensors, todo = [], [output]
        while todo:
            item = todo.pop()
            if isinstance(item, torch.Tensor) and item.is_floating_point():
                tensors.append(torch.isfinite(item).all())
            elif isinstance(item, (list, tuple)):
                todo.extend(item)
            elif isinstance(item, dict):
                todo.extend(item.values())
        if tensors and not bool(torch.stack(tensors).all()):
            raise FloatingPointError(_nan_message(self._iter + 1, "non-finite predictions", self.runner))

    def run_iter(self, data_batch: Sequence[dict]) -> None:
        step = self._iter + 1  # as the log counts
        self.runner.call_hook("before_train_iter", batch_idx=self._iter, data_batch=data_batch)
        outputs = self.runner.model.train_step(data_batch, optim_wrapper=self.runner.optim_wrapper)
        self._check_loss(outputs, step)
        self.runner.call_hook(
            "after_train_iter", batch_idx=self._iter, data_batch=data_batch, outputs=outputs
        )
        self._iter += 1
        if self._stop_requested():
            self._save_and_stop()

    def _check_loss(self, outputs: dict, step: int) -> None:
        bad = {
            k: float(v)
            for k, v in (outputs or {}).items()
            if k.startswith("loss") and not math.isfinite(float(v))
        }
        if not bad:
            self._nan_run = 0
            return
        self._nan_run += 1
        fp16 = type(self.runner.optim_wrapper).__name__ == "AmpOptimWrapper"
        if fp16 and self._nan_run < self.amp_nan_patience:
            _warn(f"non-finite loss at iteration {step} under fp16 ({bad}); the loss scaler skips the step")
            return
        first = next(iter(bad.items()))
        raise FloatingPointError(_nan_message(step, f"{first[0]} is {first[1]}", self.runner))

    def _stop_requested(self) -> bool:
        return self._signals is not None and self._signals.requested()

    def _save_and_stop(self) -> None:
        runner = self.runner
        hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)
        if hook is not None and getattr(hook, "out_dir", None) is not None:
            hook._save_checkpoint_with_step(runner, self._iter, meta=dict(iter=self._iter))
        else:
            runner.save_checkpoint(runner.work_dir, f"iter_{self._iter}.pth", meta=dict(iter=self._iter))
        if is_main_process():
            _warn(
                f"stopped at iteration {self._iter} of {self._max_iters} on a signal; checkpoint "
                f"iter_{self._iter}.pth written in {runner.work_dir}; rerun with --resume to continue"
            )
        self.interrupted = True
        self.stop_training = True
