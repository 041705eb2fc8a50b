"""A clean stop of detection training on SIGINT / SIGTERM: the iteration finishes, a checkpoint is written, and
:func:`~eva_transfer_projects.detection.engine.do_train` returns (exit status 0), as pre-training does.

:class:`StopOnSignal` runs after the checkpoint and evaluation hooks, before the writer. After each iteration it reads the flag the signal handler
set (reduced over the processes, so that all stop after the same iteration), writes ``model_<iter>.pth`` with
the trainer's state (``--resume`` continues after it) and raises :class:`TrainingInterrupted`, a
``BaseException`` like ``KeyboardInterrupt``, which Detectron2's loop does not log as a failure. A second signal
stops at once.
"""

from __future__ import annotations

import logging

from detectron2.engine import hooks
from detectron2.utils import comm

from eva_transfer.runtime import StopSignals

__all__ = ["StopOnSignal", "TrainingInterrupted"]

logger = logging.getLogger("eva_transfer_projects.detection")


class TrainingInterrupted(BaseException):
    """Raised after the checkpoint of an interrupted run; ``iteration`` is the last finished one."""

    def __init__(self, iteration: int, path: str = ""):
        super().__init__(f"training stopped on a signal after iteration {iteration}")
        self.iteration = iteration
        self.path = path


class StopOnSignal(hooks.HookBase):
    """See the module docstring. ``checkpointer`` writes on the main process only (``None`` elsewhere)."""

    def __init__(self, checkpointer, device: str = "cpu"):
        self.checkpointer = checkpointer
        self.device = device
        self.signals = StopSignals("iteration", warn=logger.warning)

    @property
    def set(self) -> bool:
        """Whether this process received a signal."""
        return self.signals.set

    def before_train(self):
        self.signals.install()

    def after_train(self):
        self.signals.restore()

    def _requested(self) -> bool:
        return self.signals.requested(self.device if self.device.startswith("cuda") else "cpu")

    def after_step(self):
        if not self._requested():
            return
        iteration = self.trainer.iter
        path = ""
        if self.checkpointer is not None:
            name = f"model_{iteration:07d}"
            self.checkpointer.save(name, iteration=iteration)
            path = f"{self.checkpointer.save_dir}/{name}.pth"
            logger.warning(
                "stopped after iteration %d; checkpoint %s written; rerun with --resume to continue",
                iteration,
                path,
            )
        comm.synchronize()
        raise TrainingInterrupted(iteration, path)
